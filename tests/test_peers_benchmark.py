"""benchmarks/peers.py (segkit vs segmentation_models.pytorch) runs end to end at toy size; skipped without smp."""
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("segmentation_models_pytorch")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_peers_smoke_prints_every_pair():
    done = subprocess.run([sys.executable, "peers.py", "--smoke"], cwd=BENCHMARKS, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("UNet-R18", "UNet-R34", "DeepLabV3+-R50"):
        assert f"| {name} | 2x3x64x64 | " in done.stdout, done.stdout[-3000:]


def test_peers_rejects_a_bad_shape():
    done = subprocess.run([sys.executable, "peers.py", "--shapes", "8x3x224"], cwd=BENCHMARKS, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "expected NxCxHxW" in done.stderr, done.stderr[-3000:]

"""benchmarks/peers.py (segkit vs segmentation_models.pytorch) runs end to end at toy size; skipped without smp."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("segmentation_models_pytorch")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_peers_smoke_prints_every_pair():
    done = subprocess.run([sys.executable, "peers.py", "--smoke"], cwd=BENCHMARKS, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("UNet-R18", "UNet-R34", "DeepLabV3+-R50"):
        assert f"| {name} | 2x3x64x64 | " in done.stdout, done.stdout[-3000:]


def test_peers_channels_last_times_both_models_in_nhwc(monkeypatch):
    """--channels-last reaches both models and the batch: every timed forward sees NHWC input and weights."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from peers import NUM_CLASSES, compare

    seen = []

    class Probe(torch.nn.Conv2d):
        def forward(self, x):
            seen.append(x.is_contiguous(memory_format=torch.channels_last)
                        and self.weight.is_contiguous(memory_format=torch.channels_last))
            return super().forward(x)

    def build():
        return Probe(3, NUM_CLASSES, 3, padding=1)

    row = compare("probe", (build, build), (2, 3, 8, 8), repeats=2, channels_last=True)
    timed = seen[-2 * 3:]  # the last forwards: one warm-up and two rounds per model (FLOP counting came first)
    assert row["segkit_s"] > 0 and len(seen) >= 2 * 3 and all(timed)
    seen.clear()
    compare("probe", (build, build), (2, 3, 8, 8), repeats=1)
    assert seen and not any(seen)


def test_peers_rejects_a_bad_shape():
    done = subprocess.run([sys.executable, "peers.py", "--shapes", "8x3x224"], cwd=BENCHMARKS, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "expected NxCxHxW" in done.stderr, done.stderr[-3000:]

"""Every benchmark script runs end to end at toy sizes and prints its table (timings themselves live in
BENCHMARKS.md, never in tests)."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

RUNS = {
    "train_step.py": (["--size", "32", "--batch", "2", "--repeats", "1"], "| DeepLabV3-R50 os8 +aux |"),
    "lightning_overhead.py": (["--steps", "7", "--repeats", "1"], "Lightning overhead:"),
    "evaluation.py": (["--size", "64", "--window", "32", "--images", "1"], "| slide 32, stride 16 |"),
    "data_pipeline.py": (["--images", "16", "--crop", "64", "--workers", "0", "--model-batches", "1"],
                         "model consumption"),
    "streaming.py": (["--images", "32", "--memory-sizes", "32", "--batch", "8", "--batches", "2", "--repeats",
                      "1", "--workers", "0", "--no-save"], "| images | conversion s |"),
    "fast_path.py": (["--device", "cpu", "--size", "32", "--batch", "2", "--steps", "6", "--models", "UNet-R34"],
                     "| UNet-R34 (fp32 reference) |"),
}


@pytest.mark.parametrize("script", sorted(RUNS))
def test_benchmark_runs_at_toy_size(script):
    args, expected = RUNS[script]
    done = subprocess.run([sys.executable, script, *args], cwd=BENCHMARKS, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert expected in done.stdout, done.stdout[-3000:]

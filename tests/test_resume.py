"""A run killed with SIGKILL and resumed with ckpt_path=last ends exactly like an uninterrupted run (CPU)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_DATA

ROOT = Path(__file__).resolve().parents[1]


def _train(tmp_path, run_dir, data_dir, *extra):
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), *TINY_DATA, "data.source.num_train=32",
           "trainer.max_epochs=3", "logger=csv", "allowed_targets=[resume_helpers]", f"hydra.run.dir={run_dir}",
           f"paths.data_dir={data_dir}", "++model.encoder_kwargs={base_channels:4,depth:3}",
           "+callbacks.losses._target_=resume_helpers.LossRecorder", f"+callbacks.losses.path={run_dir}.losses",
           "data.crop_size=32", *extra]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def _losses(path):
    out = {}
    for line in Path(path).read_text().splitlines():
        step, loss = json.loads(line)
        out.setdefault(step, []).append(loss)
    return out


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, shared_data_dir):
    a, b = tmp_path / "a", tmp_path / "b"
    ref = _train(tmp_path, a, shared_data_dir)
    assert ref.returncode == 0, ref.stderr[-2000:]
    # 32 images / batch 8 = 4 steps per epoch; die in the middle of the second epoch
    killed = _train(tmp_path, b, shared_data_dir, "+callbacks.kill._target_=resume_helpers.KillAtStep",
                    "+callbacks.kill.step=6")
    assert killed.returncode == -signal.SIGKILL
    assert (b / "checkpoints" / "last.ckpt").is_file()
    resumed = _train(tmp_path, b, shared_data_dir, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    ref_losses, run_losses = _losses(f"{a}.losses"), _losses(f"{b}.losses")
    assert sorted(ref_losses) == list(range(1, 13))
    for step, losses in run_losses.items():  # steps 5-6 ran twice (before the kill and after the resume)
        assert all(loss == ref_losses[step][0] for loss in losses), step
    assert sorted(run_losses) == sorted(ref_losses)
    final_a = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True)
    final_b = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)
    assert final_a["global_step"] == final_b["global_step"] == 12
    for key, value in final_a["state_dict"].items():
        assert torch.equal(value, final_b["state_dict"][key]), key

"""A run stopped mid-epoch and resumed ends exactly like an uninterrupted run (CPU, fresh processes):
SIGKILL (a lost machine: resume from the last epoch's checkpoint with ckpt_path=last), SIGTERM and SIGUSR1 (a
preemption notice: the run writes last.ckpt at that step, exits 143, and ckpt_path=auto trains on the rest of the
epoch only, each step once)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_DATA
from resume_helpers import clean_env, read_losses

ROOT = Path(__file__).resolve().parents[1]


def _train(tmp_path, run_dir, data_dir, *extra):
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), *TINY_DATA, "data.source.num_train=32",
           "trainer.max_epochs=3", "logger=csv", "allowed_targets=[resume_helpers]", f"hydra.run.dir={run_dir}",
           f"paths.data_dir={data_dir}", "++model.encoder_kwargs={base_channels:4,depth:3}",
           "+callbacks.losses._target_=resume_helpers.LossRecorder", f"+callbacks.losses.path={run_dir}.losses",
           "data.crop_size=32", *extra]
    env = clean_env(PYTHONPATH=str(Path(__file__).parent), OMP_NUM_THREADS="1")
    # a session of its own: a signal to the process group reaches the run and its DataLoader workers, not pytest
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                          start_new_session=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shared_data_dir):
    """The uninterrupted run: 32 images / batch 8 = 4 steps per epoch, 3 epochs."""
    tmp = tmp_path_factory.mktemp("resume-reference")
    ref = _train(tmp, tmp / "a", shared_data_dir)
    assert ref.returncode == 0, ref.stderr[-2000:]
    losses = read_losses(f"{tmp / 'a'}.losses")
    assert sorted(losses) == list(range(1, 13))
    return losses, torch.load(tmp / "a" / "checkpoints" / "last.ckpt", weights_only=True)


def _assert_same_run(reference, run_dir, unrecorded=()):
    ref_losses, ref_final = reference
    run_losses = read_losses(f"{run_dir}.losses")
    assert sorted(run_losses) == sorted(set(ref_losses) - set(unrecorded))
    for step, losses in run_losses.items():
        assert all(loss == ref_losses[step][0] for loss in losses), (step, losses, ref_losses[step])
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ref_final["global_step"] == final["global_step"] == 12
    for key, value in ref_final["state_dict"].items():
        assert torch.equal(value, final["state_dict"][key]), key
    return run_losses


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, shared_data_dir, reference):
    b = tmp_path / "b"
    # die in the middle of the second epoch
    # one DataLoader worker: the resumed epoch's loader must be made for epoch 1 (Lightning's first one is epoch 0's)
    killed = _train(tmp_path, b, shared_data_dir, "+callbacks.kill._target_=resume_helpers.KillAtStep",
                    "+callbacks.kill.step=6", "data.num_workers=1")
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4  # epoch 0's
    resumed = _train(tmp_path, b, shared_data_dir, "ckpt_path=last", "data.num_workers=1")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_run(reference, b)  # steps 5-6 ran twice (before the kill and after the resume), the same both times


@pytest.mark.slow
@pytest.mark.parametrize("sig,group,workers", [
    ("SIGTERM", True, 1),  # to the process group, DataLoader worker included (torchrun, Kubernetes, SLURM)
    ("SIGUSR1", False, 0),  # SLURM's advance notice, to the training process
])
def test_a_preempted_run_checkpoints_the_step_and_resumes_mid_epoch(tmp_path, shared_data_dir, reference, sig, group,
                                                                    workers):
    b = tmp_path / "b"
    stopped = _train(tmp_path, b, shared_data_dir, "+callbacks.kill._target_=resume_helpers.KillAtStep",
                     "+callbacks.kill.step=6", f"+callbacks.kill.signal={sig}", f"+callbacks.kill.group={group}",
                     f"data.num_workers={workers}")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert f"{sig}: stopped at epoch 1, step 6" in stopped.stderr + stopped.stdout
    assert not (b / "metrics.json").exists()  # not mistaken for a finished run
    assert torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6

    resumed = _train(tmp_path, b, shared_data_dir, "ckpt_path=auto", f"data.num_workers={workers}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from a checkpoint that ended before the epoch ended" not in resumed.stderr
    # step 6 ran before the stop, but the run stopped in its on_train_batch_end before the loss recorder (a callback
    # after Preemption) saw it; the final weights show it was done once and right
    run_losses = _assert_same_run(reference, b, unrecorded=[6])
    # steps 7 and 8 are the rest of epoch 1: each ran once, on the batches the uninterrupted run had there
    assert all(len(losses) == 1 for losses in run_losses.values()), run_losses
    assert json.loads((b / "metrics.json").read_text())["mIoU"] >= 0

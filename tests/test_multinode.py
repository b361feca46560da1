"""Several machines, tried on one: torchrun with a c10d rendezvous on localhost and gloo.

- Two "nodes" of one process each (two torchrun agents, ``trainer.num_nodes=2 trainer.devices=1``) train exactly
  what one node with two processes does (same weights, same validation mIoU), and that mIoU is a single process's
  evaluation of the checkpoint.
- SIGTERM to one rank only (rank 1): both ranks stop after the same step, write it to last.ckpt and exit 143; the
  same command again (``ckpt_path=auto``) trains the rest of that epoch and ends with the uninterrupted weights.
- A rank SIGKILLed mid-epoch under ``--max-restarts=1``: torchrun restarts both ranks with the same command,
  ``ckpt_path=auto`` resumes from the run's last.ckpt, and the run finishes with the weights of an uninterrupted run.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resume_helpers import clean_env

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3  # 16 images / (batch 4 x 2 ranks) = 2 steps per epoch


def _torchrun():
    found = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert found, "torchrun not found next to the Python interpreter"
    return found


def _env():
    # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, as the README's torchrun recipe: with torchrun's rendezvous store shared
    # with the workers' process group, restarted workers can read the previous attempt's addresses (pytorch#135712);
    # without it 2 of 3 restarts failed in gloo's connectFullMesh here (torch 2.14.1)
    return clean_env(PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), OMP_NUM_THREADS="1",
                     HYDRA_FULL_ERROR="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(run_dir, data_dir, *extra):
    return [str(ROOT / "scripts" / "train.py"), "trainer.accelerator=cpu", "++trainer.strategy=ddp",
            f"trainer.max_epochs={EPOCHS}", "++trainer.enable_progress_bar=false", "~callbacks.progress_bar",
            "logger=csv", "data.source.num_train=16", "data.source.num_val=7", "data.source.num_test=0",
            "data.source.size=32", "data.crop_size=32", "data.batch_size=4", "data.eval_batch_size=2",
            "data.num_workers=0", "++model.encoder_kwargs={base_channels:4,depth:3}", f"paths.data_dir={data_dir}",
            f"hydra.run.dir={run_dir}", "ckpt_path=auto", "allowed_targets=[resume_helpers]", *extra]


def _check(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def _state(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def _assert_same_weights(a, b):
    assert a["global_step"] == b["global_step"] == 2 * EPOCHS
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


@pytest.fixture(scope="module")
def one_node(tmp_path_factory, shared_data_dir):
    """The reference: one node, two processes, never interrupted."""
    tmp = tmp_path_factory.mktemp("one-node")
    run = tmp / "run"
    _check(subprocess.run([_torchrun(), "--standalone", "--nproc-per-node=2",
                           *_train_args(run, shared_data_dir, "trainer.devices=2")],
                          cwd=tmp, capture_output=True, text=True, timeout=900, env=_env()))
    return json.loads((run / "metrics.json").read_text()), _state(run)


@pytest.mark.slow
def test_two_nodes_train_what_one_node_does(tmp_path, shared_data_dir, one_node):
    run, port = tmp_path / "run", _free_port()
    logs = [tmp_path / f"node{node}.log" for node in (0, 1)]
    agents = [subprocess.Popen(
        [_torchrun(), "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
         f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=segkit-two-nodes", f"--rdzv-conf=is_host={int(node == 0)}",
         *_train_args(run, shared_data_dir, "trainer.devices=1", "+trainer.num_nodes=2")],
        cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True, env=_env())
        for node, log in zip((0, 1), logs)]
    for agent, log in zip(agents, logs):
        agent.wait(timeout=900)
        assert agent.returncode == 0, log.read_text()[-6000:]
    metrics, reference = one_node
    two_nodes = json.loads((run / "metrics.json").read_text())
    _assert_same_weights(reference, _state(run))
    assert two_nodes["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-6)
    assert two_nodes["num_images"] == 7

    single = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), f"ckpt_path={two_nodes['checkpoint']}",
                             "device=cpu", f"output_dir={tmp_path / 'eval'}", f"paths.data_dir={shared_data_dir}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env())
    _check(single)
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["num_images"] == 7
    assert two_nodes["mIoU"] == pytest.approx(evaluated["mIoU"], abs=1e-6)


@pytest.mark.slow
def test_a_killed_rank_is_restarted_and_the_run_finishes_as_if_uninterrupted(tmp_path, shared_data_dir, one_node):
    run = tmp_path / "run"
    proc = subprocess.run(
        [_torchrun(), "--standalone", "--nproc-per-node=2", "--max-restarts=1",
         *_train_args(run, shared_data_dir, "trainer.devices=2", "+callbacks.kill._target_=resume_helpers.KillAtStep",
                      "+callbacks.kill.step=3", "+callbacks.kill.rank=1", "+callbacks.kill.first_attempt_only=true")],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, env=_env())
    _check(proc)
    log = proc.stdout + proc.stderr
    assert "ckpt_path=auto: resuming from" in log, log[-4000:]  # the restarted ranks found the run's checkpoint
    metrics, reference = one_node
    _assert_same_weights(reference, _state(run))
    assert json.loads((run / "metrics.json").read_text())["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-6)


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, shared_data_dir, one_node):
    run = tmp_path / "run"
    command = [_torchrun(), "--standalone", "--nproc-per-node=2",
               *_train_args(run, shared_data_dir, "trainer.devices=2")]
    stop = ["+callbacks.kill._target_=resume_helpers.KillAtStep", "+callbacks.kill.step=3", "+callbacks.kill.rank=1",
            "+callbacks.kill.signal=SIGTERM"]
    stopped = subprocess.run([*command, *stop], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                             env=_env())
    assert stopped.returncode != 0
    log = stopped.stdout + stopped.stderr
    assert "stopped at epoch 1, step 3" in log, log[-4000:]  # the middle of epoch 1 (2 steps per epoch)
    assert "exitcode  : 143" in log or "exit code 143" in log or "143" in log
    assert _state(run)["global_step"] == 3
    assert not (run / "metrics.json").exists()

    _check(subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=_env()))
    metrics, reference = one_node
    _assert_same_weights(reference, _state(run))
    assert json.loads((run / "metrics.json").read_text())["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-6)

"""The launch recipes of docs/launch/, run as written where this machine can: the SLURM batch script under a
stand-in ``srun``/``scontrol`` (SLURM's environment variables for one task, as srun sets them; Lightning's SLURM
environment is the real one), and the Kubeflow PyTorchJob's training command composed by Hydra (no cluster here:
its runtime is not exercised)."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY_DATA, compose_cfg
from resume_helpers import clean_env

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "docs" / "launch"


def _fake_slurm(bin_dir: Path, record: Path) -> None:
    """``srun``: one task on this node (the variables srun exports); ``scontrol``: records its arguments."""
    bin_dir.mkdir()
    scripts = {
        "srun": "#!/bin/bash\nexport SLURM_NTASKS=1 SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NODEID=0 "
                "SLURM_NODELIST=localhost SLURM_STEP_ID=0\nexec \"$@\"\n",
        "scontrol": f"#!/bin/bash\necho \"$@\" >> {record}\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)


def _cpu_overrides(data_dir):
    # the script's trainer=ddp is the GPU preset; this machine has CPUs only
    return ["trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.sync_batchnorm=false",
            "trainer.max_epochs=3", "data.num_workers=0", "data.pin_memory=false", "data.persistent_workers=false",
            *TINY_DATA, "data.crop_size=32", "++model.encoder_kwargs={base_channels:4,depth:3}", "logger=csv",
            "++trainer.enable_progress_bar=false", "~callbacks.progress_bar", f"paths.data_dir={data_dir}", "allowed_targets=[resume_helpers]"]


@pytest.mark.slow
def test_the_slurm_script_checkpoints_requeues_and_resumes(tmp_path, shared_data_dir):
    record = tmp_path / "scontrol.log"
    _fake_slurm(tmp_path / "bin", record)
    env = clean_env(PATH=os.pathsep.join([str(tmp_path / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]]),
                    PYTHONPATH=str(ROOT / "tests"), OMP_NUM_THREADS="1", SLURM_JOB_ID="4242", SLURM_JOB_NAME="segkit",
                    SLURM_NNODES="1", SLURM_NTASKS_PER_NODE="1", SLURM_SUBMIT_DIR=str(tmp_path))
    script = ["bash", str(LAUNCH / "slurm.sbatch"), *_cpu_overrides(shared_data_dir)]
    # 90 s before the time limit SLURM sends SIGUSR1: here after step 6, mid-way through the second epoch
    first = subprocess.run([*script, "+callbacks.kill._target_=resume_helpers.KillAtStep", "+callbacks.kill.step=6",
                            "+callbacks.kill.signal=SIGUSR1"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    run = tmp_path / "outputs" / "slurm-4242"
    assert first.returncode == 143, first.stdout[-2000:] + first.stderr[-4000:]
    assert record.read_text().split() == ["requeue", "4242"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert not (run / "metrics.json").exists()

    requeued = subprocess.run(script, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert requeued.returncode == 0, requeued.stdout[-2000:] + requeued.stderr[-4000:]
    assert f"ckpt_path=auto: resuming from {run / 'checkpoints' / 'last.ckpt'}" in requeued.stderr + requeued.stdout
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12
    assert json.loads((run / "metrics.json").read_text())["num_images"] == 8
    assert record.read_text().split() == ["requeue", "4242"]  # a finished job is not requeued


def test_the_pytorchjob_command_composes_into_a_two_node_ddp_config(tmp_path):
    job = yaml.safe_load((LAUNCH / "pytorchjob.yaml").read_text())
    assert job["kind"] == "PyTorchJob"
    specs = job["spec"]["pytorchReplicaSpecs"]
    nodes = sum(spec["replicas"] for spec in specs.values())
    for spec in specs.values():
        container = spec["template"]["spec"]["containers"][0]
        command, args = container["command"], container["args"]
        assert command[0] == "torchrun" and (ROOT / command[1]).is_file()
        overrides = [a for a in args if not a.startswith("hydra.")]
        cfg = compose_cfg("train", overrides, tmp_path)
        assert cfg.trainer.num_nodes == nodes
        assert cfg.trainer.devices == int(job["spec"]["nprocPerNode"]) == container["resources"]["limits"]["nvidia.com/gpu"]
        assert cfg.trainer.strategy == "ddp" and cfg.ckpt_path == "auto"
        assert any(a.startswith("hydra.run.dir=/runs/") for a in args)  # on the shared volume: restarts resume


def test_the_slurm_script_composes(tmp_path):
    """The overrides the batch script passes, with srun's values, compose into a multi-node DDP config."""
    text = (LAUNCH / "slurm.sbatch").read_text()
    line = " ".join(text.split("srun segkit train", 1)[1].replace("\\\n", " ").split("\n")[0].split())
    values = {"${SLURM_NTASKS_PER_NODE}": "4", "${SLURM_NNODES}": "2", "${SLURM_JOB_ID}": "7"}
    overrides = []
    for token in line.split():
        token = token.replace('"', "")
        for key, value in values.items():
            token = token.replace(key, value)
        if token != "$@" and not token.startswith("hydra."):
            overrides.append(token)
    cfg = compose_cfg("train", overrides, tmp_path)
    assert (cfg.trainer.devices, cfg.trainer.num_nodes, cfg.trainer.strategy, cfg.ckpt_path) == (4, 2, "ddp", "auto")
    assert "#SBATCH --signal=SIGUSR1@" in text and "#SBATCH --requeue" in text

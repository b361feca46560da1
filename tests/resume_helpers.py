"""Test-only callbacks, loaded through Hydra with allowed_targets=[resume_helpers]."""
import json
import os
import signal

import lightning as L


def clean_env(**extra):
    """This environment without a SLURM job's variables (tests run under SLURM must not requeue the CI job, nor
    make Lightning pick its SLURM environment), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(extra)
    return env


class KillAtStep(L.Callback):
    """Send ``signal`` to this process once: SIGKILL (the default: no cleanup, like a lost machine) right after
    optimisation step ``step``; a catchable signal while step ``step`` computes. ``rank``: only that global rank; ``first_attempt_only``: not in a process torchrun restarted
    (``TORCHELASTIC_RESTART_COUNT`` > 0); ``group``: to the whole process group (DataLoader workers included), as
    torchrun, Kubernetes and SLURM do (start the run in a session of its own)."""

    def __init__(self, step: int, signal: str = "SIGKILL", rank: int = -1, first_attempt_only: bool = False,
                 group: bool = False) -> None:
        self.step, self.signal, self.rank, self.first_attempt_only = step, signal, rank, first_attempt_only
        self.group, self.sent = group, False

    def _fire(self, trainer):
        if self.sent or (self.rank >= 0 and trainer.global_rank != self.rank):
            return
        if self.first_attempt_only and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
            return
        self.sent = True
        if self.group:
            os.killpg(os.getpgrp(), getattr(signal, self.signal))
        else:
            os.kill(os.getpid(), getattr(signal, self.signal))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # a catchable signal arrives while step ``step`` computes (the run may finish that step)
        if self.signal != "SIGKILL" and trainer.global_step >= self.step - 1:
            self._fire(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.signal == "SIGKILL" and trainer.global_step >= self.step:
            self._fire(trainer)


class LossRecorder(L.Callback):
    """Append ``[global_step, loss]`` per step to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with open(self.path, "a") as f:
            f.write(json.dumps([trainer.global_step, float(outputs["loss"])]) + "\n")


def read_losses(path):
    """``{step: [loss, ...]}`` from a :class:`LossRecorder` file (a step run twice, before a kill and after the resume,
    has two entries)."""
    out = {}
    with open(path) as f:
        for line in f.read().splitlines():
            step, loss = json.loads(line)
            out.setdefault(step, []).append(loss)
    return out


class SampleRecorder(L.Callback):
    """Append ``[stage, epoch, rank, name]`` per sample seen to a JSON-lines file (one file per rank)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _record(self, trainer, stage, batch):
        with open(f"{self.path}.{trainer.global_rank}", "a") as f:
            for name in batch["name"]:
                f.write(json.dumps([stage, trainer.current_epoch, trainer.global_rank, name]) + "\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._record(trainer, "train", batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.state.fn == "fit":
            self._record(trainer, "val", batch)

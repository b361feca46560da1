"""Test-only callbacks, loaded through Hydra with allowed_targets=[resume_helpers]."""
import json
import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILL this process right after optimisation step ``step`` (no cleanup, like a lost machine)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class LossRecorder(L.Callback):
    """Append ``[global_step, loss]`` per step to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with open(self.path, "a") as f:
            f.write(json.dumps([trainer.global_step, float(outputs["loss"])]) + "\n")


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

"""Test-only callback for tests/test_torchrun.py, loaded through Hydra with
allowed_targets=[ddp_helpers.RecordSamples] (tests/ on PYTHONPATH)."""
import json
import os

import lightning as L


class RecordSamples(L.Callback):
    """Append ``{stage, epoch, rank, names}`` for every training and validation batch to ``<dir>/rank<R>.jsonl``."""

    def __init__(self, dir: str) -> None:
        self.dir = dir

    def _write(self, trainer, stage: str, batch) -> None:
        os.makedirs(self.dir, exist_ok=True)
        record = {"stage": stage, "epoch": trainer.current_epoch, "rank": trainer.global_rank,
                  "names": list(batch["name"])}
        with open(os.path.join(self.dir, f"rank{trainer.global_rank}.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._write(trainer, "train", batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        # "fit": the validation inside fit; "validate": trainer.validate on the best checkpoint afterwards
        self._write(trainer, f"val-{trainer.state.fn.value}", batch)

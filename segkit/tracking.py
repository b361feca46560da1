"""Experiment tracking on top of Lightning's MLflow logger: the run's config, confusion matrices and best
checkpoint go to the MLflow run next to the metrics Lightning already logs there."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import lightning as L
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only


def _mlflow_loggers(trainer: L.Trainer) -> List[MLFlowLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)]


class MLflowTracking(L.Callback):
    """With an :class:`~lightning.pytorch.loggers.MLFlowLogger` among the trainer's loggers (``logger=mlflow``), log

    - the resolved run config (``pl_module.run_config``) as params, flattened with ``/`` (``task/loss/_target_``);
    - the validation confusion matrix as ``confusion_matrix/epoch_NNN.png`` after each validation epoch of fit
      (``confusion_matrix/validate.png`` for a ``validate`` run such as the final pass over the best checkpoint);
    - the best checkpoint (the first monitored ``ModelCheckpoint``) under ``checkpoints/`` at the end of fit.

    Without an MLflow logger it does nothing, so it is safe to keep in a callbacks list. Rank zero only.
    """

    def __init__(self, log_config: bool = True, log_confusion: bool = True, log_checkpoint: bool = True) -> None:
        self.log_config, self.log_confusion, self.log_checkpoint = log_config, log_confusion, log_checkpoint

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        config = getattr(pl_module, "run_config", None)
        if not self.log_config or not config:
            return
        for logger in _mlflow_loggers(trainer):
            existing = logger.experiment.get_run(logger.run_id).data.params
            if existing:  # a resumed run (run_id=...) already has them; MLflow params cannot be overwritten
                continue
            logger.log_hyperparams(config)

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        confusion = getattr(pl_module, "last_confusion", None)
        loggers = _mlflow_loggers(trainer)
        if not self.log_confusion or trainer.sanity_checking or confusion is None or not loggers:
            return
        from segkit.analysis.plots import confusion_matrix_image

        names = list(getattr(pl_module, "class_names", None) or [str(i) for i in range(len(confusion))])
        image = confusion_matrix_image(confusion.numpy(), names)
        stage = str(trainer.state.fn.value)
        name = f"epoch_{trainer.current_epoch:03d}.png" if stage == "fit" else f"{stage}.png"
        for logger in loggers:
            logger.experiment.log_image(logger.run_id, image, artifact_file=f"confusion_matrix/{name}")

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        best = self.best_checkpoint(trainer)
        if not self.log_checkpoint or not _mlflow_loggers(trainer):
            return
        if best is None:
            rank_zero_info("MLflowTracking: no monitored checkpoint was saved, so none is logged to MLflow")
            return
        for logger in _mlflow_loggers(trainer):
            logger.experiment.log_artifact(logger.run_id, str(best), artifact_path="checkpoints")

    @staticmethod
    def best_checkpoint(trainer: L.Trainer) -> Optional[Path]:
        """The best checkpoint of the first monitored ModelCheckpoint, if it was written."""
        for callback in trainer.checkpoint_callbacks:
            path = getattr(callback, "best_model_path", "")
            if getattr(callback, "monitor", None) and path and Path(path).is_file():
                return Path(path)
        return None

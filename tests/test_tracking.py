"""logger=mlflow end to end: a tiny run, then its params, metrics and artifacts read back with MlflowClient."""
import hashlib

import pytest
from PIL import Image

from conftest import TINY_DATA, compose_cfg

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install -e '.[mlflow]')")

SMALL = ["model=unet_small", "++model.encoder_kwargs={base_channels:4,depth:3}", "~callbacks.progress_bar"]


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_mlflow_run_has_config_metrics_confusion_and_best_checkpoint(tmp_path):
    from mlflow.tracking import MlflowClient

    from segkit.pipeline import train

    cfg = compose_cfg("train", [*SMALL, *TINY_DATA, "trainer.max_epochs=2", "logger=mlflow"], tmp_path)
    metrics = train(cfg)

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("segkit")
    (run,) = client.search_runs([experiment.experiment_id])
    params = run.data.params
    assert params["model/_target_"] == cfg.model._target_
    assert params["task/loss/losses/ce/ignore_index"] == str(cfg.data.ignore_index)  # interpolations resolved
    assert params["trainer/max_epochs"] == "2"
    assert run.data.metrics["val/mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-6)  # the final validate pass
    assert len(client.get_metric_history(run.info.run_id, "val/mIoU")) == 3  # 2 epochs + the best checkpoint

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "confusion_matrix")}
    assert artifacts == {"confusion_matrix/epoch_000.png", "confusion_matrix/epoch_001.png",
                         "confusion_matrix/validate.png"}
    local = client.download_artifacts(run.info.run_id, "", str(tmp_path / "download"))
    assert Image.open(f"{local}/confusion_matrix/validate.png").size[0] > 100
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert _sha(f"{local}/checkpoints/best.ckpt") == _sha(best)
    assert str(tmp_path / "mlruns" / "artifacts") in run.info.artifact_uri


def test_mlflow_can_be_combined_with_csv(tmp_path):
    cfg = compose_cfg("train", ["logger=[csv,mlflow]"], tmp_path)
    assert set(cfg.logger) == {"csv", "mlflow"}
    assert cfg.callbacks.mlflow_tracking._target_ == "segkit.tracking.MLflowTracking"
    from segkit.config import check_targets
    check_targets(cfg)


def test_tracking_callback_is_inert_without_mlflow_logger(tmp_path):
    import lightning as L

    from segkit.tracking import MLflowTracking

    trainer = L.Trainer(logger=False, default_root_dir=tmp_path)
    MLflowTracking().on_fit_end(trainer, None)  # no logger, no checkpoint: nothing to do, no error


def test_wandb_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install -e '.[wandb]')")
    from segkit.pipeline import train

    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # wandb's own files, out of ~
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    cfg = compose_cfg("train", [*SMALL, *TINY_DATA, "trainer.max_epochs=1", "logger=wandb"], tmp_path)
    train(cfg)
    (run_dir,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    assert list(run_dir.glob("*.wandb")), "no offline run file written"

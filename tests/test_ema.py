"""callbacks=[default,ema]: validation during fit and the saved checkpoints hold the exponential moving average of
the weights, computed here by hand from the weights recorded after every optimizer step."""
import lightning as L
import pytest
import torch

from conftest import TINY_DATA, compose_cfg

SMALL = ["model=unet_small", "++model.encoder_kwargs={base_channels:4,depth:3}", "logger=csv",
         "~callbacks.progress_bar"]


class WeightRecorder(L.Callback):
    """Floating-point weights after each optimizer step, and the weights validation runs with during fit."""
    train: list = []
    val: list = []

    @staticmethod
    def _weights(pl_module):
        return {k: v.detach().clone() for k, v in pl_module.state_dict().items() if v.is_floating_point()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        WeightRecorder.train.append(self._weights(pl_module))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and not trainer.sanity_checking:  # fit's validations, then the final pass on best.ckpt
            WeightRecorder.val.append(self._weights(pl_module))


def _ema(steps, decay):
    avg = dict(steps[0])  # AveragedModel copies the weights at its first update
    for w in steps[1:]:
        avg = {k: decay * avg[k] + (1 - decay) * w[k] for k in avg}
    return avg


def _assert_same(a, b, what):
    assert a.keys() <= b.keys(), what
    for k in a:
        torch.testing.assert_close(b[k].float(), a[k], rtol=1e-5, atol=1e-6, msg=f"{what}: {k}")


def test_ema_weights_in_validation_and_checkpoints(tmp_path, monkeypatch):
    from segkit.pipeline import train

    monkeypatch.setattr(WeightRecorder, "train", [])
    monkeypatch.setattr(WeightRecorder, "val", [])
    decay = 0.5
    cfg = compose_cfg("train", [*SMALL, *TINY_DATA, "trainer.max_epochs=2", "callbacks=[default,ema]",
                                f"callbacks.ema.decay={decay}", "+callbacks.recorder._target_=test_ema.WeightRecorder",
                                "allowed_targets=[test_ema]"], tmp_path)
    train(cfg)
    steps, val = WeightRecorder.train, WeightRecorder.val
    assert len(steps) == 8 and len(val) == 3  # 32 images / batch 8 = 4 steps per epoch
    raw_changed = any(not torch.equal(steps[-1][k], _ema(steps, decay)[k]) for k in steps[-1])
    assert raw_changed, "raw and averaged weights coincide: the test could not tell them apart"
    for epoch in range(2):
        _assert_same(_ema(steps[: 4 * (epoch + 1)], decay), val[epoch], f"validation weights, epoch {epoch}")
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    _assert_same(_ema(steps, decay), last["state_dict"], "last.ckpt state_dict")
    _assert_same(steps[-1], last["current_model_state"], "last.ckpt current_model_state (raw weights)")
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    best_ema = _ema(steps[: 4 * (best["epoch"] + 1)], decay)
    _assert_same(best_ema, best["state_dict"], "best.ckpt state_dict")  # what evaluate/predict/export load
    _assert_same(best_ema, val[2], "weights of train()'s final validation of best.ckpt")


def test_ema_config_builds_lightning_callback(tmp_path):
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import WeightAveraging

    from segkit.config import check_targets

    cfg = compose_cfg("train", ["callbacks=[default,ema]"], tmp_path)
    check_targets(cfg)
    assert isinstance(instantiate(cfg.callbacks.ema), WeightAveraging)
    assert "model_checkpoint" in cfg.callbacks  # the defaults stay

"""Callbacks: per-epoch summary with throughput, device-aware speed settings."""
from __future__ import annotations

import time
from typing import Any, Union

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info


class EpochSummary(L.Callback):
    """Shows training throughput (images/s) on the progress bar and prints one line per epoch:
    ``epoch 3 | train/loss 0.214 | val/mIoU 0.8123 | 12.4 s | 412 img/s``."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._images = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        self._images += len(batch["image"]) * trainer.world_size
        elapsed = time.perf_counter() - self._start
        if elapsed > 0:
            pl_module.log("train/img_per_s", self._images / elapsed, prog_bar=True, on_step=True, on_epoch=False,
                          rank_zero_only=True, batch_size=len(batch["image"]))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = time.perf_counter() - self._start
        metrics = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch}"]
        for key in ("train/loss_epoch", "val/loss", "val/mIoU", "val/pixel_accuracy"):
            if key in metrics:
                parts.append(f"{key.replace('_epoch', '')} {float(metrics[key]):.4f}")
        parts += [f"{elapsed:.1f} s", f"{self._images / max(elapsed, 1e-9):.0f} img/s"]
        rank_zero_info(" | ".join(parts))


class DeviceSpeedups(L.Callback):
    """Speed settings that help on CUDA and hurt on CPU (channels_last and bf16 measured ~2x slower there).

    ``channels_last="auto"`` turns it on only on CUDA; ``compile=True`` compiles the network in place with
    ``torch.compile`` (state-dict keys unchanged), and a string picks the ``torch.compile`` backend (``"inductor"``,
    or ``"aot_eager"``/``"eager"`` to debug). On CUDA, cudnn.benchmark and TF32 matmuls are enabled.
    """

    def __init__(self, channels_last: Union[str, bool] = "auto", compile: Union[bool, str] = False) -> None:
        if channels_last not in ("auto", True, False):
            raise ValueError(f"trainer.channels_last must be auto, true or false, got {channels_last!r}")
        self.channels_last, self.compile = channels_last, compile

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.setup_module(pl_module, trainer.strategy.root_device)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.training:  # validate()/test() without fit
            self.setup_module(pl_module, trainer.strategy.root_device)

    def setup_module(self, pl_module: L.LightningModule, device: torch.device, autotune: bool = True) -> None:
        """Apply the settings for ``device``; ``autotune=False`` leaves cudnn.benchmark alone (inference on images
        of many sizes would re-tune for every new size)."""
        cuda = device.type == "cuda"
        if cuda:
            if autotune:
                torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        use_cl = cuda if self.channels_last == "auto" else bool(self.channels_last)
        if use_cl:
            pl_module.to(memory_format=torch.channels_last)
        pl_module.channels_last = use_cl
        if self.compile and not getattr(pl_module.net, "_segkit_compiled", False):
            pl_module.net.compile(**({"backend": self.compile} if isinstance(self.compile, str) else {}))
            pl_module.net._segkit_compiled = True

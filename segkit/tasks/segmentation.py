"""The LightningModule: loss, metrics, optimisation. The network and the data come from outside."""
from __future__ import annotations

import random
import warnings
from typing import Any, Callable, Dict, Optional, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from segkit.losses import CrossEntropyLoss
from segkit.metrics import segmentation_metrics, summarize

# The override below is deliberate (see transfer_batch_to_device); Lightning notes it on every fit.
warnings.filterwarnings("ignore", message=r".*overridden `transfer_batch_to_device` in `LightningModule`.*")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SegmentationTask(L.LightningModule):
    """Trains any ``net`` mapping ``(N, C, H, W)`` float images to ``(N, K, H, W)`` logits.

    Batches arrive as uint8 and are normalised here, on the device (``mean``/``std`` in 0-1 units travel with the
    checkpoint). Nets with an auxiliary head (``forward_with_aux``) add ``aux_weight`` x its loss.
    ``optimizer`` and ``scheduler`` are factories (Hydra ``_partial_``); the scheduler gets ``total_steps``.
    ``nan_policy``: ``"raise"`` stops at the first non-finite loss, ``"skip"`` skips that step.
    """

    def __init__(self, net: nn.Module, num_classes: int, ignore_index: int = 255,
                 loss: Optional[nn.Module] = None, optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
                 scheduler: Optional[Callable[..., Any]] = None, aux_weight: float = 0.4,
                 class_names: Optional[Sequence[str]] = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, nan_policy: str = "raise",
                 run_config: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        if nan_policy not in ("raise", "skip"):
            raise ValueError(f"task.nan_policy must be 'raise' or 'skip', got {nan_policy!r}")
        self.net = net
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.loss = loss if loss is not None else CrossEntropyLoss(ignore_index)
        self.optimizer_factory = optimizer or (lambda params: torch.optim.AdamW(params, lr=1e-3))
        self.scheduler_factory = scheduler
        self.aux_weight = aux_weight
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        self.nan_policy = nan_policy
        self.run_config = run_config
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
        self.val_metrics = segmentation_metrics(self.num_classes, self.ignore_index)
        self.test_metrics = segmentation_metrics(self.num_classes, self.ignore_index)
        self.last_metrics: Dict[str, Any] = {}
        self.channels_last = False  # set by DeviceSpeedups on CUDA
        self._eval_images = 0

    # ---- forward -------------------------------------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (0-255) or float (0-255) images -> normalised float; channels beyond mean/std pass as x/255."""
        x = images.float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if x.shape[1] == self.mean.shape[1]:
            return (x - self.mean) / self.std
        return x / 255.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))

    def _forward_with_aux(self, images: torch.Tensor):
        x = self.normalize(images)
        if hasattr(self.net, "forward_with_aux"):
            return self.net.forward_with_aux(x)
        return self.net(x), None

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move only the tensors of a segkit batch (uint8 images stay uint8 until normalised on the device);
        Lightning's generic walk over every field costs ~14 ms per step on CPU."""
        if isinstance(batch, dict) and "image" in batch:
            return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                    for k, v in batch.items()}
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # ---- steps ---------------------------------------------------------------------------------------------
    @staticmethod
    def targets(batch: Dict[str, Any]) -> torch.Tensor:
        """The batch's masks as int64, widened here (on the device) from the uint8 the data loader ships."""
        return batch["mask"].long()

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> Optional[torch.Tensor]:
        logits, aux = self._forward_with_aux(batch["image"])
        target = self.targets(batch)
        loss = self.loss(logits, target)
        if aux is not None and self.aux_weight:
            loss = loss + self.aux_weight * self.loss(aux, target)
        if not torch.isfinite(loss):
            message = (f"non-finite training loss ({loss.item()}) at step {self.global_step}, batch {batch_idx} "
                       f"(images {list(batch['name'])[:4]}). Lower task.optimizer.lr, check the data, or set "
                       "task.nan_policy=skip to skip such steps.")
            if self.nan_policy == "raise":
                raise FloatingPointError(message)
            rank_zero_warn(f"skipping step: {message}")
            return None
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["image"]))
        return loss

    def _eval_step(self, batch: Dict[str, Any], metrics, stage: str) -> None:
        logits = self(batch["image"])
        target = self.targets(batch)
        loss = self.loss(logits, target)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(batch["image"]))
        metrics.update(logits.argmax(dim=1), target)
        self._eval_images += len(batch["image"])

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def _eval_epoch_end(self, metrics, stage: str) -> None:
        summary = summarize(metrics.compute(), self.class_names)
        metrics.reset()
        num_images = int(self.all_gather(torch.tensor(self._eval_images, device=self.device)).sum())
        self._eval_images = 0
        self.log(f"{stage}/mIoU", summary["mIoU"], prog_bar=True, sync_dist=False)
        self.log(f"{stage}/pixel_accuracy", summary["pixel_accuracy"], sync_dist=False)
        self.last_metrics = {**summary, "num_images": num_images, "split": stage}

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end(self.test_metrics, "test")

    # ---- optimisation --------------------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # Plain types only, so the checkpoint loads with torch.load(weights_only=True) and rebuilds the model.
        checkpoint["segkit"] = {"config": self.run_config, "class_names": list(self.class_names),
                                "num_classes": self.num_classes, "ignore_index": self.ignore_index,
                                "rng": rng_state()}

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        state = checkpoint.get("segkit", {}).get("rng")
        if state is not None:
            set_rng_state(state)


def rng_state() -> Dict[str, Any]:
    """Global RNG states as tensors, lists and numbers only (loadable with ``torch.load(weights_only=True)``)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                      int(np_state[3]), float(np_state[4])],
            "python": [py_state[0], list(py_state[1]), py_state[2]]}


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))

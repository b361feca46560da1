"""The LightningModule: loss, metrics, optimisation. The network and the data come from outside."""
from __future__ import annotations

import functools
import random
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from segkit.data.spec import DataSpec, as_spec
from segkit.losses import CrossEntropyLoss
from segkit.metrics import iou_per_class, segmentation_metrics, summarize

# The override below is deliberate (see transfer_batch_to_device); Lightning notes it on every fit.
warnings.filterwarnings("ignore", message=r".*overridden `transfer_batch_to_device` in `LightningModule`.*")


class SegmentationTask(L.LightningModule):
    """Trains any ``net`` mapping ``(N, C, H, W)`` float images to ``(N, K, H, W)`` logits.

    ``spec`` (:class:`~segkit.data.spec.DataSpec`, its dict, or just the number of classes) holds the classes,
    ``ignore_index``, class names, input channels and normalisation; it travels in every checkpoint. Batches arrive as
    uint8 (0-255) or float (0-1) images and are normalised here, on the device. Nets with an auxiliary head
    (``forward(x, return_aux=True)``) add ``aux_weight`` x its loss. ``optimizer`` and ``scheduler`` are factories
    (Hydra ``_partial_``; an optimizer's ``lr="auto"`` is
    :func:`learning_rate_for` the network); the scheduler gets ``total_steps``. ``nan_policy``: ``"raise"`` stops at the first
    non-finite loss, ``"skip"`` skips that step (single process only).

    ``inference`` (``mode`` whole/slide/tta and its options, see :func:`segkit.inference.infer`) is how validation,
    test and predict steps run the network: training validates with ``whole``; ``scripts/evaluate.py`` sets it from
    its config and runs the very same step through ``trainer.validate``.
    """

    def __init__(self, net: nn.Module, spec: Union[DataSpec, Dict[str, Any], int],
                 loss: Optional[nn.Module] = None, optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
                 scheduler: Optional[Callable[..., Any]] = None, aux_weight: float = 0.4, nan_policy: str = "raise",
                 inference: Optional[Dict[str, Any]] = None, run_config: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        if nan_policy not in ("raise", "skip"):
            raise ValueError(f"task.nan_policy must be 'raise' or 'skip', got {nan_policy!r}")
        self.spec = DataSpec(num_classes=spec) if isinstance(spec, int) else as_spec(spec)
        if hasattr(net, "num_classes") and hasattr(net, "in_channels"):
            self.spec.check_model(net.num_classes, net.in_channels)
        self.net = net
        self.num_classes, self.ignore_index = self.spec.num_classes, self.spec.ignore_index
        self.class_names = list(self.spec.class_names)
        self.loss = loss if loss is not None else CrossEntropyLoss(255 if self.ignore_index is None
                                                                   else self.ignore_index)
        _check_loss_ignore_index(self.loss, self.ignore_index)
        self.optimizer_factory = optimizer or (lambda params: torch.optim.AdamW(params, lr=1e-3))
        self._planned_lr: Optional[tuple] = None
        if isinstance(optimizer, functools.partial) and optimizer.keywords.get("lr") == "auto":
            self._planned_lr = learning_rate_for(net)  # task.optimizer.lr=auto: from the network's size
            self.optimizer_factory = functools.partial(optimizer, lr=self._planned_lr[0])
        self.scheduler_factory = scheduler
        self.aux_weight = aux_weight
        self.nan_policy = nan_policy
        self.inference: Dict[str, Any] = dict(inference or {"mode": "whole"})
        self.run_config = run_config
        # Normalisation follows the spec (it is not part of the state dict): 0-1 units for float images, and the
        # same folded into 0-255 units for uint8 ones, so a uint8 batch costs one subtract and one divide.
        mean = torch.tensor(self.spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.spec.std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.register_buffer("mean_u8", mean * 255.0, persistent=False)
        self.register_buffer("std_u8", std * 255.0, persistent=False)
        self.val_metrics = segmentation_metrics(self.num_classes, self.ignore_index)
        self.test_metrics = segmentation_metrics(self.num_classes, self.ignore_index)
        self.last_metrics: Dict[str, Any] = {}
        self.last_confusion: Optional[torch.Tensor] = None  # (K, K) int64 on CPU, rows = ground truth
        self.per_image: Optional[List[Dict[str, Any]]] = None  # [] to collect {"name", "miou"} per evaluated image
        # connected-component rules (segkit.postprocess) applied to the predictions of evaluation and predict steps
        self.postprocessing: List[Dict[str, Any]] = []
        # a folder: evaluation steps write each image's class probabilities there (NAME.npy, float16, (K, H, W))
        self.save_probabilities: Optional[Path] = None
        self.channels_last = False  # set by segkit.callbacks.DeviceSpeedups on CUDA
        self._eval_images = 0

    # ---- forward -------------------------------------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (0-255) or float (0-1) images -> ``(x - mean) / std`` per channel, as float32."""
        if images.shape[1] != self.mean.shape[1]:
            raise ValueError(f"images have {images.shape[1]} channels but the model was trained on "
                             f"{self.mean.shape[1]} (data.in_channels); read them with data.in_channels="
                             f"{self.mean.shape[1]}")
        x = images.float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if images.dtype == torch.uint8:
            return (x - self.mean_u8) / self.std_u8
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))

    def _forward_with_aux(self, images: torch.Tensor):
        x = self.normalize(images)
        if hasattr(self.net, "forward_with_aux"):
            return self.net(x, return_aux=True)
        return self.net(x), None

    def infer(self, images: torch.Tensor) -> torch.Tensor:
        """Logits at the input size by the configured inference mode (whole, sliding window or TTA)."""
        from segkit.inference import infer

        return infer(self, images, **self.inference)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move only the tensors of a segkit batch (uint8 images stay uint8 until normalised on the device);
        Lightning's generic walk over every field costs ~14 ms per step on CPU."""
        if isinstance(batch, dict) and "image" in batch:
            return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                    for k, v in batch.items()}
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def setup(self, stage: str) -> None:
        if self.nan_policy == "skip" and self.trainer.world_size > 1:
            raise ValueError("task.nan_policy=skip works in a single process only: with several processes every "
                             "rank must step together, and Lightning cannot skip a step on one rank. Use "
                             "task.nan_policy=raise (the default) with several devices.")

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
        logits = self.infer(batch["image"])
        target = self.targets(batch)
        loss = self.loss(logits, target)
        trainer = getattr(self, "_trainer", None)
        if self.nan_policy == "raise" and trainer is not None and trainer.state.fn == "fit" \
                and not torch.isfinite(loss):
            # a diverged network can keep a finite (huge) training loss: its evaluation shows it
            raise FloatingPointError(
                f"non-finite {stage} loss ({loss.item()}) at step {self.global_step} (images "
                f"{list(batch['name'])[:4]}): training has diverged. Lower task.optimizer.lr or check the data.")
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(batch["image"]))
        preds = self.predictions(logits, batch.get("size"))
        if self.save_probabilities is not None:
            self._write_probabilities(logits, batch)
        metrics.update(preds, target)
        self._eval_images += len(batch["image"])
        if self.per_image is not None:
            self.per_image += [{"name": name, "miou": image_miou(p, t, self.num_classes, self.ignore_index)}
                               for name, p, t in zip(batch["name"], preds, target)]

    def predictions(self, logits: torch.Tensor, sizes: Optional[List[Any]] = None) -> torch.Tensor:
        """Class indices from logits: the argmax, then the :attr:`postprocessing` rules (each image within its own
        ``sizes`` in a padded batch)."""
        if not self.postprocessing:
            return logits.argmax(dim=1)
        from segkit.postprocess import apply_to_logits

        return apply_to_logits(logits, self.postprocessing, sizes)

    def _write_probabilities(self, logits: torch.Tensor, batch: Dict[str, Any]) -> None:
        self.save_probabilities.mkdir(parents=True, exist_ok=True)
        sizes = batch.get("size") or [tuple(logits.shape[-2:])] * len(logits)
        probabilities = logits.float().softmax(dim=1).to(torch.float16).cpu().numpy()
        for name, p, (h, w) in zip(batch["name"], probabilities, sizes):
            np.save(self.save_probabilities / f"{name}.npy", p[:, :h, :w])

    def predict_step(self, batch: Dict[str, Any], batch_idx: int) -> Dict[str, Any]:
        """Class-index masks (uint8 when the classes fit) cropped to each image's own size."""
        sizes = batch.get("size")
        preds = self.predictions(self.infer(batch["image"]), sizes)
        preds = preds.to(torch.uint8) if self.num_classes <= 256 else preds
        sizes = sizes or [tuple(preds.shape[-2:])] * len(preds)
        return {"name": batch["name"], "mask": [p[: h, : w].cpu() for p, (h, w) in zip(preds, sizes)]}

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def _eval_epoch_end(self, metrics, stage: str) -> None:
        confusion = metrics.compute()
        self.last_confusion = confusion.detach().cpu()
        summary = summarize(confusion, self.class_names)
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
        if self._planned_lr:
            rank_zero_info(f"plan: task.optimizer.lr={self._planned_lr[0]:g}: chose this because {self._planned_lr[1]}")
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # Plain types only, so the checkpoint loads with torch.load(weights_only=True) and rebuilds the model.
        checkpoint["segkit"] = {"config": self.run_config, "spec": self.spec.to_dict(), "rng": rng_state()}

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        state = checkpoint.get("segkit", {}).get("rng")
        if state is not None:
            set_rng_state(state)


SMALL_NETWORK = 2_000_000  # parameters
SMALL_NETWORK_LR, LARGE_NETWORK_LR = 3e-3, 1e-3


def learning_rate_for(net: nn.Module) -> tuple[float, str]:
    """``task.optimizer.lr=auto`` (AdamW): 1e-3 for networks of 2M parameters or more (the ResNet/MobileNet U-Nets,
    DeepLabs, FPN, PSPNet: 3-50M), 3e-3 for smaller ones (the plain ``unet_small``, 0.5M). Adam moves every weight
    by about ``lr`` whatever its gradient's scale, so a layer's output moves with its fan-in: wide networks need a
    smaller rate (muP's lr ~ 1/width). Measured (BENCHMARKS.md): a ResNet-18 U-Net at 3e-3 oscillates and loses
    0.18 mIoU on objects_voc against 1e-3 and ties on brain_tissue and nuclei; the 0.5M U-Net on the embedded
    data reaches 0.986 at 3e-3 and 0.939 at 1e-3 in its 10 epochs."""
    count = sum(p.numel() for p in net.parameters() if p.requires_grad)
    if count < SMALL_NETWORK:
        return SMALL_NETWORK_LR, f"the network has {count / 1e6:.2f}M trainable parameters (< 2M: a small network)"
    return LARGE_NETWORK_LR, (f"the network has {count / 1e6:.1f}M trainable parameters (>= 2M: AdamW's steps move "
                              "wide layers further, so they take a smaller rate)")


def image_miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: Optional[int]) -> float:
    """mIoU of one image (classes absent from both prediction and truth excluded; NaN if none is present)."""
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    index = target[valid].long() * num_classes + pred[valid].long()
    confusion = torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)
    iou = iou_per_class(confusion)
    present = iou[~iou.isnan()]
    return float(present.mean()) if len(present) else float("nan")


def _check_loss_ignore_index(loss: nn.Module, ignore_index: Optional[int]) -> None:
    """Every loss term must ignore the data's ignore_index (set once, in the data config)."""
    for name, module in loss.named_modules():
        value = getattr(module, "ignore_index", None)
        if value is not None and ignore_index is not None and int(value) != int(ignore_index):
            raise ValueError(f"task.loss{('.' + name) if name else ''} ignores {value} but data.ignore_index is "
                             f"{ignore_index}; leave the loss's ignore_index as ${{data.ignore_index}}")


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

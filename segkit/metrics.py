"""mIoU, per-class IoU and pixel accuracy from one torchmetrics confusion matrix, accumulated over the dataset.

torchmetrics' ``MulticlassConfusionMatrix`` holds the state, resets it and syncs it across DDP ranks; IoU and pixel
accuracy are read off the synced matrix, so each pixel is scanned once per update (two separate Jaccard/Accuracy
metrics scan it twice). A class absent from both prediction and ground truth has IoU NaN (``null`` in
metrics.json) and is excluded from the mean.

Only the per-batch ``update`` is replaced, for dense label maps (millions of pixels per batch): torchmetrics
drops ignored pixels by boolean indexing and builds the bin index in int64, about five full-size copies per
update, and in deterministic mode swaps ``torch.bincount`` for a ``pixels x classes²`` comparison matrix (close
to 1 GB for one 512x512 image with 21 classes). Here ignored pixels go to an extra row that is dropped, the index
is built in place in int32, and ``torch.bincount`` is used always: without weights it counts integers, which is
deterministic on every device. ``tests/test_metrics.py`` checks the result against torchmetrics' own update and
scikit-learn.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import torch
from torchmetrics.classification import MulticlassConfusionMatrix


class ConfusionMatrix(MulticlassConfusionMatrix):
    """``MulticlassConfusionMatrix`` with a faster update for dense label maps (see the module docstring).

    ``update(preds, target)``: ``preds`` are class indices ``(N, H, W)`` or logits ``(N, C, H, W)``; ``target``
    holds class indices or ``ignore_index``. A target value that is neither raises ``ValueError``.
    """

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        n = self.num_classes
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(dim=1)
        if preds.shape != target.shape:
            raise ValueError(f"confusion matrix update: predictions {tuple(preds.shape)} and targets "
                             f"{tuple(target.shape)} must have the same shape")
        target = target.reshape(-1)
        index = target.to(torch.int32, copy=True)  # built in place below; the input stays untouched
        ignored = 0
        if self.ignore_index is not None:
            mask = target == self.ignore_index
            index.masked_fill_(mask, n)  # the extra row n, dropped below
            ignored = mask.sum()
        index.mul_(n).add_(preds.reshape(-1))
        try:
            counts = torch.bincount(index, minlength=n * (n + 1))
        except RuntimeError as err:  # negative bin: a negative label that is not ignore_index
            raise ValueError(self._bad_labels(target)) from err
        # row n holds the ignored pixels and nothing else: a label equal to num_classes would land there too
        # (bincount syncs with the host anyway to size its output, so these checks cost no extra sync)
        if counts.numel() > n * (n + 1) or bool(counts[n * n:].sum() != ignored):
            raise ValueError(self._bad_labels(target))
        self.confmat += counts[: n * n].view(n, n)

    def _bad_labels(self, target: torch.Tensor) -> str:
        valid = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            valid |= target == self.ignore_index
        bad = target[~valid].unique()[:10].tolist()
        return (f"target labels {bad} are neither classes 0..{self.num_classes - 1} nor ignore_index "
                f"{self.ignore_index}; check the dataset's masks (scripts/check_data.py) and data.num_classes")


def segmentation_metrics(num_classes: int, ignore_index: int) -> ConfusionMatrix:
    """The metric object to ``update(preds, target)`` per batch; ``compute()`` gives the confusion matrix
    (rows: ground truth, columns: prediction)."""
    return ConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """``tp / (tp + fp + fn)`` per class; NaN where the class is in neither prediction nor ground truth."""
    cm = confusion.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def summarize(confusion: torch.Tensor, class_names: Sequence[str]) -> Dict[str, object]:
    """Plain-Python summary in the metrics.json schema (without ``num_images``/``split``)."""
    cm = confusion.double().cpu()
    iou = iou_per_class(cm)
    per_class = {name: (None if math.isnan(v) else float(v)) for name, v in zip(class_names, iou.tolist())}
    present = iou[~iou.isnan()]
    total = cm.sum()
    return {
        "mIoU": float(present.mean()) if len(present) else float("nan"),
        "pixel_accuracy": float(cm.diag().sum() / total) if total > 0 else float("nan"),
        "per_class_iou": per_class,
    }


def format_table(summary: Dict[str, object]) -> str:
    """A markdown table of per-class IoU with mIoU and pixel accuracy."""
    rows = ["| class | IoU |", "|---|---|"]
    for name, value in summary["per_class_iou"].items():  # type: ignore[union-attr]
        rows.append(f"| {name} | {'—' if value is None else f'{value:.4f}'} |")
    rows.append(f"| **mIoU** | **{summary['mIoU']:.4f}** |")
    rows.append(f"| pixel accuracy | {summary['pixel_accuracy']:.4f} |")
    return "\n".join(rows)

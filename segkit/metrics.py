"""mIoU, per-class IoU and pixel accuracy from one torchmetrics confusion matrix, accumulated over the dataset.

torchmetrics' ``MulticlassConfusionMatrix`` does the accumulation, the ``ignore_index`` exclusion and the DDP
sync; IoU and pixel accuracy are read off the synced matrix, so each pixel is scanned once per update (two
separate Jaccard/Accuracy metrics scan it twice). A class absent from both prediction and ground truth has IoU
NaN (``null`` in metrics.json) and is excluded from the mean.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import torch
from torchmetrics.classification import MulticlassConfusionMatrix


def segmentation_metrics(num_classes: int, ignore_index: int) -> MulticlassConfusionMatrix:
    """The metric object to ``update(preds, target)`` per batch; ``compute()`` gives the confusion matrix
    (rows: ground truth, columns: prediction)."""
    return MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False)


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

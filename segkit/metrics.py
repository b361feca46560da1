"""mIoU, per-class IoU and pixel accuracy from torchmetrics, accumulated over the whole dataset.

Pixels equal to ``ignore_index`` are excluded; a class absent from both prediction and ground truth has IoU NaN
(``null`` in metrics.json) and is excluded from the mean.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassJaccardIndex


def segmentation_metrics(num_classes: int, ignore_index: int, confusion_matrix: bool = False) -> MetricCollection:
    metrics = {
        "iou": MulticlassJaccardIndex(num_classes, average="none", ignore_index=ignore_index,
                                      zero_division=float("nan"), validate_args=False),
        "pixel_accuracy": MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index,
                                             validate_args=False),
    }
    if confusion_matrix:
        metrics["confusion_matrix"] = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index,
                                                                validate_args=False)
    return MetricCollection(metrics)


def summarize(computed: Dict[str, torch.Tensor], class_names: Sequence[str]) -> Dict[str, object]:
    """Plain-Python summary in the metrics.json schema (without ``num_images``/``split``)."""
    iou = computed["iou"].double().cpu()
    per_class = {name: (None if math.isnan(v) else float(v)) for name, v in zip(class_names, iou.tolist())}
    present = iou[~iou.isnan()]
    return {
        "mIoU": float(present.mean()) if len(present) else float("nan"),
        "pixel_accuracy": float(computed["pixel_accuracy"]),
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

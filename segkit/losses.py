"""Segmentation losses sharing one meaning of ``ignore_index``: those pixels contribute nothing, anywhere."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy with ``ignore_index``, optional class weights and label smoothing.
    A batch whose pixels are all ignored gives a zero loss (with gradient), not NaN."""

    def __init__(self, ignore_index: int = 255, class_weights: Optional[Sequence[float]] = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing
        weight = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not (target != self.ignore_index).any():
            return logits.sum() * 0.0
        weight = self.weight.to(logits.dtype) if self.weight is not None else None
        return F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index,
                               label_smoothing=self.label_smoothing)


class DiceLoss(nn.Module):
    """Soft multi-class Dice, ``1 - mean_c (2|P∩T| + s) / (|P| + |T| + s)`` over the batch, ignored pixels masked."""

    def __init__(self, ignore_index: int = 255, smooth: float = 1.0) -> None:
        super().__init__()
        self.ignore_index, self.smooth = ignore_index, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        valid = (target != self.ignore_index).unsqueeze(1)
        probs = logits.float().softmax(dim=1) * valid
        onehot = F.one_hot(target.clamp(0, num_classes - 1) * valid.squeeze(1), num_classes)
        onehot = onehot.permute(0, 3, 1, 2).to(probs.dtype) * valid
        dims = (0, 2, 3)
        intersection = (probs * onehot).sum(dims)
        cardinality = probs.sum(dims) + onehot.sum(dims)
        return 1.0 - ((2 * intersection + self.smooth) / (cardinality + self.smooth)).mean()


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017): ``(1 - p_t)^gamma * CE``, averaged over non-ignored pixels."""

    def __init__(self, ignore_index: int = 255, gamma: float = 2.0,
                 class_weights: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        self.ignore_index, self.gamma = ignore_index, gamma
        weight = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        if not valid.any():
            return logits.sum() * 0.0
        ce = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction="none")
        pt = torch.exp(-ce)
        loss = (1 - pt) ** self.gamma * ce
        if self.weight is not None:
            loss = loss * self.weight.to(loss.dtype)[target.clamp(0, logits.shape[1] - 1)]
        return loss[valid].mean()


class WeightedSumLoss(nn.Module):
    """``sum_i weight_i * loss_i`` — e.g. ``{"ce": CrossEntropyLoss(), "dice": DiceLoss()}`` with weights 1, 0.5."""

    def __init__(self, losses: Dict[str, nn.Module], weights: Optional[Dict[str, float]] = None) -> None:
        super().__init__()
        self.losses = nn.ModuleDict(losses)
        weights = dict(weights or {})
        unknown = set(weights) - set(losses)
        if unknown:
            raise ValueError(f"loss weights name unknown losses {sorted(unknown)}; losses are {sorted(losses)}")
        self.weights = {name: float(weights.get(name, 1.0)) for name in losses}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[name] * loss(logits, target) for name, loss in self.losses.items())

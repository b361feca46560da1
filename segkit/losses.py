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


def _class_weights(class_weights: Optional[Sequence[float]]) -> Optional[torch.Tensor]:
    return torch.tensor(list(class_weights), dtype=torch.float32) if class_weights is not None else None


def _lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. errors sorted in decreasing order
    (Berman et al., 2018, Alg. 1): ``J(1..i) - J(1..i-1)`` for the prefix sets of the sorted pixels."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


class LovaszSoftmaxLoss(nn.Module):
    """Lovasz-softmax (Berman et al., 2018): a convex surrogate of ``1 - IoU`` per class, averaged over classes.
    ``classes="present"`` averages over classes present in the (non-ignored) target, ``"all"`` over every class;
    ``per_image`` computes it per image and averages (the paper's per-image variant), else over the whole batch."""

    def __init__(self, ignore_index: int = 255, classes: str = "present", per_image: bool = False) -> None:
        super().__init__()
        if classes not in ("present", "all"):
            raise ValueError(f"LovaszSoftmaxLoss classes={classes!r}: use 'present' or 'all'")
        self.ignore_index, self.classes, self.per_image = ignore_index, classes, per_image

    def _flat(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of (P, C) probabilities against (P,) labels, all valid."""
        losses = []
        for c in range(probs.shape[1]):
            fg = (target == c).to(probs.dtype)
            if self.classes == "present" and fg.sum() == 0:
                continue
            errors = (fg - probs[:, c]).abs()
            errors_sorted, order = torch.sort(errors, descending=True)
            losses.append(torch.dot(errors_sorted, _lovasz_grad(fg[order])))
        return torch.stack(losses).mean() if losses else probs.sum() * 0.0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        probs = logits.float().softmax(dim=1).permute(0, 2, 3, 1).reshape(logits.shape[0], -1, num_classes)
        target = target.reshape(target.shape[0], -1)
        valid = target != self.ignore_index
        if not valid.any():
            return logits.sum() * 0.0
        if self.per_image:
            return torch.stack([self._flat(p[v], t[v]) for p, t, v in zip(probs, target, valid) if v.any()]).mean()
        return self._flat(probs[valid], target[valid])


class TverskyLoss(nn.Module):
    """Tversky loss (Salehi et al., 2017): ``1 - mean_c (TP + s) / (TP + alpha FP + beta FN + s)`` on soft
    predictions over the batch, ignored pixels masked. ``alpha = beta = 0.5`` is Dice (with ``smooth`` halved);
    ``beta > alpha`` penalises missed pixels more (recall on small structures). ``gamma != 1`` gives the focal
    Tversky loss (Abraham & Khan, 2019), ``mean_c (1 - TI_c)^gamma``; they use ``gamma = 0.75``."""

    def __init__(self, ignore_index: int = 255, alpha: float = 0.3, beta: float = 0.7, gamma: float = 1.0,
                 smooth: float = 1.0) -> None:
        super().__init__()
        self.ignore_index, self.alpha, self.beta, self.gamma, self.smooth = ignore_index, alpha, beta, gamma, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        valid = (target != self.ignore_index).unsqueeze(1)
        probs = logits.float().softmax(dim=1) * valid
        onehot = F.one_hot(target.clamp(0, num_classes - 1) * valid.squeeze(1), num_classes)
        onehot = onehot.permute(0, 3, 1, 2).to(probs.dtype) * valid
        dims = (0, 2, 3)
        tp = (probs * onehot).sum(dims)
        fp = (probs * (1 - onehot)).sum(dims)
        fn = ((1 - probs) * onehot).sum(dims)
        index = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        return ((1.0 - index).clamp_min(0) ** self.gamma).mean()


class FocalTverskyLoss(TverskyLoss):
    """Focal Tversky loss (Abraham & Khan, 2019): :class:`TverskyLoss` with ``gamma = 0.75`` by default."""

    def __init__(self, ignore_index: int = 255, alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75,
                 smooth: float = 1.0) -> None:
        super().__init__(ignore_index, alpha, beta, gamma, smooth)


class OhemCrossEntropyLoss(nn.Module):
    """Online hard example mining cross-entropy (Shrivastava et al., 2016; the PSPNet/OCNet recipe): per batch,
    keep the non-ignored pixels whose cross-entropy exceeds ``thresh`` (``-ln 0.7`` ≈ 0.357: the true class has
    probability below 0.7), but at least the ``min_kept`` hardest ones, and average over those. Hardness is the
    unweighted cross-entropy; ``class_weights`` then weight the kept pixels (a weighted mean, like
    ``F.cross_entropy``). With ``min_kept=0`` and no pixel above ``thresh`` the loss is 0 (attached to the graph)."""

    def __init__(self, ignore_index: int = 255, thresh: float = 0.356675, min_kept: int = 100_000,
                 class_weights: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        if min_kept < 0 or thresh < 0:
            raise ValueError(f"OhemCrossEntropyLoss needs thresh >= 0 and min_kept >= 0, got {thresh}, {min_kept}")
        self.ignore_index, self.thresh, self.min_kept = ignore_index, thresh, min_kept
        self.register_buffer("weight", _class_weights(class_weights), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        if not valid.any():
            return logits.sum() * 0.0
        ce = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction="none")[valid]
        kept = max(min(self.min_kept, ce.numel()), int((ce.detach() > self.thresh).sum()))
        if kept == 0:  # no pixel is hard (min_kept=0): nothing to learn from this batch, a zero that backprops
            return logits.sum() * 0.0
        hardest = torch.topk(ce.detach(), kept, sorted=False).indices
        if self.weight is None:
            return ce[hardest].mean()
        w = self.weight.to(ce.dtype)[target[valid][hardest]]
        return (w * ce[hardest]).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)


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

"""Several trained networks as one: the average of their softmax outputs.

``Ensemble(members, mean, std)`` takes images in 0-1 units (what :class:`~segkit.tasks.SegmentationTask` hands a
net whose spec has mean 0 and std 1), normalises them for each member with that member's own statistics, and
returns ``log(mean_i softmax(member_i(x)))``: logits whose softmax is exactly the members' mean probability and
whose argmax is the ensemble's prediction. The cross-entropy of these logits is the ensemble's negative
log-likelihood. Written with ``logsumexp`` over the members' ``log_softmax``, so it stays finite where a
probability underflows, and it exports to ONNX/TorchScript as one graph.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
from torch import nn


class Ensemble(nn.Module):
    """``members``: networks mapping normalised ``(N, C, H, W)`` images to logits ``(N, K, H, W)`` (the same ``K``);
    ``mean``/``std``: one list per member (0-1 units, one value per input channel), that member's normalisation."""

    def __init__(self, members: Sequence[nn.Module], mean: Sequence[Sequence[float]],
                 std: Sequence[Sequence[float]]) -> None:
        super().__init__()
        if len(members) < 1 or len(mean) != len(members) or len(std) != len(members):
            raise ValueError(f"an ensemble needs one mean and one std per member: {len(members)} members, "
                             f"{len(mean)} means, {len(std)} stds")
        self.members = nn.ModuleList(members)
        classes = {getattr(m, "num_classes", None) for m in members} - {None}
        channels = {len(m_) for m_ in mean} | {len(s) for s in std}
        if len(classes) > 1 or len(channels) > 1:
            raise ValueError(f"ensemble members disagree: num_classes {sorted(classes)}, input channels "
                             f"{sorted(channels)}; every member must predict the same classes from the same inputs")
        self.num_classes = classes.pop() if classes else None
        self.in_channels = channels.pop()
        self.register_buffer("mean", torch.tensor([list(m) for m in mean], dtype=torch.float32)[..., None, None],
                             persistent=False)
        self.register_buffer("std", torch.tensor([list(s) for s in std], dtype=torch.float32)[..., None, None],
                             persistent=False)
        divisors = [int(getattr(m, "size_divisor", 1) or 1) for m in members]
        self.size_divisor = math.lcm(*divisors)

    def member_logits(self, images: torch.Tensor) -> List[torch.Tensor]:
        """Each member's logits for ``images`` (0-1 units)."""
        x = images.float()
        return [member((x - self.mean[i]) / self.std[i]) for i, member in enumerate(self.members)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logs = torch.stack([logits.float().log_softmax(1) for logits in self.member_logits(images)])
        return torch.logsumexp(logs, dim=0) - math.log(len(self.members))


__all__ = ["Ensemble"]

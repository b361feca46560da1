"""FPN semantic head (Panoptic FPN, Kirillov et al., 2019): a feature pyramid merged at the finest level."""
from __future__ import annotations

from functools import partial
from typing import Callable, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.layers.conv import ConvNormAct, LayerFactory


class FPNDecoder(nn.Module):
    """Lateral 1x1 convs on the deepest ``levels`` encoder features, a top-down pathway (nearest resize + add),
    then per level a chain of 3x3 conv-GN-ReLU + upsampler steps down to the finest level, merged by sum (or
    concatenation) with dropout. The output is at the finest level's reduction (4 for most encoders).

    ``upsample`` builds the learnable (or bilinear) steps of the segmentation branches; levels that share a
    reduction (a dilated encoder) skip the upsampling.
    """

    def __init__(self, encoder_channels: Sequence[int], encoder_reductions: Sequence[int],
                 upsample: Callable[..., nn.Module], pyramid_channels: int = 256, segmentation_channels: int = 128,
                 levels: int = 4, merge: str = "add", dropout: float = 0.2,
                 norm_layer: LayerFactory = partial(nn.GroupNorm, 32)) -> None:
        super().__init__()
        if merge not in ("add", "cat"):
            raise ValueError(f"FPN merge must be 'add' or 'cat', got {merge!r}")
        levels = min(levels, len(encoder_channels))
        self.first = len(encoder_channels) - levels
        channels, reductions = encoder_channels[self.first:], encoder_reductions[self.first:]
        self.lateral = nn.ModuleList(nn.Conv2d(c, pyramid_channels, 1) for c in channels)
        branches = []
        for level in range(levels):  # level 0 is the finest: one conv; level k: k conv + upsample steps
            steps = [_Step(pyramid_channels if k == level else segmentation_channels, segmentation_channels,
                           reductions[k] // reductions[k - 1], upsample, norm_layer) for k in range(level, 0, -1)]
            branches.append(nn.ModuleList(steps or [_Step(pyramid_channels, segmentation_channels, 1, upsample,
                                                          norm_layer)]))
        self.branches = nn.ModuleList(branches)
        self.merge = merge
        self.dropout = nn.Dropout2d(dropout)
        self.out_channels = segmentation_channels * (levels if merge == "cat" else 1)
        self.out_reduction = reductions[0]

    def forward(self, features: List[torch.Tensor], input_size: List[int]) -> torch.Tensor:
        feats = features[self.first:]
        p = self.lateral[-1](feats[-1])
        pyramid = [p]
        for i in range(len(feats) - 2, -1, -1):
            p = self.lateral[i](feats[i]) + F.interpolate(p, size=feats[i].shape[-2:], mode="nearest")
            pyramid.insert(0, p)
        outs = []
        for level, (steps, x) in enumerate(zip(self.branches, pyramid)):
            for k, step in zip(range(level, 0, -1), steps):
                x = step(x, feats[k - 1].shape[-2:])
            if level == 0:
                x = steps[0](x, feats[0].shape[-2:])
            outs.append(x)
        x = torch.stack(outs).sum(0) if self.merge == "add" else torch.cat(outs, dim=1)
        return self.dropout(x)


class _Step(nn.Module):
    """3x3 conv-norm-ReLU, then the upsampler to the next finer level's size (none when the scale is 1)."""

    def __init__(self, in_channels: int, out_channels: int, scale: int, upsample: Callable[..., nn.Module],
                 norm_layer: LayerFactory) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_channels, out_channels, 3, norm_layer=norm_layer)
        self.up = upsample(out_channels, out_channels, scale) if scale > 1 else None

    def forward(self, x: torch.Tensor, size: List[int]) -> torch.Tensor:
        x = self.conv(x)
        return x if self.up is None else self.up(x, size)

"""PSPNet (Zhao et al., 2017): pyramid pooling on the deepest feature, then a 3x3 conv."""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.layers.conv import ConvNormAct, LayerFactory


class PyramidPooling(nn.Module):
    """The input concatenated with its average pools over ``bins x bins`` grids, each 1x1-projected to
    ``in_channels // len(bins)`` and resized back bilinearly: ``2 * in_channels`` output channels for 4 bins."""

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6),
                 norm_layer: LayerFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        width = in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(int(b)), ConvNormAct(in_channels, width, 1, norm_layer=norm_layer))
            for b in bins)
        self.bins = tuple(int(b) for b in bins)
        self.out_channels = in_channels + width * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False) for stage in self.stages]
        return torch.cat([x] + pooled, dim=1)


class PSPDecoder(nn.Module):
    """Pyramid pooling module on the deepest feature, a 3x3 conv-BN-ReLU to ``channels`` and dropout (the paper's
    head minus its classifier). Its output stays at the encoder's output stride (8 in the paper)."""

    def __init__(self, encoder_channels: Sequence[int], encoder_reductions: Sequence[int], channels: int = 512,
                 bins: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1) -> None:
        super().__init__()
        self.ppm = PyramidPooling(encoder_channels[-1], bins)
        self.conv = ConvNormAct(self.ppm.out_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.out_channels = channels
        self.out_reduction = encoder_reductions[-1]

    def forward(self, features: List[torch.Tensor], input_size: List[int]) -> torch.Tensor:
        return self.dropout(self.conv(self.ppm(features[-1])))

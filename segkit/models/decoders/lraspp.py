"""LR-ASPP (Searching for MobileNetV3, Howard et al. 2019): a lite head on the deepest and a stride-8 feature."""
from __future__ import annotations

from typing import Callable, List, Sequence

import torch
from torch import nn

from segkit.models.layers.conv import ConvNormAct


class LRASPPDecoder(nn.Module):
    """``high`` (deepest feature) -> 1x1 conv-BN-ReLU gated by a global-pool sigmoid, upsampled to the ``low``
    (``low_reduction``) feature and concatenated with it.

    torchvision's head adds two 1x1 classifiers, ``low_cls(low) + high_cls(x)``; that is one 1x1 classifier on
    ``cat([low, x])``, which the ``Segmenter`` supplies: the decoder returns the concatenation.
    """

    def __init__(self, encoder_channels: Sequence[int], encoder_reductions: Sequence[int],
                 upsample: Callable[..., nn.Module], inter_channels: int = 128, low_reduction: int = 8) -> None:
        super().__init__()
        if low_reduction not in encoder_reductions[:-1]:
            raise ValueError(f"LR-ASPP needs an encoder feature at reduction {low_reduction} besides the deepest; "
                             f"this encoder has reductions {list(encoder_reductions)} (set low_reduction)")
        self.low_index = list(encoder_reductions).index(low_reduction)
        high = encoder_channels[-1]
        self.cbr = ConvNormAct(high, inter_channels, 1)
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(high, inter_channels, 1, bias=False),
                                   nn.Sigmoid())
        self.up = upsample(inter_channels, inter_channels, encoder_reductions[-1] // low_reduction)
        self.out_channels = encoder_channels[self.low_index] + inter_channels
        self.out_reduction = low_reduction

    def forward(self, features: List[torch.Tensor], input_size: List[int]) -> torch.Tensor:
        low, high = features[self.low_index], features[-1]
        x = self.up(self.cbr(high) * self.scale(high), low.shape[-2:])
        return torch.cat([low, x], dim=1)

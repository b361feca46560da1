"""DeepLabV3 (ASPP head) and DeepLabV3+ (ASPP + low-level skip) decoders."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from torch import nn

from segkit.models.layers.aspp import ASPP, resolve_rates
from segkit.models.layers.conv import ConvNormAct, conv_block, init_relu_convs_


class DeepLabV3Decoder(nn.Module):
    """ASPP on the deepest feature, then a 3x3 conv (torchvision's ``DeepLabHead`` minus the classifier)."""

    def __init__(self, encoder_channels: Sequence[int], encoder_reductions: Sequence[int], channels: int = 256,
                 rates: Optional[Sequence[int]] = None, separable: bool = False, dropout: float = 0.5) -> None:
        super().__init__()
        self.aspp = ASPP(encoder_channels[-1], channels, resolve_rates(rates, encoder_reductions[-1]),
                         separable=separable, dropout=dropout)
        self.conv = conv_block(separable)(channels, channels, 3)
        self.out_channels = channels
        self.out_reduction = encoder_reductions[-1]

    def forward(self, features: List[torch.Tensor], input_size: List[int]) -> torch.Tensor:
        return self.conv(self.aspp(features[-1]))


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP output upsampled to the stride-4 feature, fused with its 1x1-projected low-level feature.

    The upsampler (bilinear in the paper) is any segkit upsampler factory. ``separable`` (the paper's choice;
    ``DeepLabV3Plus`` defaults to it) makes every 3x3 conv depthwise-separable. ``fuse_convs`` 3x3 convs refine the
    fused stride-4 map: the paper uses 2; the default 1 takes ~15% off a ResNet-50 training step on CPU (the second
    conv works at stride 4 on 256 channels). ``depthwise_norm``: a norm and activation after each depthwise conv, as
    TensorFlow's DeepLab (see ``SeparableConvNormAct``). Convs are He-initialised (fan-out).
    """

    def __init__(self, encoder_channels: Sequence[int], encoder_reductions: Sequence[int],
                 upsample: Callable[..., nn.Module], channels: int = 256, low_level_channels: int = 48,
                 low_level_reduction: int = 4, rates: Optional[Sequence[int]] = None, separable: bool = True,
                 dropout: float = 0.5, fuse_convs: int = 1, depthwise_norm: bool = False) -> None:
        super().__init__()
        if fuse_convs < 1:
            raise ValueError(f"fuse_convs must be at least 1, got {fuse_convs}")
        if low_level_reduction not in encoder_reductions:
            raise ValueError(f"no encoder feature at reduction {low_level_reduction} for the low-level skip; "
                             f"the encoder has reductions {list(encoder_reductions)}")
        self.low_index = list(encoder_reductions).index(low_level_reduction)
        self.aspp = ASPP(encoder_channels[-1], channels, resolve_rates(rates, encoder_reductions[-1]),
                         separable=separable, dropout=dropout, depthwise_norm=depthwise_norm)
        self.up = upsample(channels, channels, encoder_reductions[-1] // low_level_reduction)
        self.low_project = ConvNormAct(encoder_channels[self.low_index], low_level_channels, 1)
        block = conv_block(separable, depthwise_norm)
        self.fuse = nn.Sequential(block(channels + low_level_channels, channels, 3),
                                  *(block(channels, channels, 3) for _ in range(fuse_convs - 1)))
        init_relu_convs_(self)
        self.out_channels = channels
        self.out_reduction = low_level_reduction

    def forward(self, features: List[torch.Tensor], input_size: List[int]) -> torch.Tensor:
        low = features[self.low_index]
        x = self.up(self.aspp(features[-1]), low.shape[-2:])
        return self.fuse(torch.cat([x, self.low_project(low)], dim=1))

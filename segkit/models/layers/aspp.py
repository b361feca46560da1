"""Atrous Spatial Pyramid Pooling (DeepLabV3): parallel dilated convs + image pooling, fused by a 1x1 conv."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.layers.conv import ConvNormAct, LayerFactory, conv_block

# Rates from the DeepLab papers: 6/12/18 at output stride 16, doubled at 8. Stride 32 halves them.
_RATES_BY_OUTPUT_STRIDE = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


def aspp_rates(output_stride: int) -> tuple[int, ...]:
    """Default ASPP dilation rates for an encoder output stride (8, 16 or 32)."""
    try:
        return _RATES_BY_OUTPUT_STRIDE[output_stride]
    except KeyError:
        raise ValueError(
            f"no default ASPP rates for output_stride={output_stride}; use one of "
            f"{sorted(_RATES_BY_OUTPUT_STRIDE)} or pass rates=[...] explicitly"
        ) from None


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average pool, 1x1 conv, broadcast back to the input size."""

    def __init__(self, in_channels: int, out_channels: int, norm_layer: LayerFactory = nn.BatchNorm2d,
                 act_layer: LayerFactory = nn.ReLU) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            ConvNormAct(in_channels, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """ASPP with any list of rates, a 1x1 branch, an optional image-pooling branch and optional separable convs.

    The projection width follows from the branches: ``(len(rates) + 1 + pooling) * out_channels -> out_channels``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        rates: Sequence[int] = (6, 12, 18),
        pooling: bool = True,
        separable: bool = False,
        dropout: float = 0.5,
        depthwise_norm: bool = False,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
    ) -> None:
        super().__init__()
        if any(int(r) < 1 for r in rates):
            raise ValueError(f"ASPP rates must be positive integers, got {list(rates)}")
        block = conv_block(separable, depthwise_norm)
        branches: list[nn.Module] = [ConvNormAct(in_channels, out_channels, 1, norm_layer=norm_layer,
                                                 act_layer=act_layer)]
        branches += [block(in_channels, out_channels, 3, dilation=int(r), norm_layer=norm_layer,
                           act_layer=act_layer) for r in rates]
        if pooling:
            branches.append(ASPPPooling(in_channels, out_channels, norm_layer, act_layer))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            ConvNormAct(len(branches) * out_channels, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer),
            nn.Dropout(dropout),
        )
        self.rates = tuple(int(r) for r in rates)
        self.pooling = pooling
        self.in_channels = in_channels
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


def resolve_rates(rates: Optional[Sequence[int]], output_stride: int) -> tuple[int, ...]:
    """Explicit rates win; otherwise the paper's rates for the encoder's output stride."""
    return tuple(int(r) for r in rates) if rates is not None else aspp_rates(output_stride)

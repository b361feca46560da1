"""The plain U-Net encoder (Ronneberger et al., 2015): double 3x3 conv stages, for training from scratch."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from segkit.models.layers.conv import ConvNormAct, LayerFactory


class UNetEncoder(nn.Module):
    """``depth`` stages of two 3x3 convs; stage ``i`` has ``base_channels * 2**i`` channels at stride ``2**i``.

    Downsampling is a 2x2 max-pool with ``ceil_mode`` (odd sizes round up, like strided convs). With
    ``output_stride`` below ``2**(depth-1)``, the deeper stages skip the pool and dilate their convs instead.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, depth: int = 5,
                 output_stride: Optional[int] = None, norm_layer: LayerFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"UNetEncoder depth must be >= 2, got {depth}")
        max_stride = 2 ** (depth - 1)
        output_stride = max_stride if output_stride is None else int(output_stride)
        if output_stride < 1 or output_stride > max_stride or output_stride & (output_stride - 1):
            raise ValueError(f"output_stride must be a power of two <= 2**(depth-1) = {max_stride}, "
                             f"got {output_stride}")
        stages, channels, reductions = [], [], []
        reduction, dilation, c_in = 1, 1, in_channels
        for i in range(depth):
            c_out = base_channels * 2 ** i
            layers: list[nn.Module] = []
            if i > 0:
                if reduction < output_stride:
                    layers.append(nn.MaxPool2d(2, ceil_mode=True))
                    reduction *= 2
                else:
                    dilation *= 2
            layers += [ConvNormAct(c_in, c_out, 3, dilation=dilation, norm_layer=norm_layer),
                       ConvNormAct(c_out, c_out, 3, dilation=dilation, norm_layer=norm_layer)]
            stages.append(nn.Sequential(*layers))
            channels.append(c_out)
            reductions.append(reduction)
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.in_channels = in_channels
        self.output_stride = output_stride
        self.out_channels: List[int] = channels
        self.reductions: List[int] = reductions

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

"""Conv -> norm -> activation blocks with size-preserving padding for any dilation."""
from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from segkit.analysis.shapes import same_padding

LayerFactory = Optional[Callable[..., nn.Module]]


class ConvNormAct(nn.Sequential):
    """``Conv2d`` (dilation-aware "same" padding by default) followed by an optional norm and activation.

    Layers are passed as *types* (``norm_layer=nn.BatchNorm2d``, ``act_layer=nn.ReLU``), ``None`` to omit one.
    The conv has no bias when a norm follows it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        padding: Optional[int] = None,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        bias: Optional[bool] = None,
    ) -> None:
        if padding is None:
            padding = same_padding(kernel_size, dilation)
        if bias is None:
            bias = norm_layer is None
        layers = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias)
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if act_layer is not None:
            layers.append(act_layer(inplace=True) if act_layer in (nn.ReLU, nn.ReLU6, nn.SiLU) else act_layer())
        super().__init__(*layers)
        self.in_channels = in_channels
        self.out_channels = out_channels


class SeparableConvNormAct(nn.Sequential):
    """Depthwise-separable conv as in DeepLabV3+: dilated depthwise conv + norm + act, then 1x1 + norm + act."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
    ) -> None:
        super().__init__(
            ConvNormAct(in_channels, in_channels, kernel_size, stride, dilation, groups=in_channels,
                        norm_layer=norm_layer, act_layer=act_layer),
            ConvNormAct(in_channels, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer),
        )
        self.in_channels = in_channels
        self.out_channels = out_channels


def conv_block(separable: bool) -> Callable[..., nn.Module]:
    """The 3x3 block type to use: plain ``ConvNormAct`` or ``SeparableConvNormAct``."""
    return SeparableConvNormAct if separable else ConvNormAct


class DoubleConv(nn.Sequential):
    """Two 3x3 ``ConvNormAct`` — the U-Net stage block."""

    def __init__(self, in_channels: int, out_channels: int, norm_layer: LayerFactory = nn.BatchNorm2d,
                 act_layer: LayerFactory = nn.ReLU) -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, 3, norm_layer=norm_layer, act_layer=act_layer),
            ConvNormAct(out_channels, out_channels, 3, norm_layer=norm_layer, act_layer=act_layer),
        )
        self.in_channels = in_channels
        self.out_channels = out_channels

"""Conv -> norm -> activation blocks with size-preserving padding for any dilation."""
from __future__ import annotations

import functools
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from segkit.analysis.shapes import same_padding

LayerFactory = Optional[Callable[..., nn.Module]]


class AtrousConv2d(nn.Conv2d):
    """``nn.Conv2d`` that skips the kernel taps which, on the current input, can only see zero padding.

    With "same" padding, tap ``i`` of an odd ``k``-tap kernel reads the input ``(i - k // 2) * dilation`` pixels away
    from each output pixel; when that distance is at least the input's extent, it reads padding for every output
    pixel and contributes exactly zero. At large atrous rates on small feature maps the 3x3 kernel degenerates to
    its centre tap (DeepLabV3, section 3.3: "the 3x3 filter degenerates to a simple 1x1 filter since only the
    center filter weight is effective") — for example rate 36 on the 32x32 map of a 256x256 input at output
    stride 8. The forward then convolves with the live taps only: the same output and gradients (the skipped taps'
    gradients are exactly zero) at up to 9x fewer FLOPs. Larger inputs take the ordinary path.

    The shortcut depends on the input size, so it is off while tracing, scripting, compiling or exporting, where
    one graph must serve every size.
    """

    def live_taps(self, x: torch.Tensor) -> Optional[Tuple[torch.Tensor, Tuple[int, int]]]:
        """The kernel cut to the taps that can see ``x`` and the padding that goes with it; ``None`` when every tap
        is live, or while tracing, scripting, compiling or exporting (one graph must then serve every size)."""
        if (self.padding_mode != "zeros" or self.stride != (1, 1) or torch.jit.is_tracing()
                or torch.jit.is_scripting() or torch.compiler.is_compiling()):
            return None
        weight = self.weight
        padding = list(self.padding)  # type: ignore[arg-type]
        for axis, extent in enumerate(x.shape[-2:]):
            k, d = self.kernel_size[axis], self.dilation[axis]
            if k % 2 == 0 or padding[axis] != d * (k // 2):
                continue  # not "same" padding: every tap may see the input
            reach = (extent - 1) // d  # live taps: |i - k // 2| <= reach
            if reach < k // 2:
                weight = weight.narrow(2 + axis, k // 2 - reach, 2 * reach + 1)
                padding[axis] = d * reach
        if weight.shape[-2:] == self.weight.shape[-2:]:
            return None
        return weight, (padding[0], padding[1])

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        live = self.live_taps(x) if weight is self.weight else None
        if live is None:
            return super()._conv_forward(x, weight, bias)
        return F.conv2d(x, live[0], bias, self.stride, live[1], self.dilation, self.groups)


def same_conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                groups: int = 1, padding: Optional[int] = None, bias: bool = True) -> nn.Conv2d:
    """A conv with dilation-aware "same" padding unless ``padding`` is given; an ``AtrousConv2d`` when dilated."""
    if padding is None:
        padding = same_padding(kernel_size, dilation)
    conv = AtrousConv2d if dilation > 1 else nn.Conv2d
    return conv(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias)


class ConvNormAct(nn.Sequential):
    """``Conv2d`` (dilation-aware "same" padding by default) followed by an optional norm and activation.

    Layers are passed as *types* (``norm_layer=nn.BatchNorm2d``, ``act_layer=nn.ReLU``), ``None`` to omit one.
    The conv has no bias when a norm follows it; a dilated conv is an ``AtrousConv2d`` (same parameters).
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
        if bias is None:
            bias = norm_layer is None
        layers = [same_conv2d(in_channels, out_channels, kernel_size, stride, dilation, groups, padding, bias)]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if act_layer is not None:
            layers.append(act_layer(inplace=True) if act_layer in (nn.ReLU, nn.ReLU6, nn.SiLU) else act_layer())
        super().__init__(*layers)
        self.in_channels = in_channels
        self.out_channels = out_channels


class SeparableConvNormAct(nn.Sequential):
    """Depthwise-separable conv (Xception): a depthwise conv (dilation-aware "same" padding), then a 1x1 conv,
    norm and activation.

    Nothing sits between the two convs, as in Xception (Chollet, 2017, section 4.7: an intermediate activation
    made it converge slower and end worse), timm's ``SeparableConvNormAct`` and smp's DeepLabV3+; TensorFlow's
    DeepLab puts a batch norm and activation there (``depthwise_norm=True``; slower: one more norm over the widest
    maps, see BENCHMARKS.md). With the two convs linear back to back, a depthwise kernel that can only read zero
    padding off its centre tap (an atrous rate at least the feature map's size, see ``AtrousConv2d``) is a
    per-channel scale: the block then runs one 1x1 conv with that scale folded into its weight (same outputs and
    gradients, no depthwise pass).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        depthwise_norm: bool = False,
    ) -> None:
        depthwise: nn.Module
        if depthwise_norm:
            depthwise = ConvNormAct(in_channels, in_channels, kernel_size, stride, dilation, groups=in_channels,
                                    norm_layer=norm_layer, act_layer=act_layer)
        else:
            depthwise = same_conv2d(in_channels, in_channels, kernel_size, stride, dilation, groups=in_channels,
                                    bias=False)
        super().__init__(depthwise, ConvNormAct(in_channels, out_channels, 1, norm_layer=norm_layer,
                                                act_layer=act_layer))
        self.in_channels = in_channels
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            folded = self._folded(x)
            if folded is not None:
                return folded
        for layer in self:
            x = layer(x)
        return x

    @torch.jit.unused
    def _folded(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """One 1x1 conv when the depthwise kernel is its centre tap on ``x``; ``None`` otherwise, and whenever a
        hook watches either conv (pruning, observers, feature taps expect their modules to run)."""
        depthwise, pointwise = self[0], self[1]
        conv = pointwise[0]
        if not isinstance(depthwise, AtrousConv2d) or _hooked(depthwise) or _hooked(conv):
            return None
        live = depthwise.live_taps(x)
        if live is None or live[0].shape[-2:] != (1, 1):
            return None
        x = F.conv2d(x, conv.weight * live[0].reshape(1, -1, 1, 1), conv.bias)
        for layer in list(pointwise)[1:]:
            x = layer(x)
        return x


def _hooked(module: nn.Module) -> bool:
    """Whether ``module`` has forward hooks of its own (pruning, weight norm, quantization observers, feature taps
    register them); global hooks, as FLOP counters and module trackers use, only watch."""
    return bool(module._forward_pre_hooks or module._forward_hooks)


@torch.no_grad()
def init_relu_convs_(module: nn.Module) -> nn.Module:
    """He-normal init (fan-out, ReLU gain) for every ``Conv2d`` in ``module``, zero biases; norms weight 1, bias 0.

    PyTorch's default conv init (uniform, gain 1/sqrt(3)) shrinks activations by ~sqrt(6) per ReLU layer; He init
    keeps their scale, so a freshly built decoder trains from the first step (He et al., 2015; torchvision's
    ResNet, smp's decoders).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def conv_block(separable: bool, depthwise_norm: bool = False) -> Callable[..., nn.Module]:
    """The 3x3 block type to use: plain ``ConvNormAct`` or ``SeparableConvNormAct`` (with a norm and activation
    after its depthwise conv when ``depthwise_norm``)."""
    if not separable:
        return ConvNormAct
    return functools.partial(SeparableConvNormAct, depthwise_norm=True) if depthwise_norm else SeparableConvNormAct


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

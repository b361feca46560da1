"""Upsamplers that decoders take by name or factory.

Every upsampler is built as ``Upsampler(in_channels, out_channels, scale_factor, **options)`` and is called as
``up(x, size)``: with ``size`` it returns exactly that spatial size (the skip connection's, or the input's), so
decoders work for odd input sizes; without it, the natural ``scale_factor`` x size.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from segkit.analysis.shapes import ShapeError, same_padding, transpose_output_padding


def bilinear_kernel(kernel_size: int) -> torch.Tensor:
    """The 2-D bilinear interpolation kernel FCN uses to initialise transposed convs."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt = 1 - (og - center).abs() / factor
    return (filt[:, None] * filt[None, :]).float()


class ConvTransposeUpsample(nn.Module):
    """Learnable ``nn.ConvTranspose2d`` upsampling.

    Defaults: ``stride = scale_factor``, ``padding = stride // 2``, ``kernel_size = 2 * padding + 1``
    (3/2/1 for 2x): this configuration reaches every size from ``stride*n - stride + 1`` to ``stride*n`` through
    ``output_padding``, which :meth:`forward` computes from the requested ``size`` (decoders always pass one; the
    constructor's ``output_padding`` only applies to calls without a size). Any kernel, stride, padding and
    dilation can be set. ``bilinear_init=True`` starts it as bilinear interpolation
    (FCN): per channel when ``in_channels == out_channels``, else each output channel as the upsampled mean.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale_factor: int = 2,
        kernel_size: Optional[int] = None,
        stride: Optional[int] = None,
        padding: Optional[int] = None,
        output_padding: int = 0,
        dilation: int = 1,
        bilinear_init: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        stride = int(scale_factor if stride is None else stride)
        padding = stride // 2 if padding is None else int(padding)
        kernel_size = 2 * padding + 1 if kernel_size is None else int(kernel_size)
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding,
                                       output_padding, dilation=dilation, bias=bias)
        self.in_channels, self.out_channels, self.scale_factor = in_channels, out_channels, stride
        if bilinear_init:
            self.reset_bilinear()

    @torch.no_grad()
    def reset_bilinear(self) -> None:
        weight = self.conv.weight  # (in, out, k, k)
        kernel = bilinear_kernel(weight.shape[-1]).to(weight)
        weight.zero_()
        if weight.shape[0] == weight.shape[1]:
            for c in range(weight.shape[0]):
                weight[c, c] = kernel
        else:
            weight.copy_(kernel.expand_as(weight) / weight.shape[0])
        if self.conv.bias is not None:
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor, size: Optional[List[int]] = None) -> torch.Tensor:
        conv = self.conv
        if size is None:
            return conv(x)
        k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
        if not _tracing():  # eager: a clear error naming the layer; export/compile trust the shapes
            for n, t in zip(x.shape[-2:], size):
                transpose_output_padding(int(n), int(t), k, s, p, d)
        # output_padding only extends the output grid, so the largest output cropped to `size` equals the
        # output with the exact output_padding, and it keeps sizes symbolic under torch.export.
        largest = max(s, d) - 1
        y = F.conv_transpose2d(x, conv.weight, conv.bias, conv.stride, conv.padding, [largest, largest],
                               conv.groups, conv.dilation)
        return y[..., : size[0], : size[1]]


class ResizeConvUpsample(nn.Module):
    """Nearest or bilinear resize, then a conv: no checkerboard artifacts (Odena et al., 2016)."""

    def __init__(self, in_channels: int, out_channels: int, scale_factor: int = 2, mode: str = "nearest",
                 kernel_size: int = 3) -> None:
        super().__init__()
        if mode not in ("nearest", "bilinear"):
            raise ValueError(f"ResizeConvUpsample mode must be 'nearest' or 'bilinear', got {mode!r}")
        self.mode = mode
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=same_padding(kernel_size))
        self.in_channels, self.out_channels, self.scale_factor = in_channels, out_channels, int(scale_factor)

    def forward(self, x: torch.Tensor, size: Optional[List[int]] = None) -> torch.Tensor:
        return self.conv(_resize(x, size, self.scale_factor, self.mode))


class InterpolateUpsample(nn.Module):
    """Parameter-free bilinear (or nearest) resize; a 1x1 projection first only when the channel count changes."""

    def __init__(self, in_channels: int, out_channels: int, scale_factor: int = 2, mode: str = "bilinear") -> None:
        super().__init__()
        self.mode = mode
        self.project = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.in_channels, self.out_channels, self.scale_factor = in_channels, out_channels, int(scale_factor)

    def forward(self, x: torch.Tensor, size: Optional[List[int]] = None) -> torch.Tensor:
        return _resize(self.project(x), size, self.scale_factor, self.mode)


class PixelShuffleUpsample(nn.Module):
    """Sub-pixel conv (conv to ``out * s^2`` channels + ``PixelShuffle``), ICNR-initialised (Aitken et al., 2017).

    ICNR makes every ``s x s`` output cell start identical, i.e. as nearest upsampling of a conv: no checkerboard
    at initialisation. Outputs larger than the requested ``size`` by less than one cell are cropped.
    """

    def __init__(self, in_channels: int, out_channels: int, scale_factor: int = 2, kernel_size: int = 3,
                 icnr: bool = True) -> None:
        super().__init__()
        s = int(scale_factor)
        self.conv = nn.Conv2d(in_channels, out_channels * s * s, kernel_size, padding=same_padding(kernel_size))
        self.shuffle = nn.PixelShuffle(s)
        self.in_channels, self.out_channels, self.scale_factor = in_channels, out_channels, s
        if icnr:
            self.reset_icnr()

    @torch.no_grad()
    def reset_icnr(self) -> None:
        s2 = self.scale_factor ** 2
        sub = torch.empty(self.out_channels, *self.conv.weight.shape[1:])
        nn.init.kaiming_normal_(sub, nonlinearity="relu")
        self.conv.weight.copy_(sub.repeat_interleave(s2, dim=0))
        if self.conv.bias is not None:
            self.conv.bias.copy_(torch.zeros(self.out_channels).repeat_interleave(s2))

    def forward(self, x: torch.Tensor, size: Optional[List[int]] = None) -> torch.Tensor:
        y = self.shuffle(self.conv(x))
        if size is None:
            return y
        s = self.scale_factor
        if not _tracing() and not all(n - s < int(t) <= n for n, t in zip(y.shape[-2:], size)):
            raise ShapeError(
                f"PixelShuffleUpsample(scale {s}) maps {list(x.shape[-2:])} -> {list(y.shape[-2:])}; it cannot "
                f"produce {[int(t) for t in size]} (only sizes up to {s - 1} smaller, by cropping). Use a resize "
                "upsampler or an input whose size is a multiple of the network's total stride."
            )
        return y[..., : size[0], : size[1]]


# Which 3x3 kernel rows (offsets -1, 0, +1) each of the 4 taps of the stride-2 transposed kernel sums (columns
# alike). A 3x3 conv of nearest(x) at output row 2i reads x rows (i-1, i, i) and at row 2i+1 reads (i, i, i+1), so
# x row i reaches output rows 2i-1, 2i, 2i+1, 2i+2 through kernel rows {+1}, {0, +1}, {-1, 0}, {-1}.
_NEAREST2X_TAPS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def nearest2x_conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, padding=1)`` (3x3 ``weight``, no bias)
    without building the upsampled map: one stride-2 transposed conv of x with a 4x4 kernel (each tap a sum of
    3x3 taps). 4/9 of the FLOPs, it never reads a 4x larger input, and it writes the output in place (no shuffle,
    no crop). Same values and gradients (up to float rounding)."""
    m = _NEAREST2X_TAPS.to(weight)
    k = torch.einsum("ak,bl,oikl->ioab", m, m, weight).contiguous()
    return F.conv_transpose2d(x, k, stride=2, padding=1)


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def _resize(x: torch.Tensor, size: Optional[List[int]], scale_factor: int, mode: str) -> torch.Tensor:
    align = False if mode == "bilinear" else None
    if size is None:
        return F.interpolate(x, scale_factor=float(scale_factor), mode=mode, align_corners=align)
    return F.interpolate(x, size=[size[0], size[1]], mode=mode, align_corners=align)


UPSAMPLERS: dict[str, Callable[..., nn.Module]] = {
    "conv_transpose": ConvTransposeUpsample,
    "resize_conv": ResizeConvUpsample,
    "pixel_shuffle": PixelShuffleUpsample,
    "bilinear": InterpolateUpsample,
    "nearest": partial(InterpolateUpsample, mode="nearest"),
}

def is_parameter_free(factory: Callable[..., nn.Module]) -> bool:
    """Whether ``factory(c, c, 2)`` builds an upsampler without parameters (a plain resize). Probed on the meta
    device: no memory, no random numbers drawn."""
    with torch.device("meta"):
        return not any(True for _ in factory(8, 8, 2).parameters())


UpsamplerSpec = Union[str, Callable[..., nn.Module], None]


def upsampler_factory(spec: UpsamplerSpec) -> Callable[..., nn.Module]:
    """Turn a name (``"conv_transpose"``, ...), a factory/partial, or ``None`` (bilinear) into a factory."""
    if spec is None:
        return InterpolateUpsample
    if isinstance(spec, str):
        try:
            return UPSAMPLERS[spec]
        except KeyError:
            raise ValueError(f"unknown upsampler {spec!r}; choose one of {sorted(UPSAMPLERS)}") from None
    if callable(spec):
        return spec
    raise TypeError(f"upsampler must be a name, a factory or None, got {type(spec).__name__}")

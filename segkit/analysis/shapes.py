"""Shape arithmetic for convolutions, as PyTorch defines it.

These are the formulas from the ``nn.Conv2d`` / ``nn.ConvTranspose2d`` documentation; the layers in
``segkit.models.layers`` use them, and ``tests/test_shapes.py`` checks them against PyTorch itself.
"""
from __future__ import annotations


class ShapeError(ValueError):
    """A feature map cannot have the size a layer needs; the message names the layer and the fix."""


def effective_kernel_size(kernel_size: int, dilation: int = 1) -> int:
    """Span of a dilated kernel: ``d * (k - 1) + 1``."""
    return dilation * (kernel_size - 1) + 1


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """``floor((size + 2p - d(k-1) - 1) / s) + 1`` — the output length of ``nn.Conv2d`` along one axis."""
    out = (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1
    if out < 1:
        raise ShapeError(
            f"Conv(kernel {kernel_size}, stride {stride}, padding {padding}, dilation {dilation}) "
            f"cannot take an input of size {size}: the output would be {out}. Use a larger input."
        )
    return out


def conv_transpose_output_size(
    size: int, kernel_size: int, stride: int = 1, padding: int = 0, output_padding: int = 0, dilation: int = 1
) -> int:
    """``(size - 1)s - 2p + d(k-1) + output_padding + 1`` — the output length of ``nn.ConvTranspose2d``."""
    if not 0 <= output_padding < max(stride, dilation):
        raise ShapeError(
            f"output_padding={output_padding} is invalid for stride {stride} and dilation {dilation}: "
            f"PyTorch requires 0 <= output_padding < max(stride, dilation) = {max(stride, dilation)}."
        )
    return (size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the size of a stride-1 conv: ``d(k-1)/2``; needs an odd effective kernel."""
    span = effective_kernel_size(kernel_size, dilation) - 1
    if span % 2:
        raise ShapeError(
            f"kernel_size={kernel_size} with dilation={dilation} has an even effective size ({span + 1}); "
            "no symmetric padding preserves the size. Use an odd kernel_size."
        )
    return span // 2


def transpose_output_padding(
    size: int, target: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> int:
    """The ``output_padding`` that makes ``ConvTranspose2d`` map ``size`` to exactly ``target``.

    Raises :class:`ShapeError` naming the reachable sizes and a fix when no valid output_padding exists.
    """
    base = conv_transpose_output_size(size, kernel_size, stride, padding, 0, dilation)
    output_padding = target - base
    limit = max(stride, dilation)
    if 0 <= output_padding < limit:
        return output_padding
    p = stride // 2
    raise ShapeError(
        f"ConvTranspose2d(kernel {kernel_size}, stride {stride}, padding {padding}, dilation {dilation}) "
        f"maps {size} -> {base}..{base + limit - 1} (output_padding 0..{limit - 1}); it cannot produce {target}. "
        f"Fix: use kernel_size={2 * p + 1}, padding={p}, which reaches every size from {stride}*n-{stride - 1} "
        f"to {stride}*n (all sizes strided encoders produce), or feed inputs whose size is a multiple of the "
        "network's total stride."
    )

"""Shape formulas checked against PyTorch's own layers over a grid of parameters."""
import itertools

import pytest
import torch
from torch import nn

from segkit.analysis import (ShapeError, conv_output_size, conv_transpose_output_size, same_padding,
                             transpose_output_padding)

SIZES = [1, 2, 5, 8, 13, 16]


def pytorch_size(layer: nn.Module, n: int):
    """The output length PyTorch's own layer gives for an ``n x n`` input, or None where PyTorch refuses."""
    try:
        return layer(torch.zeros(1, 1, n, n)).shape[-1]
    except RuntimeError:
        return None


@pytest.mark.parametrize("k,s,p,d", itertools.product([1, 2, 3, 4, 5], [1, 2, 3], [0, 1, 2], [1, 2, 3]))
def test_conv_output_size_matches_pytorch(k, s, p, d):
    conv = nn.Conv2d(1, 1, k, s, p, d)
    for n in SIZES:
        expected = pytorch_size(conv, n)
        if expected is None:  # exactly where PyTorch refuses (the input is smaller than the kernel), segkit raises
            with pytest.raises(ShapeError):
                conv_output_size(n, k, s, p, d)
        else:
            assert conv_output_size(n, k, s, p, d) == expected


@pytest.mark.parametrize("k,s,p,d", itertools.product([1, 2, 3, 4, 5], [1, 2, 3, 4], [0, 1, 2], [1, 2, 3]))
def test_conv_transpose_output_size_matches_pytorch(k, s, p, d):
    """Equal wherever PyTorch produces an output (an empty one included); where PyTorch refuses ("output size is
    too small"), the formula gives a size below 1."""
    for op in range(max(s, d)):
        conv = nn.ConvTranspose2d(1, 1, k, s, p, output_padding=op, dilation=d)
        for n in SIZES:
            expected = pytorch_size(conv, n)
            if expected is None:
                assert conv_transpose_output_size(n, k, s, p, op, d) < 1
            else:
                assert conv_transpose_output_size(n, k, s, p, op, d) == expected


def test_conv_transpose_output_padding_bound():
    with pytest.raises(ShapeError, match="output_padding"):
        conv_transpose_output_size(4, 3, stride=2, output_padding=2)
    with pytest.raises(RuntimeError):  # PyTorch agrees the bound is max(stride, dilation)
        nn.ConvTranspose2d(1, 1, 3, 2, output_padding=2)(torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize("k,d", itertools.product([1, 3, 5, 7], [1, 2, 3, 6, 12]))
def test_same_padding_preserves_size(k, d):
    p = same_padding(k, d)
    for n in SIZES:
        assert nn.Conv2d(1, 1, k, 1, p, d)(torch.zeros(1, 1, n, n)).shape[-1] == n


def test_same_padding_rejects_even_kernels():
    with pytest.raises(ShapeError, match="odd"):
        same_padding(4)


@pytest.mark.parametrize("k,s,p,d", itertools.product([2, 3, 4, 5], [1, 2, 3, 4], [0, 1, 2], [1, 2, 3]))
def test_transpose_output_padding_reaches_exactly_what_pytorch_can(k, s, p, d):
    """For every target size: segkit finds an output_padding exactly when some output_padding PyTorch accepts
    produces that size (found by running nn.ConvTranspose2d with each), and then the layer produces it."""
    for n in (3, 6, 7):
        reachable = {}  # output size -> output_padding, from PyTorch's own layers
        for op in range(max(s, d) + 2):  # including values PyTorch refuses
            try:
                conv = nn.ConvTranspose2d(1, 1, k, s, p, output_padding=op, dilation=d)
                size = conv(torch.zeros(1, 1, n, n)).shape[-1]
            except (RuntimeError, ValueError):
                continue
            reachable[size] = op
        for target in range(1, n * s + 2 * k * d):
            if target in reachable:
                op = transpose_output_padding(n, target, k, s, p, d)
                assert op == reachable[target]
            else:
                with pytest.raises(ShapeError, match=rf"cannot produce {target}\..*kernel_size="):
                    transpose_output_padding(n, target, k, s, p, d)


def test_transpose_error_message_names_layer_and_fix():
    with pytest.raises(ShapeError) as info:
        transpose_output_padding(16, 33, kernel_size=3, stride=2, padding=1)
    msg = str(info.value)
    assert "ConvTranspose2d(kernel 3, stride 2, padding 1" in msg and "16 -> 31..32" in msg

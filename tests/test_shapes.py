"""Shape formulas checked against PyTorch's own layers over a grid of parameters."""
import itertools

import pytest
import torch
from torch import nn

from segkit.analysis import (ShapeError, conv_output_size, conv_transpose_output_size, same_padding,
                             transpose_output_padding)

SIZES = [1, 2, 5, 8, 13, 16]


@pytest.mark.parametrize("k,s,p,d", itertools.product([1, 2, 3, 4, 5], [1, 2, 3], [0, 1, 2], [1, 2, 3]))
def test_conv_output_size_matches_pytorch(k, s, p, d):
    conv = nn.Conv2d(1, 1, k, s, p, d)
    for n in SIZES:
        if n + 2 * p - d * (k - 1) - 1 < 0:
            with pytest.raises(ShapeError):
                conv_output_size(n, k, s, p, d)
            continue
        assert conv_output_size(n, k, s, p, d) == conv(torch.zeros(1, 1, n, n)).shape[-1]


@pytest.mark.parametrize("k,s,p,d", itertools.product([1, 2, 3, 4, 5], [1, 2, 3, 4], [0, 1, 2], [1, 2, 3]))
def test_conv_transpose_output_size_matches_pytorch(k, s, p, d):
    for op in range(max(s, d)):
        conv = nn.ConvTranspose2d(1, 1, k, s, p, output_padding=op, dilation=d)
        for n in SIZES:
            expected = conv_transpose_output_size(n, k, s, p, op, d)
            if expected < 1:
                continue
            assert conv(torch.zeros(1, 1, n, n)).shape[-1] == expected


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


@pytest.mark.parametrize("k,s,p,d", itertools.product([2, 3, 4, 5], [2, 3, 4], [0, 1, 2], [1, 2]))
def test_transpose_output_padding_reaches_every_valid_target(k, s, p, d):
    for n in (3, 6, 7):
        for target in range(max(1, (n - 1) * s - 2 * p), n * s + 2 * k):
            try:
                op = transpose_output_padding(n, target, k, s, p, d)
            except ShapeError as exc:
                assert "cannot produce" in str(exc) and "kernel_size=" in str(exc)
                continue
            conv = nn.ConvTranspose2d(1, 1, k, s, p, output_padding=op, dilation=d)
            assert conv(torch.zeros(1, 1, n, n)).shape[-1] == target


def test_transpose_error_message_names_layer_and_fix():
    with pytest.raises(ShapeError) as info:
        transpose_output_padding(16, 33, kernel_size=3, stride=2, padding=1)
    msg = str(info.value)
    assert "ConvTranspose2d(kernel 3, stride 2, padding 1" in msg and "16 -> 31..32" in msg

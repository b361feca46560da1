"""Blocks: ConvNormAct, ASPP, upsamplers."""
import pytest
import torch
from torch import nn

from segkit.analysis import ShapeError, conv_transpose_output_size
from segkit.models.layers import (ASPP, UPSAMPLERS, ConvNormAct, ConvTransposeUpsample, InterpolateUpsample,
                                  PixelShuffleUpsample, ResizeConvUpsample, aspp_rates, upsampler_factory)


@pytest.mark.parametrize("dilation", [1, 2, 4, 6])
def test_conv_norm_act_keeps_size_with_dilation(dilation):
    block = ConvNormAct(3, 8, 3, dilation=dilation)
    assert block(torch.randn(2, 3, 11, 17)).shape == (2, 8, 11, 17)
    assert block[0].bias is None and isinstance(block[1], nn.BatchNorm2d)
    assert block[0].dilation == (dilation, dilation)


def test_conv_norm_act_without_norm_has_bias():
    block = ConvNormAct(3, 4, 1, norm_layer=None, act_layer=None)
    assert len(block) == 1 and block[0].bias is not None


def test_aspp_default_rates_follow_output_stride():
    assert aspp_rates(16) == (6, 12, 18)
    assert aspp_rates(8) == (12, 24, 36)
    with pytest.raises(ValueError, match="output_stride=4"):
        aspp_rates(4)


@pytest.mark.parametrize("rates", [(1,), (6, 12, 18), (2, 4, 8, 16)])
@pytest.mark.parametrize("pooling", [True, False])
@pytest.mark.parametrize("separable", [True, False])
def test_aspp_branches_and_projection_width(rates, pooling, separable):
    aspp = ASPP(16, 8, rates, pooling=pooling, separable=separable)
    assert len(aspp.branches) == 1 + len(rates) + int(pooling)
    assert aspp.project[0][0].in_channels == len(aspp.branches) * 8
    dilations = [m.dilation[0] for m in aspp.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert dilations == list(rates)
    if separable:
        depthwise = [m for m in aspp.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
        assert len(depthwise) == len(rates)
    assert aspp(torch.randn(2, 16, 9, 7)).shape == (2, 8, 9, 7)


def test_aspp_rejects_bad_rates():
    with pytest.raises(ValueError, match="positive"):
        ASPP(4, 4, (0, 6))


@pytest.mark.parametrize("name", sorted(UPSAMPLERS))
@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_upsamplers_natural_and_requested_sizes(name, scale):
    in_ch = 6
    out_ch = in_ch if name in ("bilinear", "nearest") else 4
    up = UPSAMPLERS[name](in_ch, out_ch, scale)
    x = torch.randn(2, in_ch, 5, 7)
    if isinstance(up, ConvTransposeUpsample):
        c = up.conv
        natural = [conv_transpose_output_size(n, c.kernel_size[0], c.stride[0], c.padding[0]) for n in (5, 7)]
    else:
        natural = [5 * scale, 7 * scale]
    assert up(x).shape == (2, out_ch, *natural)
    # every size a strided encoder can produce from n cells: scale*n - scale + 1 .. scale*n
    for th in range(5 * scale - scale + 1, 5 * scale + 1):
        assert up(x, [th, 7 * scale]).shape == (2, out_ch, th, 7 * scale)


def test_conv_transpose_defaults_and_bilinear_init_match_interpolation():
    up = ConvTransposeUpsample(3, 3, 2, bilinear_init=True)
    conv = up.conv
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (2, 2), (1, 1))
    x = torch.randn(1, 3, 6, 6)
    # kernel 3, stride 2, padding 1 with a bilinear kernel is exactly align_corners=True interpolation to 2n-1
    ref = torch.nn.functional.interpolate(x, size=(11, 11), mode="bilinear", align_corners=True)
    assert torch.allclose(up(x), ref, atol=1e-6)
    # with output_padding for size 12 the extra last row/column sees only half the kernel
    assert torch.allclose(up(x, [12, 12])[..., :11, :11], ref, atol=1e-6)


def test_conv_transpose_exact_size_and_clear_error():
    up = ConvTransposeUpsample(2, 2, scale_factor=2, kernel_size=2, padding=0)
    x = torch.randn(1, 2, 8, 8)
    assert up(x, [17, 16]).shape[-2:] == (17, 16)
    with pytest.raises(ShapeError, match=r"maps 8 -> 16..17.*cannot produce 15.*kernel_size=3, padding=1"):
        up(x, [15, 16])


def test_conv_transpose_all_options_forwarded():
    up = ConvTransposeUpsample(2, 3, scale_factor=2, kernel_size=4, stride=2, padding=1, output_padding=1,
                               dilation=2)
    assert up.conv.dilation == (2, 2) and up.conv.output_padding == (1, 1)
    ref = nn.ConvTranspose2d(2, 3, 4, 2, 1, output_padding=1, dilation=2)
    ref.load_state_dict(up.conv.state_dict())
    x = torch.randn(1, 2, 5, 5)
    assert torch.equal(up(x), ref(x))


def test_pixel_shuffle_icnr_has_no_checkerboard_at_init():
    up = PixelShuffleUpsample(4, 3, scale_factor=2)
    y = up(torch.randn(1, 4, 6, 6))
    # ICNR: each 2x2 output cell is constant, i.e. nearest upsampling of a conv output
    cells = y.unfold(2, 2, 2).unfold(3, 2, 2)
    assert torch.allclose(cells, cells[..., :1, :1].expand_as(cells), atol=1e-6)


def test_resize_conv_modes():
    with pytest.raises(ValueError, match="mode"):
        ResizeConvUpsample(2, 2, 2, mode="bicubicish")
    assert ResizeConvUpsample(2, 5, 2, mode="bilinear")(torch.randn(1, 2, 3, 3)).shape == (1, 5, 6, 6)


def test_interpolate_upsample_is_parameter_free_when_channels_match():
    assert sum(p.numel() for p in InterpolateUpsample(4, 4, 2).parameters()) == 0
    assert InterpolateUpsample(4, 2, 2)(torch.randn(1, 4, 3, 3)).shape == (1, 2, 6, 6)


def test_upsampler_factory_names_and_errors():
    assert upsampler_factory("resize_conv") is ResizeConvUpsample
    assert upsampler_factory(None) is InterpolateUpsample
    with pytest.raises(ValueError, match="conv_transpose"):
        upsampler_factory("deconv")

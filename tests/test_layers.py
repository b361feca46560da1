"""Blocks: ConvNormAct, ASPP, upsamplers."""
import pytest
import torch
from torch import nn

from segkit.analysis import ShapeError, conv_transpose_output_size
from torch.utils.flop_counter import FlopCounterMode

from segkit.models.layers import (ASPP, UPSAMPLERS, AtrousConv2d, ConvNormAct, ConvTransposeUpsample, DoubleConv,
                                  SeparableConvNormAct,
                                  InterpolateUpsample, PixelShuffleUpsample, ResizeConvUpsample, aspp_rates,
                                  init_relu_convs_, is_parameter_free, upsampler_factory)
from segkit.models.layers.upsample import nearest2x_conv3x3


@pytest.mark.parametrize("dilation", [1, 2, 4, 6])
def test_conv_norm_act_keeps_size_with_dilation(dilation):
    block = ConvNormAct(3, 8, 3, dilation=dilation)
    assert block(torch.randn(2, 3, 11, 17)).shape == (2, 8, 11, 17)
    assert block[0].bias is None and isinstance(block[1], nn.BatchNorm2d)
    assert block[0].dilation == (dilation, dilation)


def _conv_pair(k, dilation, groups=1, channels=4):
    torch.manual_seed(0)
    ref = nn.Conv2d(channels, channels, k, padding=dilation * (k // 2), dilation=dilation, groups=groups)
    ours = AtrousConv2d(channels, channels, k, padding=dilation * (k // 2), dilation=dilation, groups=groups)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _flops(module, x):
    with FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops()


# (kernel, dilation, height, width, groups): every tap live, rows cut, columns cut, both cut, 5-tap kernels cut to 3
@pytest.mark.parametrize("k, dilation, h, w, groups", [
    (3, 2, 9, 9, 1), (3, 12, 12, 40, 1), (3, 12, 40, 12, 1), (3, 36, 32, 32, 1), (3, 36, 36, 37, 1),
    (5, 4, 6, 30, 1), (5, 4, 3, 4, 4), (3, 6, 5, 7, 4)])
def test_atrous_conv_equals_conv2d_and_skips_dead_taps(k, dilation, h, w, groups):
    """Output and every gradient equal nn.Conv2d's, and the FLOPs drop exactly when a kernel row/column is dead."""
    ours, ref = _conv_pair(k, dilation, groups)
    x = torch.randn(2, 4, h, w, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, out_ref = ours(x), ref(x_ref)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-5)
    live = [min(k, 2 * ((n - 1) // dilation) + 1) for n in (h, w)]
    expected = _flops(ref, x) * live[0] * live[1] // (k * k)
    assert _flops(ours, x) == expected


def test_atrous_conv_traced_or_compiled_graph_serves_every_size():
    """Tracing on a small input must not bake the shortcut in: the traced module is right on larger inputs."""
    ours, ref = _conv_pair(3, 8)
    with torch.no_grad():
        traced = torch.jit.trace(ours, torch.randn(1, 4, 6, 6))
        big = torch.randn(1, 4, 20, 20)
        torch.testing.assert_close(traced(big), ref(big))
        exported = torch.export.export(ours, (torch.randn(1, 4, 6, 6),),
                                       dynamic_shapes=({2: torch.export.Dim("h", min=2), 3: None},))
        tall = torch.randn(1, 4, 20, 6)
        torch.testing.assert_close(exported.module()(tall), ref(tall))


def test_conv_norm_act_uses_atrous_conv_only_when_dilated():
    assert type(ConvNormAct(4, 4, 3)[0]) is nn.Conv2d
    assert type(ConvNormAct(4, 4, 3, dilation=2)[0]) is AtrousConv2d


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


@pytest.mark.parametrize("h, w", [(1, 1), (5, 7), (6, 4)])
def test_nearest2x_conv3x3_equals_resize_then_conv(h, w):
    """Values and gradients against PyTorch's own nearest resize + 3x3 conv (float64: exact up to rounding)."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, h, w, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    ref = nn.functional.conv2d(nn.functional.interpolate(x, scale_factor=2, mode="nearest"), weight, padding=1)
    out = nearest2x_conv3x3(x, weight)
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-12)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (x, weight), g), torch.autograd.grad(ref, (x, weight), g)):
        assert torch.allclose(a, b, atol=1e-12)


def test_nearest2x_conv3x3_costs_about_4_9_of_the_flops():
    x, weight = torch.randn(2, 64, 16, 16), torch.randn(32, 64, 3, 3)
    with FlopCounterMode(display=False) as ref:
        nn.functional.conv2d(nn.functional.interpolate(x, scale_factor=2, mode="nearest"), weight, padding=1)
    with FlopCounterMode(display=False) as fused:
        nearest2x_conv3x3(x, weight)
    assert fused.get_total_flops() < 0.55 * ref.get_total_flops()  # 4/9 plus the kernel-building einsum


@pytest.mark.parametrize("name", sorted(UPSAMPLERS))
def test_is_parameter_free(name):
    assert is_parameter_free(UPSAMPLERS[name]) == (name in ("bilinear", "nearest"))


def test_init_relu_convs_is_he_fan_out():
    torch.manual_seed(0)
    block = DoubleConv(64, 128)
    for p in block.parameters():
        nn.init.constant_(p, 0.3)
    init_relu_convs_(block)
    conv, norm = block[0][0], block[0][1]
    assert abs(conv.weight.std().item() - (2 / (128 * 9)) ** 0.5) < 0.05 * (2 / (128 * 9)) ** 0.5
    assert abs(conv.weight.mean().item()) < 1e-3
    assert torch.equal(norm.weight, torch.ones(128)) and torch.equal(norm.bias, torch.zeros(128))


@pytest.mark.parametrize("size", [(14, 12), (40, 36)])
def test_separable_aspp_equals_smp_with_the_same_weights(size):
    """Outside reference: smp's separable ASPP (depthwise conv, 1x1 conv, BN, ReLU per branch) loaded with segkit's
    weights gives the same output and gradients, in training mode, on a 14x12 map (rate 18 reads padding off its
    centre tap: segkit folds that depthwise scale into the 1x1 conv; rate 12 loses its outer columns) and on a
    40x36 map (every tap live)."""
    decoder = pytest.importorskip("segmentation_models_pytorch.decoders.deeplabv3.decoder")
    torch.manual_seed(0)
    ours = ASPP(32, 16, (6, 12, 18), separable=True, dropout=0.0).double()
    init_relu_convs_(ours)
    theirs = decoder.ASPP(32, 16, (6, 12, 18), separable=True, dropout=0.0).double()
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert [v.shape for v in ours_sd.values()] == [v.shape for v in theirs_sd.values()]
    theirs.load_state_dict(dict(zip(theirs_sd, ours_sd.values())))
    x = torch.randn(2, 32, *size, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, out_ref = ours(x), theirs(x_ref)
    torch.testing.assert_close(out, out_ref)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad)
    for (name, p), p_ref in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, msg=lambda m: f"{name}: {m}")


def test_separable_conv_folds_a_centre_only_depthwise_kernel_into_the_pointwise_conv():
    """Rate 18 on a 14x12 map: the block costs exactly its 1x1 conv (no depthwise pass); on a 40x40 map it runs
    both convs."""
    block = SeparableConvNormAct(8, 4, 3, dilation=18)
    pointwise_only = nn.Conv2d(8, 4, 1, bias=False)
    small, large = torch.randn(2, 8, 14, 12), torch.randn(2, 8, 40, 40)
    assert _flops(block, small) == _flops(pointwise_only, small)
    assert _flops(block, large) == _flops(pointwise_only, large) + _flops(block[0], large)


def test_separable_conv_runs_its_convs_when_a_hook_watches_them():
    """A forward hook on the 1x1 conv (pruning, observers, feature taps) sees it run: no fold then, same output."""
    torch.manual_seed(0)
    block = SeparableConvNormAct(8, 4, 3, dilation=18).eval()
    x = torch.randn(2, 8, 14, 12)
    folded = block(x)
    seen = []
    handle = block[1][0].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    torch.testing.assert_close(block(x), folded)
    handle.remove()
    assert seen == [(2, 4, 14, 12)]


def test_separable_conv_with_depthwise_norm_has_tensorflow_deeplabs_layout():
    """``depthwise_norm=True``: BN + ReLU after the depthwise conv (and no fold, the two convs are not linear)."""
    block = SeparableConvNormAct(8, 4, 3, dilation=18, depthwise_norm=True)
    assert [type(m) for m in block[0]] == [AtrousConv2d, nn.BatchNorm2d, nn.ReLU]
    small = torch.randn(2, 8, 14, 12)
    assert _flops(block, small) == _flops(nn.Conv2d(8, 4, 1), small) + _flops(block[0], small) > 0
    assert block(small).shape == (2, 4, 14, 12)
    from segkit.models import DeepLabV3Plus

    def norms(net):
        return sum(isinstance(m, nn.BatchNorm2d) for m in net.decoder.modules())

    # one more per separable conv: three ASPP branches and the fusion conv
    assert norms(DeepLabV3Plus("resnet18", 3, depthwise_norm=True)) == norms(DeepLabV3Plus("resnet18", 3)) + 4

"""UNet++, LR-ASPP, FPN and PSPNet — and every architecture with every encoder family: forward, backward, output
size at odd sizes, in_channels, output stride, upsamplers, torch.export, LR-ASPP parity with torchvision."""
import importlib.util
import itertools

import pytest
import torch
from torch import nn

from segkit.analysis import ShapeError
from segkit.models import ARCHITECTURES, LRASPP, UNetPlusPlus

SMALL_UNET = {"base_channels": 8, "depth": 5}
# the smallest variant of each family (ConvNeXt, the heaviest, separately below)
ENCODERS = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf", "unet",
            pytest.param("timm:test_efficientnet", marks=pytest.mark.skipif(
                importlib.util.find_spec("timm") is None, reason="timm not installed"))]
NEW = ["unetplusplus", "lraspp", "fpn", "pspnet"]
UPSAMPLERS = ["conv_transpose", "resize_conv", "pixel_shuffle", "bilinear"]


def build(arch, encoder, num_classes=3, in_channels=3, **kw):
    if encoder == "unet":
        kw.setdefault("encoder_kwargs", SMALL_UNET)
    return ARCHITECTURES[arch](encoder=encoder, num_classes=num_classes, in_channels=in_channels, **kw)


def forward_backward(net, x):
    x = x.clone().requires_grad_(True)
    logits = net(x)
    assert logits.shape == (x.shape[0], net.num_classes, *x.shape[-2:])
    logits.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert not unused, f"parameters without gradient: {unused[:5]}"


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_with_every_encoder(arch, encoder):
    if arch in ("unet", "deeplabv3", "deeplabv3plus") and encoder in ("resnet18", "unet"):
        pytest.skip("covered by tests/test_models.py")
    torch.manual_seed(0)
    forward_backward(build(arch, encoder), torch.randn(2, 3, 33, 35))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_convnext(arch):
    # the heaviest of the families, at one (odd) size: patchify convs round up like strided ones
    forward_backward(build(arch, "convnext_tiny"), torch.randn(2, 3, 65, 67))


@pytest.mark.parametrize("arch,upsampler", itertools.product(NEW, [u for u in UPSAMPLERS if u != "bilinear"]))
def test_upsamplers(arch, upsampler):
    # bilinear (the default) runs in the grid above with a backward pass; here the output size at an odd input
    net = build(arch, "mobilenet_v3_small", upsampler=upsampler).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 33, 35)).shape == (1, 3, 33, 35)


@pytest.mark.parametrize("arch", NEW)
@pytest.mark.parametrize("in_channels", [1, 4])
def test_in_channels(arch, in_channels):
    net = build(arch, "mobilenet_v3_small", num_classes=2, in_channels=in_channels).eval()
    with torch.no_grad():
        assert net(torch.randn(1, in_channels, 33, 47)).shape == (1, 2, 33, 47)
    with pytest.raises(ValueError, match=rf"\(N, {in_channels}, H, W\).*in_channels"):
        net(torch.randn(1, 3, 33, 47))


@pytest.mark.parametrize("arch", NEW)
@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride(arch, output_stride):
    net = build(arch, "efficientnet_b0", output_stride=output_stride).eval()
    assert max(net.encoder.reductions) == output_stride
    with torch.no_grad():
        assert net(torch.randn(1, 3, 65, 67)).shape == (1, 3, 65, 67)


def test_unetplusplus_deep_supervision():
    net = UNetPlusPlus("resnet18", num_classes=3, deep_supervision=True, decoder_channels=[16, 16, 32, 64])
    assert net.decoder.out_channels == 16 * 4  # one 16-channel slice of the classifier per top-row node
    forward_backward(net, torch.randn(2, 3, 33, 35))


def test_unetplusplus_unreachable_size_names_nearest():
    from segkit.models.layers import ConvTransposeUpsample

    def fixed(c_in, c_out, scale):
        return ConvTransposeUpsample(c_in, c_out, scale, kernel_size=scale, padding=0)

    net = UNetPlusPlus("resnet18", num_classes=2, upsampler=fixed).eval()
    with pytest.raises(ShapeError, match=r"input size 97x131.*nearest: \[96, 128\]"), torch.no_grad():
        net(torch.randn(1, 3, 97, 131))


def test_lraspp_needs_its_low_level_feature():
    with pytest.raises(ValueError, match=r"reduction 32 besides the deepest.*\[2, 4, 8, 16, 16\].*low_reduction"):
        LRASPP("mobilenet_v3_small", low_reduction=32)


def _randomize_bn_stats(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def test_lraspp_from_torchvision_same_logits():
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    torch.manual_seed(0)
    tv = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)
    _randomize_bn_stats(tv)
    tv.eval()
    net = LRASPP.from_torchvision(tv).eval()
    assert net.encoder.output_stride == 16 and net.encoder.reductions == [8, 16]
    x = torch.randn(2, 3, 67, 53)
    with torch.no_grad():
        ref = tv(x)["out"]
        out = net(x)
    assert ref.abs().max() > 0.05
    assert (out - ref).abs().max() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("arch,upsampler", [(a, "bilinear") for a in NEW] + [("unetplusplus", "conv_transpose")])
def test_torch_export_dynamic_size(arch, upsampler):
    torch.manual_seed(0)
    net = build(arch, "mobilenet_v3_small", upsampler=upsampler).eval()
    n = torch.export.Dim("n", min=1, max=16)
    if upsampler == "conv_transpose":
        d = net.size_divisor
        h, w = d * torch.export.Dim("hk", min=2, max=32), d * torch.export.Dim("wk", min=2, max=32)
        shapes = [(3, 3, 96, 128), (1, 3, 64, 64)]
    else:
        h, w = torch.export.Dim("h", min=64, max=512), torch.export.Dim("w", min=64, max=512)
        shapes = [(3, 3, 77, 101), (1, 3, 64, 64)]
    exported = torch.export.export(net, (torch.randn(2, 3, 64, 96),), dynamic_shapes={"x": {0: n, 2: h, 3: w}})
    for shape in shapes:
        x = torch.randn(shape)
        with torch.no_grad():
            assert torch.allclose(exported.module()(x), net(x), atol=1e-5)


@pytest.mark.parametrize("overrides", [
    ["model=deeplabv3plus", "model.encoder=mobilenet_v3_large", "model.output_stride=16"],
    ["model=lraspp"], ["model=unetplusplus", "model.encoder=resnet18"], ["model=fpn", "model.encoder=regnet_x_400mf"],
    ["model=pspnet", "model.encoder=resnet18", "model/upsampler=resize_conv"],
])
def test_configs_instantiate(overrides, tmp_path):
    from hydra.utils import instantiate

    from conftest import compose_cfg

    net = instantiate(compose_cfg("train", overrides, tmp_path).model).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 64)).shape[-2:] == (64, 64)

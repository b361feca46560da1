"""Every encoder x architecture x upsampler: forward, backward, shapes at odd sizes, in_channels; encoder
declarations; torchvision parity; export."""
import itertools

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from segkit.analysis import ShapeError
from segkit.models import ENCODERS, DeepLabV3, DeepLabV3Plus, ResNetEncoder, UNet, UNetEncoder, build_encoder

ARCHS = {"unet": UNet, "deeplabv3": DeepLabV3, "deeplabv3plus": DeepLabV3Plus}
UPSAMPLERS = ["nearest", "conv_transpose", "resize_conv", "pixel_shuffle", "bilinear"]
SMALL_UNET = {"base_channels": 8, "depth": 5}


def build(arch, encoder, upsampler="bilinear", num_classes=3, in_channels=3, **kw):
    if encoder == "unet":
        kw.setdefault("encoder_kwargs", SMALL_UNET)
    return ARCHS[arch](encoder=encoder, num_classes=num_classes, in_channels=in_channels, upsampler=upsampler, **kw)


@pytest.mark.parametrize("arch,encoder,upsampler", itertools.product(ARCHS, sorted(ENCODERS), UPSAMPLERS))
def test_forward_backward_odd_size(arch, encoder, upsampler):
    torch.manual_seed(0)
    net = build(arch, encoder, upsampler)
    x = torch.randn(2, 3, 37, 45, requires_grad=True)
    logits = net(x)
    assert logits.shape == (2, 3, 37, 45)
    logits.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert not unused, f"parameters without gradient: {unused[:5]}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("encoder", ["resnet18", "unet"])
@pytest.mark.parametrize("in_channels", [1, 4])
def test_in_channels(arch, encoder, in_channels):
    net = build(arch, encoder, in_channels=in_channels, num_classes=2).eval()
    assert net(torch.randn(1, in_channels, 32, 40)).shape == (1, 2, 32, 40)
    with pytest.raises(ValueError, match=rf"\(N, {in_channels}, H, W\).*in_channels"):
        net(torch.randn(1, 3, 32, 40))


@pytest.mark.parametrize("name", sorted(ENCODERS))
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_encoder_declares_its_features(name, output_stride):
    kwargs = SMALL_UNET if name == "unet" else {}
    if name == "unet":
        kwargs = {"base_channels": 4, "depth": 6}  # max stride 32
    enc = build_encoder(name, 3, output_stride, **kwargs).eval()
    size = 64
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, size, size))
    assert len(feats) == len(enc.out_channels) == len(enc.reductions)
    assert max(enc.reductions) == output_stride
    for f, c, r in zip(feats, enc.out_channels, enc.reductions):
        assert f.shape[1:] == (c, size // r, size // r)


@pytest.mark.parametrize("output_stride,replace", [(16, [False, False, True]), (8, [False, True, True])])
def test_resnet_dilation_matches_torchvision(output_stride, replace):
    ref = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=replace).eval()
    enc = ResNetEncoder("resnet50", output_stride=output_stride).eval()
    enc.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")})
    for m_ref, m in zip(ref.modules(), enc.modules()):
        if isinstance(m, nn.Conv2d):
            assert (m.stride, m.dilation, m.padding) == (m_ref.stride, m_ref.dilation, m_ref.padding)
    x = torch.randn(1, 3, 65, 65)
    body = nn.Sequential(ref.conv1, ref.bn1, ref.relu, ref.maxpool, ref.layer1, ref.layer2, ref.layer3, ref.layer4)
    with torch.no_grad():
        assert torch.allclose(enc(x)[-1], body(x), atol=1e-5)


def test_basic_block_resnets_dilate_too():
    # torchvision refuses dilation for BasicBlock; segkit applies the same scheme
    enc = ResNetEncoder("resnet18", output_stride=8)
    dilations = [m.dilation[0] for m in enc.layer4.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert dilations == [2, 2, 4, 4]


def _randomize_bn_stats(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("aux", [True, False])
def test_from_torchvision_same_logits(aux):
    from torchvision.models.segmentation import deeplabv3_resnet50

    torch.manual_seed(0)
    tv = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=5, aux_loss=aux)
    _randomize_bn_stats(tv)
    tv.eval()
    net = DeepLabV3.from_torchvision(tv).eval()
    assert net.encoder.output_stride == 8 and net.decoder.aspp.rates == (12, 24, 36)
    x = torch.randn(2, 3, 67, 53)
    with torch.no_grad():
        ref = tv(x)
        out, aux_out = net.forward_with_aux(x)
    assert (out - ref["out"]).abs().max() <= 1e-4
    if aux:
        assert (aux_out - ref["aux"]).abs().max() <= 1e-4
    else:
        assert aux_out is None


def test_readme_example_shape():
    net = DeepLabV3Plus(encoder="resnet18", num_classes=21, output_stride=16, upsampler="resize_conv").eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 129, 129)).shape == (1, 21, 129, 129)


def test_unreachable_size_names_layer_and_nearest_size():
    net = UNet("resnet18", num_classes=2, upsampler=_fixed_transpose).eval()
    with pytest.raises(ShapeError) as info, torch.no_grad():
        net(torch.randn(1, 3, 97, 131))
    msg = str(info.value)
    assert "input size 97x131" in msg and "ConvTranspose2d(kernel 2, stride 2, padding 0" in msg
    assert "nearest: [96, 128]" in msg
    with torch.no_grad():
        assert net(torch.randn(1, 3, 96, 128)).shape == (1, 2, 96, 128)


def _fixed_transpose(in_channels, out_channels, scale):
    from segkit.models.layers import ConvTransposeUpsample

    return ConvTransposeUpsample(in_channels, out_channels, scale, kernel_size=scale, padding=0)


def test_pretrained_weights_fail_clearly_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"resnet18.*checkpoints.*encoder_weights=null"):
        ResNetEncoder("resnet18", pretrained=True)


def test_plain_unet_encoder_validation():
    with pytest.raises(ValueError, match="power of two"):
        UNetEncoder(depth=4, output_stride=16)
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("vgg16")


@pytest.mark.parametrize("arch,upsampler", itertools.product(ARCHS, UPSAMPLERS))
def test_torch_export_dynamic_size(arch, upsampler):
    """torch.export with dynamic batch, height and width. Resize-based upsamplers take any size; the cropping
    ones (transposed conv, pixel shuffle) export for sizes that are multiples of the network's total stride."""
    torch.manual_seed(0)
    net = build(arch, "resnet18", upsampler).eval()
    n = torch.export.Dim("n", min=1, max=16)
    if upsampler in ("conv_transpose", "pixel_shuffle"):
        d = net.size_divisor
        h, w = d * torch.export.Dim("hk", min=2, max=64), d * torch.export.Dim("wk", min=2, max=64)
        shapes = [(3, 3, 96, 128), (1, 3, 64, 64), (2, 3, 160, 96)]
    else:
        h, w = torch.export.Dim("h", min=64, max=512), torch.export.Dim("w", min=64, max=512)
        shapes = [(3, 3, 77, 101), (1, 3, 64, 64), (2, 3, 129, 97)]
    exported = torch.export.export(net, (torch.randn(2, 3, 64, 96),), dynamic_shapes={"x": {0: n, 2: h, 3: w}})
    for shape in shapes:
        x = torch.randn(shape)
        with torch.no_grad():
            assert torch.allclose(exported.module()(x), net(x), rtol=1e-5, atol=1e-4)  # eager may take the fused path


def test_unet_decoder_widths():
    assert UNet("resnet18").decoder.decoder_channels == [256, 128, 64, 32, 16]  # smp's widths
    assert UNet("resnet50").decoder.decoder_channels == [256, 128, 64, 32, 16]
    # a narrow plain U-Net keeps its skip widths (the default run's model=unet_small)
    assert UNet("unet", encoder_kwargs={"base_channels": 16, "depth": 4}).decoder.decoder_channels == [64, 32, 16]
    with pytest.raises(ValueError, match="decoder_channels needs 5 entries"):
        UNet("resnet18", decoder_channels=[64, 32])


@pytest.mark.parametrize("upsampler", ["conv_transpose", "resize_conv", "pixel_shuffle"])
def test_unet_learnable_upsamplers_work_at_the_narrow_width(upsampler):
    dec = UNet("resnet18", upsampler=upsampler).decoder
    for up, block, c_out in zip(dec.ups, dec.blocks, dec.decoder_channels):
        assert up.out_channels == c_out and block[0][0].in_channels - c_out in (0, 64, 128, 256)
    assert [up.in_channels for up in dec.ups] == [512, 256, 128, 64, 32]


def test_unet_fused_nearest_path_equals_resize_concat_conv():
    """The default decoder (nearest resize fused into the first conv) against the same decoder taking the plain
    resize + concatenate + conv path: same logits and gradients, fewer FLOPs."""
    torch.manual_seed(0)
    net = UNet("resnet18", num_classes=3).double()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)

    def run(fused):
        for block in net.decoder.blocks:
            block.fuse_nearest = fused
        net.zero_grad()
        with FlopCounterMode(display=False) as flops:
            y = net(x)
        y.square().mean().backward()
        return y, [p.grad.clone() for p in net.parameters()], flops.get_total_flops()

    y1, g1, f1 = run(True)
    y2, g2, f2 = run(False)
    assert torch.allclose(y1, y2, atol=1e-10)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(g1, g2))
    assert f1 < 0.95 * f2  # whole model, encoder included


def test_unet_decoder_equals_smp_with_the_same_weights():
    """Outside reference: segmentation_models.pytorch's U-Net decoder (same widths, nearest resize, double conv)
    with segkit's decoder weights gives the same output on the same encoder features."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    net = UNet("resnet18", num_classes=3, final_step_convs=2).double().eval()  # smp's last step: a double conv
    ref = smp.Unet("resnet18", encoder_weights=None, classes=3).double().eval()
    ours, theirs = net.decoder.state_dict(), ref.decoder.state_dict()
    assert [v.shape for v in ours.values()] == [v.shape for v in theirs.values()]
    ref.decoder.load_state_dict(dict(zip(theirs, ours.values())))
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        features = net.encoder(x)
        assert torch.allclose(net.decoder(features, [64, 96]), ref.decoder([x] + features), atol=1e-10)


def test_unet_last_step_to_stride_1_has_one_conv_by_default():
    """A ResNet's stem is at stride 2, so its U-Net has a last, skip-less step to full resolution: one conv there by
    default (the 3x3 classifier follows), two with final_step_convs=2; every step with a skip keeps its double conv.
    The default's convolutions are smp's minus that step's second 16-channel conv, exactly."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    lean, double = UNet("resnet18", num_classes=3), UNet("resnet18", num_classes=3, final_step_convs=2)
    assert [len(b) for b in lean.decoder.blocks] == [2, 2, 2, 2, 1]
    assert [len(b) for b in double.decoder.blocks] == [2, 2, 2, 2, 2]
    # the plain U-Net's encoder starts at full resolution: no skip-less step, nothing changes
    assert all(len(b) == 2 for b in UNet("unet", final_step_convs=1).decoder.blocks)
    with pytest.raises(ValueError, match="final_step_convs must be 1 or 2, got 3"):
        UNet("resnet18", final_step_convs=3)
    ref = smp.Unet("resnet18", encoder_weights=None, classes=3)

    def conv_flops(model):
        for block in getattr(model.decoder, "blocks", []):
            if hasattr(block, "fuse_nearest"):
                block.fuse_nearest = False  # count the plain resize + concat + conv, as smp computes it
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.eval()(torch.randn(1, 3, 64, 96))
        return counter.get_flop_counts()["Global"][torch.ops.aten.convolution]

    last = 2 * 16 * 16 * 9 * 64 * 96  # the dropped 3x3 conv, 16 -> 16 channels over the 64x96 input
    assert conv_flops(double) == conv_flops(ref)
    assert conv_flops(lean) == conv_flops(ref) - last
    x = torch.randn(2, 3, 61, 83)  # odd size: the last step still reaches the input size
    assert lean(x).shape == (2, 3, 61, 83)


def test_deeplabv3plus_is_separable_by_default():
    from segkit.models.layers import SeparableConvNormAct

    net = DeepLabV3Plus("resnet50", num_classes=21)
    assert all(isinstance(m, SeparableConvNormAct) for m in net.decoder.fuse)
    assert sum(isinstance(b, SeparableConvNormAct) for b in net.decoder.aspp.branches) == 3
    assert sum(p.numel() for p in net.decoder.parameters()) < 3.5e6  # 17M with plain 3x3 convs
    assert not isinstance(DeepLabV3("resnet50").decoder.conv, SeparableConvNormAct)  # torchvision's stays plain

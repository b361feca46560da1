"""Encoders beyond ResNet: declared channels/reductions vs a real forward, dilation (checked against torchvision's own
dilated MobileNetV3), in_channels, weights from local files, offline failures, timm (optional)."""
import importlib.util
import sys
import time

import pytest
import torch
import torchvision
from torch import nn

from segkit.models import ResNetEncoder, TorchvisionEncoder, UNet, build_encoder

HAS_TIMM = importlib.util.find_spec("timm") is not None
TIMM_TINY = "timm:test_efficientnet"
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="timm not installed (pip install segkit[timm])")

# the smallest variant of every family; heavier ones only once, below
FAMILIES = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf", "regnet_y_400mf",
            pytest.param(TIMM_TINY, marks=needs_timm)]


def check_declared(enc, x):
    with torch.no_grad():
        feats = enc.eval()(x)
    assert len(feats) == len(enc.out_channels) == len(enc.reductions)
    for f, c, r in zip(feats, enc.out_channels, enc.reductions):
        assert f.shape[1] == c
        assert list(f.shape[-2:]) == [-(-n // r) for n in x.shape[-2:]]  # strided and patchify convs round up
    return feats


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_declared_features_match_forward(name, output_stride):
    enc = build_encoder(name, 3, output_stride)
    check_declared(enc, torch.randn(1, 3, 65, 67))
    assert max(enc.reductions) == output_stride == enc.output_stride
    assert enc.reductions == sorted(enc.reductions)


@pytest.mark.slow
@pytest.mark.parametrize("name,output_stride", [("convnext_tiny", 8), ("convnext_tiny", 32), ("efficientnet_v2_s", 16),
                                                ("mobilenet_v3_large", 16), ("resnext50_32x4d", 16),
                                                ("wide_resnet50_2", 32)])
def test_declared_features_heavier_families(name, output_stride):
    enc = build_encoder(name, 3, output_stride)
    check_declared(enc, torch.randn(1, 3, 65, 67))
    assert max(enc.reductions) == output_stride


def test_convnext_matches_torchvision_and_rounds_up_odd_sizes():
    torch.manual_seed(0)
    ref = torchvision.models.convnext_tiny().eval()
    enc = build_encoder("convnext_tiny").eval()
    enc.features.load_state_dict(ref.features.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(enc(x)[-1], ref.features(x))
        odd = enc(torch.randn(1, 3, 33, 35))
    assert [tuple(f.shape[-2:]) for f in odd] == [(9, 9), (5, 5), (3, 3), (2, 2)]


def test_resnet_family_goes_to_resnet_encoder():
    enc = build_encoder("resnext50_32x4d", output_stride=8)
    assert isinstance(enc, ResNetEncoder) and enc.out_channels == [64, 256, 512, 1024, 2048]
    assert isinstance(build_encoder("mobilenet_v3_small"), TorchvisionEncoder)


def _convs(module):
    return [(m.stride, m.dilation, m.padding) for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_dilation_matches_torchvision_mobilenet_v3():
    """torchvision's `dilated=True` (what its LR-ASPP and DeepLabV3 use) is the reference for output stride 16."""
    torch.manual_seed(0)
    ref = torchvision.models.mobilenet_v3_large(dilated=True).eval()
    enc = TorchvisionEncoder("mobilenet_v3_large", output_stride=16).eval()
    enc.features.load_state_dict(ref.features.state_dict())
    assert _convs(enc.features) == _convs(ref.features)
    x = torch.randn(1, 3, 65, 67)
    with torch.no_grad():
        assert torch.allclose(enc(x)[-1], ref.features(x), atol=1e-5)


def test_unsupported_output_stride_names_the_supported_ones():
    with pytest.raises(ValueError, match=r"pooling.*output_stride must be one of \[32\]"):
        TorchvisionEncoder("vgg11", output_stride=16)  # the adapter reads VGG; its max-pools cannot be dilated
    with pytest.raises(ValueError, match=r"output_stride must be one of \(8, 16, 32\)"):
        build_encoder("mobilenet_v3_small", 3, 12)


@pytest.mark.parametrize("name", FAMILIES + ["convnext_tiny"])
@pytest.mark.parametrize("in_channels", [1, 4])
def test_in_channels(name, in_channels):
    enc = build_encoder(name, in_channels)
    assert enc.in_channels == in_channels
    check_declared(enc, torch.randn(1, in_channels, 64, 64))


def test_unknown_encoder_and_weights_for_plain_unet():
    for name in ("resnet19", "vgg16"):  # VGG: not one of the tested families (TorchvisionEncoder reads it directly)
        with pytest.raises(ValueError, match=rf"unknown encoder '{name}'.*torchvision.*timm:"):
            build_encoder(name)
    with pytest.raises(ValueError, match="no pretrained weights.*encoder_weights=null"):
        build_encoder("unet", encoder_weights="DEFAULT")


# ---------------------------------------------------------------- weights: local files, names, offline failure


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("name", ["efficientnet_b0", "resnet18"])
def test_weights_from_local_file(tmp_path, name, suffix):
    torch.manual_seed(0)
    ref = torchvision.models.get_model(name, weights=None).eval()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(ref.state_dict(), str(path))
    else:
        torch.save(ref.state_dict(), path)
    enc = build_encoder(name, encoder_weights=str(path)).eval()
    body = ref.features if name.startswith("efficientnet") else nn.Sequential(
        ref.conv1, ref.bn1, ref.relu, ref.maxpool, ref.layer1, ref.layer2, ref.layer3, ref.layer4)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(enc(x)[-1], body(x))
    # one channel: the RGB filters are summed, so a gray image gives the gray RGB image's features
    gray = build_encoder(name, in_channels=1, encoder_weights=str(path)).eval()
    with torch.no_grad():
        for a, b in zip(gray(x[:, :1]), enc(x[:, :1].expand(-1, 3, -1, -1))):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_weights_from_torchvision_segmentation_checkpoint(tmp_path):
    # a DeepLabV3 state dict keeps its backbone under "backbone."; the encoder finds it
    from torchvision.models.segmentation import deeplabv3_resnet50

    tv = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=3)
    torch.save({"state_dict": tv.state_dict()}, tmp_path / "seg.pt")
    enc = build_encoder("resnet50", encoder_weights=str(tmp_path / "seg.pt"))
    assert torch.equal(enc.layer4[0].conv2.weight, tv.backbone.layer4[0].conv2.weight)


def test_bad_weights_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.pth.*encoder_weights"):
        build_encoder("mobilenet_v3_small", encoder_weights=str(tmp_path / "missing.pth"))
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"r18\.pth.*missing.*same backbone"):
        build_encoder("mobilenet_v3_small", encoder_weights=str(tmp_path / "r18.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pth.*not a readable state dict"):
        build_encoder("resnet18", encoder_weights=str(tmp_path / "junk.pth"))


def test_unknown_weights_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"IMAGENET1K_V9.*IMAGENET1K_V1"):
        build_encoder("mobilenet_v3_small", encoder_weights="IMAGENET1K_V9")


@pytest.mark.parametrize("make", [
    lambda: UNet("mobilenet_v3_small", encoder_weights="DEFAULT"),
    lambda: ResNetEncoder("resnet18", pretrained=True),  # the old spelling still means the default weights
])
def test_download_fails_fast_and_says_what_to_do(monkeypatch, tmp_path, make):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as info:
        make()
    assert time.perf_counter() - start < 5 and len(calls) == 1
    msg = str(info.value)
    filename = calls[0].rsplit("/", 1)[-1]
    assert str(tmp_path / "hub" / "checkpoints" / filename) in msg
    assert "model.encoder_weights=/path/to/" in msg and "encoder_weights=null" in msg


def test_nothing_downloads_unless_asked(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("download attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", forbidden)
    build_encoder("mobilenet_v3_small")
    ResNetEncoder("resnet18")


# ---------------------------------------------------------------- timm (optional extra)


@needs_timm
@pytest.mark.parametrize("in_channels", [1, 4])
def test_timm_in_channels_and_stride(in_channels):
    enc = build_encoder(TIMM_TINY, in_channels, 16)
    check_declared(enc, torch.randn(1, in_channels, 65, 67))
    assert enc.reductions[-1] == 16


@needs_timm
def test_timm_weights_from_local_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = timm.create_model(TIMM_TINY[5:]).eval()
    save_file(ref.state_dict(), str(tmp_path / "tiny.safetensors"))
    enc = build_encoder(TIMM_TINY, encoder_weights=str(tmp_path / "tiny.safetensors")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(enc(x)[-1], ref.forward_intermediates(x, intermediates_only=True)[-1], atol=1e-5)


@needs_timm
def test_timm_unsupported_stride_is_clear():
    with pytest.raises(ValueError, match=r"test_vit.*output_stride=8"):
        build_encoder("timm:test_vit", 3, 8)


@needs_timm
def test_timm_download_failure_says_what_to_do(monkeypatch):
    from timm.models import _builder

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(_builder, "load_pretrained", offline)
    with pytest.raises(RuntimeError, match=r"test_efficientnet.*Hugging Face cache.*encoder_weights=null"):
        build_encoder(TIMM_TINY, encoder_weights="DEFAULT")


def test_missing_timm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"pip install 'segkit\[timm\]'"):
        build_encoder(TIMM_TINY)


def test_encoder_table_script_runs():
    import subprocess
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    done = subprocess.run([sys.executable, "encoders.py", "--encoders", "mobilenet_v3_small", "unet", "--size", "64",
                           "--repeats", "1", "--markdown"], cwd=benchmarks, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| `mobilenet_v3_small` | 0.9 | 16, 16, 24, 48, 576 | 8, 16, 32 |" in done.stdout, done.stdout

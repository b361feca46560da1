"""Whole / sliding-window / TTA inference, and export (ONNX in onnxruntime, TorchScript, safetensors)."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from segkit.inference import gaussian_weight, infer, multi_scale_flip, sliding_window
from segkit.models import DeepLabV3Plus, UNet


def small_unet():
    torch.manual_seed(0)
    return UNet("unet", 3, upsampler="resize_conv", encoder_kwargs={"base_channels": 4, "depth": 3}).eval()


class FlipEquivariant(nn.Module):
    """A per-pixel (1x1) model: flipping the input flips the output exactly."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x.float())


@torch.no_grad()
def test_sliding_window_covering_whole_image_equals_whole():
    net = small_unet()
    x = torch.randn(2, 3, 40, 52)
    for blend in ("gaussian", "uniform"):
        assert torch.allclose(sliding_window(net, x, window=(40, 52), stride=20, blend=blend), net(x), atol=1e-5)
        # larger window: the image is padded, and the padding removed again
        out = sliding_window(net, x, window=64, stride=32, blend=blend)
        assert out.shape == (2, 3, 40, 52)


@torch.no_grad()
def test_sliding_window_per_pixel_model_is_exact_with_any_overlap():
    net = FlipEquivariant()
    x = torch.randn(1, 3, 97, 131)
    for window, stride in [(32, 16), ((40, 24), (30, 7)), (97, 50)]:
        assert torch.allclose(sliding_window(net, x, window, stride, batch_size=3), net(x), atol=1e-5)


@torch.no_grad()
def test_flip_tta_of_equivariant_model_equals_plain():
    net = FlipEquivariant()
    x = torch.randn(2, 3, 33, 47)
    assert torch.allclose(multi_scale_flip(net, x, scales=[1.0], flip=True), net(x), atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["whole", "slide", "tta"])
def test_arbitrary_sizes(mode):
    net = small_unet()
    out = infer(net, torch.randint(0, 255, (1, 3, 97, 131), dtype=torch.uint8).float(), mode=mode, window=64,
                stride=48, scales=[0.5, 1.0], flip=True)
    assert out.shape == (1, 3, 97, 131) and torch.isfinite(out).all()


def test_gaussian_weight_and_bad_arguments():
    w = gaussian_weight((9, 9))
    assert w[4, 4] == 1.0 and w.min() > 0
    with pytest.raises(ValueError, match="stride"):
        sliding_window(FlipEquivariant(), torch.zeros(1, 3, 8, 8), window=4, stride=5)
    with pytest.raises(ValueError, match="inference.mode"):
        infer(FlipEquivariant(), torch.zeros(1, 3, 8, 8), mode="magic")


# ---- export --------------------------------------------------------------------------------------------------
class _Task(nn.Module):
    """Stands in for a trained SegmentationTask: net + mean/std in 0-255 units."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)
        self.class_names = ["a", "b", "c"]


@pytest.mark.parametrize("upsampler", ["bilinear", "conv_transpose"])
def test_onnx_export_matches_pytorch(tmp_path, upsampler):
    ort = pytest.importorskip("onnxruntime")
    from segkit.export import export_onnx, normalized_model

    torch.manual_seed(0)
    task = _Task(DeepLabV3Plus("resnet18", 3, output_stride=16, upsampler=upsampler).eval())
    path = export_onnx(task, tmp_path / "m.onnx", example_size=64)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref_model = normalized_model(task)
    for shape in [(1, 3, 96, 128), (2, 3, 64, 160)]:
        x = torch.randint(0, 256, shape, dtype=torch.uint8)
        with torch.no_grad():
            ref = ref_model(x).numpy()
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert np.abs(out - ref).max() <= 1e-4
        assert (out.argmax(1) == ref.argmax(1)).all()


def test_torchscript_and_safetensors_roundtrip(tmp_path):
    from segkit.export import export_torchscript, load_safetensors, normalized_model, save_safetensors, write_sidecar

    task = _Task(small_unet())
    ts = torch.jit.load(str(export_torchscript(task, tmp_path / "m.pt", example_size=64)))
    x = torch.randint(0, 256, (1, 3, 72, 88), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(ts(x), normalized_model(task)(x), atol=1e-4)
    save_safetensors(task.net, tmp_path / "w.safetensors")
    fresh = UNet("unet", 3, upsampler="resize_conv", encoder_kwargs={"base_channels": 4, "depth": 3}).eval()
    load_safetensors(fresh, tmp_path / "w.safetensors")
    with torch.no_grad():
        assert torch.equal(fresh(x.float()), task.net(x.float()))
    meta = json.loads(write_sidecar(tmp_path / "m.json", task.class_names, None, {}).read_text())
    assert meta["class_names"] == ["a", "b", "c"] and len(meta["palette"]) == 3

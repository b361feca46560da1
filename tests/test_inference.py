"""Whole / sliding-window / TTA inference, and export (ONNX in onnxruntime, TorchScript, safetensors)."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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


class WindowMean(nn.Module):
    """Every output pixel is the mean of the whole input it was given (per channel): a model whose output depends
    on which window it saw, so blending, coverage and padding all show in the result."""

    def forward(self, x):
        return x.float().mean(dim=(-2, -1), keepdim=True).expand(x.shape).clone()


def window_offsets(length, window, stride):
    """Offsets written out independently of segkit: every stride, plus one flush with the end."""
    if length <= window:
        return [0]
    offsets = list(range(0, length - window + 1, stride))
    return offsets if offsets[-1] == length - window else offsets + [length - window]


def manual_sliding_uniform(net, x, window, stride):
    """Sliding-window inference computed the plain way: zero-pad to at least the window, run every window on its
    own, average the overlapping outputs with equal weight, cut the padding."""
    (wh, ww), (sh, sw) = window, stride
    n, _, h, w = x.shape
    ph, pw = max(h, wh), max(w, ww)
    padded = torch.zeros(n, x.shape[1], ph, pw)
    padded[..., :h, :w] = x
    total, count = None, torch.zeros(ph, pw)
    for y in window_offsets(ph, wh, sh):
        for xx in window_offsets(pw, ww, sw):
            out = net(padded[..., y:y + wh, xx:xx + ww])
            total = torch.zeros(n, out.shape[1], ph, pw) if total is None else total
            total[..., y:y + wh, xx:xx + ww] += out
            count[y:y + wh, xx:xx + ww] += 1
    return (total / count)[..., :h, :w]


def manual_tta(net, x, scales, flip, base=lambda net, x: net(x)):
    """Multi-scale + flip TTA written out: resize the image (bilinear), predict (and on the mirrored image,
    mirrored back), resize the logits back to the input size, average every pass."""
    h, w = x.shape[-2:]
    passes = []
    for s in scales:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        outs = [base(net, xs)] + ([base(net, xs.flip(-1)).flip(-1)] if flip else [])
        passes += [o if o.shape[-2:] == (h, w) else F.interpolate(o, size=(h, w), mode="bilinear",
                                                                   align_corners=False) for o in outs]
    return torch.stack(passes).mean(0)


@torch.no_grad()
def test_sliding_window_covering_whole_image_equals_whole():
    net = small_unet()
    x = torch.randn(2, 3, 40, 52)
    for blend in ("gaussian", "uniform"):
        assert torch.allclose(sliding_window(net, x, window=(40, 52), stride=20, blend=blend), net(x), atol=1e-5)


@torch.no_grad()
def test_sliding_window_larger_than_image_zero_pads_and_cuts():
    x = torch.rand(2, 3, 40, 52)
    expected = x.sum(dim=(-2, -1), keepdim=True).expand(x.shape) / (64 * 64)  # the zeros count in the mean
    for blend in ("gaussian", "uniform"):
        assert torch.allclose(sliding_window(WindowMean(), x, window=64, stride=32, blend=blend), expected,
                              atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("shape,window,stride", [((1, 3, 23, 37), (8, 12), (5, 7)),
                                                 ((2, 2, 30, 30), (10, 10), (10, 10)),
                                                 ((1, 1, 17, 9), (16, 4), (3, 1))])
def test_uniform_sliding_window_equals_manual_average(shape, window, stride):
    x = torch.rand(shape)
    out = sliding_window(WindowMean(), x, window, stride, blend="uniform", batch_size=3)
    assert torch.allclose(out, manual_sliding_uniform(WindowMean(), x, window, stride), atol=1e-6)
    assert not torch.allclose(out, WindowMean()(x), atol=1e-3)  # the windows really differ from the whole image


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
@pytest.mark.parametrize("scales,flip", [([0.5, 1.0, 1.5], True), ([0.75, 1.25], False), ([1.0], True)])
def test_multi_scale_tta_equals_manual_average_of_resized_passes(scales, flip):
    net = small_unet()
    x = torch.rand(2, 3, 45, 61) * 255
    out = multi_scale_flip(net, x, scales=scales, flip=flip)
    assert torch.allclose(out, manual_tta(net, x, scales, flip), atol=1e-4)
    assert not torch.allclose(out, net(x), atol=1e-3)  # TTA changes the logits of a non-equivariant net


@torch.no_grad()
@pytest.mark.parametrize("mode", ["whole", "slide", "tta"])
def test_infer_modes_on_arbitrary_sizes_equal_manual_computation(mode):
    net = small_unet()
    x = torch.randint(0, 255, (1, 3, 97, 131), dtype=torch.uint8).float()
    out = infer(net, x, mode=mode, window=64, stride=48, blend="uniform", scales=[0.5, 1.0], flip=True,
                batch_size=4)
    slide = lambda net, x: manual_sliding_uniform(net, x, (64, 64), (48, 48))  # noqa: E731
    expected = {"whole": lambda: net(x), "slide": lambda: slide(net, x),
                # tta slides when the window is smaller than the (unscaled) image, at every scale
                "tta": lambda: manual_tta(net, x, [0.5, 1.0], True, base=slide)}[mode]()
    assert out.shape == (1, 3, 97, 131)
    assert torch.allclose(out, expected, atol=1e-4)


def test_gaussian_weight_and_bad_arguments():
    w = gaussian_weight((9, 9))
    assert w[4, 4] == 1.0 and w.min() > 0
    with pytest.raises(ValueError, match="stride"):
        sliding_window(FlipEquivariant(), torch.zeros(1, 3, 8, 8), window=4, stride=5)
    with pytest.raises(ValueError, match="inference.mode"):
        infer(FlipEquivariant(), torch.zeros(1, 3, 8, 8), mode="magic")


# ---- export --------------------------------------------------------------------------------------------------
def _Task(net):
    """A trained-model stand-in: a SegmentationTask with its data spec (the task's own normalisation is the
    reference the exports are compared with)."""
    from segkit.data.spec import DataSpec
    from segkit.tasks import SegmentationTask

    return SegmentationTask(net, DataSpec(3, class_names=["a", "b", "c"])).eval()


@pytest.mark.parametrize("upsampler", ["bilinear", "conv_transpose"])
def test_onnx_export_matches_pytorch(tmp_path, upsampler):
    ort = pytest.importorskip("onnxruntime")
    from segkit.export import export_onnx

    torch.manual_seed(0)
    task = _Task(DeepLabV3Plus("resnet18", 3, output_stride=16, upsampler=upsampler).eval())
    path = export_onnx(task, tmp_path / "m.onnx", example_size=64)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref_model = task  # the task normalises uint8 batches itself
    for shape in [(1, 3, 96, 128), (2, 3, 64, 160)]:
        x = torch.randint(0, 256, shape, dtype=torch.uint8)
        with torch.no_grad():
            ref = ref_model(x).numpy()
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert np.abs(out - ref).max() <= 1e-4
        assert (out.argmax(1) == ref.argmax(1)).all()


def test_torchscript_and_safetensors_roundtrip(tmp_path):
    from segkit.export import export_torchscript, load_safetensors, save_safetensors, write_sidecar

    task = _Task(small_unet())
    ts = torch.jit.load(str(export_torchscript(task, tmp_path / "m.pt", example_size=64)))
    x = torch.randint(0, 256, (1, 3, 72, 88), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(ts(x), task(x), atol=1e-4)
    save_safetensors(task.net, tmp_path / "w.safetensors")
    fresh = UNet("unet", 3, upsampler="resize_conv", encoder_kwargs={"base_channels": 4, "depth": 3}).eval()
    load_safetensors(fresh, tmp_path / "w.safetensors")
    with torch.no_grad():
        assert torch.equal(fresh(x.float()), task.net(x.float()))
    meta = json.loads(write_sidecar(tmp_path / "m.json", task.class_names, None, {}).read_text())
    assert meta["class_names"] == ["a", "b", "c"] and len(meta["palette"]) == 3

"""Export a trained model for deployment: ONNX or TorchScript taking raw image batches (uint8 0-255, or float 0-1
for 16-bit/float data; dynamic batch/height/width), normalisation baked in, plus a JSON sidecar with class names,
palette and the input contract; and weights as safetensors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from segkit.data.spec import default_palette
from segkit.models.layers.upsample import ConvTransposeUpsample, PixelShuffleUpsample


class NormalizedModel(nn.Module):
    """Raw images ``(N, C, H, W)`` -> logits, ``(x / scale - mean) / std`` inside the graph.

    ``mean``/``std`` are per channel in 0-1 units; ``input_dtype="uint8"`` takes 0-255 images (the scale is folded
    into mean/std), ``"float32"`` takes images already in 0-1 (how segkit reads 16-bit and float files).
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], input_dtype: str = "uint8"
                 ) -> None:
        super().__init__()
        if input_dtype not in INPUT_SCALE:
            raise ValueError(f"input_dtype must be one of {sorted(INPUT_SCALE)}, got {input_dtype!r}")
        self.net, self.input_dtype = net, input_dtype
        scale = INPUT_SCALE[input_dtype]
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1) * scale)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1) * scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images.float() - self.mean) / self.std)


INPUT_SCALE = {"uint8": 255.0, "float32": 1.0}


def normalized_model(task: Any, input_dtype: str = "uint8") -> NormalizedModel:
    """Wrap a ``SegmentationTask``'s network with its data spec's normalisation."""
    return NormalizedModel(task.net, task.spec.mean, task.spec.std, input_dtype).eval()


def _example(model: NormalizedModel, size: int) -> torch.Tensor:
    shape = (2, int(model.mean.shape[1]), size, size)
    if model.input_dtype == "uint8":
        return torch.randint(0, 256, shape, dtype=torch.uint8)
    return torch.rand(shape)


def input_contract(task: Any, input_dtype: str = "uint8", baked_in: bool = True) -> Dict[str, Any]:
    """The sidecar's description of what the exported model takes."""
    spec = task.spec
    info: Dict[str, Any] = {"layout": "NCHW", "channels": spec.in_channels, "height_width": "dynamic",
                            "dtype": input_dtype,
                            "range": "0-255" if input_dtype == "uint8" else "0-1 (16-bit images divided by 65535)"}
    norm = {"mean": list(spec.mean), "std": list(spec.std), "units": "0-1: x = image / 255 (uint8) or image (0-1 "
            "float), then (x - mean) / std"}
    info["normalisation"] = "built in" if baked_in else norm
    if baked_in:
        info["normalisation_applied"] = norm
    return info


MIN_RESIZE_SIZE = 64  # smallest exported height/width of a resize-based network


def _dynamic_dims(net: nn.Module):
    """Height/width Dims (and the smallest size they admit): any size from 64 for resize-based decoders, multiples
    of the total stride (at least two) otherwise."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    if any(isinstance(m, (ConvTransposeUpsample, PixelShuffleUpsample)) for m in net.modules()):
        d = int(getattr(net, "size_divisor", 32))
        return (batch, d * torch.export.Dim("hk", min=2, max=8192 // d),
                d * torch.export.Dim("wk", min=2, max=8192 // d), 2 * d)
    return (batch, torch.export.Dim("height", min=MIN_RESIZE_SIZE, max=8192),
            torch.export.Dim("width", min=MIN_RESIZE_SIZE, max=8192), MIN_RESIZE_SIZE)


def export_onnx(task: Any, path: str | Path, example_size: int = 128, opset: int = 18, input_dtype: str = "uint8"
                ) -> Path:
    model = normalized_model(task, input_dtype)
    batch, h, w, min_size = _dynamic_dims(model.net)
    divisor = int(getattr(model.net, "size_divisor", 1))
    size = max(example_size, min_size)  # the example must lie in the exported range
    size += -size % divisor
    program = torch.onnx.export(model, (_example(model, size),), dynamo=True, opset_version=opset,
                                input_names=["images"], output_names=["logits"],
                                dynamic_shapes={"images": {0: batch, 2: h, 3: w}})
    program.save(str(path))
    return Path(path)


def export_torchscript(task: Any, path: str | Path, example_size: int = 128, input_dtype: str = "uint8") -> Path:
    model = normalized_model(task, input_dtype)
    with torch.no_grad():
        traced = torch.jit.trace(model, (_example(model, example_size),), check_trace=False)
    traced.save(str(path))
    return Path(path)


def write_sidecar(path: str | Path, class_names: Sequence[str], palette: Optional[Sequence[Sequence[int]]],
                  input_info: Dict[str, Any], postprocessing: Sequence[Dict[str, Any]] = ()) -> Path:
    meta = {"class_names": list(class_names),
            "palette": [list(map(int, c)) for c in (palette or default_palette(len(class_names)))],
            "input": input_info, "output": "logits (N, num_classes, H, W); argmax over dim 1 gives class indices"}
    if postprocessing:  # not in the graph: connected components are applied to its argmax (segkit.postprocess)
        meta["postprocessing"] = {"rules": list(postprocessing), "how": (
            "after the argmax, per class in order: keep: largest keeps only the largest 8-connected component of the "
            "class; keep: min_size drops its components under min_size pixels; a dropped pixel takes the class with "
            "the next highest logit (segkit.postprocess.apply_rules)")}
    Path(path).write_text(json.dumps(meta, indent=2) + "\n")
    return Path(path)


def save_safetensors(module: nn.Module, path: str | Path, metadata: Optional[Dict[str, str]] = None) -> Path:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    return Path(path)


def load_safetensors(module: nn.Module, path: str | Path) -> nn.Module:
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(path)))
    return module

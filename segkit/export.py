"""Export a trained model for deployment: ONNX or TorchScript taking raw image batches (uint8 or float, 0-255,
dynamic height/width), normalisation baked in, plus a JSON sidecar with class names and palette; and weights as
safetensors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from segkit.data.io import default_palette
from segkit.models.layers.upsample import ConvTransposeUpsample, PixelShuffleUpsample


class NormalizedModel(nn.Module):
    """``images (N, C, H, W)`` in 0-255 -> logits; ``(x - mean) / std`` inside the graph."""

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean.detach().clone().float().view(1, -1, 1, 1))
        self.register_buffer("std", std.detach().clone().float().view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images.float() - self.mean) / self.std)


def normalized_model(task: Any) -> NormalizedModel:
    """Wrap a ``SegmentationTask``'s network with its normalisation (task buffers are already in 0-255 units)."""
    return NormalizedModel(task.net, task.mean, task.std).eval()


def _example(model: NormalizedModel, size: int) -> torch.Tensor:
    return torch.randint(0, 256, (2, int(model.mean.shape[1]), size, size), dtype=torch.uint8)


def _dynamic_dims(net: nn.Module):
    """Height/width Dims: any size from 64 for resize-based decoders, multiples of the total stride otherwise."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    if any(isinstance(m, (ConvTransposeUpsample, PixelShuffleUpsample)) for m in net.modules()):
        d = int(getattr(net, "size_divisor", 32))
        return batch, d * torch.export.Dim("hk", min=2, max=8192 // d), d * torch.export.Dim("wk", min=2, max=8192 // d)
    return batch, torch.export.Dim("height", min=64, max=8192), torch.export.Dim("width", min=64, max=8192)


def export_onnx(task: Any, path: str | Path, example_size: int = 128, opset: int = 18) -> Path:
    model = normalized_model(task)
    batch, h, w = _dynamic_dims(model.net)
    size = max(example_size, 2 * int(getattr(model.net, "size_divisor", 32)))
    size -= size % int(getattr(model.net, "size_divisor", 1))
    program = torch.onnx.export(model, (_example(model, size),), dynamo=True, opset_version=opset,
                                input_names=["images"], output_names=["logits"],
                                dynamic_shapes={"images": {0: batch, 2: h, 3: w}})
    program.save(str(path))
    return Path(path)


def export_torchscript(task: Any, path: str | Path, example_size: int = 128) -> Path:
    model = normalized_model(task)
    with torch.no_grad():
        traced = torch.jit.trace(model, (_example(model, example_size),), check_trace=False)
    traced.save(str(path))
    return Path(path)


def write_sidecar(path: str | Path, class_names: Sequence[str], palette: Optional[Sequence[Sequence[int]]],
                  input_info: Dict[str, Any]) -> Path:
    meta = {"class_names": list(class_names),
            "palette": [list(map(int, c)) for c in (palette or default_palette(len(class_names)))],
            "input": input_info, "output": "logits (N, num_classes, H, W); argmax over dim 1 gives class indices"}
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

"""Receptive fields: theoretical for a layer stack, empirical (input-gradient support) for any model's stages."""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from segkit.analysis.shapes import effective_kernel_size

Layer = Tuple[int, int, int]  # (kernel_size, stride, dilation)


def receptive_field(layers: Iterable[Layer]) -> Tuple[int, int]:
    """Theoretical receptive field and jump (cumulative stride) of stacked layers.

    Each layer adds ``(k_eff - 1) * jump`` with ``k_eff = d(k-1)+1``: stacked dilated 3x3 convs with rates
    1, 2, 4 give ``1 + 2 + 4 + 8 = 15``.
    """
    rf, jump = 1, 1
    for kernel, stride, dilation in layers:
        rf += (effective_kernel_size(kernel, dilation) - 1) * jump
        jump *= stride
    return rf, jump


def layers_of(module: nn.Module) -> List[Layer]:
    """The (kernel, stride, dilation) of the convs and pools of a *sequential* stack, in order."""
    out: List[Layer] = []
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s = m.kernel_size, m.stride
            d = getattr(m, "dilation", 1)
            first = lambda v: v[0] if isinstance(v, tuple) else v  # noqa: E731
            out.append((first(k), first(s), first(d)))
    return out


def empirical_receptive_field(model: nn.Module, modules: Dict[str, nn.Module], input_size: Sequence[int] = (257, 257),
                              in_channels: Optional[int] = None, draws: int = 4) -> Dict[str, Dict[str, int]]:
    """For each named module, the extent (height, width) of input pixels whose gradient is non-zero for the
    centre output pixel of that module's output, and the output's stride relative to the input.

    Runs in eval mode in float64; the gradient support is the union over ``draws`` seeded random inputs, so that a
    path a ReLU switches off for one input still counts.
    """
    in_channels = in_channels or int(getattr(model, "in_channels", 3))
    was_training = model.training
    model = model.double().eval()
    outputs: Dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=name: outputs.__setitem__(n, o))
             for name, m in modules.items()]
    results: Dict[str, Dict[str, int]] = {}
    try:
        g = torch.Generator().manual_seed(0)
        for name in modules:
            grad = torch.zeros(input_size[0], input_size[1], dtype=torch.float64)
            for _ in range(draws):
                x = torch.randn(1, in_channels, *input_size, dtype=torch.float64, generator=g).requires_grad_()
                outputs.clear()
                model(x)
                y = outputs[name]
                if isinstance(y, (list, tuple)):
                    y = y[-1]
                h, w = y.shape[-2:]
                y[..., h // 2, w // 2].sum().backward()
                grad += x.grad[0].abs().sum(0)
            support = (grad > 0).nonzero()
            if len(support) == 0:
                results[name] = {"height": 0, "width": 0, "stride": _stride(input_size[0], h)}
                continue
            extent = support.max(0).values - support.min(0).values + 1
            results[name] = {"height": int(extent[0]), "width": int(extent[1]),
                             "stride": _stride(input_size[0], h)}
    finally:
        for hk in hooks:
            hk.remove()
        model.float().train(was_training)
    return results


def _stride(n: int, h: int) -> int:
    """Output stride from sizes: strided layers map n to (n-1)/s + 1 cells for odd n, hence (n-1)/(h-1)."""
    return round((n - 1) / (h - 1)) if h > 1 else n


def model_stages(model: nn.Module) -> Dict[str, nn.Module]:
    """Stages worth reporting for a segkit Segmenter: encoder stages, ASPP branches, decoder, head."""
    stages: Dict[str, nn.Module] = {}
    enc = model.encoder
    names = [n for n in ("conv1", "layer1", "layer2", "layer3", "layer4") if hasattr(enc, n)]
    if names:
        for n in names:
            stages[f"encoder.{n}"] = getattr(enc, n)
    elif hasattr(enc, "stages"):
        for i, stage in enumerate(enc.stages):
            stages[f"encoder.stage{i}"] = stage
    aspp = getattr(model.decoder, "aspp", None)
    if aspp is not None:
        labels = ["1x1"] + [f"rate{r}" for r in aspp.rates] + (["pool"] if aspp.pooling else [])
        for label, branch in zip(labels, aspp.branches):
            stages[f"aspp.{label}"] = branch
    stages["decoder"] = model.decoder
    stages["head"] = model.head
    return stages

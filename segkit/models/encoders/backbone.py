"""Any torchvision classification backbone as a segmentation encoder: one adapter for all families.

The body is read from the model's structure, as torchvision's own segmentation models do: ``features``
(MobileNetV2/V3, EfficientNet/V2, ConvNeXt, and also VGG, DenseNet ...) or ``stem`` + ``trunk_output`` (RegNet).
Its children are *units*; one probe forward measures each unit's channels and reduction, and the encoder returns the
last unit at every reduction (like timm's ``feature_info``), or the units named by ``out_indices``. Output stride
8/16 replaces strides by dilation, generically (see :func:`dilate_units_`). ResNets keep their own encoder
(``ResNetEncoder``: torchvision-exact dilation and module names).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from segkit.models.encoders.weights import WeightsSpec, load_weights_, resolve_weights

OUTPUT_STRIDES = (8, 16, 32)
_PROBE_SIZE = 64


def body_names(net: nn.Module) -> List[str]:
    """Top-level children of a torchvision classifier that form its backbone (the rest is the head)."""
    if isinstance(getattr(net, "features", None), nn.Sequential):
        return ["features"]
    if hasattr(net, "stem") and isinstance(getattr(net, "trunk_output", None), nn.Sequential):
        return ["stem", "trunk_output"]
    raise ValueError(f"{type(net).__name__} has neither a `features` nor a `stem` + `trunk_output` backbone; "
                     "supported torchvision families: ResNet/ResNeXt/Wide ResNet, MobileNetV2/V3, EfficientNet/V2, "
                     "ConvNeXt, RegNet (and other `features` nets such as VGG and DenseNet)")


def dilate_units_(units: Sequence[nn.Module], reductions: Sequence[int], output_stride: int) -> None:
    """Trade the strides of every unit past ``output_stride`` for dilation, in place.

    In the unit that loses its stride and all later ones, each strided conv gets stride 1 and every conv with a
    kernel > 1 the accumulated dilation, with "same" padding: torchvision's scheme for MobileNetV3 (``dilated=True``,
    LR-ASPP), applied to every family. A :class:`PatchConv2d` (ConvNeXt's downsampling) keeps the previous dilation —
    its taps were adjacent pixels. A strided pooling layer cannot be dilated: the error names the strides that work.
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    pooled = [r for unit, r in zip(units, reductions) if any(_stride(m) > 1 for m in unit.modules()
                                                             if not isinstance(m, nn.Conv2d) and _is_leaf(m))]
    if pooled and output_stride < max(pooled):
        raise ValueError(f"this backbone downsamples by pooling to reduction {max(pooled)}, which dilation cannot "
                         f"replace; output_stride must be one of {[s for s in OUTPUT_STRIDES if s >= max(pooled)]}")
    dilation, previous = 1, 1
    for unit, reduction in zip(units, reductions):
        if reduction <= output_stride:
            previous = reduction
            continue
        step = reduction // max(previous, output_stride)
        old, dilation = dilation, dilation * step
        for name, m in unit.named_modules():
            if not isinstance(m, nn.Conv2d):
                continue
            k = m.kernel_size[0]
            m.stride = (1, 1)
            if k == 1:
                continue
            if isinstance(m, PatchConv2d):
                m.dilation = (old, old)  # its taps were adjacent pixels; it pads itself
            elif k % 2 == 1 and m.padding == (m.dilation[0] * (k // 2),) * 2:
                m.dilation, m.padding = (dilation, dilation), (dilation * (k // 2),) * 2
            else:
                raise ValueError(f"cannot dilate conv {name} (kernel {k}, padding {m.padding}) for "
                                 f"output_stride={output_stride}; use output_stride >= {reduction}")
        previous = reduction


class PatchConv2d(nn.Conv2d):
    """A patchify conv (kernel == stride, no padding: ConvNeXt's stem and downsampling) that pads right/bottom so the
    output is ``ceil(size / stride)``, as every strided-conv encoder gives, instead of dropping the last partial patch
    (which no decoder can undo at odd sizes). Identical to ``nn.Conv2d`` where the size divides; also at stride 1
    (after dilation) it keeps the size."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        pads = []
        for n, k, s, d in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1], self.dilation[::-1]):
            pads += [0, (-(-n // s) - 1) * s + d * (k - 1) + 1 - n]
        return F.conv2d(F.pad(x, pads), weight, bias, self.stride, 0, self.dilation, self.groups)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "PatchConv2d":
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation, conv.groups,
                  conv.bias is not None)
        new.weight, new.bias = conv.weight, conv.bias
        return new


def use_patch_convs_(module: nn.Module) -> None:
    """Replace every patchify ``nn.Conv2d`` (kernel == stride > 1, no padding) by a :class:`PatchConv2d`, in place."""
    for name, m in list(module.named_modules()):
        if (type(m) is nn.Conv2d and m.kernel_size == m.stride and m.stride != (1, 1)
                and m.padding == (0, 0)):
            parent, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent), attr, PatchConv2d.from_conv(m))


def _stride(m: nn.Module) -> int:
    stride = getattr(m, "stride", 1)
    return int(max(stride) if isinstance(stride, (tuple, list)) else stride)


def _is_leaf(m: nn.Module) -> bool:
    return next(iter(m.children()), None) is None


class TorchvisionEncoder(nn.Module):
    """A torchvision backbone by name (``mobilenet_v3_large``, ``efficientnet_b0``, ``convnext_tiny``,
    ``regnet_x_400mf`` ...), returning one feature map per reduction.

    Module names follow torchvision (``features.3.block...``), so torchvision state dicts load as they are.
    ``out_indices`` picks units by index instead of the default last unit per reduction; ``encoder_weights`` is a
    file path, a torchvision weights name (``"DEFAULT"``) or ``None``; ``pretrained=True`` means ``"DEFAULT"``.
    """

    def __init__(self, name: str, in_channels: int = 3, output_stride: Optional[int] = None,
                 encoder_weights: WeightsSpec = None, out_indices: Optional[Sequence[int]] = None,
                 pretrained: bool = False) -> None:
        super().__init__()
        try:
            net = torchvision.models.get_model(name, weights=None)
        except ValueError:
            raise ValueError(f"unknown torchvision model {name!r}") from None
        names = body_names(net)
        for attr in names:
            setattr(self, attr, getattr(net, attr))
        load_weights_(self, name, resolve_weights(encoder_weights, pretrained), in_channels)
        use_patch_convs_(self)
        units = [u for attr in names for u in _children(getattr(self, attr))]
        channels, reductions = self._probe(units, in_channels)
        if out_indices is None:
            out_indices = [i for i, r in enumerate(reductions) if i == len(units) - 1 or reductions[i + 1] != r]
        out_indices = sorted(len(units) + i if i < 0 else int(i) for i in out_indices)
        if not out_indices or out_indices[-1] >= len(units) or out_indices[0] < 0:
            raise ValueError(f"out_indices must index the {len(units)} units of {name}, got {list(out_indices)}")
        self._drop_after(names, out_indices[-1])
        units = units[: out_indices[-1] + 1]
        max_stride = reductions[out_indices[-1]]
        output_stride = max_stride if output_stride is None else int(output_stride)
        if output_stride < max_stride:
            dilate_units_(units, reductions[: len(units)], output_stride)
        self._units: Tuple[nn.Module, ...] = tuple(units)
        self._taps = frozenset(out_indices)
        self.name = name
        self.in_channels = in_channels
        self.output_stride = min(output_stride, max_stride)
        self.out_indices: List[int] = out_indices
        self.out_channels: List[int] = [channels[i] for i in out_indices]
        self.reductions: List[int] = [min(reductions[i], output_stride) for i in out_indices]

    @staticmethod
    @torch.no_grad()
    def _probe(units: Sequence[nn.Module], in_channels: int) -> Tuple[List[int], List[int]]:
        """Channels and reduction after every unit, from one small eval-mode forward."""
        modes = [u.training for u in units]
        x = torch.zeros(1, in_channels, _PROBE_SIZE, _PROBE_SIZE)
        channels, reductions = [], []
        for unit in units:
            x = unit.eval()(x)
            channels.append(int(x.shape[1]))
            reductions.append(_PROBE_SIZE // int(x.shape[-1]))
        for unit, mode in zip(units, modes):
            unit.train(mode)
        return channels, reductions

    def _drop_after(self, names: Sequence[str], last: int) -> None:
        """Unregister units past the last tap: they would be parameters without gradients."""
        seen = 0
        for attr in names:
            body = getattr(self, attr)
            n = len(body) if isinstance(body, nn.Sequential) else 1
            if isinstance(body, nn.Sequential) and seen + n - 1 > last:
                del body[max(0, last + 1 - seen):]
            elif seen > last:
                delattr(self, attr)
            seen += n

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        features = []
        for i, unit in enumerate(self._units):
            x = unit(x)
            if i in self._taps:
                features.append(x)
        return features


def _children(module: nn.Module) -> List[nn.Module]:
    return list(module) if isinstance(module, nn.Sequential) else [module]

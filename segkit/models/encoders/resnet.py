"""torchvision ResNets (ResNet, ResNeXt, Wide ResNet) as segmentation encoders, output stride 8/16/32 by dilation."""
from __future__ import annotations

from typing import List

import torch
import torchvision
from torch import nn

from segkit.models.encoders.weights import WeightsSpec, load_weights_, resolve_weights

# Which of layer2/3/4 trade their stride for dilation at each output stride (torchvision's convention).
_DILATE = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")  # the short names in ENCODERS


def is_torchvision_resnet(name: str) -> bool:
    """Whether torchvision builds ``name`` with its ResNet class (ResNet, ResNeXt and Wide ResNet variants)."""
    try:
        return torchvision.models.get_model_builder(name).__module__ == torchvision.models.resnet.__name__
    except ValueError:
        return False


def dilate_resnet_(net: torchvision.models.ResNet, output_stride: int) -> None:
    """Replace the strides of layer2-4 by dilation, in place, exactly as torchvision's
    ``replace_stride_with_dilation`` does for Bottleneck nets — and for BasicBlock nets too, which torchvision
    refuses. The first block of a dilated layer keeps the previous dilation; the others use the new one.
    """
    if output_stride not in _DILATE:
        raise ValueError(f"output_stride must be one of {sorted(_DILATE)}, got {output_stride}")
    dilation = 1
    for layer, dilate in zip((net.layer2, net.layer3, net.layer4), _DILATE[output_stride]):
        previous = dilation
        if not dilate:
            continue
        dilation *= 2
        for i, block in enumerate(layer):
            d = previous if i == 0 else dilation
            for conv in block.modules():
                if not isinstance(conv, nn.Conv2d):
                    continue
                if conv.stride == (2, 2):
                    conv.stride = (1, 1)
                if conv.kernel_size == (3, 3):
                    conv.dilation, conv.padding = (d, d), (d, d)


class ResNetEncoder(nn.Module):
    """A torchvision ResNet (``resnet18`` ... ``resnet152``, ``resnext50_32x4d``, ``wide_resnet50_2`` ...) returning
    the stem (stride 2) and layer1-4 features.

    Module names follow torchvision (``conv1``, ``bn1``, ``layer1`` ...), so torchvision state dicts load as-is.
    ``out_channels`` and ``reductions`` declare the five feature maps. ``encoder_weights``: a file path, a torchvision
    weights name (``"DEFAULT"``, ``"IMAGENET1K_V2"``) or ``None``; ``pretrained=True`` means ``"DEFAULT"``.
    """

    def __init__(self, name: str = "resnet50", in_channels: int = 3, output_stride: int = 32,
                 encoder_weights: WeightsSpec = None, pretrained: bool = False) -> None:
        super().__init__()
        if not is_torchvision_resnet(name):
            raise ValueError(f"{name!r} is not a torchvision ResNet (resnet18 ... resnet152, resnext*, wide_resnet*)")
        net = getattr(torchvision.models, name)(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        load_weights_(self, name, resolve_weights(encoder_weights, pretrained), in_channels)
        dilate_resnet_(self, output_stride)  # type: ignore[arg-type]  # has layer2-4 like a ResNet
        self.name = name
        self.in_channels = in_channels
        self.output_stride = output_stride
        layers = (self.layer1, self.layer2, self.layer3, self.layer4)
        self.out_channels: List[int] = [self.bn1.num_features] + [
            [m.num_features for m in layer[-1].modules() if isinstance(m, nn.BatchNorm2d)][-1] for layer in layers]
        self.reductions: List[int] = [2, 4, min(8, output_stride), min(16, output_stride), output_stride]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [stem, f1, f2, f3, f4]

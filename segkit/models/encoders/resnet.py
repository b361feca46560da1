"""torchvision ResNets as segmentation encoders, with output stride 8/16/32 by dilation (DeepLab)."""
from __future__ import annotations

import socket
from typing import List

import torch
import torchvision
from torch import nn

# Which of layer2/3/4 trade their stride for dilation at each output stride (torchvision's convention).
_DILATE = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")


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


def _load_pretrained(name: str) -> dict:
    weights = torchvision.models.get_model_weights(name).DEFAULT
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, timeouts, hash mismatch: all mean "no weights here"
        filename = weights.url.rsplit("/", 1)[-1]
        raise RuntimeError(
            f"could not load ImageNet weights for {name} ({type(exc).__name__}: {exc}). segkit needs the network "
            f"only for this: set model.pretrained=false to train from scratch, or copy {filename} into "
            f"{torch.hub.get_dir()}/checkpoints/ on this machine."
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)


def _adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A new stem conv for ``in_channels`` inputs; pretrained RGB filters are averaged or tiled and rescaled."""
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    with torch.no_grad():
        rgb = conv.weight
        if in_channels < 3:
            new.weight.copy_(rgb.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * 3 / in_channels)
        else:
            idx = torch.arange(in_channels) % 3
            new.weight.copy_(rgb[:, idx] * 3 / in_channels)
    return new


class ResNetEncoder(nn.Module):
    """ResNet-18/34/50/101 returning the stem (stride 2) and layer1-4 features.

    Module names follow torchvision (``conv1``, ``bn1``, ``layer1`` ...), so torchvision state dicts load as-is.
    ``out_channels`` and ``reductions`` declare the five feature maps.
    """

    def __init__(self, name: str = "resnet50", in_channels: int = 3, output_stride: int = 32,
                 pretrained: bool = False) -> None:
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown ResNet {name!r}; choose one of {RESNETS}")
        net = getattr(torchvision.models, name)(weights=None)
        if pretrained:
            net.load_state_dict(_load_pretrained(name))
        dilate_resnet_(net, output_stride)
        if in_channels != 3:
            net.conv1 = _adapt_first_conv(net.conv1, in_channels)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if name in ("resnet50", "resnet101") else 1
        self.name = name
        self.in_channels = in_channels
        self.output_stride = output_stride
        self.out_channels: List[int] = [64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        self.reductions: List[int] = [2, 4, min(8, output_stride), min(16, output_stride), output_stride]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [stem, f1, f2, f3, f4]

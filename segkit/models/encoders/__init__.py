"""Encoders: each returns a list of feature maps and declares ``out_channels`` and ``reductions`` for them.

By name: segkit's own (``ENCODERS``: ``unet``, ``resnet18/34/50/101``), any torchvision classification backbone
(``resnext50_32x4d``, ``mobilenet_v3_large``, ``efficientnet_v2_s``, ``convnext_tiny``, ``regnet_y_800mf`` ...) and
any timm model as ``timm:<name>`` (optional extra). Or pass a ready module that declares both lists.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Union

import torchvision
from torch import nn

from segkit.models.encoders.backbone import TorchvisionEncoder, dilate_units_
from segkit.models.encoders.resnet import RESNETS, ResNetEncoder, dilate_resnet_, is_torchvision_resnet
from segkit.models.encoders.timm_encoder import TimmEncoder
from segkit.models.encoders.unet import UNetEncoder
from segkit.models.encoders.weights import WeightsSpec

ENCODERS: dict[str, Callable[..., nn.Module]] = {name: partial(ResNetEncoder, name) for name in RESNETS}
ENCODERS["unet"] = UNetEncoder
# torchvision families the tests cover, by the torchvision module that builds them (ResNets: ResNetEncoder).
# TorchvisionEncoder itself reads any `features` net (VGG, DenseNet ...): pass it as a module to use one of those.
TORCHVISION_FAMILIES = ("mobilenetv2", "mobilenetv3", "efficientnet", "convnext", "regnet")


def encoder_builder(name: str) -> Callable[..., nn.Module]:
    """The builder for an encoder name: ``ENCODERS``, ``timm:<name>``, or a torchvision backbone."""
    if name.startswith("timm:"):
        return partial(TimmEncoder, name[len("timm:"):])
    if name in ENCODERS:
        return ENCODERS[name]
    if is_torchvision_resnet(name):
        return partial(ResNetEncoder, name)
    if name in torchvision.models.list_models(module=torchvision.models):
        family = torchvision.models.get_model_builder(name).__module__.rsplit(".", 1)[-1]
        if family in TORCHVISION_FAMILIES:
            return partial(TorchvisionEncoder, name)
    raise ValueError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}, a torchvision backbone "
                     "(resnet152, resnext50_32x4d, wide_resnet50_2, mobilenet_v2, mobilenet_v3_small/large, "
                     "efficientnet_b0..b7, efficientnet_v2_s/m/l, convnext_tiny/small/base/large, regnet_x_400mf ...: "
                     "torchvision.models.list_models()), or timm:<name> with `pip install segkit[timm]`")


def build_encoder(encoder: Union[str, nn.Module], in_channels: int = 3, output_stride: Optional[int] = None,
                  encoder_weights: WeightsSpec = None, **kwargs) -> nn.Module:
    """An encoder by name (see :func:`encoder_builder`), or a ready module passed through unchanged.

    ``encoder_weights``: ``None`` (random init), a local state dict file, or a weights name (``"DEFAULT"``).
    """
    if isinstance(encoder, nn.Module):
        for attr in ("out_channels", "reductions"):
            if not hasattr(encoder, attr):
                raise TypeError(f"encoder {type(encoder).__name__} must declare `{attr}` (a list per feature map)")
        return encoder
    if not isinstance(encoder, str):
        raise TypeError(f"encoder must be a name or an nn.Module, got {type(encoder).__name__}")
    builder = encoder_builder(encoder)
    if encoder_weights is not None and encoder_weights is not False:
        if builder is UNetEncoder:
            raise ValueError("the plain 'unet' encoder has no pretrained weights; set encoder_weights=null or "
                             "pick a torchvision/timm encoder")
        kwargs["encoder_weights"] = encoder_weights
    if output_stride is not None:
        kwargs["output_stride"] = output_stride
    try:
        return builder(in_channels=in_channels, **kwargs)
    except TypeError as exc:
        raise TypeError(f"encoder {encoder!r}: {exc}") from None


__all__ = ["ENCODERS", "TORCHVISION_FAMILIES", "ResNetEncoder", "TimmEncoder", "TorchvisionEncoder", "UNetEncoder", "build_encoder",
           "dilate_resnet_", "dilate_units_", "encoder_builder"]

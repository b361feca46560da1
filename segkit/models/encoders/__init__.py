"""Encoders: each returns a list of feature maps and declares ``out_channels`` and ``reductions`` for them."""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Union

from torch import nn

from segkit.models.encoders.resnet import RESNETS, ResNetEncoder, dilate_resnet_
from segkit.models.encoders.unet import UNetEncoder

ENCODERS: dict[str, Callable[..., nn.Module]] = {name: partial(ResNetEncoder, name) for name in RESNETS}
ENCODERS["unet"] = UNetEncoder


def build_encoder(encoder: Union[str, nn.Module], in_channels: int = 3, output_stride: Optional[int] = None,
                  pretrained: bool = False, **kwargs) -> nn.Module:
    """An encoder by name (``resnet18/34/50/101``, ``unet``), or a ready module passed through unchanged."""
    if isinstance(encoder, nn.Module):
        for attr in ("out_channels", "reductions"):
            if not hasattr(encoder, attr):
                raise TypeError(f"encoder {type(encoder).__name__} must declare `{attr}` (a list per feature map)")
        return encoder
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose one of {sorted(ENCODERS)}")
    if pretrained:
        kwargs["pretrained"] = True
    if output_stride is not None:
        kwargs["output_stride"] = output_stride
    try:
        return ENCODERS[encoder](in_channels=in_channels, **kwargs)
    except TypeError as exc:
        raise TypeError(f"encoder {encoder!r}: {exc}") from None


__all__ = ["ENCODERS", "ResNetEncoder", "UNetEncoder", "build_encoder", "dilate_resnet_"]

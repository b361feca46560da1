"""U-Net, DeepLabV3 and DeepLabV3+: thin wiring of an encoder, a decoder and an upsampler into a Segmenter."""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn

from segkit.models.decoders import DeepLabV3Decoder, DeepLabV3PlusDecoder, UNetDecoder
from segkit.models.encoders import build_encoder
from segkit.models.layers.upsample import UpsamplerSpec, upsampler_factory
from segkit.models.segmenter import FCNHead, Segmenter

Encoder = Union[str, nn.Module]


class UNet(Segmenter):
    """U-Net with skip connections at every encoder stage; works with ``encoder="unet"`` (plain, from scratch)
    and with ResNets. The upsampler is selectable (default: learnable ``ConvTranspose2d``)."""

    def __init__(self, encoder: Encoder = "unet", num_classes: int = 2, in_channels: int = 3,
                 output_stride: Optional[int] = None, upsampler: UpsamplerSpec = "conv_transpose",
                 decoder_channels: Optional[Sequence[int]] = None, pretrained: bool = False,
                 encoder_kwargs: Optional[Dict[str, Any]] = None) -> None:
        enc = build_encoder(encoder, in_channels, output_stride, pretrained, **(encoder_kwargs or {}))
        dec = UNetDecoder(enc.out_channels, enc.reductions, upsampler_factory(upsampler), decoder_channels)
        super().__init__(enc, dec, num_classes)


class DeepLabV3(Segmenter):
    """DeepLabV3: dilated encoder (output stride 8 by default, as torchvision), ASPP, optional FCN aux head on
    the second-deepest feature. Logits reach the input size by ``upsampler`` (default bilinear, as the paper)."""

    def __init__(self, encoder: Encoder = "resnet50", num_classes: int = 21, in_channels: int = 3,
                 output_stride: int = 8, upsampler: UpsamplerSpec = "bilinear", aux_head: bool = False,
                 rates: Optional[Sequence[int]] = None, aspp_channels: int = 256, separable: bool = False,
                 aspp_dropout: float = 0.5, pretrained: bool = False,
                 encoder_kwargs: Optional[Dict[str, Any]] = None) -> None:
        enc = build_encoder(encoder, in_channels, output_stride, pretrained, **(encoder_kwargs or {}))
        dec = DeepLabV3Decoder(enc.out_channels, enc.reductions, aspp_channels, rates, separable, aspp_dropout)
        up = upsampler_factory(upsampler)(num_classes, num_classes, dec.out_reduction)
        aux = FCNHead(enc.out_channels[-2], num_classes) if aux_head else None
        super().__init__(enc, dec, num_classes, aux_head=aux, logits_upsampler=up)

    @classmethod
    def from_torchvision(cls, tv_model: nn.Module) -> "DeepLabV3":
        """The equivalent segkit model, weights included, from torchvision's ``deeplabv3_resnet50/101``."""
        backbone = tv_model.backbone
        blocks = [len(backbone.layer3)]
        name = {6: "resnet50", 23: "resnet101"}.get(blocks[0])
        if name is None or not hasattr(backbone, "layer4"):
            raise ValueError("from_torchvision supports torchvision's deeplabv3_resnet50 and deeplabv3_resnet101")
        output_stride = 32
        for layer in (backbone.layer3, backbone.layer4):
            if layer[0].downsample[0].stride == (1, 1):
                output_stride //= 2
        aspp = tv_model.classifier[0]
        rates = [branch[0].dilation[0] for branch in list(aspp.convs)[1:-1]]
        num_classes = tv_model.classifier[-1].out_channels
        model = cls(name, num_classes, output_stride=output_stride, rates=rates,
                    aux_head=tv_model.aux_classifier is not None)
        model.load_state_dict(_torchvision_state_dict(tv_model.state_dict(), len(rates)))
        return model


def _torchvision_state_dict(state: Dict[str, torch.Tensor], n_rates: int) -> Dict[str, torch.Tensor]:
    """Rename torchvision DeepLabV3 keys to segkit's (same tensors, same order)."""
    pool = n_rates + 1  # index of ASPP's pooling branch in torchvision's `convs`
    rules = [
        (r"^backbone\.", "encoder."),
        (rf"^classifier\.0\.convs\.{pool}\.(\d)\.", lambda m: f"decoder.aspp.branches.{pool}.1.{int(m[1]) - 1}."),
        (r"^classifier\.0\.convs\.(\d+)\.", r"decoder.aspp.branches.\1."),
        (r"^classifier\.0\.project\.(\d)\.", r"decoder.aspp.project.0.\1."),
        (r"^classifier\.([12])\.", lambda m: f"decoder.conv.{int(m[1]) - 1}."),
        (r"^classifier\.4\.", "head."),
        (r"^aux_classifier\.([01])\.", r"aux_head.0.\1."),
        (r"^aux_classifier\.4\.", "aux_head.2."),
    ]
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            raise KeyError(f"unexpected torchvision key {key!r}")
    return out


class DeepLabV3Plus(Segmenter):
    """DeepLabV3+: ASPP (output stride 16 by default) plus the stride-4 low-level skip; the decoder's upsampler
    (bilinear in the paper) is selectable. Logits are bilinearly resized to the input size."""

    def __init__(self, encoder: Encoder = "resnet50", num_classes: int = 21, in_channels: int = 3,
                 output_stride: int = 16, upsampler: UpsamplerSpec = "bilinear", aux_head: bool = False,
                 rates: Optional[Sequence[int]] = None, aspp_channels: int = 256, low_level_channels: int = 48,
                 separable: bool = False, aspp_dropout: float = 0.5, pretrained: bool = False,
                 encoder_kwargs: Optional[Dict[str, Any]] = None) -> None:
        enc = build_encoder(encoder, in_channels, output_stride, pretrained, **(encoder_kwargs or {}))
        dec = DeepLabV3PlusDecoder(enc.out_channels, enc.reductions, upsampler_factory(upsampler), aspp_channels,
                                   low_level_channels, rates=rates, separable=separable, dropout=aspp_dropout)
        aux = FCNHead(enc.out_channels[-2], num_classes) if aux_head else None
        super().__init__(enc, dec, num_classes, aux_head=aux)

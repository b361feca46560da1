"""U-Net, UNet++, DeepLabV3, DeepLabV3+, LR-ASPP, FPN and PSPNet: thin wiring of an encoder, a decoder and an
upsampler into a Segmenter."""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn

from segkit.models.decoders import (
    DeepLabV3Decoder,
    DeepLabV3PlusDecoder,
    FPNDecoder,
    LRASPPDecoder,
    PSPDecoder,
    UNetDecoder,
    UNetPlusPlusDecoder,
)
from segkit.models.encoders import build_encoder
from segkit.models.encoders.weights import WeightsSpec
from segkit.models.layers.upsample import UpsamplerSpec, upsampler_factory
from segkit.models.segmenter import FCNHead, Segmenter

Encoder = Union[str, nn.Module]


class UNet(Segmenter):
    """U-Net with skip connections at every encoder stage; works with ``encoder="unet"`` (plain, from scratch)
    and with any torchvision/timm encoder. The upsampler is selectable (default: parameter-free nearest resize, as
    smp; ``"conv_transpose"``, ``"resize_conv"``, ``"pixel_shuffle"`` learn it at the decoder's narrower width).

    ``encoder_weights`` (every architecture): ``None``, a local state dict file, or a weights name (``"DEFAULT"``).
    ``head_kernel=3`` (default): the classifier is a 3x3 conv over the last full-resolution map (16 channels on
    ResNets; as smp's U-Net), which sees each pixel's neighbourhood; 1 for a pointwise classifier.
    ``final_step_convs``: 3x3 convs in the last, skip-less step to stride 1 that encoders need whose first feature is
    coarser than the input, as ResNets (1, the default; 2 as smp's U-Net); see
    :class:`~segkit.models.decoders.UNetDecoder`.
    """

    def __init__(self, encoder: Encoder = "unet", num_classes: int = 2, in_channels: int = 3,
                 output_stride: Optional[int] = None, upsampler: UpsamplerSpec = "nearest",
                 decoder_channels: Optional[Sequence[int]] = None, encoder_weights: WeightsSpec = None,
                 encoder_kwargs: Optional[Dict[str, Any]] = None, head_kernel: int = 3,
                 final_step_convs: int = 1) -> None:
        enc = build_encoder(encoder, in_channels, output_stride, encoder_weights, **(encoder_kwargs or {}))
        dec = UNetDecoder(enc.out_channels, enc.reductions, upsampler_factory(upsampler), decoder_channels,
                          final_step_convs)
        super().__init__(enc, dec, num_classes, head_kernel=head_kernel)
        nn.init.zeros_(self.head.bias)  # no class favoured at the start; weights keep PyTorch's small uniform init


class DeepLabV3(Segmenter):
    """DeepLabV3: dilated encoder (output stride 8 by default, as torchvision), ASPP, optional FCN aux head on
    the second-deepest feature. Logits reach the input size by ``upsampler`` (default bilinear, as the paper)."""

    def __init__(self, encoder: Encoder = "resnet50", num_classes: int = 21, in_channels: int = 3,
                 output_stride: int = 8, upsampler: UpsamplerSpec = "bilinear", aux_head: bool = False,
                 rates: Optional[Sequence[int]] = None, aspp_channels: int = 256, separable: bool = False,
                 aspp_dropout: float = 0.5, encoder_weights: WeightsSpec = None,
                 encoder_kwargs: Optional[Dict[str, Any]] = None) -> None:
        enc = build_encoder(encoder, in_channels, output_stride, encoder_weights, **(encoder_kwargs or {}))
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
    (bilinear in the paper) is selectable. Logits are bilinearly resized to the input size.

    ``separable=True`` (default, the paper's choice) makes the ASPP and decoder 3x3 convs depthwise-separable: on
    ResNet-50 the decoder drops from ~17M to ~3M parameters at no loss in the paper (Table 5, "SC").
    ``fuse_convs``: 3x3 convs after the low-level fusion (the paper: 2; default 1, faster, see the decoder).
    ``depthwise_norm=True``: batch norm + ReLU after each depthwise conv (TensorFlow DeepLab's layout); the default
    has none, as Xception, timm and smp, and is faster (``SeparableConvNormAct``)."""

    def __init__(self, encoder: Encoder = "resnet50", num_classes: int = 21, in_channels: int = 3,
                 output_stride: int = 16, upsampler: UpsamplerSpec = "bilinear", aux_head: bool = False,
                 rates: Optional[Sequence[int]] = None, aspp_channels: int = 256, low_level_channels: int = 48,
                 separable: bool = True, aspp_dropout: float = 0.5, fuse_convs: int = 1,
                 depthwise_norm: bool = False, encoder_weights: WeightsSpec = None,
                 encoder_kwargs: Optional[Dict[str, Any]] = None) -> None:
        enc = build_encoder(encoder, in_channels, output_stride, encoder_weights, **(encoder_kwargs or {}))
        dec = DeepLabV3PlusDecoder(enc.out_channels, enc.reductions, upsampler_factory(upsampler), aspp_channels,
                                   low_level_channels, rates=rates, separable=separable, dropout=aspp_dropout,
                                   fuse_convs=fuse_convs, depthwise_norm=depthwise_norm)
        aux = FCNHead(enc.out_channels[-2], num_classes) if aux_head else None
        super().__init__(enc, dec, num_classes, aux_head=aux)


class UNetPlusPlus(Segmenter):
    """UNet++: U-Net with nested, dense skip pathways; ``deep_supervision=True`` classifies the concatenated top-row
    nodes (the sum of one classifier per node). The decoder's upsampler is selectable (default bilinear)."""

    def __init__(self, encoder: Encoder = "resnet34", num_classes: int = 2, in_channels: int = 3,
                 output_stride: Optional[int] = None, upsampler: UpsamplerSpec = "bilinear",
                 decoder_channels: Optional[Sequence[int]] = None, deep_supervision: bool = False,
                 encoder_weights: WeightsSpec = None, encoder_kwargs: Optional[Dict[str, Any]] = None) -> None:
        enc = build_encoder(encoder, in_channels, output_stride, encoder_weights, **(encoder_kwargs or {}))
        dec = UNetPlusPlusDecoder(enc.out_channels, enc.reductions, upsampler_factory(upsampler), decoder_channels,
                                  deep_supervision)
        super().__init__(enc, dec, num_classes)


class LRASPP(Segmenter):
    """LR-ASPP (MobileNetV3 paper): a gated 1x1 branch on the deepest feature (output stride 16 by default),
    upsampled by ``upsampler`` to the stride-8 feature, one 1x1 classifier on both; logits resized bilinearly."""

    def __init__(self, encoder: Encoder = "mobilenet_v3_large", num_classes: int = 21, in_channels: int = 3,
                 output_stride: Optional[int] = 16, upsampler: UpsamplerSpec = "bilinear", inter_channels: int = 128,
                 low_reduction: int = 8, encoder_weights: WeightsSpec = None,
                 encoder_kwargs: Optional[Dict[str, Any]] = None) -> None:
        enc = build_encoder(encoder, in_channels, output_stride, encoder_weights, **(encoder_kwargs or {}))
        dec = LRASPPDecoder(enc.out_channels, enc.reductions, upsampler_factory(upsampler), inter_channels,
                            low_reduction)
        super().__init__(enc, dec, num_classes)

    @classmethod
    def from_torchvision(cls, tv_model: nn.Module) -> "LRASPP":
        """The equivalent segkit model, weights included, from torchvision's ``lraspp_mobilenet_v3_large``.

        torchvision taps the stride-8 feature after the *first* block of that stage (``return_layers``); the segkit
        model uses the same taps through ``encoder_kwargs={"out_indices": ...}``.
        """
        backbone, head = tv_model.backbone, tv_model.classifier
        taps = sorted(int(k) for k in getattr(backbone, "return_layers", {}))
        if len(taps) != 2 or not hasattr(head, "low_classifier"):
            raise ValueError("from_torchvision supports torchvision's lraspp_mobilenet_v3_large")
        num_classes = head.low_classifier.out_channels
        model = cls("mobilenet_v3_large", num_classes, output_stride=16,
                    inter_channels=head.cbr[0].out_channels, encoder_kwargs={"out_indices": taps})
        state = {f"encoder.features.{k}": v for k, v in backbone.state_dict().items()}
        state.update({f"decoder.{k}": v for k, v in head.state_dict().items() if k.startswith(("cbr.", "scale."))})
        state["head.weight"] = torch.cat([head.low_classifier.weight, head.high_classifier.weight], dim=1)
        state["head.bias"] = head.low_classifier.bias + head.high_classifier.bias
        model.load_state_dict(state)
        return model


class FPN(Segmenter):
    """FPN semantic head (Panoptic FPN): a feature pyramid from the deepest four encoder features, per-level
    conv + upsampler branches summed at stride 4; logits resized bilinearly."""

    def __init__(self, encoder: Encoder = "resnet34", num_classes: int = 2, in_channels: int = 3,
                 output_stride: Optional[int] = None, upsampler: UpsamplerSpec = "bilinear",
                 pyramid_channels: int = 256, segmentation_channels: int = 128, merge: str = "add",
                 dropout: float = 0.2, encoder_weights: WeightsSpec = None,
                 encoder_kwargs: Optional[Dict[str, Any]] = None) -> None:
        enc = build_encoder(encoder, in_channels, output_stride, encoder_weights, **(encoder_kwargs or {}))
        dec = FPNDecoder(enc.out_channels, enc.reductions, upsampler_factory(upsampler), pyramid_channels,
                         segmentation_channels, merge=merge, dropout=dropout)
        super().__init__(enc, dec, num_classes)


class PSPNet(Segmenter):
    """PSPNet: dilated encoder (output stride 8 by default, as the paper), pyramid pooling over 1/2/3/6 bins, optional
    FCN aux head on the second-deepest feature. Logits reach the input size by ``upsampler`` (default bilinear)."""

    def __init__(self, encoder: Encoder = "resnet50", num_classes: int = 21, in_channels: int = 3,
                 output_stride: Optional[int] = 8, upsampler: UpsamplerSpec = "bilinear", aux_head: bool = False,
                 bins: Sequence[int] = (1, 2, 3, 6), channels: int = 512, dropout: float = 0.1,
                 encoder_weights: WeightsSpec = None, encoder_kwargs: Optional[Dict[str, Any]] = None) -> None:
        enc = build_encoder(encoder, in_channels, output_stride, encoder_weights, **(encoder_kwargs or {}))
        dec = PSPDecoder(enc.out_channels, enc.reductions, channels, bins, dropout)
        up = upsampler_factory(upsampler)(num_classes, num_classes, dec.out_reduction)
        aux = FCNHead(enc.out_channels[-2], num_classes) if aux_head else None
        super().__init__(enc, dec, num_classes, aux_head=aux, logits_upsampler=up)

"""The one generic segmentation model: encoder -> decoder -> 1x1 classifier -> logits at the input size."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from segkit.analysis.shapes import ShapeError
from segkit.models.layers.conv import ConvNormAct


# Layout changes that make older weights not fit; named in the error so a user knows why.
LAYOUT_CHANGES = ("the U-Net and DeepLabV3+ decoders changed on 2026-11-22, DeepLabV3+'s separable convs on "
                  "2026-12-02, the U-Net's last step to stride 1 on 2026-12-02 (a U-Net config saved before that "
                  "is rebuilt with final_step_convs=2 by itself)")


def load_weights_or_explain(module: nn.Module, state_dict: dict, source: str, model: str) -> None:
    """``module.load_state_dict(state_dict)`` (strict), or a ``ValueError`` naming ``source`` and ``model`` and why
    weights stop fitting (an older segkit's layers), instead of load_state_dict's trace of keys and shapes."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as exc:  # missing/unexpected keys or shapes: the model code changed since it was saved
        detail = " ".join(str(exc).split())[:600]
        raise ValueError(f"the weights in {source} do not fit the model {model} with this segkit: {detail}. They "
                         f"were most likely written by an older segkit whose layers differ ({LAYOUT_CHANGES}); "
                         "use them with the version that wrote them, or retrain") from None


class FCNHead(nn.Sequential):
    """Auxiliary head (torchvision's ``FCNHead``): 3x3 conv to ``in/4`` channels, dropout, 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1) -> None:
        mid = in_channels // 4
        super().__init__(ConvNormAct(in_channels, mid, 3), nn.Dropout(dropout), nn.Conv2d(mid, num_classes, 1))


class Segmenter(nn.Module):
    """Holds the only ``forward`` of every segkit architecture.

    ``forward(x)`` returns logits ``(N, num_classes, H, W)`` at the input size; ``forward(x, return_aux=True)``, or
    ``forward_with_aux(x)``, returns ``(logits, aux_logits)`` (``None`` without an aux head); training uses it.
    Both go through ``__call__``, so a ``module.compile()``-d model runs compiled either way.
    ``logits_upsampler`` (any segkit upsampler, called with the input size) brings coarse logits to full size;
    ``None`` means bilinear interpolation. ``head_kernel``: kernel size of the classifier conv (1, or 3 for a
    classifier that sees its neighbourhood, as U-Nets at full resolution use).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, num_classes: int,
                 aux_head: Optional[nn.Module] = None, aux_index: int = -2,
                 logits_upsampler: Optional[nn.Module] = None, head_kernel: int = 1) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.encoder = encoder
        self.decoder = decoder
        if head_kernel not in (1, 3, 5):
            raise ValueError(f"head_kernel must be 1, 3 or 5, got {head_kernel}")
        self.head = nn.Conv2d(decoder.out_channels, num_classes, head_kernel, padding=head_kernel // 2)
        self.aux_head = aux_head
        self.aux_index = aux_index
        self.logits_upsampler = logits_upsampler
        self.num_classes = num_classes
        self.in_channels = int(encoder.in_channels)
        self.size_divisor = int(max(encoder.reductions))
        self.resize_logits = int(decoder.out_reduction) != 1

    def forward_with_aux(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self(x, return_aux=True)

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected an image batch of shape (N, {self.in_channels}, H, W), got "
                             f"{tuple(x.shape)}; set the model's in_channels to match your images")
        size = [x.shape[-2], x.shape[-1]]
        features = self.encoder(x)
        try:
            logits = self.head(self.decoder(features, size))
            if self.resize_logits:
                logits = self._upsample_logits(logits, size)
        except ShapeError as exc:
            raise ShapeError(f"input size {size[0]}x{size[1]}: {exc} Sizes divisible by {self.size_divisor} "
                             f"always work; nearest: {self.nearest_size(size)}.") from None
        if not return_aux:
            return logits
        aux: Optional[torch.Tensor] = None
        if self.aux_head is not None:
            aux = F.interpolate(self.aux_head(features[self.aux_index]), size=size, mode="bilinear",
                                align_corners=False)
        return logits, aux

    def _upsample_logits(self, logits: torch.Tensor, size: List[int]) -> torch.Tensor:
        if self.logits_upsampler is not None:
            return self.logits_upsampler(logits, size)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def nearest_size(self, size: List[int]) -> List[int]:
        d = self.size_divisor
        return [max(d, int(round(s / d)) * d) for s in size]

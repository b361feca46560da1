"""U-Net decoder: upsample, concatenate the skip connection, double conv — from the deepest feature to stride 1."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from torch import nn

from segkit.models.layers.conv import DoubleConv, init_relu_convs_
from segkit.models.layers.upsample import is_parameter_free


def default_decoder_channels(encoder_channels: Sequence[int], n_steps: int) -> List[int]:
    """Step ``k`` (deepest first) gets ``256 / 2**k`` channels, never more than its skip's (min 16).

    Five steps on a ResNet give (256, 128, 64, 32, 16), segmentation_models.pytorch's widths; narrow encoders (the
    plain U-Net) keep their skip widths. Width halves as resolution doubles, so every step costs about the same.
    """
    skips = list(encoder_channels[-2::-1])
    widths: List[int] = []
    for k in range(n_steps):
        cap = skips[k] if k < len(skips) else widths[-1] // 2 if widths else encoder_channels[-1]
        widths.append(max(16, min(256 >> k, cap)))
    return widths


class UNetDecoder(nn.Module):
    """Works on any encoder that declares ``out_channels`` and ``reductions``.

    One step per skip connection (deepest first), plus a last step to stride 1 when the shallowest feature is
    coarser than the input (ResNet stems are at stride 2): upsample to the skip's size, concatenate the skip, two
    3x3 convs. ``upsample(in, out, scale)`` builds each upsampler. A parameter-free one (``"nearest"``, the default,
    or ``"bilinear"``) keeps the incoming width, as smp's U-Net; a learnable one (``"conv_transpose"``,
    ``"resize_conv"``, ``"pixel_shuffle"``) maps to the step's (narrower) output width, so no wide map is convolved
    at the higher resolution. Widths: :func:`default_decoder_channels`. Block convs are He-initialised (fan-out).
    """

    def __init__(self, encoder_channels: Sequence[int], encoder_reductions: Sequence[int],
                 upsample: Callable[..., nn.Module], decoder_channels: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        skips = list(range(len(encoder_channels) - 2, -1, -1))
        n_steps = len(skips) + (1 if encoder_reductions[0] > 1 else 0)
        if decoder_channels is None:
            decoder_channels = default_decoder_channels(encoder_channels, n_steps)
        if len(decoder_channels) != n_steps:
            raise ValueError(f"decoder_channels needs {n_steps} entries for this encoder "
                             f"(reductions {list(encoder_reductions)}), got {list(decoder_channels)}")
        keep_width = is_parameter_free(upsample)
        ups, blocks = [], []
        c_in, r_in = encoder_channels[-1], encoder_reductions[-1]
        for step, c_out in enumerate(decoder_channels):
            skip = skips[step] if step < len(skips) else -1
            r_out = encoder_reductions[skip] if skip >= 0 else 1
            c_skip = encoder_channels[skip] if skip >= 0 else 0
            c_up = c_in if keep_width else c_out
            ups.append(upsample(c_in, c_up, r_in // r_out))
            blocks.append(DoubleConv(c_up + c_skip, c_out))
            c_in, r_in = c_out, r_out
        self.ups, self.blocks = nn.ModuleList(ups), nn.ModuleList(blocks)
        init_relu_convs_(self.blocks)
        self.skips: List[int] = skips + [-1] * (n_steps - len(skips))
        self.decoder_channels = list(decoder_channels)
        self.out_channels = c_in
        self.out_reduction = 1

    def forward(self, features: List[torch.Tensor], input_size: List[int]) -> torch.Tensor:
        x = features[-1]
        for up, block, skip in zip(self.ups, self.blocks, self.skips):
            if skip >= 0:
                target = features[skip]
                x = block(torch.cat([up(x, target.shape[-2:]), target], dim=1))
            else:
                x = block(up(x, input_size))
        return x

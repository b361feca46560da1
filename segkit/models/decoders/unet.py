"""U-Net decoder: upsample, concatenate the skip connection, double conv — from the deepest feature to stride 1."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from torch import nn

from segkit.models.layers.conv import DoubleConv


class UNetDecoder(nn.Module):
    """Works on any encoder that declares ``out_channels`` and ``reductions``.

    One step per skip connection (deepest first), plus a last step to stride 1 when the shallowest feature is
    coarser than the input (ResNet stems are at stride 2). ``upsample(in, out, scale)`` builds each upsampler.
    Default widths: the skip's width capped at 256, then half the previous for the skip-free last step (min 16).
    """

    def __init__(self, encoder_channels: Sequence[int], encoder_reductions: Sequence[int],
                 upsample: Callable[..., nn.Module], decoder_channels: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        skips = list(range(len(encoder_channels) - 2, -1, -1))
        n_steps = len(skips) + (1 if encoder_reductions[0] > 1 else 0)
        if decoder_channels is None:
            decoder_channels = [max(16, min(256, encoder_channels[i])) for i in skips]
            if n_steps > len(skips):
                decoder_channels.append(max(16, decoder_channels[-1] // 2))
        if len(decoder_channels) != n_steps:
            raise ValueError(f"decoder_channels needs {n_steps} entries for this encoder "
                             f"(reductions {list(encoder_reductions)}), got {list(decoder_channels)}")
        ups, blocks = [], []
        c_in, r_in = encoder_channels[-1], encoder_reductions[-1]
        for step, c_out in enumerate(decoder_channels):
            skip = skips[step] if step < len(skips) else -1
            r_out = encoder_reductions[skip] if skip >= 0 else 1
            c_skip = encoder_channels[skip] if skip >= 0 else 0
            ups.append(upsample(c_in, c_out, r_in // r_out))
            blocks.append(DoubleConv(c_out + c_skip, c_out))
            c_in, r_in = c_out, r_out
        self.ups, self.blocks = nn.ModuleList(ups), nn.ModuleList(blocks)
        self.skips: List[int] = skips + [-1] * (n_steps - len(skips))
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

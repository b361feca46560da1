"""UNet++ decoder (Zhou et al., 2018): nested, dense skip pathways between the encoder levels."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from segkit.models.layers.conv import DoubleConv


class UNetPlusPlusDecoder(nn.Module):
    """Node ``X[i][j]`` (level ``i``, column ``j >= 1``) is a double conv on the concatenation of ``X[i][0..j-1]``
    (``X[i][0]`` is encoder feature ``i``) and the upsampled ``X[i+1][j-1]``; ``X[0][n-1]`` is the U-Net path.

    Widths per level default to the encoder's, capped at 256 (min 16), plus one last upsampling step to stride 1 when
    the shallowest feature is coarser (as ``UNetDecoder``). ``deep_supervision=True`` returns the top-row nodes
    ``X[0][1..n-1]`` concatenated, so the segmenter's 1x1 classifier on it is the sum of one classifier per node —
    the paper's averaged "accurate mode" — and gradients reach every nested path directly; the logits are then
    resized from the shallowest feature's stride.
    """

    def __init__(self, encoder_channels: Sequence[int], encoder_reductions: Sequence[int],
                 upsample: Callable[..., nn.Module], decoder_channels: Optional[Sequence[int]] = None,
                 deep_supervision: bool = False) -> None:
        super().__init__()
        n = len(encoder_channels)
        if n < 2:
            raise ValueError(f"UNet++ needs at least two encoder features, got {n}")
        last_step = encoder_reductions[0] > 1 and not deep_supervision
        if decoder_channels is None:
            decoder_channels = [max(16, min(256, c)) for c in encoder_channels[:-1]]
            if last_step:
                decoder_channels.append(max(16, decoder_channels[0] // 2))
        if len(decoder_channels) != n - 1 + last_step:
            raise ValueError(f"decoder_channels needs {n - 1 + last_step} entries (one per level above the deepest"
                             f"{', one for the last step to stride 1' if last_step else ''}), got "
                             f"{list(decoder_channels)}")
        width = list(decoder_channels)

        def node_channels(i: int, j: int) -> int:
            return encoder_channels[i] if j == 0 else width[i]

        ups, blocks = {}, {}
        for j in range(1, n):
            for i in range(n - j):
                scale = encoder_reductions[i + 1] // encoder_reductions[i]
                ups[f"{i}_{j}"] = upsample(node_channels(i + 1, j - 1), width[i], scale)
                blocks[f"{i}_{j}"] = DoubleConv(encoder_channels[i] + (j - 1) * width[i] + width[i], width[i])
        self.ups, self.blocks = nn.ModuleDict(ups), nn.ModuleDict(blocks)
        self.n = n
        self.deep_supervision = deep_supervision
        self.final_up: Optional[nn.Module] = None
        self.final_block: Optional[nn.Module] = None
        if last_step:
            self.final_up = upsample(width[0], width[-1], encoder_reductions[0])
            self.final_block = DoubleConv(width[-1], width[-1])
        self.out_channels = width[0] * (n - 1) if deep_supervision else width[-1 if last_step else 0]
        self.out_reduction = encoder_reductions[0] if deep_supervision else 1

    def forward(self, features: List[torch.Tensor], input_size: List[int]) -> torch.Tensor:
        nodes: Dict[Tuple[int, int], torch.Tensor] = {(i, 0): f for i, f in enumerate(features)}
        for j in range(1, self.n):
            for i in range(self.n - j):
                key = f"{i}_{j}"
                up = self.ups[key](nodes[(i + 1, j - 1)], features[i].shape[-2:])
                nodes[(i, j)] = self.blocks[key](torch.cat([nodes[(i, k)] for k in range(j)] + [up], dim=1))
        if self.deep_supervision:
            return torch.cat([nodes[(0, j)] for j in range(1, self.n)], dim=1)
        x = nodes[(0, self.n - 1)]
        if self.final_up is not None and self.final_block is not None:
            x = self.final_block(self.final_up(x, input_size))
        return x

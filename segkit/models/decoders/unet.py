"""U-Net decoder: upsample, concatenate the skip connection, double conv — from the deepest feature to stride 1
(one conv, by default, in a last step that has no skip)."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.layers.conv import ConvNormAct, init_relu_convs_
from segkit.models.layers.upsample import InterpolateUpsample, _tracing, is_parameter_free, nearest2x_conv3x3


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


class UNetBlock(nn.Sequential):
    """``n_convs`` 3x3 ``ConvNormAct`` (2: the U-Net double conv) on ``cat([up(x, size), skip])`` (``skip`` may be
    ``None``: the last step to stride 1).

    When ``up`` is a plain nearest resize and the step is an exact 2x, the first conv runs on ``x`` at its own
    resolution (:func:`nearest2x_conv3x3`) plus a conv on the skip: the same function at a fraction of the cost, no
    resized map or concatenation built. Other sizes, other upsamplers, and traced/compiled/exported graphs take the
    plain path (parameters are the same either way).
    """

    def __init__(self, up: nn.Module, up_channels: int, skip_channels: int, out_channels: int,
                 n_convs: int = 2) -> None:
        if n_convs < 1:
            raise ValueError(f"a U-Net step needs at least one conv, got n_convs={n_convs}")
        super().__init__(*(ConvNormAct(up_channels + skip_channels if i == 0 else out_channels, out_channels, 3)
                           for i in range(n_convs)))
        self.in_channels, self.out_channels = up_channels + skip_channels, out_channels
        conv = self[0][0]
        self.fuse_nearest = (isinstance(up, InterpolateUpsample) and up.mode == "nearest"
                             and isinstance(up.project, nn.Identity) and conv.kernel_size == (3, 3)
                             and conv.padding == (1, 1) and conv.stride == (1, 1) and conv.dilation == (1, 1))
        self.up_channels = up_channels

    def forward(self, x: torch.Tensor, up: nn.Module, skip: Optional[torch.Tensor], size: List[int]) -> torch.Tensor:
        if (not self.fuse_nearest or torch.jit.is_tracing() or torch.jit.is_scripting() or _tracing()
                or int(size[0]) != 2 * int(x.shape[-2]) or int(size[1]) != 2 * int(x.shape[-1])):
            x = up(x, size)
            return super().forward(x if skip is None else torch.cat([x, skip], dim=1))
        first = self[0]
        conv = first[0]
        y = nearest2x_conv3x3(x, conv.weight[:, : self.up_channels])
        if skip is not None:
            y = y + F.conv2d(skip, conv.weight[:, self.up_channels:], None, padding=1)
        if conv.bias is not None:
            y = y + conv.bias[:, None, None]
        for layer in list(first)[1:]:
            y = layer(y)
        for block in list(self)[1:]:
            y = block(y)
        return y


class UNetDecoder(nn.Module):
    """Works on any encoder that declares ``out_channels`` and ``reductions``.

    One step per skip connection (deepest first): upsample to the skip's size, concatenate the skip, two 3x3 convs.
    When the shallowest feature is coarser than the input (ResNet stems are at stride 2, ConvNeXt's at 4), a last
    step without a skip brings the map to stride 1 with ``final_step_convs`` 3x3 convs: 1 by default, 2 for smp's
    layout. With nothing to fuse there, its second conv is the one that costs the most time per FLOP in the decoder
    (16 channels at full resolution); without it the default 3x3 classifier is the second conv at full resolution,
    and mIoU on both real datasets was unchanged (BENCHMARKS.md §6). ``upsample(in, out, scale)`` builds each
    upsampler. A parameter-free one (``"nearest"``, the default, or ``"bilinear"``) keeps the incoming width, as smp's
    U-Net; a learnable one (``"conv_transpose"``, ``"resize_conv"``, ``"pixel_shuffle"``) maps to the step's
    (narrower) output width, so no wide map is convolved at the higher resolution. Widths:
    :func:`default_decoder_channels`. Block convs are He-initialised (fan-out).
    """

    def __init__(self, encoder_channels: Sequence[int], encoder_reductions: Sequence[int],
                 upsample: Callable[..., nn.Module], decoder_channels: Optional[Sequence[int]] = None,
                 final_step_convs: int = 1) -> None:
        super().__init__()
        if final_step_convs not in (1, 2):
            raise ValueError(f"final_step_convs must be 1 or 2, got {final_step_convs}")
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
            blocks.append(UNetBlock(ups[-1], c_up, c_skip, c_out, 2 if skip >= 0 else final_step_convs))
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
            target = features[skip] if skip >= 0 else None
            x = block(x, up, target, input_size if target is None else target.shape[-2:])
        return x

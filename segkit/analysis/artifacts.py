"""Checkerboard artifacts of upsamplers, measured: the energy of the stride-periodic pattern in the output for a
constant input (Odena et al., 2016). 0 means no periodic pattern; ConvTranspose2d with a kernel not divisible by
its stride scores high at initialisation."""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn


@torch.no_grad()
def checkerboard_score(upsampler: nn.Module, size: int = 16) -> float:
    """Std of the ``s x s`` phase means over the interior of the output for an all-ones input, divided by the
    mean absolute output (scale-free). Border pixels (affected by zero padding) are excluded."""
    s = int(upsampler.scale_factor)
    was_training = upsampler.training
    upsampler.eval()
    param = next(upsampler.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    x = torch.ones(1, upsampler.in_channels, size, size, dtype=dtype, device=device)
    y = upsampler(x, [size * s, size * s]).double()
    upsampler.train(was_training)
    if s == 1:
        return 0.0
    border = 2 * s
    y = y[..., border:-border, border:-border]
    h, w = (y.shape[-2] // s) * s, (y.shape[-1] // s) * s
    cells = y[..., :h, :w].reshape(y.shape[0], y.shape[1], h // s, s, w // s, s)
    phase_means = cells.mean(dim=(2, 4))  # (N, C, s, s)
    spread = phase_means.std(dim=(2, 3), unbiased=False).mean()
    return float(spread / y.abs().mean().clamp_min(1e-12))


def model_checkerboard_scores(model: nn.Module) -> Dict[str, float]:
    """The score of every segkit upsampler inside ``model``, by module name."""
    # imported here: segkit.models' layers import segkit.analysis.shapes, so a top-level import would be circular
    from segkit.models.layers.upsample import UPSAMPLERS

    types = tuple({getattr(f, "func", f) for f in UPSAMPLERS.values()})
    return {name: checkerboard_score(m) for name, m in model.named_modules() if isinstance(m, types)}

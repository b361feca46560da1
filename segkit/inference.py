"""Inference modes, all returning logits at the input size: whole image, sliding window, multi-scale + flip TTA.

``model`` is any callable mapping an image batch ``(N, C, H, W)`` to logits ``(N, K, H, W)`` — a trained
``SegmentationTask`` takes raw 0-255 images (uint8 or float) and normalises them itself.
"""
from __future__ import annotations

import math
from typing import Callable, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor], torch.Tensor]
Size = Union[int, Sequence[int]]


def _pair(v: Size) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def whole(model: Model, images: torch.Tensor) -> torch.Tensor:
    return model(images)


def _starts(length: int, window: int, stride: int) -> List[int]:
    """Window offsets covering ``[0, length)``; the last window is flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def gaussian_weight(window: Tuple[int, int], sigma_scale: float = 0.125) -> torch.Tensor:
    """Importance map that favours window centres (nnU-Net style, sigma = window / 8); never zero."""
    axes = []
    for n in window:
        x = torch.arange(n, dtype=torch.float32) - (n - 1) / 2
        axes.append(torch.exp(-0.5 * (x / (n * sigma_scale)) ** 2))
    w = axes[0][:, None] * axes[1][None, :]
    return (w / w.max()).clamp_min(1e-3)


def sliding_window(model: Model, images: torch.Tensor, window: Size = 512, stride: Size = 341,
                   blend: str = "gaussian", batch_size: int = 8) -> torch.Tensor:
    """Overlapping windows (batched), blended uniformly or with a Gaussian; images smaller than the window are
    zero-padded bottom/right and the padding is cut from the result."""
    if blend not in ("gaussian", "uniform"):
        raise ValueError(f"inference.blend must be 'gaussian' or 'uniform', got {blend!r}")
    (wh, ww), (sh, sw) = _pair(window), _pair(stride)
    if sh < 1 or sw < 1 or sh > wh or sw > ww:
        raise ValueError(f"inference.stride {(sh, sw)} must be between 1 and the window {(wh, ww)} (no gaps)")
    n, _, h, w = images.shape
    ph, pw = max(h, wh), max(w, ww)
    x = F.pad(images, (0, pw - w, 0, ph - h)) if (ph, pw) != (h, w) else images
    boxes = [(y, xx) for y in _starts(ph, wh, sh) for xx in _starts(pw, ww, sw)]
    weight = (gaussian_weight((wh, ww)) if blend == "gaussian" else torch.ones(wh, ww)).to(images.device)
    out = None
    norm = torch.zeros(ph, pw, device=images.device)
    for y, xx in boxes:
        norm[y:y + wh, xx:xx + ww] += weight
    crops = [(i, y, xx) for i in range(n) for y, xx in boxes]
    for start in range(0, len(crops), batch_size):
        chunk = crops[start:start + batch_size]
        logits = model(torch.stack([x[i, :, y:y + wh, xx:xx + ww] for i, y, xx in chunk]))
        if out is None:
            out = torch.zeros(n, logits.shape[1], ph, pw, device=images.device, dtype=torch.float32)
        for (i, y, xx), lg in zip(chunk, logits.float()):
            out[i, :, y:y + wh, xx:xx + ww] += lg * weight
    return (out / norm)[..., :h, :w]


def multi_scale_flip(model: Model, images: torch.Tensor, scales: Sequence[float] = (0.75, 1.0, 1.25),
                     flip: bool = True, base: Callable[[Model, torch.Tensor], torch.Tensor] = whole) -> torch.Tensor:
    """Average of the logits over ``scales`` (bilinear image resize) and, with ``flip``, horizontal flips; each
    pass's logits are resized back to the input size before averaging."""
    h, w = images.shape[-2:]
    x = images.float()
    total, count = None, 0
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))),
                                              mode="bilinear", align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            inp = xs.flip(-1) if flipped else xs
            logits = base(model, inp).float()
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            total = logits if total is None else total + logits
            count += 1
    return total / count


def infer(model: Model, images: torch.Tensor, mode: str = "whole", window: Size = 512, stride: Size = 341,
          blend: str = "gaussian", scales: Sequence[float] = (0.75, 1.0, 1.25), flip: bool = True,
          batch_size: int = 8) -> torch.Tensor:
    """Dispatch on ``mode`` (``whole``, ``slide``, ``tta``); ``tta`` uses sliding windows when ``window`` is
    smaller than the image."""
    if mode == "whole":
        return whole(model, images)
    if mode == "slide":
        return sliding_window(model, images, window, stride, blend, batch_size)
    if mode == "tta":
        wh, ww = _pair(window)
        base = whole
        if images.shape[-2] > wh or images.shape[-1] > ww:
            def base(m, x):  # noqa: E306
                return sliding_window(m, x, window, stride, blend, batch_size)
        return multi_scale_flip(model, images, scales, flip, base)
    raise ValueError(f"inference.mode must be 'whole', 'slide' or 'tta', got {mode!r}")

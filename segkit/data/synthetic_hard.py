"""A harder synthetic preset: textured backgrounds, small and thin classes, 1-5% class frequencies.

Five classes: background (a random grating texture plus noise), blob (one or two large ellipses, ~8% of the
pixels), line (thin curves 1-2 px wide, ~3%), dot (tiny disks, ~1.5%) and ring (thin circles, ~2.5%). Objects
differ from the texture by a moderate intensity offset, so the background is not separable by colour alone, and
the rare classes are the ones that plain cross-entropy learns last: the preset that exercises class-imbalance
handling. Cached on disk like :mod:`segkit.data.synthetic`, whose atomic folder writer it reuses.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from segkit.data import synthetic
from segkit.data.io import DataError
from segkit.data.sources import FolderSource

CLASS_NAMES = ["background", "blob", "line", "dot", "ring"]
VERSION = 1


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A colour texture: three random gratings (orientation, frequency, phase) plus pixel noise, 0-255 float."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    image = np.zeros((size, size, 3))
    for _ in range(3):
        angle, freq = rng.uniform(0, math.pi), rng.uniform(0.15, 0.6)
        wave = np.sin(freq * (xx * math.cos(angle) + yy * math.sin(angle)) + rng.uniform(0, 2 * math.pi))
        image += wave[..., None] * rng.uniform(10, 30, 3)[None, None]
    return image + rng.integers(60, 190, 3)[None, None] + rng.normal(0, 8, image.shape)


def render(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image ``(size, size, 3)`` uint8 and its mask ``(size, size)`` uint8."""
    image = _texture(rng, size)
    mask = np.zeros((size, size), np.uint8)
    layer = np.zeros((size, size), np.uint8)

    def paint(kind: int) -> None:
        offset = rng.choice([-1, 1]) * rng.uniform(45, 80)
        image[layer == 1] += offset
        mask[layer == 1] = kind
        layer[:] = 0

    for _ in range(int(rng.integers(1, 3))):  # blob
        axes = (int(rng.uniform(0.08, 0.16) * size), int(rng.uniform(0.06, 0.12) * size))
        centre = (int(rng.integers(axes[0], size - axes[0])), int(rng.integers(axes[0], size - axes[0])))
        cv2.ellipse(layer, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        paint(1)
    for _ in range(int(rng.integers(1, 3))):  # line: a thin polyline through random points
        pts = np.cumsum(rng.normal(0, size * 0.15, (5, 2)), axis=0) + rng.uniform(0.2, 0.8, 2) * size
        cv2.polylines(layer, [pts.astype(np.int32)], False, 1, int(rng.integers(1, 3)))
        paint(2)
    for _ in range(int(rng.integers(2, 6))):  # dot
        cv2.circle(layer, (int(rng.integers(3, size - 3)), int(rng.integers(3, size - 3))),
                   int(rng.integers(2, 4)), 1, -1)
        paint(3)
    for _ in range(int(rng.integers(0, 2))):  # ring
        r = int(rng.uniform(0.1, 0.2) * size)
        cv2.circle(layer, (int(rng.integers(r + 1, size - r - 1)), int(rng.integers(r + 1, size - r - 1))), r, 1, 2)
        paint(4)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


def generate(root: Path, seed: int, size: int, num_train: int, num_val: int, num_test: int) -> None:
    """Write the preset atomically with :func:`segkit.data.synthetic.generate`'s writer and this module's render."""
    original = (synthetic.render, synthetic.CLASS_NAMES, synthetic.VERSION)
    synthetic.render, synthetic.CLASS_NAMES, synthetic.VERSION = render, CLASS_NAMES, VERSION
    try:
        synthetic.generate(root, seed, size, num_train, num_val, num_test)
    finally:
        synthetic.render, synthetic.CLASS_NAMES, synthetic.VERSION = original


class HardSyntheticSource(FolderSource):
    """The hard preset; generated into ``cache_dir`` on first use, then read from disk."""

    def __init__(self, cache_dir: str, seed: int = 0, size: int = 64, num_train: int = 400, num_val: int = 100,
                 num_test: int = 0) -> None:
        root = (Path(cache_dir).expanduser()
                / f"shapes-hard-v{VERSION}-seed{seed}-{size}px-{num_train}-{num_val}-{num_test}")
        if not (root / "classes.json").is_file():
            try:
                generate(root, seed, size, num_train, num_val, num_test)
            except OSError as exc:
                raise DataError(f"cannot write the synthetic dataset to {root} ({exc}); set data.source.cache_dir "
                                "to a writable folder") from None
        super().__init__(str(root))

"""The embedded default dataset: procedurally generated shapes, deterministic from a seed, cached on disk.

Six classes: background, disk, square, triangle, ring, cross. Every object and the background take colours from
the same distribution, so a pixel's colour says nothing about its class: the network must see the object's
shape (a disk's centre and a square's centre look identical locally), which makes receptive field matter.
It is written in the generic folder layout (images/, masks/, splits/) and read by :class:`FolderSource`.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from segkit.data.io import DataError
from segkit.data.sources import FolderSource

CLASS_NAMES = ["background", "disk", "square", "triangle", "ring", "cross"]
VERSION = 2


def _draw(kind: int, canvas: np.ndarray, value, cx: float, cy: float, r: float, angle: float) -> None:
    if kind == 1:
        cv2.circle(canvas, (round(cx), round(cy)), round(r), value, -1, cv2.LINE_8)
    elif kind == 4:
        cv2.circle(canvas, (round(cx), round(cy)), round(r * 0.75), value, max(2, round(r * 0.45)), cv2.LINE_8)
    else:
        if kind == 2:
            pts = [(r * 0.85 * math.cos(angle + k * math.pi / 2), r * 0.85 * math.sin(angle + k * math.pi / 2))
                   for k in range(4)]
            pts = [(x * math.sqrt(2), y * math.sqrt(2)) for x, y in pts]
            pts = [(x * 0.8, y * 0.8) for x, y in pts]
        elif kind == 3:
            pts = [(r * math.cos(angle + k * 2 * math.pi / 3), r * math.sin(angle + k * 2 * math.pi / 3))
                   for k in range(3)]
        else:  # cross: a plus sign of two bars
            w = r * 0.35
            bar = [(-r, -w), (r, -w), (r, w), (-r, w)]
            for rot in (angle, angle + math.pi / 2):
                c, s = math.cos(rot), math.sin(rot)
                poly = np.array([[cx + x * c - y * s, cy + x * s + y * c] for x, y in bar], dtype=np.int32)
                cv2.fillPoly(canvas, [poly], value, cv2.LINE_8)
            return
        poly = np.array([[cx + x, cy + y] for x, y in pts], dtype=np.int32)
        cv2.fillPoly(canvas, [poly], value, cv2.LINE_8)


def render(rng: np.random.Generator, size: int, max_objects: int = 4, max_rotation: float = 10.0
           ) -> tuple[np.ndarray, np.ndarray]:
    """One image ``(size, size, 3)`` uint8 and its mask ``(size, size)`` uint8.

    Shapes stand near-upright (rotated by at most ``max_rotation`` degrees; triangles point up), so that a small
    network learns them in minutes; flips and 90-degree rotations come from augmentation.
    """
    base = rng.integers(0, 256, 3).astype(np.float64)
    yy, xx = np.mgrid[0:size, 0:size] / size
    gradient = (rng.uniform(-40, 40, 3)[None, None] * xx[..., None] + rng.uniform(-40, 40, 3)[None, None]
                * yy[..., None])
    image = base[None, None] + gradient
    mask = np.zeros((size, size), np.uint8)
    placed: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            r = rng.uniform(0.12, 0.22) * size
            cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
            if all(math.hypot(cx - x, cy - y) > r + q + 2 for x, y, q in placed):
                break
        else:
            continue
        placed.append((cx, cy, r))
        kind = int(rng.integers(1, len(CLASS_NAMES)))
        angle = math.radians(rng.uniform(-max_rotation, max_rotation))
        angle += {2: math.pi / 4, 3: -math.pi / 2}.get(kind, 0.0)  # square edges axis-aligned, triangle up
        colour = rng.integers(0, 256, 3)
        while np.abs(colour - base).sum() < 90:  # keep objects visible against the local background
            colour = rng.integers(0, 256, 3)
        layer = np.zeros((size, size), np.uint8)
        _draw(kind, layer, 1, cx, cy, r, angle)
        image[layer == 1] = colour
        mask[layer == 1] = kind
    image += rng.normal(0, 6, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (every rank of a torchrun/SLURM launch generates the same folder at
    once; one writes it while the others wait). Without ``fcntl`` (Windows) the atomic rename alone decides."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _complete(root: Path) -> bool:
    return (root / "classes.json").is_file()


def generate(root: Path, seed: int, size: int, num_train: int, num_val: int, num_test: int) -> None:
    """Write the dataset atomically: a temporary folder renamed into place when complete. Safe when several
    processes generate the same ``root`` at once: the first writes it, the others find it complete."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(root.parent / f".{root.name}.lock"):
        if _complete(root):  # another process finished while this one waited
            return
        tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
        try:
            (tmp / "images").mkdir()
            (tmp / "masks").mkdir()
            (tmp / "splits").mkdir()
            counts = {"train": num_train, "val": num_val, "test": num_test}
            for split_index, (split, count) in enumerate(counts.items()):
                rng = np.random.default_rng([seed, split_index])
                names = []
                for i in range(count):
                    image, mask = render(rng, size)
                    name = f"{split}_{i:05d}"
                    cv2.imwrite(str(tmp / "images" / f"{name}.png"), image[..., ::-1])
                    cv2.imwrite(str(tmp / "masks" / f"{name}.png"), mask)
                    names.append(name)
                if names:  # no list for an empty split: it is then simply absent (num_test=0)
                    (tmp / "splits" / f"{split}.txt").write_text("\n".join(names) + "\n")
            (tmp / "classes.json").write_text(json.dumps({"class_names": CLASS_NAMES, "version": VERSION}))
            # what data=folder's class_names=auto reads, so the cache is a complete folder-layout dataset
            (tmp / "class_names.txt").write_text("\n".join(CLASS_NAMES) + "\n", encoding="utf-8")
            try:
                os.replace(tmp, root)
            except OSError as exc:  # renaming onto a non-empty folder: ENOTEMPTY or EEXIST, by platform
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                if not _complete(root):
                    raise OSError(exc.errno, f"{root} exists but is not a complete dataset; remove it") from None
                shutil.rmtree(tmp, ignore_errors=True)  # another process (without the lock) finished first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


class SyntheticShapesSource(FolderSource):
    """The default dataset; generated into ``cache_dir`` on first use, then read from disk."""

    def __init__(self, cache_dir: str, seed: int = 0, size: int = 48, num_train: int = 1000, num_val: int = 200,
                 num_test: int = 200) -> None:
        root = Path(cache_dir).expanduser() / f"shapes-v{VERSION}-seed{seed}-{size}px-{num_train}-{num_val}-{num_test}"
        if not _complete(root):
            try:
                generate(root, seed, size, num_train, num_val, num_test)
            except OSError as exc:
                raise DataError(f"cannot write the synthetic dataset to {root} ({exc}); set data.source.cache_dir "
                                "to a writable folder") from None
        super().__init__(str(root))

"""Reading images and index masks correctly, with errors that name the file and the fix."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class DataError(ValueError):
    """Bad input data; the message names the file and how to fix it."""


def _open(path: Path, what: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{what} file is empty (0 bytes): {path}; re-copy or remove it from the split list")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"cannot decode {what} {path} ({exc}); the file is truncated or not an image") from None
    # Apply EXIF orientation so images and masks from cameras line up as displayed.
    return ImageOps.exif_transpose(img)


def read_image(path: Path) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 RGB array: grayscale expanded, alpha dropped, 16-bit scaled to the full 8-bit range,
    EXIF orientation applied."""
    img = _open(path, "image")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "F":
        raise DataError(f"image {path} is floating point; convert it to 8- or 16-bit integers")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_mask(path: Path) -> np.ndarray:
    """An ``(H, W)`` integer array of class indices: uint8 for 8-bit masks, int64 for 16/32-bit ones. Palette
    PNGs give their indices (not colours); RGB colour masks are refused unless all three channels are equal (a
    grey mask saved as RGB)."""
    img = _open(path, "mask")
    if img.mode in ("P", "L"):
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("I", "I;16", "I;16B", "I;16L"):
        return np.asarray(img).astype(np.int64)
    if img.mode in ("RGB", "RGBA"):
        arr = np.asarray(img.convert("RGB"))
        if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
            return np.ascontiguousarray(arr[..., 0])
        raise DataError(
            f"mask {path} is an RGB colour image; segkit expects class indices (a palette or grayscale PNG). "
            "Convert colours to indices first (e.g. map each palette colour to its class id)."
        )
    if img.mode == "1":
        raise DataError(f"mask {path} is 1-bit; save it as an 8-bit index PNG (0 = background, 1 = object)")
    raise DataError(f"mask {path} has unsupported mode {img.mode}; save class indices as an 8-bit PNG")


def check_mask_values(mask: np.ndarray, num_classes: int, ignore_index: Optional[int], path: Path) -> None:
    """Every value must be a class in ``[0, num_classes)`` or ``ignore_index``."""
    bad = (mask < 0) | (mask >= num_classes)
    if ignore_index is not None:
        bad &= mask != ignore_index
    if bad.any():
        values = np.unique(mask[bad])[:10].tolist()
        hint = ""
        if set(np.unique(mask).tolist()) <= {0, 255} and num_classes <= 255:
            hint = " It looks like a 0/255 binary mask: divide it by 255 (object = 1)."
        raise DataError(
            f"mask {path} has values {values} outside [0, {num_classes}) that are not ignore_index={ignore_index}."
            f" Set data.num_classes to cover them, map them to class ids, or set them to {ignore_index}.{hint}"
        )


def mask_dtype(num_classes: int, ignore_index: Optional[int]) -> np.dtype:
    """The smallest dtype masks travel in: uint8 when every class and ``ignore_index`` fit in 0..255 (8x fewer
    bytes to augment, collate and copy to the GPU than int64; the task widens them on the device), else int64."""
    fits = num_classes <= 256 and (ignore_index is None or 0 <= ignore_index <= 255)
    return np.dtype(np.uint8 if fits else np.int64)


def label_lookup(label_map: Optional[dict], ignore_index: int, size: int = 256) -> Optional[np.ndarray]:
    """A lookup table from raw mask values to train ids; unmapped values go to ``ignore_index``."""
    if label_map is None:
        return None
    lut = np.full(max(size, max(int(k) for k in label_map) + 1), ignore_index, dtype=np.int64)
    for raw, train_id in label_map.items():
        lut[int(raw)] = int(train_id)
    return lut


def default_palette(num_classes: int) -> list[list[int]]:
    """The PASCAL VOC colour map, which extends to any number of classes."""
    palette = []
    for i in range(num_classes):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette


IMAGE_SUFFIXES: Sequence[str] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

"""Reading images and index masks correctly, with errors that name the file and the fix."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from segkit.data.spec import default_palette  # noqa: F401  (re-exported)


class DataError(ValueError):
    """Bad input data; the message names the file and how to fix it."""


def _check_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{what} file is empty (0 bytes): {path}; re-copy or remove it from the split list")
    return path


def _open(path: Path, what: str, data: Optional[bytes] = None) -> Image.Image:
    if data is None:
        path = _check_file(path, what)
    try:
        img = Image.open(path if data is None else io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"cannot decode {what} {path} ({exc}); the file is truncated or not an image") from None
    # Apply EXIF orientation so images and masks from cameras line up as displayed.
    return ImageOps.exif_transpose(img)


TIFF_SUFFIXES = (".tif", ".tiff")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as PIL's convert("L")


def png_is_16bit_colour(path: Path, data: Optional[bytes] = None) -> bool:
    """Whether ``path`` (or its bytes, ``data``) is a PNG of 16-bit RGB or RGBA (colour types 2 and 6 at bit depth
    16), which PIL opens as 8-bit RGB, keeping only the high byte of every value (a 12-bit microscope's 0-4095
    becomes 0-15)."""
    if data is not None:
        head = bytes(data[:26])
    else:
        with open(path, "rb") as f:
            head = f.read(26)
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 6)


def _decode_16bit_png(path: Path, data: Optional[bytes] = None) -> np.ndarray:
    """A 16-bit RGB(A) PNG as ``(H, W, 3|4)`` uint16, through OpenCV (which albumentations already brings)."""
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if data is None else \
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3:
        raise DataError(f"cannot decode the 16-bit colour PNG {path}; the file is truncated or not a PNG")
    return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def reads_as_float(path: Path) -> bool:
    """Whether :func:`read_image` gives ``path`` as float (16/32-bit integer and float files) rather than uint8, from
    the file's header alone (no decoding)."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                return np.dtype(tif.series[0].dtype) not in (np.uint8, np.bool_)
        except Exception:  # unreadable: read_image names the file when it is read
            return False
    if path.suffix.lower() == ".png" and path.is_file() and png_is_16bit_colour(path):
        return True
    try:
        with Image.open(path) as img:
            return img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
    except (UnidentifiedImageError, OSError, SyntaxError):
        return False


def _decode_image(path: Path, data: Optional[bytes] = None) -> np.ndarray:
    """The stored pixels as ``(H, W, C)`` in their own dtype (uint8, uint16, int32 or float32). ``data``: the file's
    bytes (a streamed shard's), decoded as the file ``path`` names would be."""
    path = Path(path)
    if path.suffix.lower() == ".png" and (data is not None or _check_file(path, "image")) \
            and png_is_16bit_colour(path, data):
        arr = _decode_16bit_png(path, data)
    elif path.suffix.lower() in TIFF_SUFFIXES:  # multi-band and 16-bit TIFFs: PIL misreads them (4 x 16-bit -> RGBA)
        import tifffile

        if data is None:
            _check_file(path, "image")
        try:
            with tifffile.TiffFile(path if data is None else io.BytesIO(data)) as tif:
                series = tif.series[0]
                arr, axes = np.asarray(series.asarray()), series.axes
        except Exception as exc:  # tifffile raises many types for broken files
            raise DataError(f"cannot decode image {path} ({exc}); the file is truncated or not a TIFF") from None
        if arr.ndim == 3 and axes[-2:] == "YX":
            arr = arr.transpose(1, 2, 0)  # planar (C, H, W), as multi-band GeoTIFFs store it -> (H, W, C)
    else:
        img = _open(path, "image", data)
        if img.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
            img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
        elif img.mode == "LA":
            img = img.convert("L")
        arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise DataError(f"image {path} has shape {arr.shape}; expected a 2-D image with channels last")
    return arr


def read_image(path: Path, channels: Optional[int] = None, data: Optional[bytes] = None) -> np.ndarray:
    """An ``(H, W, C)`` array: uint8 for 8-bit files; float32 in 0-1 for 16-bit and 32-bit integer files (divided by
    65535); float32 as stored for float files. EXIF orientation applied.

    ``channels`` (``data.in_channels``) is what the model takes: ``None`` keeps the file's channels; a grayscale file
    read for a 3-channel model is repeated to RGB; an RGB(A) file read for a 1-channel model becomes its luminance
    (ITU-R 601); an RGBA file read for a 3-channel model drops alpha. Any other mismatch is a ``DataError``.
    ``data``: the file's bytes, already read (a streamed shard's); ``path`` then only names it.
    """
    arr = _decode_image(path, data)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype in (np.uint16, np.int16, np.int32, np.uint32):
        arr = arr.astype(np.float32) / np.float32(65535.0)
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
    elif arr.dtype != np.uint8:
        raise DataError(f"image {path} has pixel type {arr.dtype}; save it as 8- or 16-bit integers or float")
    c = arr.shape[-1]
    if channels is None or c == channels:
        return np.ascontiguousarray(arr)
    if c == 1 and channels == 3:
        return np.ascontiguousarray(np.repeat(arr, 3, axis=2))
    if c in (3, 4) and channels == 1:
        luma = arr[..., :3].astype(np.float32) @ _LUMA
        out = np.round(luma).clip(0, 255).astype(np.uint8) if arr.dtype == np.uint8 else luma.astype(np.float32)
        return np.ascontiguousarray(out[..., None])
    if c == 4 and channels == 3:
        return np.ascontiguousarray(arr[..., :3])
    raise DataError(f"image {path} has {c} channels but data.in_channels={channels}; set data.in_channels={c} "
                    f"(the model's in_channels follows it) or convert the image")


def read_mask(path: Path, data: Optional[bytes] = None) -> np.ndarray:
    """An ``(H, W)`` integer array of class indices: uint8 for 8-bit masks, int64 for 16/32-bit ones. Palette
    PNGs give their indices (not colours); RGB colour masks are refused unless all three channels are equal (a
    grey mask saved as RGB). ``data``: the file's bytes, already read (``path`` then only names it)."""
    img = _open(path, "mask", data)
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


IMAGE_SUFFIXES: Sequence[str] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

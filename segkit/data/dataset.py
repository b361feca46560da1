"""One dataset class for every layout: read, map labels, validate, augment, return uint8 image + compact mask."""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from segkit.data.io import DataError, check_mask_values, label_lookup, mask_dtype, read_image, read_mask
from segkit.data.sources import Sample


class SegmentationDataset(Dataset):
    """Items are ``{"image": (C, H, W), "mask": (H, W), "name": str}``: the image is uint8 for 8-bit files and float32
    in 0-1 otherwise (:func:`segkit.data.io.read_image`, ``channels`` = ``data.in_channels``); the mask is uint8 when
    the classes and ``ignore_index`` fit in 0..255, else int64 (:func:`segkit.data.io.mask_dtype`).

    Normalisation and the widening of masks to int64 happen on the accelerator (see ``SegmentationTask``), so
    workers augment, collate and ship compact uint8 batches.
    Each sample is validated when read: image/mask sizes agree and mask values are classes or ``ignore_index``.
    :meth:`preload` decodes every sample once and keeps the arrays (small datasets: no decoding every epoch).
    """

    def __init__(self, samples: Sequence[Sample], num_classes: int, ignore_index: int = 255,
                 transform: Optional[Callable[..., Dict[str, Any]]] = None,
                 label_map: Optional[Dict[int, int]] = None, channels: Optional[int] = None) -> None:
        if len(samples) == 0:
            raise DataError("the split has no samples; check the split list or data.source.root")
        self.samples = list(samples)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.transform = transform
        self.mask_dtype = mask_dtype(num_classes, ignore_index)
        self.lut = label_lookup(label_map, ignore_index)
        self.channels = channels
        self._cache: Optional[List[tuple[np.ndarray, np.ndarray]]] = None

    def __len__(self) -> int:
        return len(self.samples)

    def names(self) -> List[str]:
        """Every sample's name (its image's file stem), in index order."""
        return [image.stem for image, _ in self.samples]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw image and validated class-index mask, before augmentation."""
        if self._cache is not None:
            return self._cache[index]
        image_path = self.samples[index][0]
        image, mask = read_image(image_path, self.channels), self.load_mask(index)
        if image.shape[:2] != mask.shape:
            raise DataError(f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its mask "
                            f"{self.samples[index][1]} is {mask.shape[1]}x{mask.shape[0]}; they must have the same "
                            "size")
        return image, mask

    def load_mask(self, index: int) -> np.ndarray:
        """The validated class-index mask alone (no image decoded: class statistics over a dataset read only these)."""
        if self._cache is not None:
            return self._cache[index][1]
        image_path, mask_path = self.samples[index]
        if mask_path is None or not mask_path.is_file():
            raise DataError(f"no mask for image {image_path}: expected {mask_path}")
        mask = read_mask(mask_path)
        if self.lut is not None:
            mask = self.lut[np.clip(mask, 0, len(self.lut) - 1)]
        check_mask_values(mask, self.num_classes, self.ignore_index, mask_path)
        return mask.astype(self.mask_dtype, copy=False)  # safe: every value was just validated

    def decoded_bytes_estimate(self) -> int:
        """Bytes the decoded images and masks would take, from file headers (no decoding)."""
        from PIL import Image

        total = 0
        for image_path, _ in self.samples:
            try:
                with Image.open(image_path) as img:
                    w, h = img.size
                    # 8-bit files stay uint8 in memory; 16/32-bit and float ones become float32 (read_image)
                    depth = 1 if img.mode in ("1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr") else 4
                total += w * h * (max(1, self.channels or len(img.getbands())) * depth + 1)
            except Exception:  # unreadable header or a format PIL does not parse: assume 4x its file size
                total += 4 * image_path.stat().st_size if image_path.is_file() else 0
        return total

    def preload(self) -> None:
        """Decode and validate every sample now and serve them from memory from then on (workers forked later share
        the arrays copy-on-write)."""
        if self._cache is None:
            self._cache = [self.load(i) for i in range(len(self))]

    def __getitem__(self, index: Union[int, Tuple[int, int]]) -> Dict[str, Any]:
        """``index`` or ``(index, seed)``: with a seed (from :class:`SeededSampler`) the augmentation is
        reproducible regardless of worker or resume."""
        seed = None
        if isinstance(index, tuple):
            index, seed = index
        image, mask = self.load(index)
        if self._cache is not None and self.transform is not None:  # never let a transform touch the cached arrays
            image, mask = image.copy(), mask.copy()
        if self.transform is not None:
            if seed is not None and hasattr(self.transform, "set_random_seed"):
                self.transform.set_random_seed(seed)
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        # np.require copies read-only or strided arrays (torch.from_numpy warns on read-only ones); the mask goes back
        # to its compact dtype (albumentations may hand back int32)
        return {
            "image": torch.from_numpy(np.require(image.transpose(2, 0, 1), requirements=("C", "W"))),
            "mask": torch.from_numpy(np.require(mask, dtype=self.mask_dtype, requirements=("C", "W"))),
            "name": self.samples[index][0].stem,
        }


def stack_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(N, C, H, W)`` from ``(C, h, w)`` images of any sizes, zero-padded bottom/right to the largest. A batch that
    mixes 8-bit (uint8) and 16-bit/float (float32, 0-1) images is float32, the uint8 ones divided by 255: the same
    0-1 scale as read_image gives every file (copying float values into a uint8 batch would make them zeros)."""
    h = max(image.shape[-2] for image in images)
    w = max(image.shape[-1] for image in images)
    dtypes = {image.dtype for image in images}
    dtype = images[0].dtype if len(dtypes) == 1 else torch.float32
    out = torch.zeros(len(images), images[0].shape[0], h, w, dtype=dtype)
    for i, image in enumerate(images):
        if image.dtype != dtype:
            image = image.to(dtype) / 255.0 if image.dtype == torch.uint8 else image.to(dtype)
        out[i, :, :image.shape[-2], :image.shape[-1]] = image
    return out


def pad_collate(batch: List[Dict[str, Any]], ignore_index: int = 255) -> Dict[str, Any]:
    """Stack a batch, padding images with 0 and masks with ``ignore_index`` (bottom/right) to a common size, so
    padded pixels count neither in the loss nor in the metrics (:func:`stack_images`); ``size`` holds each image's
    own ``(H, W)``."""
    images = stack_images([item["image"] for item in batch])
    h, w = images.shape[-2:]
    masks = torch.full((len(batch), h, w), ignore_index, dtype=batch[0]["mask"].dtype)
    for i, item in enumerate(batch):
        ih, iw = item["mask"].shape[-2:]
        masks[i, :ih, :iw] = item["mask"]
    return {"image": images, "mask": masks, "name": [item["name"] for item in batch],
            "size": [tuple(item["mask"].shape[-2:]) for item in batch]}


def channel_stats(dataset: SegmentationDataset, max_images: int = 256) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in 0-1 units over (up to ``max_images`` evenly spaced) images of ``dataset``, read
    without augmentation: the normalisation for data that is not 8-bit RGB photos (grayscale, 16-bit, N-band)."""
    step = max(1, len(dataset) // max_images)
    total = total_sq = None
    count = 0
    for i in range(0, len(dataset), step):
        image = dataset.load(i)[0]
        x = image.reshape(-1, image.shape[-1]).astype(np.float64)
        if image.dtype == np.uint8:
            x /= 255.0
        total = x.sum(0) if total is None else total + x.sum(0)
        total_sq = (x * x).sum(0) if total_sq is None else total_sq + (x * x).sum(0)
        count += len(x)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    return [float(v) for v in mean], [float(max(v, 1e-6)) for v in std]


class ImageFolder(Dataset):
    """Images to predict: a folder of images (or one image file), read with ``channels`` like training data.
    Items are ``{"image": (C, H, W), "name": str, "size": (H, W)}``; :meth:`collate` pads a batch to one size."""

    def __init__(self, path: Union[str, os.PathLike], channels: Optional[int] = None) -> None:
        from pathlib import Path

        from segkit.data.io import IMAGE_SUFFIXES

        source = Path(path)
        if source.is_dir():
            self.paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif source.is_file():
            self.paths = [source]
        else:
            raise DataError(f"input={source} is neither an image nor a folder of images")
        if not self.paths:
            raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in input={source}")
        self.channels = channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        image = read_image(self.paths[index], self.channels)
        return {"image": torch.from_numpy(np.require(image.transpose(2, 0, 1), requirements=("C", "W"))),
                "name": self.paths[index].stem, "size": tuple(image.shape[:2])}

    @staticmethod
    def collate(batch: List[Dict[str, Any]]) -> Dict[str, Any]:
        return {"image": stack_images([b["image"] for b in batch]), "name": [b["name"] for b in batch],
                "size": [b["size"] for b in batch]}

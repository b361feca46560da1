"""One dataset class for every layout: read, map labels, validate, augment, return uint8 image + compact mask."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from segkit.data.io import DataError, check_mask_values, label_lookup, mask_dtype, read_image, read_mask
from segkit.data.sources import Sample


class SegmentationDataset(Dataset):
    """Items are ``{"image": uint8 (3, H, W), "mask": (H, W), "name": str}``; the mask is uint8 when the classes and
    ``ignore_index`` fit in 0..255, else int64 (:func:`segkit.data.io.mask_dtype`).

    Normalisation and the widening of masks to int64 happen on the accelerator (see ``SegmentationTask``), so
    workers augment, collate and ship compact uint8 batches.
    Each sample is validated when read: image/mask sizes agree and mask values are classes or ``ignore_index``.
    """

    def __init__(self, samples: Sequence[Sample], num_classes: int, ignore_index: int = 255,
                 transform: Optional[Callable[..., Dict[str, Any]]] = None,
                 label_map: Optional[Dict[int, int]] = None) -> None:
        if len(samples) == 0:
            raise DataError("the split has no samples; check the split list or data.source.root")
        self.samples = list(samples)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.transform = transform
        self.mask_dtype = mask_dtype(num_classes, ignore_index)
        self.lut = label_lookup(label_map, ignore_index)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw image and validated class-index mask, before augmentation."""
        image_path, mask_path = self.samples[index]
        if mask_path is None or not mask_path.is_file():
            raise DataError(f"no mask for image {image_path}: expected {mask_path}")
        image, mask = read_image(image_path), read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise DataError(f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
                            f"{mask.shape[1]}x{mask.shape[0]}; they must have the same size")
        if self.lut is not None:
            mask = self.lut[np.clip(mask, 0, len(self.lut) - 1)]
        check_mask_values(mask, self.num_classes, self.ignore_index, mask_path)
        return image, mask.astype(self.mask_dtype, copy=False)  # safe: every value was just validated

    def __getitem__(self, index: Union[int, Tuple[int, int]]) -> Dict[str, Any]:
        """``index`` or ``(index, seed)``: with a seed (from :class:`SeededSampler`) the augmentation is
        reproducible regardless of worker or resume."""
        seed = None
        if isinstance(index, tuple):
            index, seed = index
        image, mask = self.load(index)
        if self.transform is not None:
            if seed is not None and hasattr(self.transform, "set_random_seed"):
                self.transform.set_random_seed(seed)
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=self.mask_dtype)),  # albumentations: int64->int32
            "name": self.samples[index][0].stem,
        }


def pad_collate(batch: List[Dict[str, Any]], ignore_index: int = 255) -> Dict[str, Any]:
    """Stack a batch, padding images with 0 and masks with ``ignore_index`` (bottom/right) to a common size, so
    padded pixels count neither in the loss nor in the metrics."""
    h = max(item["image"].shape[-2] for item in batch)
    w = max(item["image"].shape[-1] for item in batch)
    images = torch.zeros(len(batch), batch[0]["image"].shape[0], h, w, dtype=batch[0]["image"].dtype)
    masks = torch.full((len(batch), h, w), ignore_index, dtype=batch[0]["mask"].dtype)
    for i, item in enumerate(batch):
        ih, iw = item["image"].shape[-2:]
        images[i, :, :ih, :iw] = item["image"]
        masks[i, :ih, :iw] = item["mask"]
    return {"image": images, "mask": masks, "name": [item["name"] for item in batch]}

"""Dataset layouts. A source lists ``(image_path, mask_path)`` pairs for a split; reading is shared."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from segkit.data.io import IMAGE_SUFFIXES, DataError

Sample = Tuple[Path, Optional[Path]]


def _read_split_list(path: Path) -> List[str]:
    names = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not names:
        raise DataError(f"split list {path} is empty; list one image name per line")
    return names


class FolderSource:
    """Generic layout: ``root/images/NAME.jpg`` with ``root/masks/NAME.png`` (matching stems).

    Splits come from ``root/splits/{train,val,test}.txt`` (one name per line) when present, otherwise from
    ``val_ratio``/``test_ratio`` of a seeded shuffle of all images.
    """

    label_map: Optional[Dict[int, int]] = None

    def __init__(self, root: str, images_dir: str = "images", masks_dir: str = "masks", mask_suffix: str = ".png",
                 splits_dir: str = "splits", val_ratio: float = 0.1, test_ratio: float = 0.0, seed: int = 0) -> None:
        self.root = Path(root).expanduser()
        self.images_dir, self.masks_dir = self.root / images_dir, self.root / masks_dir
        self.mask_suffix, self.splits_dir = mask_suffix, self.root / splits_dir
        self.val_ratio, self.test_ratio, self.seed = val_ratio, test_ratio, seed

    def _images(self) -> Dict[str, Path]:
        if not self.images_dir.is_dir():
            raise DataError(f"image folder not found: {self.images_dir}; set data.source.root to the dataset "
                            "folder holding images/ and masks/")
        return {p.stem: p for p in sorted(self.images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}

    def samples(self, split: str) -> List[Sample]:
        images = self._images()
        split_file = self.splits_dir / f"{split}.txt"
        if split_file.is_file():
            names = _read_split_list(split_file)
            missing = [n for n in names if n not in images]
            if missing:
                raise DataError(f"{split_file} lists images not in {self.images_dir}: {missing[:5]}")
        else:
            names = sorted(images)
            random.Random(self.seed).shuffle(names)
            n_val, n_test = round(len(names) * self.val_ratio), round(len(names) * self.test_ratio)
            names = {"val": names[:n_val], "test": names[n_val:n_val + n_test],
                     "train": names[n_val + n_test:]}[split]
            names.sort()
        return [(images[n], self.masks_dir / f"{n}{self.mask_suffix}") for n in names]


class VOCSource:
    """PASCAL VOC: ``JPEGImages/ID.jpg``, palette PNGs in ``SegmentationClass/`` (or e.g. ``SegmentationClassAug``),
    splits in ``ImageSets/Segmentation/{split}.txt``; 255 marks object boundaries (ignored)."""

    label_map: Optional[Dict[int, int]] = None

    def __init__(self, root: str, mask_dir: str = "SegmentationClass", split_dir: str = "ImageSets/Segmentation"):
        self.root = Path(root).expanduser()
        self.mask_dir, self.split_dir = self.root / mask_dir, self.root / split_dir

    def samples(self, split: str) -> List[Sample]:
        split_file = self.split_dir / f"{split}.txt"
        if not split_file.is_file():
            raise DataError(f"VOC split list not found: {split_file}; set data.source.root to .../VOC2012")
        return [(self.root / "JPEGImages" / f"{n}.jpg", self.mask_dir / f"{n}.png")
                for n in _read_split_list(split_file)]


# Cityscapes labelIds -> the 19 train ids (cityscapesScripts' labels.py); everything else is ignored.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


class CityscapesSource:
    """Cityscapes: ``leftImg8bit/{split}/CITY/X_leftImg8bit.png`` with ``gtFine/{split}/CITY/X_gtFine_labelIds.png``;
    labelIds are mapped to the 19 train ids."""

    label_map = CITYSCAPES_TRAIN_IDS

    def __init__(self, root: str, mode: str = "gtFine") -> None:
        self.root, self.mode = Path(root).expanduser(), mode

    def samples(self, split: str) -> List[Sample]:
        image_dir = self.root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise DataError(f"Cityscapes folder not found: {image_dir}; set data.source.root to the folder "
                            "holding leftImg8bit/ and gtFine/")
        out = []
        for img in sorted(image_dir.glob("*/*_leftImg8bit.png")):
            stem = img.name[: -len("_leftImg8bit.png")]
            out.append((img, self.root / self.mode / split / img.parent.name / f"{stem}_{self.mode}_labelIds.png"))
        if not out:
            raise DataError(f"no *_leftImg8bit.png images under {image_dir}")
        return out


def class_names_or_default(names: Optional[Sequence[str]], num_classes: int) -> List[str]:
    if names is None:
        return [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"data.class_names has {len(names)} names but data.num_classes is {num_classes}")
    return list(names)

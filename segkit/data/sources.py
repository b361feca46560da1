"""Dataset layouts. A source lists ``(image_path, mask_path)`` pairs for a split; reading is shared."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from segkit.data.io import IMAGE_SUFFIXES, DataError

Sample = Tuple[Path, Optional[Path]]


def _read_names(path: Path) -> List[str]:
    # utf-8-sig: a list saved by Windows Notepad starts with a byte-order mark, which would become part of the
    # first name (and that image "not found")
    return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()
            if line.strip() and not line.startswith("#")]


def _read_split_list(path: Path) -> List[str]:
    names = _read_names(path)
    if not names:
        raise DataError(f"split list {path} is empty; list one image name per line")
    return names


SPLITS = ("train", "val", "test")


class MissingSplitError(DataError):
    """The layout has no such split (no split list, no folder): for an optional split (test) this is information."""


class FolderSource:
    """Generic layout: ``root/images/NAME.jpg`` with ``root/masks/NAME.png`` (matching stems).

    Splits come from ``root/splits/{train,val,test}.txt`` (one name per line) when present. Splits without a list
    are drawn, with a seeded shuffle, from the images no list names, so they never overlap a listed split: with no
    lists at all, ``val_ratio``/``test_ratio`` of all images go to val/test and the rest to train; with only
    ``train.txt``, the unlisted images are shared between val and test in the ratio ``val_ratio:test_ratio`` (all
    of them to val when ``test_ratio`` is 0); with only ``val.txt`` (and/or ``test.txt``), ``val_ratio``/
    ``test_ratio`` of all images go to the missing evaluation split and the rest of the unlisted ones to train.
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
                            "folder holding images/ and masks/ (or data.source.images_dir/masks_dir to their names)")
        return {p.stem: p for p in sorted(self.images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}

    def _listed(self, images: Dict[str, Path]) -> Dict[str, List[str]]:
        """The split lists that exist, checked against the image folder."""
        listed = {}
        for split in SPLITS:
            split_file = self.splits_dir / f"{split}.txt"
            if split_file.is_file():
                listed[split] = self._listed_file(split_file, images, required=False)
        return listed

    def _listed_file(self, split_file: Path, images: Dict[str, Path], required: bool = True) -> List[str]:
        """The names in ``split_file``, each checked to be in the image folder; an empty list is an error only
        when that split is asked for (``required``)."""
        if not required and not _read_names(split_file):
            return []
        names = _read_split_list(split_file)
        missing = [n for n in names if n not in images]
        if missing:
            raise DataError(f"{split_file} lists images not in {self.images_dir}: {missing[:5]}")
        return names

    def split_names(self, images: Optional[Dict[str, Path]] = None) -> Dict[str, List[str]]:
        """Image names of every split: the listed ones as listed, the others drawn from the unlisted images."""
        images = self._images() if images is None else images
        listed = self._listed(images)
        taken = {n for names in listed.values() for n in names}
        rest = sorted(n for n in images if n not in taken)
        random.Random(self.seed).shuffle(rest)
        out = dict(listed)
        if "train" in listed:  # val and/or test share what no list names
            if "val" not in listed and "test" not in listed:
                share = self.val_ratio / (self.val_ratio + self.test_ratio) if self.test_ratio > 0 else 1.0
                n_val = round(len(rest) * share)
                out["val"], out["test"] = rest[:n_val], rest[n_val:]
            elif "val" not in listed:
                out["val"] = rest
            elif "test" not in listed:
                out["test"] = rest if self.test_ratio > 0 else []
        else:  # ratios of the whole dataset to the missing evaluation splits, the rest of the unlisted to train
            start = 0
            for split, ratio in (("val", self.val_ratio), ("test", self.test_ratio)):
                if split not in listed:
                    n = round(len(images) * ratio)
                    out[split], start = rest[start:start + n], start + n
            out["train"] = rest[start:]
        return {split: out[split] if split in listed else sorted(out[split]) for split in SPLITS}

    def samples(self, split: str) -> List[Sample]:
        images = self._images()
        if split not in SPLITS:  # any other named list, e.g. splits/trainval.txt
            split_file = self.splits_dir / f"{split}.txt"
            if not split_file.is_file():
                raise MissingSplitError(f"split list not found: {split_file}; splits are train, val, test or "
                                        f"a NAME with {self.splits_dir}/NAME.txt")
            names = self._listed_file(split_file, images)
            return [(images[n], self.masks_dir / f"{n}{self.mask_suffix}") for n in names]
        names = self.split_names(images)[split]
        if not names and (self.splits_dir / f"{split}.txt").is_file():
            _read_split_list(self.splits_dir / f"{split}.txt")  # raises: the list is empty
        lists = [self.splits_dir / f"{s}.txt" for s in SPLITS if (self.splits_dir / f"{s}.txt").is_file()]
        if not names and lists and (split != "test" or self.test_ratio > 0):
            split_file = self.splits_dir / f"{split}.txt"
            raise DataError(f"no images left for the {split} split: {split_file} does not exist and every image in "
                            f"{self.images_dir} is listed in {', '.join(map(str, lists))} (or the ratio leaves none); "
                            f"add {split_file} listing the {split} images, one name per line")
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
            hint = ("set data.source.root to the VOC2012 folder (holding JPEGImages/, SegmentationClass/ and "
                    "ImageSets/Segmentation/)")
            if self.split_dir.is_dir():
                found = sorted(p.stem for p in self.split_dir.glob("*.txt"))
                hint = f"{self.split_dir} has {', '.join(found) or 'no lists'}"
            raise MissingSplitError(
                f"VOC split list not found: {split_file}; {hint}. For a VOC-like export without split lists "
                "(labelme's VOC export, for one) use data=folder data.source.root=DIR "
                "data.source.images_dir=JPEGImages data.source.masks_dir=SegmentationClass data.num_classes=N "
                "(val is then a seeded data.source.val_ratio split)")
        return [(self.root / "JPEGImages" / f"{n}.jpg", self.mask_dir / f"{n}.png")
                for n in _read_split_list(split_file)]


# Cityscapes labelIds -> the 19 train ids (cityscapesScripts' labels.py); everything else is ignored.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


CITYSCAPES_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic_light", "traffic_sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle"]
CITYSCAPES_PALETTE = [[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
                      [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
                      [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
                      [0, 80, 100], [0, 0, 230], [119, 11, 32]]


class CityscapesSource:
    """Cityscapes: ``leftImg8bit/{split}/CITY/X_leftImg8bit.png`` with ``gtFine/{split}/CITY/X_gtFine_labelIds.png``;
    labelIds are mapped to the 19 train ids, whose names and colours the layout defines (``class_names``,
    ``palette``: what ``data.class_names=auto`` takes)."""

    label_map = CITYSCAPES_TRAIN_IDS
    class_names = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE

    def __init__(self, root: str, mode: str = "gtFine") -> None:
        self.root, self.mode = Path(root).expanduser(), mode

    def samples(self, split: str) -> List[Sample]:
        image_dir = self.root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise MissingSplitError(f"Cityscapes folder not found: {image_dir}; set data.source.root to the folder "
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

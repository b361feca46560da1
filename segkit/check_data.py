"""Validate a whole dataset up front: every image/mask pair of every split, with a summary. Splits must be disjoint:
an image in two of the splits checked (a name in two split lists) is a problem naming both lists."""
from __future__ import annotations

from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from segkit.config import check_targets
from segkit.data.io import DataError
from segkit.data.sources import MissingSplitError

# Training needs train and val; a layout without a test split (VOC2012 ships no test list) is complete.
REQUIRED_SPLITS = ("train", "val")


def _split_list(source: Any, split: str) -> Optional[Path]:
    """The file listing ``split``'s images, for sources with split lists (folder: ``splits_dir``, VOC:
    ``split_dir``); None when the split is not listed (drawn, or a folder of its own)."""
    for attr in ("splits_dir", "split_dir"):
        folder = getattr(source, attr, None)
        if folder is not None and (Path(folder) / f"{split}.txt").is_file():
            return Path(folder) / f"{split}.txt"
    return None


def shared_between_splits(source: Any, images: Dict[str, List[Path]]) -> List[str]:
    """One problem per pair of splits that share images (``images``: each split's image paths), with the names
    and the split lists that give them."""
    problems = []
    for a, b in combinations(images, 2):
        shared = sorted({Path(p).stem for p in set(map(str, images[a])) & set(map(str, images[b]))})
        if not shared:
            continue
        lists = [_split_list(source, a), _split_list(source, b)]
        where = (f"each is listed in both {lists[0]} and {lists[1]}" if all(lists) else
                 f"each is in both the {a} and the {b} split")
        shown = shared[:10] + (["..."] if len(shared) > 10 else [])
        problems.append(f"{a} and {b} share {len(shared)} image{'s' if len(shared) > 1 else ''} {shown}: {where}; "
                        "list each image in one split only")
    return problems


def check_dataset(datamodule: Any, splits=("train", "val", "test")) -> Dict[str, Any]:
    """Read every sample (without augmentation); collect sizes, class pixel counts, every problem found (an image
    in two of ``splits`` too) and, as information, which optional splits the layout does not have."""
    report: Dict[str, Any] = {"splits": {}, "problems": [], "info": []}
    images: Dict[str, List[Path]] = {}  # each split's image paths, to find images in two splits
    pixels = np.zeros(datamodule.num_classes + 1, dtype=np.int64)  # last bin: ignore_index
    for split in splits:
        try:
            samples = datamodule.source.samples(split)
        except MissingSplitError as exc:
            if split in REQUIRED_SPLITS:
                report["problems"].append(f"{split}: {exc}")
            else:
                report["info"].append(f"{split}: not provided (optional): {str(exc).split(';')[0]}")
            continue
        except DataError as exc:
            report["problems"].append(f"{split}: {exc}")
            continue
        if not samples:
            if split in REQUIRED_SPLITS:
                report["problems"].append(f"{split}: the split is empty")
            else:
                report["info"].append(f"{split}: no images (optional split)")
            continue
        images[split] = [image for image, _ in samples]
        dataset = datamodule.dataset(split)  # no augmentation (eval_transform is null by default)
        sizes: Counter = Counter()
        ok = 0
        for i in range(len(dataset)):
            try:
                image, mask = dataset.load(i)
            except DataError as exc:
                report["problems"].append(f"{split}: {exc}")
                continue
            ok += 1
            sizes[f"{image.shape[1]}x{image.shape[0]}"] += 1
            valid = mask != datamodule.ignore_index
            pixels[: datamodule.num_classes] += np.bincount(mask[valid], minlength=datamodule.num_classes)
            pixels[-1] += int((~valid).sum())
        report["splits"][split] = {"images": len(dataset), "readable": ok, "sizes": dict(sizes.most_common(5))}
    report["problems"] += shared_between_splits(datamodule.source, images)
    total = max(int(pixels.sum()), 1)
    report["class_pixel_frequency"] = {name: round(int(n) / total, 6)
                                       for name, n in zip(datamodule.class_names, pixels[:-1])}
    report["ignored_pixel_fraction"] = round(int(pixels[-1]) / total, 6)
    return report


def format_report(report: Dict[str, Any]) -> str:
    found = ", ".join(f"{split} ({info['images']} images)" for split, info in report["splits"].items())
    lines: List[str] = [f"splits found: {found or 'none'}"]
    for split, info in report["splits"].items():
        lines.append(f"{split}: {info['readable']}/{info['images']} readable; sizes {info['sizes']}")
    lines.append("class pixel frequency: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                         report["class_pixel_frequency"].items()))
    lines.append(f"ignored pixels: {report['ignored_pixel_fraction']:.4f}")
    lines += [f"note: {i}" for i in report.get("info", [])]
    problems = report["problems"]
    lines.append(f"{len(problems)} problem(s) found" + (":" if problems else ""))
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)


def check_data(cfg: DictConfig) -> Dict[str, Any]:
    """Check every sample, then show what training would choose for the values left as ``auto``."""
    from segkit.data.plan import plan_from_config, planned_keys

    check_targets(cfg, cfg.get("allowed_targets") or ())
    plan: List[str] = []
    if planned_keys(cfg):
        try:
            plan = plan_from_config(cfg, instantiate(cfg.data.source))
        except DataError as exc:  # reported below with every other problem, file by file
            plan = [f"not planned: {exc}"]
            # placeholders so that every sample can still be read and its problems listed; num_classes unknown:
            # accept every id below ignore_index (the plan's error above says what the masks hold)
            ignore = cfg.data.get("ignore_index")
            fallback = {"num_classes": ignore if isinstance(ignore, int) and ignore > 0 else 256, "class_names": None,
                        "in_channels": 3, "batch_size": 1, "crop_size": 512}
            for key in ("num_classes", "class_names", "in_channels", "mean", "std", "crop_size", "batch_size"):
                if str(cfg.data.get(key)) == "auto":
                    cfg.data[key] = fallback.get(key)
            if str((cfg.data.get("train_transform") or {}).get("transforms")) == "auto":
                cfg.data.train_transform = None  # checking never augments
    report = check_dataset(instantiate(cfg.data))
    report["plan"] = plan
    print(format_report(report))
    if plan:
        print("training would choose (values left as auto):\n" + "\n".join(f"  - {line}" for line in plan))
    return report

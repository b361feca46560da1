"""Annotations in, masks out: COCO JSON (and CVAT's COCO 1.0 export), labelme JSON and CVAT "Segmentation mask 1.1"
exports become segkit's folder layout (``images/NAME.ext``, ``masks/NAME.png`` palette PNGs of class ids,
``class_names.txt``, optional ``splits/SPLIT.txt``), read by :class:`segkit.data.FolderSource`.

Class 0 is background (pixels no shape covers); a COCO category that is the background (id 0, as labelme2coco writes
``_background_``, or named ``background``/``_background_`` in any case) is class 0 too, so the ids agree with the
same tool's VOC export. Overlapping shapes follow the file's order: later ones are drawn on top. COCO crowd regions
(``iscrowd=1``) and labelme's ``__ignore__`` label become ``ignore_index``; a ``__ignore__`` line in a class list is
not a class (labelme's ``labels.txt`` and the ``class_names.txt`` written from it give the same ids). A label that
is not in the class list is an error naming the file and the label.

labelme JSONs and CVAT masks in sub-folders are converted too: the sample name is the path below the input folder
with its folders joined by ``__`` (``day1/x.json`` -> ``day1__x``), and a CVAT mask's image is the one at the same
relative path under ``JPEGImages/``. Folders starting with ``.`` are skipped.

Converting several annotation files into one folder (``split=train`` then ``split=val``) keeps one class list:
``class_names.txt`` already there is reused. A sample whose name another split's list already has (CVAT and
labelme reuse names like ``frame_000000``) is written under the name plus ``_SPLIT`` (``_2``, ``_3``, ... after it
while that is taken too), logged and noted in the report, so no split's sample is overwritten and the split lists
stay disjoint; converting the same split again rewrites its own samples under the same names. Images and masks not
in any split list are not protected (a conversion without ``split=`` rewrites same-named ones).
"""
from __future__ import annotations

import base64
import io
import itertools
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Container, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from segkit.data.classnames import IGNORE_LABEL, read_class_names  # noqa: F401  (IGNORE_LABEL re-exported)
from segkit.data.io import IMAGE_SUFFIXES, DataError, default_palette

log = logging.getLogger(__name__)

BACKGROUND_NAMES = ("background", "_background_")  # a source's background label is class 0 in any class list
IGNORE_COLOUR = (224, 224, 192)  # PASCAL VOC's colour for ignored pixels (index 255)
FOLDER_SEPARATOR = "__"  # a sample in a sub-folder: day1/x.json -> day1__x
LINE_WIDTH, POINT_SIZE = 10, 5  # labelme's shape_to_mask: line/linestrip width, point disk radius (pixels)


@dataclass
class Sample:
    """One converted image: ``image`` is the source file, or encoded bytes with their suffix (labelme imageData)."""

    name: str
    image: Union[Path, Tuple[bytes, str]]
    mask: np.ndarray
    source: Optional[str] = None  # the annotation it comes from, for messages


@dataclass
class Annotations:
    """What a reader produces: the class list (0 = background), an optional palette, and the samples (lazily).
    :func:`write_dataset` adds its notes and the samples it renamed (source name -> name written)."""

    class_names: List[str]
    palette: Optional[List[List[int]]]
    samples: Iterator[Sample]
    notes: List[str] = field(default_factory=list)
    renamed: Dict[str, str] = field(default_factory=dict)


def sample_name(relative: Path) -> str:
    """The sample name of a file at ``relative`` (below the input folder): its stem, after its folders joined by
    ``__`` (``day1/cam/x.json`` -> ``day1__cam__x``)."""
    return FOLDER_SEPARATOR.join(Path(relative).with_suffix("").parts)


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark (Windows tools) is no error
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse {path} as JSON ({exc}); is it the exported annotation file?") from None


def _files_below(folder: Path, pattern: str) -> Iterator[Path]:
    """Files matching ``pattern`` in ``folder`` and its sub-folders, except in folders (or files) starting with
    ``.``."""
    for path in folder.rglob(pattern):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            yield path


def _class_ids(source_names: Sequence[str], class_names: Optional[Sequence[str]], where: str) -> Dict[str, int]:
    """Source label -> class id: by position in ``class_names`` when given (unknown names are an error), else in
    the source's own order."""
    if class_names is None:
        return {n: i for i, n in enumerate(source_names)}
    index = {n: i for i, n in enumerate(class_names)}
    index.update({n: 0 for n in source_names if n.lower() in BACKGROUND_NAMES and n not in index})  # class 0
    unknown = [n for n in source_names if n not in index]
    if unknown:
        raise DataError(f"{where}: labels {unknown} are not in the class list {list(class_names)}; add them to the "
                        "class list file (one name per line) or convert into a fresh output folder")
    return {n: index[n] for n in source_names}


# ---- COCO ------------------------------------------------------------------------------------------------------
def _coco_rle(segmentation: Any, height: int, width: int, where: str) -> Any:
    """One RLE for a polygon list, an uncompressed RLE (``counts`` a list) or a compressed one (pycocotools'
    ``annToRLE``); degenerate polygons (fewer than 3 points) are dropped."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation:
        if list(segmentation.get("size", [height, width])) != [height, width]:
            raise DataError(f"{where}: RLE size {segmentation.get('size')} differs from the image's "
                            f"[{height}, {width}]")
        if isinstance(segmentation["counts"], list):
            return mask_utils.frPyObjects(segmentation, height, width)
        return segmentation
    raise DataError(f"{where}: segmentation is neither polygons nor RLE ({type(segmentation).__name__})")


def read_coco(json_path: Path, image_dir: Optional[Path] = None, class_names: Optional[Sequence[str]] = None,
              ignore_index: int = 255) -> Annotations:
    """COCO instances JSON (polygons, RLE, ``iscrowd``); category ids become contiguous class ids 1..K in id order,
    or follow ``class_names`` by name. Class 0 is background: a category that is the background (id 0, as
    labelme2coco writes ``_background_``, or named background/_background_ in any case) is class 0 and names it."""
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        raise ImportError("COCO conversion needs pycocotools: pip install 'segkit[coco]'") from None
    json_path = Path(json_path)
    coco = _load_json(json_path)
    if not isinstance(coco, dict) or not {"images", "annotations", "categories"} <= set(coco):
        raise DataError(f"{json_path} is not a COCO instances file (needs images, annotations and categories)")
    image_dir = Path(image_dir) if image_dir else _coco_image_dir(json_path)
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    cat_names = {c["id"]: str(c["name"]) for c in categories}
    background = [cid for cid, n in cat_names.items() if cid == 0 or n.lower() in BACKGROUND_NAMES]
    background_name = next((cat_names[cid] for cid in background if cat_names[cid].lower() in BACKGROUND_NAMES),
                           "background")
    # categories sharing a name share a class
    source_names = [background_name] + list(dict.fromkeys(n for cid, n in cat_names.items() if cid not in background))
    index = {n: i for i, n in enumerate(source_names if class_names is None else class_names)}
    cat_to_class = {cid: index[n] if n in index and (class_names is not None or cid not in background) else 0
                    for cid, n in cat_names.items() if n in index or cid in background}
    unknown = list(dict.fromkeys(n for cid, n in cat_names.items() if cid not in cat_to_class))
    if unknown:
        raise DataError(f"{json_path}: labels {unknown} are not in the class list {list(class_names or [])}; add "
                        "them to the class list file (one name per line) or convert into a fresh output folder")
    id0 = cat_names.get(0)
    if id0 is not None and id0.lower() not in BACKGROUND_NAMES and id0 not in (class_names or ()):
        used = sum(1 for ann in coco["annotations"] if ann.get("category_id") == 0)
        if used:
            raise DataError(f"{json_path}: category 0 {id0!r} is taken as the background (class 0, as labelme2coco "
                            f"numbers it) but {used} annotation(s) use it; if it is a class (some exporters number "
                            f"classes from 0), pass class_names=FILE listing background first, then {id0!r} and the "
                            "other category names in the order wanted")
    by_image: Dict[Any, List[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)

    def samples() -> Iterator[Sample]:
        from pycocotools import mask as mask_utils

        for img in coco["images"]:
            height, width = int(img["height"]), int(img["width"])
            mask = np.zeros((height, width), np.int64)
            for ann in by_image.get(img["id"], []):  # file order: later annotations on top
                where = f"{json_path}: annotation {ann.get('id')} of image {img['file_name']!r}"
                if ann["category_id"] not in cat_to_class:
                    raise DataError(f"{where}: unknown label (category_id {ann['category_id']} is not in "
                                    "categories); add the category or remove the annotation")
                if not ann.get("segmentation"):
                    raise DataError(f"{where}: no segmentation (a box only); segkit needs polygons or RLE masks")
                rle = _coco_rle(ann["segmentation"], height, width, where)
                if rle is None:
                    continue
                region = mask_utils.decode(rle).astype(bool)
                mask[region] = ignore_index if ann.get("iscrowd") else cat_to_class[ann["category_id"]]
            yield Sample(Path(img["file_name"]).stem, image_dir / img["file_name"], mask,
                         f"{json_path}: image {img['file_name']!r}")

    return Annotations(list(class_names) if class_names is not None else source_names, None, samples())


def _coco_image_dir(json_path: Path) -> Path:
    """Where the images usually are: ``images/`` beside ``annotations/`` (CVAT's and COCO's own layout), or beside
    the JSON."""
    for candidate in (json_path.parent.parent / "images", json_path.parent / "images"):
        if candidate.is_dir():
            return candidate
    return json_path.parent


def find_coco_json(path: Path) -> Path:
    """The annotation file, given the file itself or a CVAT "COCO 1.0" export folder (``annotations/*.json``)."""
    if path.is_dir():
        found = sorted((path / "annotations").glob("*.json")) or sorted(path.glob("*.json"))
        if len(found) != 1:
            raise DataError(f"{path}: expected one annotations/*.json (CVAT COCO 1.0 export), found "
                            f"{[str(p) for p in found]}; pass input=PATH/TO/FILE.json")
        return found[0]
    return path


# ---- labelme ---------------------------------------------------------------------------------------------------
def shape_region(shape: Dict[str, Any], size: Tuple[int, int], where: str, line_width: int = LINE_WIDTH,
                 point_size: int = POINT_SIZE) -> np.ndarray:
    """A labelme shape as a boolean mask, drawn the way labelme's own ``shape_to_mask`` (labelme/utils/shape.py)
    draws it with PIL: polygon, rectangle, circle (a disk through its second point), line and linestrip (polylines
    ``line_width`` wide, labelme's default 10) and point (a disk of radius ``point_size``, labelme's default 5);
    ``mask`` shapes (labelme's AI-assisted masks) paste their PNG at the box's top-left corner."""
    height, width = size
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    points = [tuple(map(float, p)) for p in shape.get("points") or []]
    kind = shape.get("shape_type") or "polygon"
    if kind == "polygon" and len(points) >= 3:
        draw.polygon(points, outline=1, fill=1)
    elif kind == "rectangle" and len(points) == 2:
        (x0, y0), (x1, y1) = points
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=1, fill=1)
    elif kind == "circle" and len(points) == 2:
        (cx, cy), (px, py) = points
        r = math.hypot(cx - px, cy - py)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
    elif (kind == "line" and len(points) == 2) or (kind == "linestrip" and len(points) >= 2):
        draw.line(points, fill=1, width=line_width)
    elif kind == "point" and len(points) == 1:
        (cx, cy), r = points[0], point_size
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
    elif kind == "mask" and shape.get("mask") and points:  # labelme's AI masks: a PNG of the box at points[0]
        patch = np.asarray(Image.open(io.BytesIO(base64.b64decode(shape["mask"]))))
        patch = (patch[..., 0] if patch.ndim == 3 else patch).astype(bool)
        x0, y0 = max(int(points[0][0]), 0), max(int(points[0][1]), 0)
        region = np.zeros((height, width), bool)
        h, w = region[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]].shape
        region[y0:y0 + h, x0:x0 + w] = patch[:h, :w]
        return region
    elif kind in ("polygon", "rectangle", "circle", "line", "linestrip", "point", "mask"):
        raise DataError(f"{where}: {kind} with {len(points)} points (a polygon needs 3 or more, a rectangle, "
                        "circle or line 2 (a linestrip for more), a linestrip 2 or more, a point 1, a mask its box "
                        "and PNG data); fix or delete the shape")
    else:
        raise DataError(f"{where}: shape_type {kind!r} is not one labelme draws; segkit converts polygon, "
                        "rectangle, circle, line, linestrip, point and mask shapes (delete the shape or change its "
                        "type)")
    return np.asarray(canvas, dtype=bool)


def read_labelme(json_files: Sequence[Path], class_names: Sequence[str], ignore_index: int = 255,
                 root: Optional[Path] = None) -> Annotations:
    """labelme JSON files; ``class_names`` in class-id order (0 = background). Shapes labelled ``__ignore__``
    (labelme's labels.txt convention) become ``ignore_index``, listed or not; a ``__ignore__`` entry is not a class.
    Sample names are the files' paths below ``root`` (:func:`sample_name`), else their stems."""
    names = [n for n in class_names if n != IGNORE_LABEL]
    ids: Dict[str, int] = {n: i for i, n in enumerate(names)}
    ids[IGNORE_LABEL] = ignore_index

    def samples() -> Iterator[Sample]:
        for path in json_files:
            doc = _load_json(path)
            image, size = _labelme_image(doc, path)
            mask = np.zeros(size, np.int64)
            for k, shape in enumerate(doc.get("shapes") or []):
                label = str(shape.get("label"))
                if label not in ids:
                    raise DataError(f"{path}: unknown label {label!r} (shape {k}); add it to the class list "
                                    f"{names} or rename the shape")
                mask[shape_region(shape, size, f"{path}: shape {k} ({label!r})")] = ids[label]
            yield Sample(sample_name(path.relative_to(root)) if root else path.stem, image, mask, str(path))

    return Annotations(names, None, samples())


def _labelme_image(doc: Dict[str, Any], path: Path) -> Tuple[Union[Path, Tuple[bytes, str]], Tuple[int, int]]:
    """The image file beside the JSON (``imagePath``), or the embedded ``imageData``; and its (height, width)."""
    image_path = path.parent / str(doc.get("imagePath") or "").replace("\\", "/")
    size = (int(doc["imageHeight"]), int(doc["imageWidth"])) if doc.get("imageHeight") and doc.get("imageWidth") \
        else None
    if doc.get("imagePath") and image_path.is_file():
        image: Union[Path, Tuple[bytes, str]] = image_path
        if size is None:  # segkit's reader: multi-band and 16-bit TIFFs that PIL cannot open too
            from segkit.data.io import read_image

            size = read_image(image_path).shape[:2]
        return image, size
    if doc.get("imageData"):
        data = base64.b64decode(doc["imageData"])
        try:
            opened = Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{path}: cannot decode its embedded imageData ({exc}); save the image beside the JSON "
                            "and set imagePath") from None
        image = (data, "." + (opened.format or "png").lower().replace("jpeg", "jpg"))
        return image, size or (opened.height, opened.width)
    raise DataError(f"{path}: image {image_path} not found and no imageData embedded; put the image beside the "
                    "JSON or save it with image data")


# ---- CVAT "Segmentation mask 1.1" ------------------------------------------------------------------------------
def read_cvat_mask(root: Path, class_names: Optional[Sequence[str]] = None) -> Annotations:
    """A CVAT "Segmentation mask 1.1" export: ``labelmap.txt``, colour masks in ``SegmentationClass/`` and images
    in ``JPEGImages/``, in sub-folders too (an image is the one at its mask's relative path; the sample name is that
    path, :func:`sample_name`). Colours become class ids by the labelmap (in its order, or by name into
    ``class_names``)."""
    root = Path(root)
    source_names, palette = read_class_names(root / "labelmap.txt")
    if palette is None:
        raise DataError(f"{root / 'labelmap.txt'} gives no colour for some classes; CVAT writes name:r,g,b:: lines")
    ids = _class_ids(source_names, class_names, str(root / "labelmap.txt"))
    colour_to_id = {(r << 16) | (g << 8) | b: ids[n] for n, (r, g, b) in zip(source_names, palette)}
    mask_dir, image_dir = root / "SegmentationClass", root / "JPEGImages"
    masks = sorted(_files_below(mask_dir, "*.png"))
    if not masks:
        raise DataError(f"no colour masks in {mask_dir}; is {root} a CVAT 'Segmentation mask 1.1' export?")
    images: Dict[Path, Path] = {}  # relative path without suffix -> image
    for path in sorted(_files_below(image_dir, "*")) if image_dir.is_dir() else []:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images.setdefault(path.relative_to(image_dir).with_suffix(""), path)

    def samples() -> Iterator[Sample]:
        for mask_path in masks:
            relative = mask_path.relative_to(mask_dir).with_suffix("")
            if relative not in images:
                raise DataError(f"no image for {mask_path} (no {image_dir / relative}.* with an image suffix); "
                                "export from CVAT with 'Save images'")
            rgb = np.asarray(Image.open(mask_path).convert("RGB")).astype(np.int64)
            code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            values, inverse = np.unique(code, return_inverse=True)
            unknown = [v for v in values.tolist() if v not in colour_to_id]
            if unknown:
                colours = [((v >> 16) & 255, (v >> 8) & 255, v & 255) for v in unknown[:5]]
                raise DataError(f"{mask_path}: unknown label colours {colours} (not in {root / 'labelmap.txt'})")
            lut = np.array([colour_to_id[v] for v in values.tolist()], np.int64)
            yield Sample(sample_name(relative), images[relative], lut[inverse].reshape(code.shape), str(mask_path))

    names = list(class_names) if class_names is not None else source_names
    return Annotations(names, palette if class_names is None else None, samples())


# ---- writing ---------------------------------------------------------------------------------------------------
def save_mask(mask: np.ndarray, path: Path, palette: Sequence[Sequence[int]], ignore_index: int) -> None:
    """A palette PNG of class ids (16-bit grayscale when ids or ignore_index exceed 255)."""
    if mask.max(initial=0) <= 255 and mask.min(initial=0) >= 0:
        img = Image.fromarray(mask.astype(np.uint8), mode="P")
        flat = np.zeros((256, 3), np.uint8)
        flat[: min(len(palette), 256)] = np.asarray(palette, np.uint8)[:256]
        if 0 <= ignore_index <= 255:
            flat[ignore_index] = IGNORE_COLOUR
        img.putpalette(flat.ravel().tolist())
    else:
        img = Image.fromarray(mask.astype(np.uint16))
    img.save(path)


def _listed_in_other_splits(splits_dir: Path, split: Optional[str]) -> Dict[str, Path]:
    """The names the split lists in ``splits_dir`` other than ``split``'s give: name -> the (first) list giving it."""
    owner: Dict[str, Path] = {}
    for path in sorted(splits_dir.glob("*.txt")) if splits_dir.is_dir() else []:
        if path.stem != split:
            for line in path.read_text(encoding="utf-8-sig").splitlines():
                if line.strip() and not line.startswith("#"):
                    owner.setdefault(line.strip(), path)
    return owner


def _free_name(name: str, split: Optional[str], taken: Dict[str, Path], used: Container[str]) -> str:
    """The first of NAME_SPLIT, NAME_SPLIT_2, NAME_SPLIT_3, ... (NAME_2, ... without a split) that no other split
    lists and this conversion has not written: the same name on every run of the same conversion."""
    base = f"{name}_{split}" if split else name
    candidates = itertools.chain([base] if split else [], (f"{base}_{k}" for k in itertools.count(2)))
    return next(c for c in candidates if c not in taken and c not in used)


def _remove_stale_images(folder: Path, name: str, keep: str) -> None:
    """An earlier conversion's image of sample ``name`` with another suffix: exactly NAME + an image suffix (not
    a glob: ``scan.*`` would match ``scan.1.png``, ``img[1].*`` would match ``img1.png``)."""
    for suffix in IMAGE_SUFFIXES:
        stale = folder / f"{name}{suffix}"
        if suffix != keep and stale.is_file():
            stale.unlink()


def write_dataset(annotations: Annotations, out: Path, ignore_index: int = 255, split: Optional[str] = None,
                  progress: Optional[Callable[[int], None]] = None) -> List[str]:
    """Write images, masks, ``class_names.txt`` (and ``splits/SPLIT.txt``) under ``out``; the names written.

    A sample whose name a split list of another split already gives is written under :func:`_free_name`'s name
    (logged; ``annotations.renamed`` and ``annotations.notes`` say which), so no other split's image or mask is
    overwritten and the lists stay disjoint."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    names_file = out / "class_names.txt"
    names = list(annotations.class_names)
    if names_file.is_file() and read_class_names(names_file)[0] != names:
        raise DataError(f"{names_file} lists {read_class_names(names_file)[0]} but this conversion gives {names}; "
                        f"convert into a fresh folder or pass class_names={names_file}")
    if 0 <= ignore_index < len(names):
        raise DataError(f"ignore_index={ignore_index} is a class id ({len(names)} classes); use e.g. 255")
    palette = annotations.palette or default_palette(len(names))
    taken = _listed_in_other_splits(out / "splits", split)
    written: List[str] = []
    # every name this conversion has used, as the reader gave it and as written -> where its sample came from (a
    # dict, not the list: the duplicate check stays linear in the number of samples)
    origin: Dict[str, str] = {}
    renamed = annotations.renamed
    for sample in annotations.samples:
        where = sample.source or (str(sample.image) if isinstance(sample.image, Path) else "an embedded image")
        if sample.name in origin:
            raise DataError(f"two images are named {sample.name!r}: {origin[sample.name]} and {where}; segkit's "
                            "folder layout needs unique file names (rename one of them)")
        name = sample.name
        if name in taken:  # another split's sample: keep it, write this one under a free name
            name = _free_name(name, split, taken, origin)
            renamed[sample.name] = name
            log.info("%s is listed in %s: written as %s", sample.name, taken[sample.name], name)
            origin[name] = f"{where} (written as {name!r}: {sample.name!r} is in {taken[sample.name]})"
        origin[sample.name] = where
        if isinstance(sample.image, Path):
            if not sample.image.is_file():
                raise DataError(f"image file not found: {sample.image}; pass images=FOLDER holding the images")
            suffix = sample.image.suffix.lower()
            _remove_stale_images(out / "images", name, suffix)
            shutil.copyfile(sample.image, out / "images" / f"{name}{suffix}")
        else:
            data, suffix = sample.image
            _remove_stale_images(out / "images", name, suffix)
            (out / "images" / f"{name}{suffix}").write_bytes(data)
        save_mask(sample.mask, out / "masks" / f"{name}.png", palette, ignore_index)
        written.append(name)
        if progress:
            progress(len(written))
    if not written:
        raise DataError("the annotations list no images; nothing was converted")
    if renamed:
        shown = ", ".join(f"{old!r} -> {new!r} ({old!r} is in {taken[old]})" for old, new in
                          itertools.islice(renamed.items(), 5))
        annotations.notes.append(f"{len(renamed)} sample name(s) already in another split's list were written under "
                                 f"a new name, so that split keeps its own: {shown}"
                                 + (", ... (all in the log)" if len(renamed) > 5 else ""))
    names_file.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    if split:
        (out / "splits").mkdir(exist_ok=True)
        (out / "splits" / f"{split}.txt").write_text("".join(f"{n}\n" for n in written), encoding="utf-8")
    return written


FORMATS = ("coco", "labelme", "cvat_mask")


def read_annotations(format: str, input: Path, images: Optional[Path] = None,
                     class_names: Optional[Sequence[str]] = None, ignore_index: int = 255) -> Annotations:
    """Dispatch to the reader for ``format``: ``coco`` (also CVAT "COCO 1.0"), ``labelme``, ``cvat_mask``."""
    input = Path(input).expanduser()
    if not input.exists():
        raise DataError(f"input={input} does not exist")
    if format == "coco":
        return read_coco(find_coco_json(input), images, class_names, ignore_index)
    if format == "labelme":
        if class_names is None:
            raise DataError("labelme conversion needs class_names=FILE: one label per line, class 0 (background) "
                            "first (labelme's labels.txt works; shapes labelled __ignore__ are ignored)")
        files = sorted(_files_below(input, "*.json")) if input.is_dir() else [input]
        if not files:
            raise DataError(f"no labelme *.json files in {input} or its sub-folders")
        return read_labelme(files, class_names, ignore_index, input if input.is_dir() else None)
    if format == "cvat_mask":
        return read_cvat_mask(input, class_names)
    raise DataError(f"format={format!r}: choose one of {', '.join(FORMATS)} (CVAT 'COCO 1.0' exports are coco)")


def convert(format: str, input: str | Path, output: str | Path, images: Optional[str | Path] = None,
            class_names: Optional[str | Path] = None, ignore_index: int = 255, split: Optional[str] = None,
            ) -> Dict[str, Any]:
    """Convert, write the folder layout and check it with :func:`segkit.check_data.check_dataset`; the report."""
    from segkit.check_data import check_dataset
    from segkit.data.datamodule import SegmentationDataModule
    from segkit.data.sources import FolderSource

    output = Path(output).expanduser()
    names_file = Path(class_names).expanduser() if class_names else None
    if names_file is None and (output / "class_names.txt").is_file():
        names_file = output / "class_names.txt"  # a second split into the same folder keeps the class ids
    names = read_class_names(names_file)[0] if names_file else None
    annotations = read_annotations(format, Path(input), Path(images).expanduser() if images else None, names,
                                   ignore_index)
    written = write_dataset(annotations, output, ignore_index, split)
    final_names = read_class_names(output / "class_names.txt")[0]
    datamodule = SegmentationDataModule(source=FolderSource(str(output)), num_classes=len(final_names),
                                        ignore_index=ignore_index, class_names=final_names)
    # the split lists written so far (a val split may be converted next), else FolderSource's seeded train/val split
    listed = sorted(p.stem for p in (output / "splits").glob("*.txt"))
    report = check_dataset(datamodule, splits=listed or ("train", "val"))
    report["info"] = annotations.notes + report["info"]
    report["converted"] = {"images": len(written), "class_names": final_names, "output": str(output),
                           "renamed": dict(annotations.renamed)}
    return report


__all__ = ["Annotations", "FORMATS", "Sample", "convert", "read_annotations", "read_coco", "read_cvat_mask",
           "read_labelme", "sample_name", "save_mask", "shape_region", "write_dataset"]

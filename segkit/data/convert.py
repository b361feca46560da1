"""Annotations in, masks out: COCO JSON (and CVAT's COCO 1.0 export), labelme JSON and CVAT "Segmentation mask 1.1"
exports become segkit's folder layout (``images/NAME.ext``, ``masks/NAME.png`` palette PNGs of class ids,
``class_names.txt``, optional ``splits/SPLIT.txt``), read by :class:`segkit.data.FolderSource`.

Class 0 is background (pixels no shape covers). Overlapping shapes follow the file's order: later ones are drawn on
top. COCO crowd regions (``iscrowd=1``) and labelme's ``__ignore__`` label become ``ignore_index``. A label that is
not in the class list is an error naming the file and the label. Converting several annotation files into one
folder (``split=train`` then ``split=val``) keeps one class list: ``class_names.txt`` already there is reused.
"""
from __future__ import annotations

import base64
import io
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from segkit.data.classnames import read_class_names
from segkit.data.io import IMAGE_SUFFIXES, DataError, default_palette

IGNORE_LABEL = "__ignore__"  # labelme's convention (labels.txt in its examples): these regions are not scored
BACKGROUND_NAMES = ("background", "_background_")  # a source's background label is class 0 in any class list
IGNORE_COLOUR = (224, 224, 192)  # PASCAL VOC's colour for ignored pixels (index 255)


@dataclass
class Sample:
    """One converted image: ``image`` is the source file, or encoded bytes with their suffix (labelme imageData)."""

    name: str
    image: Union[Path, Tuple[bytes, str]]
    mask: np.ndarray


@dataclass
class Annotations:
    """What a reader produces: the class list (0 = background), an optional palette, and the samples (lazily)."""

    class_names: List[str]
    palette: Optional[List[List[int]]]
    samples: Iterator[Sample]
    notes: List[str] = field(default_factory=list)


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse {path} as JSON ({exc}); is it the exported annotation file?") from None


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
    """COCO instances JSON (polygons, RLE, ``iscrowd``); category ids become contiguous class ids 1..K in id order
    (0 = background; a category named "background" is class 0), or follow ``class_names`` by name."""
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
    source_names = ["background"] + list(dict.fromkeys(n for n in cat_names.values() if n.lower() != "background"))
    ids = _class_ids(source_names, class_names, str(json_path))  # categories sharing a name share a class
    cat_to_class = {cid: ids["background" if n.lower() == "background" else n] for cid, n in cat_names.items()}
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
            yield Sample(Path(img["file_name"]).stem, image_dir / img["file_name"], mask)

    return Annotations(class_names or source_names, None, samples())


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
def shape_region(shape: Dict[str, Any], size: Tuple[int, int], where: str) -> np.ndarray:
    """A labelme shape as a boolean mask, drawn the way labelme's own ``shape_to_mask`` draws it (PIL); ``mask``
    shapes (labelme's AI-assisted masks) paste their PNG at the box's top-left corner."""
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
    elif kind == "mask" and shape.get("mask") and points:  # labelme's AI masks: a PNG of the box at points[0]
        patch = np.asarray(Image.open(io.BytesIO(base64.b64decode(shape["mask"]))))
        patch = (patch[..., 0] if patch.ndim == 3 else patch).astype(bool)
        x0, y0 = max(int(points[0][0]), 0), max(int(points[0][1]), 0)
        region = np.zeros((height, width), bool)
        h, w = region[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]].shape
        region[y0:y0 + h, x0:x0 + w] = patch[:h, :w]
        return region
    elif kind in ("polygon", "rectangle", "circle", "mask"):
        raise DataError(f"{where}: {kind} with {len(points)} points (a polygon needs 3 or more, a rectangle or "
                        "circle 2, a mask its box and PNG data)")
    else:
        raise DataError(f"{where}: shape_type {kind!r} is not a region; segkit converts polygon, rectangle, "
                        "circle and mask shapes (delete the shape or change its type)")
    return np.asarray(canvas, dtype=bool)


def read_labelme(json_files: Sequence[Path], class_names: Sequence[str], ignore_index: int = 255) -> Annotations:
    """labelme JSON files; ``class_names`` in class-id order (0 = background). A ``__ignore__`` entry (labelme's
    labels.txt convention) is not a class: shapes with that label become ``ignore_index``."""
    names = [n for n in class_names if n != IGNORE_LABEL]
    ids: Dict[str, int] = {n: i for i, n in enumerate(names)}
    if IGNORE_LABEL in class_names:
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
            yield Sample(path.stem, image, mask)

    return Annotations(names, None, samples())


def _labelme_image(doc: Dict[str, Any], path: Path) -> Tuple[Union[Path, Tuple[bytes, str]], Tuple[int, int]]:
    """The image file beside the JSON (``imagePath``), or the embedded ``imageData``; and its (height, width)."""
    image_path = path.parent / str(doc.get("imagePath") or "").replace("\\", "/")
    if doc.get("imagePath") and image_path.is_file():
        image: Union[Path, Tuple[bytes, str]] = image_path
        opened = Image.open(image_path)
    elif doc.get("imageData"):
        data = base64.b64decode(doc["imageData"])
        opened = Image.open(io.BytesIO(data))
        image = (data, "." + (opened.format or "png").lower().replace("jpeg", "jpg"))
    else:
        raise DataError(f"{path}: image {image_path} not found and no imageData embedded; put the image beside the "
                        "JSON or save it with image data")
    if doc.get("imageHeight") and doc.get("imageWidth"):
        return image, (int(doc["imageHeight"]), int(doc["imageWidth"]))
    return image, (opened.height, opened.width)


# ---- CVAT "Segmentation mask 1.1" ------------------------------------------------------------------------------
def read_cvat_mask(root: Path, class_names: Optional[Sequence[str]] = None) -> Annotations:
    """A CVAT "Segmentation mask 1.1" export: ``labelmap.txt``, colour masks in ``SegmentationClass/`` and images
    in ``JPEGImages/``. Colours become class ids by the labelmap (in its order, or by name into ``class_names``)."""
    root = Path(root)
    source_names, palette = read_class_names(root / "labelmap.txt")
    if palette is None:
        raise DataError(f"{root / 'labelmap.txt'} gives no colour for some classes; CVAT writes name:r,g,b:: lines")
    ids = _class_ids(source_names, class_names, str(root / "labelmap.txt"))
    colour_to_id = {(r << 16) | (g << 8) | b: ids[n] for n, (r, g, b) in zip(source_names, palette)}
    mask_dir, image_dir = root / "SegmentationClass", root / "JPEGImages"
    masks = sorted(mask_dir.glob("*.png"))
    if not masks:
        raise DataError(f"no colour masks in {mask_dir}; is {root} a CVAT 'Segmentation mask 1.1' export?")
    images = {p.stem: p for p in image_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES} \
        if image_dir.is_dir() else {}

    def samples() -> Iterator[Sample]:
        for mask_path in masks:
            if mask_path.stem not in images:
                raise DataError(f"no image for {mask_path} in {image_dir}; export from CVAT with 'Save images'")
            rgb = np.asarray(Image.open(mask_path).convert("RGB")).astype(np.int64)
            code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            values, inverse = np.unique(code, return_inverse=True)
            unknown = [v for v in values.tolist() if v not in colour_to_id]
            if unknown:
                colours = [((v >> 16) & 255, (v >> 8) & 255, v & 255) for v in unknown[:5]]
                raise DataError(f"{mask_path}: unknown label colours {colours} (not in {root / 'labelmap.txt'})")
            lut = np.array([colour_to_id[v] for v in values.tolist()], np.int64)
            yield Sample(mask_path.stem, images[mask_path.stem], lut[inverse].reshape(code.shape))

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


def write_dataset(annotations: Annotations, out: Path, ignore_index: int = 255, split: Optional[str] = None,
                  progress: Optional[Callable[[int], None]] = None) -> List[str]:
    """Write images, masks, ``class_names.txt`` (and ``splits/SPLIT.txt``) under ``out``; the names written."""
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
    written: List[str] = []
    for sample in annotations.samples:
        if sample.name in written:
            raise DataError(f"two images are named {sample.name!r}; segkit's folder layout needs unique file names")
        if isinstance(sample.image, Path):
            if not sample.image.is_file():
                raise DataError(f"image file not found: {sample.image}; pass images=FOLDER holding the images")
            suffix = sample.image.suffix.lower()
            for stale in (out / "images").glob(f"{sample.name}.*"):
                stale.unlink()
            shutil.copyfile(sample.image, out / "images" / f"{sample.name}{suffix}")
        else:
            data, suffix = sample.image
            (out / "images" / f"{sample.name}{suffix}").write_bytes(data)
        save_mask(sample.mask, out / "masks" / f"{sample.name}.png", palette, ignore_index)
        written.append(sample.name)
        if progress:
            progress(len(written))
    if not written:
        raise DataError("the annotations list no images; nothing was converted")
    names_file.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    if split:
        (out / "splits").mkdir(exist_ok=True)
        (out / "splits" / f"{split}.txt").write_text("".join(f"{n}\n" for n in written))
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
                            "first; a __ignore__ line marks labels to ignore")
        files = sorted(input.glob("*.json")) if input.is_dir() else [input]
        if not files:
            raise DataError(f"no labelme *.json files in {input}")
        return read_labelme(files, class_names, ignore_index)
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
    report["converted"] = {"images": len(written), "class_names": final_names, "output": str(output)}
    return report


__all__ = ["Annotations", "FORMATS", "Sample", "convert", "read_annotations", "read_coco", "read_cvat_mask",
           "read_labelme", "save_mask", "shape_region", "write_dataset"]

"""Conversion defects from the issue report, each reproduced on tiny files: same-named samples across splits,
stale-image removal, class lists with a BOM, nested folders, labelme's ``__ignore__`` on a second conversion,
labelme point/line/linestrip shapes (against labelme's own ``shape_to_mask``), COCO files with their own
background category (against pycocotools and a VOC export of the same polygons) and duplicate names."""
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from segkit.data import read_mask
from segkit.data.classnames import read_class_names
from segkit.data.convert import Annotations, Sample, convert, shape_region, write_dataset
from segkit.data.io import DataError


def _png(h=10, w=12, value=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _shape(label, kind, points):
    return {"label": label, "points": points, "group_id": None, "shape_type": kind, "flags": {}}


def _labelme(folder: Path, stem: str, shapes, h=10, w=12, value=0) -> Path:
    """``folder/stem.json`` with its image ``folder/stem.png`` beside it (labelme's layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.png").write_bytes(_png(h, w, value))
    doc = {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": f"{stem}.png", "imageData": None,
           "imageHeight": h, "imageWidth": w}
    (folder / f"{stem}.json").write_text(json.dumps(doc))
    return folder / f"{stem}.json"


def _split(out: Path, split: str):
    return (out / "splits" / f"{split}.txt").read_text().split()


# ---- 2: a second split with the same file names ----------------------------------------------------------------
def test_same_names_in_another_split_are_renamed_not_overwritten_and_reruns_are_idempotent(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("_background_\ncat\n")
    _labelme(tmp_path / "src/train", "0001", [_shape("cat", "rectangle", [[1, 1], [3, 3]])], value=10)
    _labelme(tmp_path / "src/val", "0001", [_shape("cat", "rectangle", [[6, 5], [9, 8]])], value=200)
    out = tmp_path / "out"
    convert("labelme", tmp_path / "src/train", out, class_names=labels, split="train")
    report = convert("labelme", tmp_path / "src/val", out, class_names=labels, split="val")

    assert _split(out, "train") == ["0001"] and _split(out, "val") == ["0001_val"]  # disjoint lists
    assert report["converted"]["renamed"] == {"0001": "0001_val"}
    assert any("'0001' -> '0001_val'" in note and "train" in note for note in report["info"])
    assert report["problems"] == []
    train_mask, val_mask = read_mask(out / "masks/0001.png"), read_mask(out / "masks/0001_val.png")
    assert train_mask[2, 2] == 1 and train_mask[6, 7] == 0  # train's mask is still train's
    assert val_mask[2, 2] == 0 and val_mask[6, 7] == 1
    assert np.asarray(Image.open(out / "images/0001.png"))[0, 0, 0] == 10
    assert np.asarray(Image.open(out / "images/0001_val.png"))[0, 0, 0] == 200

    # the very same conversions again: the same names, no duplicates
    for split in ("val", "train", "val"):
        convert("labelme", tmp_path / f"src/{split}", out, class_names=labels, split=split)
    assert _split(out, "train") == ["0001"] and _split(out, "val") == ["0001_val"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["0001.png", "0001_val.png"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["0001.png", "0001_val.png"]


def test_rename_avoids_names_other_splits_already_use(tmp_path):
    """The suffixed name is taken too (test has a real '0001_val'): the next free one, the same on every run."""
    labels = tmp_path / "labels.txt"
    labels.write_text("_background_\ncat\n")
    _labelme(tmp_path / "src/train", "0001", [])
    _labelme(tmp_path / "src/test", "0001_val", [])
    _labelme(tmp_path / "src/val", "0001", [_shape("cat", "rectangle", [[6, 5], [9, 8]])])
    out = tmp_path / "out"
    for split in ("train", "test", "val", "val"):
        convert("labelme", tmp_path / f"src/{split}", out, class_names=labels, split=split)
    assert (_split(out, "train"), _split(out, "test"), _split(out, "val")) == (["0001"], ["0001_val"],
                                                                                ["0001_val_2"])
    assert read_mask(out / "masks/0001_val_2.png")[6, 7] == 1 and read_mask(out / "masks/0001_val.png").max() == 0
    for _ in range(2):  # without split=: listed nowhere, so NAME_2 (NAME_SPLIT is for a split's own samples)
        report = convert("labelme", tmp_path / "src/val", out, class_names=labels)
    assert report["converted"]["renamed"] == {"0001": "0001_2"}
    assert read_mask(out / "masks/0001.png").max() == 0 and read_mask(out / "masks/0001_2.png")[6, 7] == 1
    assert len(list((out / "masks").iterdir())) == 4


# ---- 8: stale images of a re-converted sample ------------------------------------------------------------------
def test_rewriting_a_sample_removes_only_its_own_stale_images(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("scan.jpg", "img[1].png"):
        Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(src / name)
    mask = np.zeros((4, 5), np.int64)
    out = tmp_path / "out"
    samples = [Sample("scan.1", (_png(4, 5), ".png"), mask), Sample("img1", (_png(4, 5), ".png"), mask),
               Sample("scan", src / "scan.jpg", mask), Sample("img[1]", src / "img[1].png", mask)]
    write_dataset(Annotations(["background"], None, iter(samples)), out)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["img1.png", "img[1].png", "scan.1.png", "scan.jpg"]
    # scan re-converted from a PNG (embedded labelme imageData): its old scan.jpg goes, scan.1.png stays
    write_dataset(Annotations(["background"], None, iter([Sample("scan", (_png(4, 5), ".png"), mask)])), out)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["img1.png", "img[1].png", "scan.1.png", "scan.png"]


# ---- 11: class lists saved with a byte-order mark --------------------------------------------------------------
def test_class_lists_with_a_utf8_bom(tmp_path):
    plain = tmp_path / "class_names.txt"
    plain.write_bytes("background\nperson\n".encode("utf-8-sig"))  # Windows Notepad's "UTF-8 with BOM"
    assert read_class_names(plain) == (["background", "person"], None)
    labelmap = tmp_path / "labelmap.txt"
    labelmap.write_bytes("background:0,0,0::\nperson:192,128,128::\n".encode("utf-8-sig"))
    assert read_class_names(labelmap) == (["background", "person"], [[0, 0, 0], [192, 128, 128]])

    labels = tmp_path / "labels.txt"  # labelme's labels.txt: with the BOM, __ignore__ became class 0
    labels.write_bytes("__ignore__\n_background_\ncat\n".encode("utf-8-sig"))
    src = tmp_path / "src"
    _labelme(src, "a", [_shape("cat", "rectangle", [[1, 1], [3, 3]])])
    (src / "a.json").write_bytes((src / "a.json").read_text().encode("utf-8-sig"))  # a JSON with a BOM too
    convert("labelme", src, tmp_path / "out", class_names=labels)
    assert read_class_names(tmp_path / "out/class_names.txt")[0] == ["_background_", "cat"]
    assert read_mask(tmp_path / "out/masks/a.png")[2, 2] == 1


# ---- 12: nested folders -----------------------------------------------------------------------------------------
def test_labelme_jsons_in_sub_folders_are_converted_with_their_folder_in_the_name(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("_background_\ncat\n")
    src = tmp_path / "src"
    _labelme(src, "x", [_shape("cat", "rectangle", [[0, 0], [1, 1]])], value=1)
    _labelme(src / "day1", "x", [_shape("cat", "rectangle", [[4, 4], [5, 5]])], value=2)
    _labelme(src / "day2/cam", "x", [_shape("cat", "rectangle", [[8, 8], [9, 9]])], value=3)
    out = tmp_path / "out"
    report = convert("labelme", src, out, class_names=labels, split="train")
    assert report["converted"]["images"] == 3 and report["problems"] == []
    assert _split(out, "train") == ["day1__x", "day2__cam__x", "x"]
    for name, value, y in (("x", 1, 0), ("day1__x", 2, 4), ("day2__cam__x", 3, 8)):
        assert np.asarray(Image.open(out / "images" / f"{name}.png"))[0, 0, 0] == value  # the image beside it
        assert np.argwhere(read_mask(out / "masks" / f"{name}.png") == 1).min(0).tolist() == [y, y]


def test_cvat_masks_in_sub_folders_find_the_image_at_the_same_relative_path(tmp_path):
    root = tmp_path / "cvat"
    (root / "labelmap.txt").parent.mkdir(parents=True)
    (root / "labelmap.txt").write_text("background:0,0,0::\ncar:250,50,83::\n")
    colours = np.array([[0, 0, 0], [250, 50, 83]], np.uint8)
    for rel, value, row in (("f", 1, 0), ("seq1/f", 2, 2), ("seq2/sub/f", 3, 4)):
        truth = np.zeros((6, 8), np.int64)
        truth[row] = 1
        (root / "SegmentationClass" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "JPEGImages" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(colours[truth]).save(root / "SegmentationClass" / f"{rel}.png")
        Image.fromarray(np.full((6, 8, 3), value, np.uint8)).save(root / "JPEGImages" / f"{rel}.png")
    out = tmp_path / "out"
    report = convert("cvat_mask", root, out, split="train")
    assert report["converted"]["images"] == 3 and report["problems"] == []
    assert _split(out, "train") == ["f", "seq1__f", "seq2__sub__f"]
    for name, value, row in (("f", 1, 0), ("seq1__f", 2, 2), ("seq2__sub__f", 3, 4)):
        assert np.asarray(Image.open(out / "images" / f"{name}.png"))[0, 0, 0] == value
        assert np.flatnonzero(read_mask(out / "masks" / f"{name}.png").any(1)).tolist() == [row]
    (root / "JPEGImages/seq1/f.png").unlink()  # the top-level f.png is not seq1/f's image
    with pytest.raises(DataError, match=r"no image for .*SegmentationClass/seq1/f\.png .*JPEGImages/seq1/f\.\*"):
        convert("cvat_mask", root, tmp_path / "out2")


# ---- 13: labelme's __ignore__ on the second conversion ---------------------------------------------------------
def test_second_conversion_with_ignore_label_gives_identical_ids(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("__ignore__\n_background_\ncat\ndog\n")  # labelme's labels.txt
    shapes = [_shape("cat", "rectangle", [[0, 0], [2, 2]]), _shape("dog", "rectangle", [[4, 4], [6, 6]]),
              _shape("__ignore__", "rectangle", [[8, 7], [10, 9]])]
    for split in ("train", "val", "test", "extra"):
        _labelme(tmp_path / "src" / split, split, shapes)
    out = tmp_path / "out"
    convert("labelme", tmp_path / "src/train", out, class_names=labels, split="train")
    convert("labelme", tmp_path / "src/val", out, class_names=labels, split="val")  # the same labels.txt
    convert("labelme", tmp_path / "src/test", out, split="test")  # class_names.txt reused
    convert("labelme", tmp_path / "src/extra", out, class_names=out / "class_names.txt", split="extra")
    assert read_class_names(out / "class_names.txt")[0] == ["_background_", "cat", "dog"]
    expected = read_mask(out / "masks/train.png")
    assert (expected[1, 1], expected[5, 5], expected[8, 9]) == (1, 2, 255)
    for split in ("val", "test", "extra"):
        np.testing.assert_array_equal(read_mask(out / "masks" / f"{split}.png"), expected)


def test_coco_with_labelme_labels_txt_as_class_list(tmp_path):
    pytest.importorskip("pycocotools")
    labels = tmp_path / "labels.txt"
    labels.write_text("__ignore__\n_background_\ncat\ndog\n")
    (tmp_path / "images").mkdir()
    (tmp_path / "images/a.png").write_bytes(_png(10, 12))
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 12}],
            "categories": [{"id": 5, "name": "dog"}, {"id": 6, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "iscrowd": 0,
                             "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]}]}
    (tmp_path / "a.json").write_text(json.dumps(coco))
    convert("coco", tmp_path / "a.json", tmp_path / "out", images=tmp_path / "images", class_names=labels)
    assert read_class_names(tmp_path / "out/class_names.txt")[0] == ["_background_", "cat", "dog"]
    assert read_mask(tmp_path / "out/masks/a.png")[3, 3] == 2


# ---- 14: labelme point, line and linestrip shapes --------------------------------------------------------------
def _labelme_shape_to_mask(img_shape, points, shape_type=None, line_width=10, point_size=5):
    """labelme's own labelme/utils/shape.py ``shape_to_mask`` (labelme 5.x), the outside reference."""
    mask = Image.fromarray(np.zeros(img_shape[:2], dtype=np.uint8))
    draw = ImageDraw.Draw(mask)
    xy = [tuple(point) for point in points]
    if shape_type == "circle":
        (cx, cy), (px, py) = xy
        d = math.sqrt((cx - px) ** 2 + (cy - py) ** 2)
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=1, fill=1)
    elif shape_type == "rectangle":
        draw.rectangle(xy, outline=1, fill=1)
    elif shape_type == "line":
        assert len(xy) == 2
        draw.line(xy=xy, fill=1, width=line_width)
    elif shape_type == "linestrip":
        draw.line(xy=xy, fill=1, width=line_width)
    elif shape_type == "point":
        assert len(xy) == 1
        cx, cy = xy[0]
        r = point_size
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
    else:
        assert len(xy) > 2
        draw.polygon(xy=xy, outline=1, fill=1)
    return np.array(mask, dtype=bool)


LABELME_SHAPES = [
    ("point", [[9.3, 11.6]]),
    ("point", [[1, 1]]),  # a disk clipped at the border
    ("line", [[2.5, 3], [27, 20.2]]),
    ("linestrip", [[3, 25], [15, 14.5], [28, 26], [20, 29]]),
    ("circle", [[20, 8], [23.5, 10]]),
    ("rectangle", [[4.2, 18], [12.7, 27.1]]),
    ("polygon", [[14, 2], [26, 3], [21, 12.5]]),
]


@pytest.mark.parametrize("kind,points", LABELME_SHAPES)
def test_labelme_shape_types_draw_as_labelme_draws_them(kind, points):
    region = shape_region(_shape("cat", kind, points), (30, 32), "x.json: shape 0")
    expected = _labelme_shape_to_mask((30, 32), points, kind)
    assert expected.any()
    np.testing.assert_array_equal(region, expected)


def test_labelme_file_with_points_and_lines_converts_in_file_order(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("_background_\ncat\ndog\n")
    shapes = [_shape("cat", kind, points) for kind, points in LABELME_SHAPES[:4]]
    shapes.insert(2, _shape("dog", "line", [[0, 14], [31, 14]]))  # under the linestrip, over the first line
    _labelme(tmp_path / "src", "a", shapes, h=30, w=32)
    convert("labelme", tmp_path / "src", tmp_path / "out", class_names=labels)
    expected = np.zeros((30, 32), np.int64)
    for shape in shapes:
        expected[_labelme_shape_to_mask((30, 32), shape["points"], shape["shape_type"])] = \
            1 if shape["label"] == "cat" else 2
    np.testing.assert_array_equal(read_mask(tmp_path / "out/masks/a.png"), expected)
    assert set(np.unique(expected).tolist()) == {0, 1, 2}

    _labelme(tmp_path / "bad", "b", [_shape("cat", "line", [[0, 14], [5, 5], [31, 14]])], h=30, w=32)
    with pytest.raises(DataError, match=r"b\.json: shape 0 \('cat'\): line with 3 points .*linestrip"):
        convert("labelme", tmp_path / "bad", tmp_path / "out_bad", class_names=labels)


# ---- 15: COCO files with their own background category ---------------------------------------------------------
POLYGONS = [("cat", [[2, 2, 20, 3, 18, 16, 3, 14]]),
            ("dog", [[10, 8, 28, 9, 26, 22, 11, 20]]),  # over the cat
            ("background", [[12, 10, 16, 10, 16, 14, 12, 14]]),  # a hole cut through both, as labelme draws it
            ("dog", [[1, 17, 6, 17, 6, 22]])]


@pytest.mark.parametrize("categories,polygons", [
    ([(0, "_background_"), (1, "cat"), (2, "dog")], POLYGONS),  # labelme2coco (labels.txt: __ignore__, ...)
    ([(1, "Background"), (2, "cat"), (3, "dog")], POLYGONS),  # a "background" category among the others
    ([(0, "bg"), (4, "cat"), (9, "dog")], POLYGONS[:2] + POLYGONS[3:]),  # id 0 (unused) is the background
])
def test_coco_background_category_is_class_0_and_matches_the_voc_export(tmp_path, categories, polygons):
    """The same polygons as a COCO file and as the tool's VOC export (class-index PNGs, the class of each
    category its position in the tool's label list, rasterised by pycocotools as the tool does): pixel-equal."""
    from pycocotools import mask as mask_utils

    h, w = 24, 30
    cat_id = {("background" if i == 0 else name): cid for i, (cid, name) in enumerate(categories)}
    voc_id = {"background": 0, "cat": 1, "dog": 2}
    (tmp_path / "images").mkdir()
    (tmp_path / "images/a.png").write_bytes(_png(h, w))
    voc = np.zeros((h, w), np.uint8)
    annotations = []
    for k, (label, segmentation) in enumerate(polygons):
        region = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))).astype(bool)
        voc[region] = voc_id[label]
        annotations.append({"id": k + 1, "image_id": 1, "category_id": cat_id[label], "iscrowd": 0,
                            "segmentation": segmentation})
    voc_png = Image.fromarray(voc, mode="P")  # the VOC export: SegmentationClass/a.png, PASCAL's colours
    voc_png.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] * 253)
    voc_png.save(tmp_path / "voc_a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": h, "width": w}], "annotations": annotations,
            "categories": [{"id": cid, "name": name, "supercategory": None} for cid, name in categories]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))

    report = convert("coco", tmp_path / "coco.json", tmp_path / "out", images=tmp_path / "images")
    converted = read_mask(tmp_path / "out/masks/a.png")
    np.testing.assert_array_equal(converted, np.asarray(Image.open(tmp_path / "voc_a.png")))
    assert set(np.unique(converted).tolist()) == {0, 1, 2}
    declared = categories[0][1]  # class 0 keeps a background name the file declares
    assert report["converted"]["class_names"] == [
        declared if declared.lower() in ("background", "_background_") else "background", "cat", "dog"]


def test_coco_category_0_with_a_class_name_and_annotations_is_an_error(tmp_path):
    """Some exporters number real classes from 0; drawing them as background would lose them silently."""
    (tmp_path / "a.png").write_bytes(_png(10, 12))
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 12}],
            "categories": [{"id": 0, "name": "person"}, {"id": 1, "name": "car"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 0, "iscrowd": 0,
                             "segmentation": [[1, 1, 6, 1, 6, 6]]}]}
    (tmp_path / "a.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"a\.json: category 0 'person' .*class_names="):
        convert("coco", tmp_path / "a.json", tmp_path / "out")
    names = tmp_path / "names.txt"
    names.write_text("background\nperson\ncar\n")
    convert("coco", tmp_path / "a.json", tmp_path / "out", class_names=names)  # the fix the error names
    assert read_mask(tmp_path / "out/masks/a.png")[2, 3] == 1


# ---- 16a: duplicate names ---------------------------------------------------------------------------------------
def test_duplicate_sample_names_are_reported_by_name(tmp_path):
    mask = np.zeros((2, 2), np.int64)
    samples = [Sample(n, (_png(2, 2), ".png"), mask, f"src/{k}/{n}.json") for k, n in enumerate("abcb")]
    with pytest.raises(DataError, match=r"two images are named 'b': src/1/b\.json and src/3/b\.json"):
        write_dataset(Annotations(["background"], None, iter(samples)), tmp_path / "out")
    # renaming (the name is in another split's list) does not hide a duplicate either
    (tmp_path / "out2/splits").mkdir(parents=True)
    (tmp_path / "out2/splits/train.txt").write_text("b\n")
    with pytest.raises(DataError, match=r"two images are named 'b': src/1/b\.json and src/3/b\.json"):
        write_dataset(Annotations(["background"], None, iter(samples)), tmp_path / "out2", split="val")
    samples[3] = Sample("b_val", samples[3].image, mask, "src/3/b_val.json")  # named like the renamed one
    with pytest.raises(DataError, match=r"named 'b_val': src/1/b\.json \(written as 'b_val': 'b' is in .*train\.txt\) "
                                        r"and src/3/b_val\.json"):
        write_dataset(Annotations(["background"], None, iter(samples)), tmp_path / "out2", split="val")


class _CountingName(str):
    """A sample name that counts the string comparisons made with it: a linear check makes O(1) per name."""

    comparisons = 0

    def __eq__(self, other):
        type(self).comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_duplicate_name_check_is_linear(tmp_path):
    mask = np.zeros((1, 1), np.int64)
    png = _png(1, 1)
    n = 300
    samples = (Sample(_CountingName(f"s{i:04d}"), (png, ".png"), mask) for i in range(n))
    _CountingName.comparisons = 0
    write_dataset(Annotations(["background"], None, samples), tmp_path / "out")
    assert _CountingName.comparisons < 5 * n  # a list scan makes n * (n - 1) / 2 = 44850


# ---- labelme beside a TIFF that PIL cannot open (found by the journeys) -------------------------------------------
@pytest.mark.parametrize("sizes_in_json", [True, False])
@pytest.mark.parametrize("planar", [False, True])
def test_labelme_converts_a_4band_tiff_that_segkit_reads(tmp_path, sizes_in_json, planar):
    import tifffile

    from segkit.data.io import read_image

    src = tmp_path / "src"
    src.mkdir()
    image = np.random.default_rng(0).integers(0, 4096, (10, 12, 4), dtype=np.uint16)  # RGB + NIR, 12-bit
    # interleaved 4-band minisblack: PIL cannot identify it; planar, as GeoTIFFs store bands: PIL cannot decode it
    tifffile.imwrite(src / "field.tif", image.transpose(2, 0, 1) if planar else image, photometric="minisblack",
                     planarconfig="separate" if planar else "contig")
    with pytest.raises((ValueError, OSError)):
        Image.open(src / "field.tif").load()
    doc = {"version": "5.5.0", "flags": {}, "imagePath": "field.tif", "imageData": None,
           "shapes": [_shape("crop", "rectangle", [[2, 2], [6, 5]])]}
    if sizes_in_json:
        doc.update(imageHeight=10, imageWidth=12)
    (src / "field.json").write_text(json.dumps(doc))
    labels = tmp_path / "labels.txt"
    labels.write_text("_background_\ncrop\n")
    out = tmp_path / "out"
    report = convert("labelme", src, out, class_names=labels, split="train")
    assert report["problems"] == [] and report["converted"]["images"] == 1
    np.testing.assert_array_equal(read_image(out / "images" / "field.tif"), image.astype(np.float32) / 65535)
    mask = read_mask(out / "masks" / "field.png")
    assert mask.shape == (10, 12) and mask[2:6, 2:7].min() == 1 and mask.sum() == mask[2:6, 2:7].sum()

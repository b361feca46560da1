"""Annotation conversion: COCO (checked against pycocotools' own annToMask), labelme, CVAT masks, class lists."""
import base64
import io
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segkit.data import FolderSource, read_mask
from segkit.data.classnames import read_class_names
from segkit.data.convert import convert
from segkit.data.io import DataError

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("pycocotools")


def _uncompressed_rle(binary: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a run of zeros."""
    flat = binary.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": list(binary.shape), "counts": counts}


def _coco_fixture(root: Path) -> Path:
    from pycocotools import mask as mask_utils

    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    h, w = 40, 50
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / name)
    dog = np.zeros((h, w), np.uint8)
    dog[10:30, 20:45] = 1
    dog[15:20, 30:35] = 0  # a hole: RLE keeps it
    crowd = np.zeros((h, w), np.uint8)
    crowd[30:38, 2:20] = 1
    dog_rle = mask_utils.encode(np.asfortranarray(dog))
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": h, "width": w},
                   {"id": 2, "file_name": "b.jpg", "height": h, "width": w}],
        # non-contiguous category ids, listed out of order
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0, "segmentation": [[5, 5, 28, 6, 25, 25, 4, 20]]},
            {"id": 2, "image_id": 1, "category_id": 7, "iscrowd": 0,  # drawn over the cat polygon
             "segmentation": {"size": [h, w], "counts": dog_rle["counts"].decode()}},
            {"id": 3, "image_id": 1, "category_id": 3, "iscrowd": 1, "segmentation": _uncompressed_rle(crowd)},
            {"id": 4, "image_id": 2, "category_id": 7, "iscrowd": 0, "segmentation": [[10, 10, 30, 10, 20, 30]]},
        ],
    }
    path = root / "annotations" / "instances_default.json"
    path.write_text(json.dumps(coco))
    return path


def test_coco_masks_match_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    ann_file = _coco_fixture(tmp_path / "cvat_export")
    report = convert("coco", tmp_path / "cvat_export", tmp_path / "out", split="train")  # CVAT COCO 1.0 folder
    out = tmp_path / "out"
    assert read_class_names(out / "class_names.txt") == (["background", "cat", "dog"], None)
    assert (out / "splits/train.txt").read_text().split() == ["a", "b"]
    assert report["problems"] == [] and report["splits"]["train"]["readable"] == 2
    assert report["converted"]["images"] == 2

    reference = COCO(str(ann_file))  # the outside reference: pycocotools' own rasterisation
    class_of = {3: 1, 7: 2}
    for image_id, name in [(1, "a"), (2, "b")]:
        expected = np.zeros((40, 50), np.int64)
        for ann in reference.loadAnns(reference.getAnnIds(imgIds=[image_id], iscrowd=None)):
            expected[reference.annToMask(ann) == 1] = 255 if ann["iscrowd"] else class_of[ann["category_id"]]
        mask_img = Image.open(out / "masks" / f"{name}.png")
        assert mask_img.mode == "P"
        np.testing.assert_array_equal(read_mask(out / "masks" / f"{name}.png"), expected)
    mask_a = read_mask(out / "masks/a.png")
    assert set(np.unique(mask_a).tolist()) == {0, 1, 2, 255}
    assert mask_a[12, 22] == 2 and mask_a[17, 32] == 0  # dog drawn over cat; the RLE's hole stays background
    assert (out / "images/a.jpg").read_bytes() == (tmp_path / "cvat_export/images/a.jpg").read_bytes()
    assert [p.name for p, _ in FolderSource(str(out)).samples("train")] == ["a.jpg", "b.jpg"]


def test_coco_unknown_category_and_class_list_by_name(tmp_path):
    ann_file = _coco_fixture(tmp_path / "src")
    names = tmp_path / "names.txt"
    names.write_text("_background_\ndog\ncat\n")  # a fixed order, by name; class 0 is background by any name
    convert("coco", ann_file, tmp_path / "out", class_names=names, split="train")
    assert read_mask(tmp_path / "out/masks/b.png")[15, 20] == 1  # dog is class 1 now
    names.write_text("background\ndog\n")
    with pytest.raises(DataError, match=r"labels \['cat'\] are not in the class list"):
        convert("coco", ann_file, tmp_path / "out2", class_names=names)
    coco = json.loads(ann_file.read_text())
    coco["annotations"][0]["category_id"] = 99
    ann_file.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"instances_default.json: annotation 1 .*unknown label \(category_id 99"):
        convert("coco", ann_file, tmp_path / "out3")


def _labelme_fixture(root: Path, shapes, embed: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.full((30, 40, 3), 128, np.uint8)).save(buf, format="PNG")
    doc = {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": "scene.png", "imageHeight": 30,
           "imageWidth": 40, "imageData": base64.b64encode(buf.getvalue()).decode() if embed else None}
    if not embed:
        (root / "scene.png").write_bytes(buf.getvalue())
    (root / "scene.json").write_text(json.dumps(doc))
    return root


def _shape(label, kind, points):
    return {"label": label, "points": points, "group_id": None, "shape_type": kind, "flags": {}}


SHAPES = [_shape("cat", "polygon", [[2, 2], [12, 2], [12, 12], [2, 12]]),
          _shape("dog", "rectangle", [[20, 16], [10, 10]]),  # corners in either order; over the polygon
          _shape("cat", "circle", [[30, 20], [35, 20]]),
          _shape("fog", "rectangle", [[0, 25], [5, 29]])]


@pytest.mark.parametrize("embed", [False, True])
def test_labelme_shapes_and_overlap_order(tmp_path, embed):
    src = _labelme_fixture(tmp_path / "labelme", SHAPES, embed)
    names = tmp_path / "labels.txt"
    names.write_text("__ignore__\n_background_\ncat\ndog\n")
    with pytest.raises(DataError, match=r"scene.json: unknown label 'fog' \(shape 3\)"):
        convert("labelme", src, tmp_path / "out", class_names=names)

    names.write_text("_background_\ncat\ndog\n__ignore__\n")
    patch = np.zeros((3, 4), np.uint8)
    patch[1:, 1:] = 255
    buf = io.BytesIO()
    Image.fromarray(patch).save(buf, format="PNG")
    mask_shape = dict(_shape("dog", "mask", [[34, 2], [37, 4]]), mask=base64.b64encode(buf.getvalue()).decode())
    shapes = SHAPES[:3] + [_shape("__ignore__", "rectangle", [[0, 25], [5, 29]]), mask_shape]
    src = _labelme_fixture(tmp_path / "labelme", shapes, embed)
    convert("labelme", src, tmp_path / "out", class_names=names, split="train")
    assert read_class_names(tmp_path / "out/class_names.txt")[0] == ["_background_", "cat", "dog"]
    mask = read_mask(tmp_path / "out/masks/scene.png")
    assert (tmp_path / "out/images/scene.png").is_file()
    assert mask[2, 2] == mask[12, 2] == mask[9, 9] == 1 and mask[2, 13] == mask[13, 2] == 0  # polygon, its border included
    assert mask[10, 10] == mask[11, 11] == mask[16, 20] == 2 and mask[17, 20] == 0  # the rectangle is on top
    assert (mask[2:13, 2:13] == 1).sum() == 11 * 11 - 3 * 3  # the overlap went to the later shape
    circle = mask[:, 24:40] == 1
    assert mask[20, 30] == mask[20, 35] == mask[15, 30] == 1 and mask[20, 36] == 0
    assert abs(circle.sum() - np.pi * 5 ** 2) < 2 * np.pi * 5  # area of a radius-5 disk, up to its rim
    assert (mask[25:30, 0:6] == 255).all()
    assert (mask[2:5, 34:38] == [[0, 0, 0, 0], [0, 2, 2, 2], [0, 2, 2, 2]]).all()  # the mask shape's PNG, placed

    # the same shapes in the other order: the polygon now covers the rectangle
    src = _labelme_fixture(tmp_path / "labelme", [shapes[1], shapes[0]], embed)
    convert("labelme", src, tmp_path / "out_reversed", class_names=names)
    assert read_mask(tmp_path / "out_reversed/masks/scene.png")[11, 11] == 1


def test_cvat_segmentation_mask_export(tmp_path):
    root = tmp_path / "cvat"
    for d in ("SegmentationClass", "JPEGImages", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\n"
                                       "car:250,50,83::\nroad:128,64,128::\n")
    truth = np.zeros((24, 32), np.int64)
    truth[12:, :] = 2
    truth[4:10, 5:15] = 1
    colours = np.array([[0, 0, 0], [250, 50, 83], [128, 64, 128]], np.uint8)
    for name in ("frame_000000", "frame_000001"):
        Image.fromarray(colours[truth]).save(root / "SegmentationClass" / f"{name}.png")
        Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
    (root / "ImageSets/Segmentation/default.txt").write_text("frame_000000\nframe_000001\n")
    report = convert("cvat_mask", root, tmp_path / "out", split="train")
    assert report["problems"] == []
    assert read_class_names(tmp_path / "out/class_names.txt")[0] == ["background", "car", "road"]
    for name in ("frame_000000", "frame_000001"):
        np.testing.assert_array_equal(read_mask(tmp_path / "out/masks" / f"{name}.png"), truth)
    assert Image.open(tmp_path / "out/masks/frame_000000.png").getpalette()[3:6] == [250, 50, 83]

    bad = colours[truth]
    bad[0, 0] = [1, 2, 3]
    Image.fromarray(bad).save(root / "SegmentationClass/frame_000001.png")
    with pytest.raises(DataError, match=r"frame_000001.png: unknown label colours \[\(1, 2, 3\)\]"):
        convert("cvat_mask", root, tmp_path / "out_bad")


def test_read_class_names(tmp_path):
    plain = tmp_path / "class_names.txt"
    plain.write_text("# classes\nbackground\n\nperson\n")
    assert read_class_names(plain) == (["background", "person"], None)
    labelmap = tmp_path / "labelmap.txt"
    labelmap.write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\nperson:192,128,128::\n")
    assert read_class_names(labelmap) == (["background", "person"], [[0, 0, 0], [192, 128, 128]])
    labelmap.write_text("background:0,0,0::\nperson:192,128::\n")
    with pytest.raises(DataError, match=r"labelmap.txt:2: colour '192,128' of class 'person'"):
        read_class_names(labelmap)
    plain.write_text("a\nb\na\n")
    with pytest.raises(DataError, match=r"names \['a'\] more than once"):
        read_class_names(plain)
    with pytest.raises(DataError, match="class list file not found"):
        read_class_names(tmp_path / "missing.txt")


def _run_script(monkeypatch, *args):
    """scripts/convert.py in this process (as `python scripts/convert.py ARGS`): its exit code."""
    monkeypatch.setattr(sys, "argv", [str(ROOT / "scripts/convert.py"), *args])
    try:
        runpy.run_path(str(ROOT / "scripts/convert.py"), run_name="__main__")
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        return 1 if isinstance(exc.code, str) else int(exc.code or 0)
    return 0


def test_convert_script_reports_and_fails_cleanly(tmp_path, monkeypatch, capsys):
    ann_file = _coco_fixture(tmp_path / "src")
    assert _run_script(monkeypatch, "format=coco", f"input={ann_file}", f"output={tmp_path / 'out'}",
                       "split=train") == 0
    out = capsys.readouterr().out
    assert "wrote 2 images and masks" in out and "0 problem(s) found" in out
    assert _run_script(monkeypatch, "format=labelme", f"input={tmp_path}", f"output={tmp_path / 'out2'}") == 1
    err = capsys.readouterr().err
    assert "error: labelme conversion needs class_names=FILE" in err and "Traceback" not in err
    # problems found by the checks: exit code 1
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "src/images/a.jpg")  # wrong size for its mask
    assert _run_script(monkeypatch, "format=coco", f"input={ann_file}", f"output={tmp_path / 'out3'}",
                       "split=train") == 1
    assert "a.jpg is 5x5 but its mask" in capsys.readouterr().out

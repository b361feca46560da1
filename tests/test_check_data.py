"""scripts/check_data.py on a real-VOC-shaped tree (no test list), a VOC-like export without split lists, and
the folder layout; it writes nothing where it runs."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from conftest import CONFIG_DIR
from segkit.check_data import check_data, check_dataset, format_report
from segkit.data import DataError, VOCSource
from segkit.data.io import default_palette

ROOT = Path(__file__).resolve().parents[1]


def write_voc_pair(root: Path, name: str, rng: np.random.Generator, size=(40, 32)) -> None:
    """A JPEG image and a palette PNG mask of class indices with 255 object borders, as VOC ships them."""
    w, h = size
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
    mask = np.zeros((h, w), np.uint8)
    cls = int(rng.integers(1, 21))
    mask[8:24, 10:30] = 255  # the border ...
    mask[10:22, 12:28] = cls  # ... around the object
    png = Image.fromarray(mask, mode="P")
    palette = default_palette(21) + [[224, 224, 192]] * (256 - 21)
    png.putpalette([c for colour in palette for c in colour])
    png.save(root / "SegmentationClass" / f"{name}.png")


@pytest.fixture
def voc_root(tmp_path):
    """VOCdevkit/VOC2012 as downloaded: train/val/trainval lists, no test.txt."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = {"train": [f"2007_{i:06d}" for i in range(5)], "val": [f"2008_{i:06d}" for i in range(3)]}
    for split_names in names.values():
        for name in split_names:
            write_voc_pair(root, name, rng)
    lists = root / "ImageSets" / "Segmentation"
    for split, split_names in {**names, "trainval": names["train"] + names["val"]}.items():
        (lists / f"{split}.txt").write_text("\n".join(split_names) + "\n")
    return root


def run_check_data(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "check_data.py"), *overrides], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_real_voc_tree_without_test_list_passes_and_writes_nothing(voc_root, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run_check_data(cwd, "data=voc", f"data.source.root={voc_root}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "splits found: train (5 images), val (3 images)\n" in proc.stdout
    assert "train: 5/5 readable" in proc.stdout and "val: 3/3 readable" in proc.stdout
    assert "note: test: not provided (optional)" in proc.stdout and "test.txt" in proc.stdout
    assert "0 problem(s) found" in proc.stdout
    assert list(cwd.iterdir()) == []  # no outputs/, no .hydra/, no log file
    # the 255 borders are ignored pixels, not a problem: (20*16 - 16*12) / (40*32) of every mask
    assert "ignored pixels: 0.1000" in proc.stdout


def test_voc_problems_exit_1_and_point_to_folder_layout(voc_root, tmp_path):
    (voc_root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    proc = run_check_data(tmp_path, "data=voc", f"data.source.root={voc_root}")
    assert proc.returncode == 1
    assert "1 problem(s) found" in proc.stdout and "val: VOC split list not found" in proc.stdout
    fix = r"data=folder .*data\.source\.images_dir=JPEGImages data\.source\.masks_dir=SegmentationClass"
    with pytest.raises(DataError, match=r"val\.txt.*has train, trainval.*" + fix):
        VOCSource(str(voc_root)).samples("val")


def _check(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("check_data", overrides=overrides)
    return check_data(cfg)  # as scripts/check_data.py runs it: `auto` values planned first


def test_voc_like_export_without_lists_reads_with_the_suggested_folder_command(voc_root):
    import shutil

    shutil.rmtree(voc_root / "ImageSets")  # labelme's VOC export: JPEGImages/ + SegmentationClass/, no lists
    with pytest.raises(DataError, match="data=folder"):
        VOCSource(str(voc_root)).samples("train")
    report = _check(["data=folder", f"data.source.root={voc_root}", "data.source.images_dir=JPEGImages",
                     "data.source.masks_dir=SegmentationClass", "data.num_classes=21", "data.source.val_ratio=0.25"])
    assert report["problems"] == []
    assert {s: v["images"] for s, v in report["splits"].items()} == {"train": 6, "val": 2}
    assert report["info"] == ["test: no images (optional split)"]
    assert "splits found: train (6 images), val (2 images)" in format_report(report)


def test_folder_layout_missing_val_is_a_problem(voc_root):
    report = _check(["data=folder", f"data.source.root={voc_root}", "data.source.images_dir=JPEGImages",
                     "data.source.masks_dir=SegmentationClass", "data.num_classes=21", "data.source.val_ratio=0"])
    assert report["problems"] == ["val: the split is empty"]


def test_a_name_listed_in_two_split_files_is_a_problem_naming_both_files(voc_root):
    lists = voc_root / "ImageSets" / "Segmentation"
    (lists / "val.txt").write_text("2008_000000\n2008_000001\n2007_000003\n2007_000001\n")  # two train images
    overrides = ["data=folder", f"data.source.root={voc_root}", "data.source.images_dir=JPEGImages",
                 "data.source.masks_dir=SegmentationClass", "data.source.splits_dir=ImageSets/Segmentation",
                 "data.num_classes=21"]
    report = _check(overrides)
    assert report["problems"] == [
        f"train and val share 2 images ['2007_000001', '2007_000003']: each is listed in both {lists / 'train.txt'} "
        f"and {lists / 'val.txt'}; list each image in one split only"]
    proc = run_check_data(voc_root.parent, "data=voc", f"data.source.root={voc_root}")  # VOC's own layout too
    assert proc.returncode == 1 and "train and val share 2 images" in proc.stdout and "val.txt" in proc.stdout
    (lists / "val.txt").write_text("2008_000000\n2008_000001\n")
    assert _check(overrides)["problems"] == []  # trainval.txt (train + val) is not a split checked

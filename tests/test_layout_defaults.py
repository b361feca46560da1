"""Layouts are not recipes: every data config a user picks for their own data plans its values from the data, the
published recipes live in experiment configs, and the inputs a layout can hold (16-bit colour, mixed bit depths,
dim multi-channel data, one image) are read and planned correctly."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose_cfg
from segkit.data.dataset import pad_collate
from segkit.data.io import DataError, read_image
from segkit.data.plan import auto_keys, measure, plan_from_config
from segkit.data.sampling import SeededSampler
from segkit.data.sources import FolderSource

LAYOUTS = ("folder", "voc", "cityscapes")
# what a layout must leave to the data (the list: crop and batch size, channels, normalisation, class names,
# number of classes, augmentation)
DATA_DECIDED = ("data.num_classes", "data.class_names", "data.in_channels", "data.mean", "data.std",
                "data.crop_size", "data.batch_size", "data.train_transform.transforms")
VOC_NAMES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
             "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
             "tvmonitor"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_configs_leave_every_data_decided_value_auto(tmp_path, layout):
    cfg = compose_cfg("train", [f"data={layout}", "data.source.root=/somewhere"], tmp_path)
    assert set(DATA_DECIDED) <= set(auto_keys(cfg)), sorted(set(DATA_DECIDED) - set(auto_keys(cfg)))


def test_experiment_configs_keep_the_published_recipes(tmp_path):
    voc = compose_cfg("train", ["experiment=voc_deeplabv3plus_r101"], tmp_path)
    assert list(voc.data.class_names) == VOC_NAMES and voc.data.num_classes == 21
    assert (voc.data.crop_size, voc.data.batch_size, voc.data.in_channels) == (512, 16, 3)
    targets = [t._target_ for t in voc.data.train_transform.transforms]
    assert targets[0] == "albumentations.RandomScale" and "albumentations.RandomCrop" in targets
    assert list(voc.data.train_transform.transforms[0].scale_limit) == [-0.5, 1.0]  # DeepLab's 0.5-2x
    city = compose_cfg("train", ["experiment=cityscapes_deeplabv3_r50"], tmp_path)
    assert (city.data.crop_size, city.data.batch_size) == (768, 8)
    assert city.data.train_transform.transforms[0]._target_ == "albumentations.RandomScale"
    assert "data.crop_size" not in auto_keys(voc) and "data.crop_size" not in auto_keys(city)


# ---- one dataset, two layouts ------------------------------------------------------------------------------------

def _small_dataset(rng, n: int = 12, size=(45, 61)):
    images, masks = [], []
    for _ in range(n):
        mask = np.zeros(size, np.uint8)
        y, x = rng.integers(0, size[0] - 12), rng.integers(0, size[1] - 12)
        mask[y:y + 12, x:x + 12] = rng.integers(1, 4)
        mask[0, :3] = 255  # some ignored pixels, as VOC's boundaries
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        images.append(image)
        masks.append(mask)
    return images, masks


def write_voc(root: Path, images, masks, names=("background", "cat", "dog", "bird"), bom: bool = False) -> Path:
    """A VOC-layout copy: JPEGImages/*.jpg, SegmentationClass/*.png palette PNGs, ImageSets/Segmentation lists and
    class_names.txt at the root."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"2007_{i:06d}" for i in range(len(images))]
    for name, image, mask in zip(ids, images, masks):
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        png = Image.fromarray(mask, mode="P")
        png.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
        png.save(root / "SegmentationClass" / f"{name}.png")
    bom_text = "\ufeff" if bom else ""  # a list saved by Windows Notepad: a byte-order mark, CRLF line ends
    (root / "ImageSets/Segmentation/train.txt").write_text(bom_text + "\r\n".join(ids[:-3]) + "\r\n",
                                                           encoding="utf-8")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[-3:]) + "\n")
    (root / "class_names.txt").write_text(("\ufeff" if bom else "") + "\r\n".join(names) + "\r\n", encoding="utf-8")
    return root


def _plan(tmp_path: Path, overrides) -> tuple:
    cfg = compose_cfg("train", ["model=unet", "model.encoder=resnet18", *overrides], tmp_path)
    lines = plan_from_config(cfg, instantiate(cfg.data.source))
    return cfg, lines


PLANNED = ("num_classes", "class_names", "in_channels", "mean", "std", "crop_size", "batch_size")


def test_voc_layout_and_folder_route_plan_the_same_recipe(tmp_path):
    root = write_voc(tmp_path / "VOCmine", *_small_dataset(np.random.default_rng(0)), bom=True)
    voc, voc_lines = _plan(tmp_path, ["data=voc", f"data.source.root={root}"])
    folder, _ = _plan(tmp_path, ["data=folder", f"data.source.root={root}", "data.source.images_dir=JPEGImages",
                                 "data.source.masks_dir=SegmentationClass",
                                 "data.source.splits_dir=ImageSets/Segmentation"])
    for key in PLANNED:
        assert OmegaConf.to_container(voc.data)[key] == OmegaConf.to_container(folder.data)[key], key
    assert OmegaConf.to_container(voc.data.train_transform) == OmegaConf.to_container(folder.data.train_transform)
    # the class list comes from the root's class_names.txt (saved by Notepad: BOM and CRLF), not PASCAL's 21
    assert list(voc.data.class_names) == ["background", "cat", "dog", "bird"] and voc.data.num_classes == 4
    # 45x61 images fit in 512: whole images, a flip, the batch from the images' size and count
    assert voc.data.crop_size is None
    assert [t["_target_"] for t in voc.data.train_transform.transforms] == ["albumentations.HorizontalFlip"]
    assert any(line.startswith("data.class_names=") and "class_names.txt" in line for line in voc_lines)


def test_num_classes_from_the_masks_when_the_dataset_names_none(tmp_path):
    images, masks = _small_dataset(np.random.default_rng(1))
    masks[0][20:25, 20:25] = 6  # the largest class id anywhere in the training masks
    root = tmp_path / "ds"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i, (image, mask) in enumerate(zip(images, masks)):
        Image.fromarray(image).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    cfg, lines = _plan(tmp_path, ["data=folder", f"data.source.root={root}", "data.source.val_ratio=0.0001"])
    assert cfg.data.num_classes == 7 and cfg.data.class_names is None
    assert any(line.startswith("data.num_classes=7") for line in lines)
    assert cfg.model.num_classes == 7  # the model follows the planned value


def test_binary_0_255_masks_with_num_classes_auto_say_how_to_fix(tmp_path):
    root = tmp_path / "bin"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(np.where(np.eye(16) > 0, 255, 0).astype(np.uint8)).save(root / "masks" / f"{i}.png")
    with pytest.raises(DataError, match="divide them by 255"):
        _plan(tmp_path, ["data=folder", f"data.source.root={root}"])


def test_user_crop_far_larger_than_the_images_is_warned(tmp_path):
    root = write_voc(tmp_path / "VOCmine", *_small_dataset(np.random.default_rng(2)))
    _, lines = _plan(tmp_path, ["data=voc", f"data.source.root={root}", "data.crop_size=512",
                                "data/augment=scale_crop"])
    assert any(line.startswith("warning: data.crop_size=512") and "crop_size=auto" in line for line in lines)
    _, lines = _plan(tmp_path, ["data=voc", f"data.source.root={root}"])
    assert not any(line.startswith("warning") for line in lines)


def test_large_images_are_cropped_with_foreground_crops(tmp_path):
    rng = np.random.default_rng(3)
    images, masks = _small_dataset(rng, n=4, size=(700, 650))
    root = write_voc(tmp_path / "big", images, masks)
    cfg, _ = _plan(tmp_path, ["data=voc", f"data.source.root={root}"])
    assert cfg.data.crop_size == 512  # the median's longer side (700) rounded up, at most 512
    targets = [t["_target_"] for t in cfg.data.train_transform.transforms]
    assert targets == ["albumentations.PadIfNeeded", "albumentations.OneOf", "albumentations.HorizontalFlip"]
    transform = instantiate(cfg.data.train_transform)
    out = transform(image=images[0], mask=masks[0])
    assert out["image"].shape[:2] == (512, 512) and out["mask"].shape == (512, 512)


# ---- input kinds ------------------------------------------------------------------------------------------------

def test_16bit_rgb_png_keeps_its_16_bits(tmp_path):
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 4096, (9, 11, 3), dtype=np.uint16)  # 12-bit colour data stored in 16 bits
    path = tmp_path / "x.png"
    assert cv2.imwrite(str(path), rgb[..., ::-1])  # OpenCV writes BGR
    image = read_image(path)
    assert image.dtype == np.float32 and image.shape == (9, 11, 3)
    np.testing.assert_array_equal(np.round(image * 65535).astype(np.uint16), rgb)
    rgba = np.concatenate([rgb, np.full((9, 11, 1), 65535, np.uint16)], axis=2)
    assert cv2.imwrite(str(path), rgba[..., [2, 1, 0, 3]])
    np.testing.assert_array_equal(np.round(read_image(path) * 65535).astype(np.uint16), rgba)
    np.testing.assert_array_equal(np.round(read_image(path, channels=3) * 65535).astype(np.uint16), rgb)


def test_dim_12bit_colour_is_not_called_grey_but_true_grey_is(tmp_path):
    rng = np.random.default_rng(5)
    # dim 12-bit fluorescence in 16-bit files: values up to 400 of 65535, so channels differ by under 2/255 in
    # absolute 0-1 terms, yet each channel is its own stain
    base = rng.integers(0, 400, (3, 20, 20), dtype=np.uint16)
    colour = [np.stack([b, (b * 0.5).astype(np.uint16), (400 - b)], axis=2) for b in base]
    grey = [np.repeat(b[..., None], 3, axis=2) for b in base]
    for name, images in (("colour", colour), ("grey", grey)):
        root = tmp_path / name
        for sub in ("images", "masks", "splits"):
            (root / sub).mkdir(parents=True)
        for i, image in enumerate(images):  # TIFF: read as 16 bits before and after the PNG fix
            tifffile.imwrite(root / "images" / f"{i}.tif", image, photometric="rgb")
            Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "masks" / f"{i}.png")
        (root / "splits" / "train.txt").write_text("0\n1\n2\n")
        stats = measure(FolderSource(str(root)), "train", num_classes=1)
        assert (stats.channels, stats.bit_depth) == (3, 32)
        assert stats.grey_as_rgb == (name == "grey"), name


def test_a_batch_mixing_8_and_16_bit_images_keeps_both(tmp_path):
    u8 = torch.full((1, 4, 4), 255, dtype=torch.uint8)
    f32 = torch.full((1, 3, 5), 0.5, dtype=torch.float32)
    batch = pad_collate([{"image": u8, "mask": torch.zeros(4, 4, dtype=torch.uint8), "name": "a"},
                         {"image": f32, "mask": torch.zeros(3, 5, dtype=torch.uint8), "name": "b"}])
    assert batch["image"].dtype == torch.float32
    assert batch["image"][0, 0, :4, :4].eq(1.0).all() and batch["image"][1, 0, :3, :5].eq(0.5).all()
    assert batch["image"][0, 0, :, 4].eq(0).all() and batch["mask"][0, :, 4].eq(255).all()


def test_scale_crop_photometric_step_keeps_low_range_16bit_images(tmp_path):
    """The nuclei-like case: 16-bit grey values 0-235 (0-0.0036 in 0-1 units). An absolute brightness shift of up
    to 0.2 would make many samples all zero or lift the background far above the data."""
    cfg = compose_cfg("train", ["data=folder", "data.source.root=/x", "data/augment=scale_crop", "data.crop_size=64"],
                      tmp_path)
    transform = instantiate(cfg.data.train_transform)
    rng = np.random.default_rng(6)
    image = (rng.integers(0, 236, (64, 64, 1)) * (rng.random((64, 64, 1)) < 0.3)).astype(np.float32) / 65535
    mask = np.zeros((64, 64), np.uint8)
    wiped = lifted = 0
    for seed in range(100):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=mask)["image"]
        wiped += int(out.max() == 0)
        lifted += int(np.median(out) > image.max())
    assert wiped == 0 and lifted == 0, (wiped, lifted)


# ---- one image ---------------------------------------------------------------------------------------------------

def test_sampler_fills_an_epoch_from_a_split_smaller_than_a_batch():
    sampler = SeededSampler(1, seed=0, min_samples=2)
    draws = list(sampler)
    assert len(sampler) == 2 and [i for i, _ in draws] == [0, 0] and draws[0][1] != draws[1][1]
    plain = SeededSampler(5, seed=3)
    assert list(SeededSampler(5, seed=3, min_samples=4)) == list(plain)  # enough images: the order is unchanged
    sampler = SeededSampler(3, seed=1, min_samples=7)
    counts = np.bincount([i for i, _ in sampler], minlength=3)
    assert counts.sum() == 7 and counts.min() >= 2


def test_a_one_image_training_split_trains(tmp_path):
    from segkit.pipeline import train

    root = tmp_path / "one"
    for sub in ("images", "masks", "splits"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(7)
    for name in ("big", "check"):
        image = rng.integers(0, 256, (40, 56, 4), dtype=np.uint8)  # a 4-band image (one GeoTIFF, say)
        tifffile.imwrite(root / "images" / f"{name}.tif", image)
        Image.fromarray((image[..., 0] > 128).astype(np.uint8)).save(root / "masks" / f"{name}.png")
    (root / "splits" / "train.txt").write_text("big\n")
    (root / "splits" / "val.txt").write_text("check\n")
    cfg = compose_cfg("train", ["data=folder", f"data.source.root={root}", "model=unet_small",
                                "trainer.max_epochs=2", "logger=csv"], tmp_path)
    metrics = train(cfg)
    assert cfg.data.batch_size == 2 and cfg.data.in_channels == 4 and cfg.data.num_classes == 2
    assert 0.0 <= metrics["mIoU"] <= 1.0
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 2  # one step per epoch: the image twice, two augmentations


@pytest.mark.parametrize("first", ["8bit", "16bit"])
def test_a_dataset_mixing_8_and_16_bit_files_is_float_whichever_sorts_first(tmp_path, first):
    """The spec's image_dtype (what an export takes by default) must be float when any training file is 16-bit:
    the batches are float, and a uint8 model would drop the 16-bit files' low byte."""
    from segkit.data.datamodule import SegmentationDataModule

    root = tmp_path / "mixed"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(9)
    names = ["a", "b"] if first == "8bit" else ["b", "a"]
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "images" / f"{names[0]}.png")
    cv2.imwrite(str(root / "images" / f"{names[1]}.png"), rng.integers(0, 65536, (8, 8, 3), dtype=np.uint16))
    for name in names:
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / f"{name}.png")
    for cache in (False, True):
        dm = SegmentationDataModule(FolderSource(str(root), val_ratio=0.0), num_classes=2, cache=cache)
        if cache:
            dm.dataset("train").preload()
        assert dm.spec.image_dtype == "float32", (first, cache)


@pytest.mark.parametrize("model, lr", [(["model=unet_small"], 3e-3),
                                       (["model=unet", "model.encoder=resnet18"], 1e-3)])
def test_the_default_learning_rate_follows_the_network_size(tmp_path, model, lr):
    """task.optimizer.lr=auto (the default) is resolved when the optimizer is built: 3e-3 under 2M trainable
    parameters, 1e-3 from there (counted here, independently); a value the user sets wins."""
    cfg = compose_cfg("train", [*model, "data.num_classes=3", "task/loss=ce"], tmp_path)
    assert cfg.task.optimizer.lr == "auto"
    net = instantiate(cfg.model)
    assert (sum(p.numel() for p in net.parameters()) < 2_000_000) == (lr == 3e-3)

    def built_lr(task_cfg):
        task = instantiate(task_cfg, net=net, spec=3)
        task.scheduler_factory = None  # the schedule needs a trainer; the rate is the optimizer's
        return task.configure_optimizers().param_groups[0]["lr"]

    assert built_lr(cfg.task) == lr
    cfg.task.optimizer.lr = 0.02
    assert built_lr(cfg.task) == 0.02

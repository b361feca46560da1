"""Bad input gets a clear error naming the file or key; nothing unsafe is loaded or instantiated."""
import json
import os
import pickle
import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from segkit.config import UnsafeConfigError, check_targets, load_checkpoint
from segkit.data import DataError, SegmentationDataset, read_image, read_mask
from segkit.data.sources import FolderSource
from segkit.pipeline import ensure_writable
from segkit.tasks import SegmentationTask


# ---- config targets ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["os.system", "builtins.getattr", "subprocess.run", "torch.load",
                                    "torch.hub.load", "segkitx.evil"])
def test_untrusted_targets_refused_with_key(target):
    cfg = OmegaConf.create({"model": {"upsampler": {"_target_": target, "_args_": ["echo pwned"]}}})
    with pytest.raises(UnsafeConfigError, match=r"model\.upsampler\._target_=.*allowed_targets"):
        check_targets(cfg)


def test_trusted_and_explicitly_allowed_targets_pass():
    cfg = OmegaConf.create({"a": {"_target_": "torch.optim.SGD"}, "b": [{"_target_": "mypkg.Thing"}]})
    with pytest.raises(UnsafeConfigError, match=r"b\[0\]\._target_"):
        check_targets(cfg)
    check_targets(cfg, allowed=["mypkg"])


def test_cli_override_with_unsafe_target_fails_before_anything_runs(tmp_path):
    from conftest import compose_cfg
    from segkit.pipeline import train

    marker = tmp_path / "pwned"
    cfg = compose_cfg("train", ["model.upsampler._target_=os.system", f"+model.upsampler.command=touch {marker}"],
                      tmp_path)
    with pytest.raises(UnsafeConfigError, match="os.system"):
        train(cfg)
    assert not marker.exists() and not (tmp_path / "run").exists()


# ---- checkpoints ---------------------------------------------------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_crafted_pickle_rejected_without_running(tmp_path):
    _Evil.marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "segkit": {"config": {}}, "x": _Evil()}, f)
    with pytest.raises(ValueError, match="refusing to load.*weights_only"):
        load_checkpoint(path)
    assert not _Evil.marker.exists()


def test_missing_checkpoint_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_unwritable_output_dir_reported_at_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="paths.output_dir"):
        ensure_writable(blocker / "run")


# ---- data errors name the file -------------------------------------------------------------------------------
def _folder(tmp_path, n=2, size=(6, 8)):
    (tmp_path / "images").mkdir(parents=True, exist_ok=True)
    (tmp_path / "masks").mkdir(exist_ok=True)
    for i in range(n):
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(tmp_path / "images" / f"im{i}.png")
        Image.fromarray(np.ones(size, np.uint8)).save(tmp_path / "masks" / f"im{i}.png")
    return FolderSource(str(tmp_path), val_ratio=0.0)


def _dataset(src, num_classes=3):
    return SegmentationDataset(src.samples("train"), num_classes, 255)


def test_zero_byte_and_truncated_images(tmp_path):
    src = _folder(tmp_path)
    (tmp_path / "images" / "im0.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty \(0 bytes\).*im0\.png"):
        _dataset(src)[0]
    data = (tmp_path / "images" / "im1.png").read_bytes()
    (tmp_path / "images" / "im1.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"im1\.png.*truncated"):
        _dataset(src)[1]


def test_size_mismatch(tmp_path):
    src = _folder(tmp_path)
    Image.fromarray(np.ones((5, 5), np.uint8)).save(tmp_path / "masks" / "im0.png")
    with pytest.raises(DataError, match=r"im0\.png is 8x6 but its mask .*im0\.png is 5x5"):
        _dataset(src)[0]


def test_out_of_range_binary_and_rgb_masks(tmp_path):
    src = _folder(tmp_path)
    m = np.zeros((6, 8), np.uint8)
    m[0, 0] = 7
    Image.fromarray(m).save(tmp_path / "masks" / "im0.png")
    with pytest.raises(DataError, match=r"masks/im0\.png has values \[7\] outside \[0, 3\)"):
        _dataset(src)[0]
    m[0, 0] = 255  # ignore_index is fine
    Image.fromarray(m).save(tmp_path / "masks" / "im0.png")
    _dataset(src)[0]
    src2 = _folder(tmp_path / "bin")
    b = np.zeros((6, 8), np.uint8)
    b[:3] = 255
    Image.fromarray(b).save(tmp_path / "bin" / "masks" / "im0.png")
    ds = SegmentationDataset(src2.samples("train"), 2, ignore_index=-1)
    with pytest.raises(DataError, match="0/255 binary mask: divide it by 255"):
        ds[0]
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0] = 128
    Image.fromarray(rgb).save(tmp_path / "masks" / "im1.png")
    with pytest.raises(DataError, match=r"im1\.png is an RGB colour image"):
        _dataset(src)[1]


def test_missing_mask_and_empty_split(tmp_path):
    src = _folder(tmp_path)
    os.remove(tmp_path / "masks" / "im1.png")
    with pytest.raises(DataError, match=r"no mask for image .*im1\.png"):
        _dataset(src)[1]
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("\n")
    with pytest.raises(DataError, match=r"splits/train\.txt is empty"):
        src.samples("train")


def test_check_data_reports_every_problem(tmp_path):
    from segkit.check_data import check_dataset
    from segkit.data import SegmentationDataModule

    src = _folder(tmp_path, n=4)
    (tmp_path / "images" / "im0.png").write_bytes(b"")
    m = np.full((6, 8), 9, np.uint8)
    Image.fromarray(m).save(tmp_path / "masks" / "im2.png")
    report = check_dataset(SegmentationDataModule(src, num_classes=3), splits=("train",))
    assert report["splits"]["train"] == {"images": 4, "readable": 2, "sizes": {"8x6": 2}}
    assert len(report["problems"]) == 2 and "im0.png" in report["problems"][0]
    assert report["class_pixel_frequency"]["class_1"] == 1.0


# ---- inputs converted correctly ------------------------------------------------------------------------------
def test_palette_mask_read_as_indices(tmp_path):
    img = Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8), mode="P")
    img.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [255] * (768 - 9))
    img.save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").tolist() == [[0, 1], [2, 255]]


def test_grayscale_rgba_16bit_and_multiband_images(tmp_path):
    import tifffile

    Image.fromarray(np.array([[0, 128]], np.uint8), mode="L").save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").tolist() == [[[0], [128]]]  # native: one channel
    assert read_image(tmp_path / "g.png", channels=3).tolist() == [[[0, 0, 0], [128, 128, 128]]]
    rgba = np.array([[[10, 20, 30, 0]]], np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png", channels=3).tolist() == [[[10, 20, 30]]]
    rgb = np.array([[[10, 20, 30], [200, 100, 50]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    expected = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.int64)  # PIL's own luminance
    assert np.abs(read_image(tmp_path / "c.png", channels=1)[..., 0].astype(np.int64) - expected).max() <= 1
    Image.fromarray(np.array([[0, 65535, 32768]], np.uint16)).save(tmp_path / "w.png")
    wide = read_image(tmp_path / "w.png")
    assert wide.dtype == np.float32 and wide.shape == (1, 3, 1)
    np.testing.assert_allclose(wide[0, :, 0], [0.0, 1.0, 32768 / 65535], rtol=1e-6)  # 16 bits kept, not 8
    bands = np.random.default_rng(0).integers(0, 65535, (5, 6, 4), dtype=np.uint16)  # RGB-NIR, 16-bit
    tifffile.imwrite(tmp_path / "b.tif", bands)
    np.testing.assert_allclose(read_image(tmp_path / "b.tif"), bands / 65535.0, rtol=1e-6)
    tifffile.imwrite(tmp_path / "p.tif", bands.transpose(2, 0, 1), photometric="minisblack", planarconfig="separate")
    np.testing.assert_allclose(read_image(tmp_path / "p.tif", channels=4), bands / 65535.0, rtol=1e-6)
    with pytest.raises(DataError, match=r"b\.tif has 4 channels but data\.in_channels=2; set data\.in_channels=4"):
        read_image(tmp_path / "b.tif", channels=2)


def test_exif_orientation_applied_to_image_and_mask(tmp_path):
    arr = np.zeros((2, 4, 3), np.uint8)
    arr[0, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    Image.fromarray(arr).save(tmp_path / "i.jpg", exif=exif, quality=100)
    mask = np.zeros((2, 4), np.uint8)
    mask[0, 0] = 1
    Image.fromarray(mask).save(tmp_path / "m.png", exif=exif)
    image, m = read_image(tmp_path / "i.jpg"), read_mask(tmp_path / "m.png")
    assert image.shape == (4, 2, 3) and m.shape == (4, 2)
    assert m[0, 1] == 1 and image[0, 1, 0] > 200


@pytest.mark.parametrize("num_classes, ignore_index, dtype", [(3, 255, torch.uint8), (256, 255, torch.uint8),
                                                               (3, -1, torch.int64), (300, 255, torch.int64)])
def test_masks_travel_as_uint8_when_labels_fit(tmp_path, num_classes, ignore_index, dtype):
    """Masks stay uint8 through augmentation and collation when every label fits (8x fewer bytes to copy to the
    GPU), int64 otherwise; padding uses ignore_index in either dtype, and the task widens them to int64."""
    import albumentations as A

    from segkit.data.dataset import pad_collate

    src = _folder(tmp_path)
    Image.fromarray(np.array([[0, 1, 2, 255, 1, 0, 0, 0]] * 6, np.uint8)).save(tmp_path / "masks" / "im1.png")
    if ignore_index != 255:  # 255 is a real label only where it is the ignore value
        Image.fromarray(np.array([[0, 1, 2, 2, 1, 0, 0, 0]] * 6, np.uint8)).save(tmp_path / "masks" / "im1.png")
    pad = A.Compose([A.PadIfNeeded(8, 10, position="top_left", fill=0, fill_mask=ignore_index)])
    ds = SegmentationDataset(src.samples("train"), num_classes, ignore_index, transform=pad)
    items = [ds[0], ds[1]]
    assert all(item["mask"].dtype == dtype for item in items)
    short = dict(items[0], image=items[0]["image"][:, :6], mask=items[0]["mask"][:6])
    batch = pad_collate([short, items[1]], ignore_index)
    assert batch["mask"].dtype == dtype and (batch["mask"][0, 6:] == ignore_index).all()
    assert (batch["mask"][1, 6:] == ignore_index).all() and batch["mask"][1, 0, :3].tolist() == [0, 1, 2]
    target = SegmentationTask.targets(batch)
    assert target.dtype == torch.int64 and torch.equal(target, batch["mask"].long())


def test_sixteen_bit_mask_labels_above_255_kept(tmp_path):
    src = _folder(tmp_path)
    Image.fromarray(np.full((6, 8), 299, np.uint16)).save(tmp_path / "masks" / "im0.png")
    item = SegmentationDataset(src.samples("train"), 300, 255)[0]
    assert item["mask"].dtype == torch.int64 and (item["mask"] == 299).all()


def test_uint8_masks_give_the_same_loss_and_metrics_as_int64():
    torch.manual_seed(0)
    task = SegmentationTask(torch.nn.Conv2d(3, 4, 1), 4)
    batch = {"image": torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8),
             "mask": torch.randint(0, 4, (2, 5, 5)), "name": ["a", "b"]}
    batch["mask"][0, 0] = 255
    wide = task.training_step(batch, 0)
    narrow = task.training_step(dict(batch, mask=batch["mask"].to(torch.uint8)), 0)
    assert torch.equal(wide, narrow)


def test_scale_crop_config_pads_masks_with_ignore_index(tmp_path):
    """The shipped scale_crop augmentation: crops larger than the (scaled) image pad the mask with the data's
    ignore_index, which the loss and metric then skip."""
    from hydra.utils import instantiate

    from conftest import compose_cfg, fill_planned

    src = _folder(tmp_path / "d", n=2, size=(6, 8))
    cfg = compose_cfg("train", ["data=folder", f"data.source.root={src.root}", "data.num_classes=3",
                                "data.crop_size=32", "data.ignore_index=7", "data.in_channels=3",
                                "data.mean=null", "data.std=null", "data.batch_size=2", "data/augment=scale_crop"],
                      tmp_path)
    fill_planned(cfg, src)  # data.class_names=auto: the root has no class list
    dm = instantiate(cfg.data)
    for i in range(2):
        mask = dm.dataset("train", train=True)[(i, 1234 + i)]["mask"]
        assert mask.shape == (32, 32) and set(mask.unique().tolist()) == {1, 7}
        assert (mask == 1).sum() <= (6 * 2) * (8 * 2)  # at most the image at 2x scale; the rest is padding


# ---- numeric faults ------------------------------------------------------------------------------------------
class _NaNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.conv(x) * float("nan")


def _batch():
    return {"image": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "mask": torch.zeros(2, 4, 4, dtype=torch.long),
            "name": ["a", "b"]}


def test_nan_loss_raises_with_message():
    task = SegmentationTask(_NaNNet(), 2)
    with pytest.raises(FloatingPointError, match="non-finite training loss.*nan_policy=skip"):
        task.training_step(_batch(), 0)


def test_nan_loss_skip_policy_skips_step():
    task = SegmentationTask(_NaNNet(), 2, nan_policy="skip")
    assert task.training_step(_batch(), 0) is None


class _DivergedNet(_NaNNet):
    """A diverged network whose training-mode outputs stay finite but whose evaluation-mode outputs are not (the
    huge weights of lr=1e6 through BatchNorm's running statistics)."""

    def forward(self, x):
        return self.conv(x) * (1.0 if self.training else float("inf"))


def _trainer_in(fn: str):
    state = type("State", (), {"fn": fn})()
    return type("FakeTrainer", (), {"state": state, "world_size": 1, "global_step": 0})()


@pytest.mark.parametrize("stage", ["validation", "test"])
def test_non_finite_evaluation_loss_during_fit_raises(stage):
    task = SegmentationTask(_DivergedNet(), 2)
    task._trainer = _trainer_in("fit")
    task.log = lambda *args, **kwargs: None
    assert torch.isfinite(task.training_step(_batch(), 0))
    task.net.eval()
    with pytest.raises(FloatingPointError, match="diverged.*task.optimizer.lr"):
        getattr(task, f"{stage}_step")(_batch(), 0)
    task._trainer = _trainer_in("validate")  # evaluate.py scores what it is given, NaN loss and all
    task.validation_step(_batch(), 0)
    skip = SegmentationTask(_DivergedNet(), 2, nan_policy="skip")
    skip._trainer, skip.log = _trainer_in("fit"), task.log
    skip.net.eval()
    skip.validation_step(_batch(), 0)


def test_nan_skip_refused_with_several_processes():
    task = SegmentationTask(_NaNNet(), 2, nan_policy="skip")
    task._trainer = type("FakeTrainer", (), {"world_size": 2})()
    with pytest.raises(ValueError, match="nan_policy=skip works in a single process only"):
        task.setup("fit")
    task._trainer = type("FakeTrainer", (), {"world_size": 1})()
    task.setup("fit")


def test_checkpoint_from_an_older_model_gets_a_clear_error(tmp_path):
    """Weights that no longer fit the model their stored config builds (layers changed between versions): a
    ValueError naming the checkpoint, not load_state_dict's size-mismatch trace."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from conftest import compose_cfg
    from segkit.pipeline import build_task, load_task_from_checkpoint

    cfg = compose_cfg("train", ["model=unet", "model.encoder=resnet18", "model.head_kernel=3", "task/loss=ce"],
                      tmp_path)
    task = build_task(cfg, instantiate(cfg.data))
    stored = OmegaConf.to_container(cfg, resolve=True)
    stored["model"]["head_kernel"] = 1  # what the config rebuilds differs from the saved weights
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": task.state_dict(), "segkit": {"config": stored, "spec": task.spec.to_dict()}}, path)
    with pytest.raises(ValueError, match=rf"the weights in {re.escape(str(path))} do not fit .*older segkit"):
        load_task_from_checkpoint(str(path))
    stored["model"]["head_kernel"] = 3
    torch.save({"state_dict": task.state_dict(), "segkit": {"config": stored, "spec": task.spec.to_dict()}}, path)
    assert load_task_from_checkpoint(str(path))[0].net.num_classes == task.net.num_classes


def test_unet_checkpoint_from_before_final_step_convs_keeps_its_layout(tmp_path):
    """A ResNet U-Net saved before ``final_step_convs`` existed has smp's two convs in its last step and no such key
    in its stored config: evaluation/export (checkpoint), from_pretrained (folder) and resume rebuild that layout."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import segkit
    from conftest import compose_cfg
    from segkit.export import save_safetensors
    from segkit.pipeline import build_task, load_task_from_checkpoint, resume_model_layout

    cfg = compose_cfg("train", ["model=unet", "model.encoder=resnet18", "model.final_step_convs=2", "task/loss=ce"],
                      tmp_path)
    task = build_task(cfg, instantiate(cfg.data))
    stored = OmegaConf.to_container(cfg, resolve=True)
    del stored["model"]["final_step_convs"]  # as an older segkit saved it
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": task.state_dict(), "segkit": {"config": stored, "spec": task.spec.to_dict()}}, path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = task.net.eval()(x)
        loaded, loaded_cfg = load_task_from_checkpoint(str(path))
        assert loaded_cfg.model.final_step_convs == 2 and loaded.run_config["model"]["final_step_convs"] == 2
        assert torch.equal(loaded.net(x), expected)

        folder = tmp_path / "pretrained"
        folder.mkdir()
        save_safetensors(task.net, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps({"model": stored["model"], "spec": task.spec.to_dict()}))
        assert torch.equal(segkit.from_pretrained(str(folder)).net(x), expected)
        exported = segkit.hub.save_pretrained(path, tmp_path / "exported")  # writes the brought-up-to-date config
        assert json.loads((exported / "config.json").read_text())["model"]["final_step_convs"] == 2
        assert torch.equal(segkit.from_pretrained(str(exported)).net(x), expected)

    fresh = compose_cfg("train", ["model=unet", "model.encoder=resnet18", "task/loss=ce"], tmp_path)
    assert fresh.model.final_step_convs == 1  # today's default
    resume_model_layout(fresh, str(path))
    assert fresh.model.final_step_convs == 2
    instantiate(fresh.model).load_state_dict(task.net.state_dict())  # the resumed model takes the old weights

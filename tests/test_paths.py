"""The paths real setups take: another dataset at evaluation, grayscale/16-bit/N-band images end to end,
resuming, several devices. Each test here failed on segkit 0.1."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from conftest import TINY_DATA, compose_cfg, fill_planned
from segkit.pipeline import evaluate, predict, train

SMALL = ["model=unet_small", "++model.encoder_kwargs={base_channels:4,depth:3}", "logger=csv",
         "~callbacks.progress_bar"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run on the embedded dataset (6 classes), shared by the evaluation tests."""
    tmp = tmp_path_factory.mktemp("trained")
    cfg = compose_cfg("train", [*SMALL, *TINY_DATA, "trainer.max_epochs=1"], tmp)
    metrics = train(cfg)
    return tmp, tmp / "run" / "checkpoints" / "best.ckpt", metrics


def _palette_png(arr, path):
    img = Image.fromarray(arr.astype(np.uint8), mode="P")
    img.putpalette([v for i in range(256) for v in (i, 255 - i, (3 * i) % 256)])
    img.save(path)


def _fixture(kind, root, source_root):
    """The embedded dataset's val images re-laid out as ``kind`` (labels 0-5 mapped to that layout's ids)."""
    images = sorted((source_root / "images").glob("val_*.png"))[:4]
    masks = [np.asarray(Image.open(source_root / "masks" / p.name)) for p in images]
    if kind == "folder":
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        for p, m in zip(images, masks):
            shutil.copy(p, root / "images" / p.name)
            _palette_png(m, root / "masks" / p.name)
        return [f"data.source.root={root}", "data.num_classes=6", "data.source.val_ratio=0.5"]
    if kind == "voc":
        for d in ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"]:
            (root / d).mkdir(parents=True)
        for p, m in zip(images, masks):
            Image.open(p).convert("RGB").save(root / "JPEGImages" / f"{p.stem}.jpg", quality=95)
            m = m.copy()
            m[0, :] = 255  # VOC's object-boundary ignore
            _palette_png(m, root / "SegmentationClass" / f"{p.stem}.png")
        (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(p.stem for p in images) + "\n")
        return [f"data.source.root={root}", "data.num_classes=6", "data.class_names=null"]
    if kind == "cityscapes":
        label_ids = np.array([7, 8, 11, 12, 13, 17], np.uint8)  # train ids 0-5
        city = root / "leftImg8bit/val/aachen"
        gt = root / "gtFine/val/aachen"
        city.mkdir(parents=True)
        gt.mkdir(parents=True)
        for i, (p, m) in enumerate(zip(images, masks)):
            stem = f"aachen_{i:06d}_000019"
            shutil.copy(p, city / f"{stem}_leftImg8bit.png")
            Image.fromarray(label_ids[m]).save(gt / f"{stem}_gtFine_labelIds.png")
        return [f"data.source.root={root}", "data.num_classes=6", "data.class_names=null", "data.palette=null"]
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["synthetic", "folder", "voc", "cityscapes"])
def test_evaluate_and_predict_on_every_data_config(trained, kind, tmp_path):
    """`evaluate.py data=NAME ...` composes (eval.yaml interpolates ${seed}), scores the other dataset through the
    training validation step, and agrees with an independent score of predict.py's masks."""
    from sklearn.metrics import confusion_matrix

    run_tmp, ckpt, _ = trained
    source_root = next((run_tmp / "data").glob("shapes-*"))
    extra = TINY_DATA[:4] if kind == "synthetic" else _fixture(kind, tmp_path / kind, source_root)
    cfg = compose_cfg("eval", [f"ckpt_path={ckpt}", f"data={kind}", f"output_dir={tmp_path / 'eval'}",
                               "progress_bar=false", *extra], tmp_path, run_tmp / "data")
    summary = evaluate(cfg)
    dm = instantiate(cfg.data)
    samples = dm.source.samples(cfg.data.split)
    assert summary["num_images"] == len(samples) > 0
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for image, _ in samples:
        shutil.copy(image, image_dir / image.name)
    predict(compose_cfg("predict", [f"ckpt_path={ckpt}", f"input={image_dir}", f"output={tmp_path / 'pred'}",
                                    "progress_bar=false"], tmp_path))
    truth, pred = [], []
    for index, (image, _) in enumerate(samples):
        mask = dm.dataset(cfg.data.split).load(index)[1].ravel()
        keep = mask != dm.ignore_index
        truth.append(mask[keep])
        pred.append(np.asarray(Image.open(tmp_path / "pred" / f"{image.stem}.png")).ravel()[keep])
    cm = confusion_matrix(np.concatenate(truth), np.concatenate(pred), labels=list(range(6)))
    assert cm.tolist() == np.loadtxt(tmp_path / "eval" / "confusion_matrix.csv", delimiter=",").astype(int).tolist()
    report = (tmp_path / "eval" / "report.html").read_text()
    assert all(image.stem in report for image, _ in samples[:8])  # every image is among the (up to 8) worst


def test_class_names_and_palette_from_a_labelmap_file(tmp_path):
    (tmp_path / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\nroad:128,64,128::\n"
                                           "car:0,0,142::\n")
    cfg = compose_cfg("train", ["data=folder", f"data.source.root={tmp_path}", "data.num_classes=3",
                                f"data.class_names={tmp_path / 'labelmap.txt'}", "data.in_channels=3", "data.mean=null",
                                "data.std=null", "data.crop_size=64", "data.batch_size=2", "data/augment=none"],
                      tmp_path)
    dm = instantiate(cfg.data)
    assert dm.class_names == ["background", "road", "car"]
    assert dm.palette == [[0, 0, 0], [128, 64, 128], [0, 0, 142]]


def test_evaluating_data_with_other_classes_is_a_clear_error(trained, tmp_path):
    run_tmp, ckpt, _ = trained
    cfg = compose_cfg("eval", [f"ckpt_path={ckpt}", "data=synthetic", *TINY_DATA[:4], "data.num_classes=7",
                               "data.class_names=null"], tmp_path, run_tmp / "data")
    with pytest.raises(ValueError, match=r"num_classes=6 but the data config has data.num_classes=7"):
        evaluate(cfg)


def _channels_dataset(root, kind, n=12, size=32):
    """Objects brighter than the background in 1-channel 16-bit PNGs or 4-band 16-bit TIFFs."""
    import tifffile

    rng = np.random.default_rng(0)
    for d in ("images", "masks", "splits"):
        (root / d).mkdir(parents=True)
    names = []
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(4, size - 12, 2)
        mask[y:y + 8, x:x + 8] = 1
        base = rng.normal(12000, 800, (size, size)) + 30000.0 * mask  # uses the 16-bit range: 8 bits would lose it
        name = f"im{i:02d}"
        if kind == "gray16":
            Image.fromarray(base.clip(0, 65535).astype(np.uint16)).save(root / "images" / f"{name}.png")
        else:
            bands = np.stack([base, base * 0.5, rng.normal(20000, 500, base.shape), base * 0.8], -1)
            tifffile.imwrite(root / "images" / f"{name}.tif", bands.clip(0, 65535).astype(np.uint16))
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
        names.append(name)
    (root / "splits" / "train.txt").write_text("\n".join(names[:8]) + "\n")
    (root / "splits" / "val.txt").write_text("\n".join(names[8:]) + "\n")


@pytest.mark.parametrize("kind,channels", [("gray16", 1), ("rgbn16", 4)])
def test_non_rgb_images_end_to_end(kind, channels, tmp_path):
    """1-channel 16-bit and 4-band 16-bit images: training (mean/std measured per channel), evaluation equal to
    training's validation, prediction, and an ONNX export taking float 0-1 images that matches the task."""
    root = tmp_path / kind
    _channels_dataset(root, kind)
    cfg = compose_cfg("train", [*SMALL, "data=folder", f"data.source.root={root}", "data.num_classes=2",
                                f"data.in_channels={channels}", "data.crop_size=32",  # default augment
                                "data.batch_size=4", "data.eval_batch_size=2", "data.num_workers=0",
                                "trainer.max_epochs=2"], tmp_path)
    metrics = train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    spec = torch.load(ckpt, weights_only=True)["segkit"]["spec"]
    assert spec["in_channels"] == channels and len(spec["mean"]) == channels
    assert spec["image_dtype"] == "float32"  # 16-bit files are read as float 0-1, so exports take that by default
    pixels = []
    for name in (root / "splits" / "train.txt").read_text().split():
        from segkit.data.io import read_image

        pixels.append(read_image(next((root / "images").glob(f"{name}.*"))).reshape(-1, channels))
    pixels = np.concatenate(pixels).astype(np.float64)
    np.testing.assert_allclose(spec["mean"], pixels.mean(0), rtol=1e-3)  # the plan logs 4 significant digits
    np.testing.assert_allclose(spec["std"], pixels.std(0), rtol=1e-3)

    ev = evaluate(compose_cfg("eval", [f"ckpt_path={ckpt}", f"output_dir={tmp_path / 'eval'}", "progress_bar=false"],
                              tmp_path))
    assert ev["mIoU"] == metrics["mIoU"] and ev["num_images"] == 4
    written = predict(compose_cfg("predict", [f"ckpt_path={ckpt}", f"input={root / 'images'}",
                                              f"output={tmp_path / 'pred'}", "progress_bar=false"], tmp_path))
    assert len(written) == 12 and np.asarray(Image.open(written[0])).shape == (32, 32)

    ort = pytest.importorskip("onnxruntime")
    from segkit.export import export_onnx
    from segkit.pipeline import load_task_from_checkpoint

    import subprocess
    import sys

    out = tmp_path / "script.onnx"
    proc = subprocess.run([sys.executable, "scripts/export.py", f"ckpt_path={ckpt}", f"output={out}", "example_size=32"],
                          cwd=Path(__file__).parent.parent, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.with_suffix(".json").read_text())["input"]["dtype"] == "float32"  # input_dtype=auto

    task, _ = load_task_from_checkpoint(str(ckpt))
    path = export_onnx(task, tmp_path / "m.onnx", example_size=32, input_dtype="float32")
    x = torch.rand(2, channels, 32, 40)
    with torch.no_grad():
        ref = task(x).numpy()  # the task's own normalisation of float 0-1 images
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(out - ref).max() <= 1e-4


def test_resume_last_without_checkpoint_is_refused(tmp_path):
    cfg = compose_cfg("train", [*SMALL, *TINY_DATA, "ckpt_path=last"], tmp_path)
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=last: no .*last\.ckpt to resume from \(the run directory "
                                                r"is .*run\)"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_auto_starts_afresh_then_resumes_the_newest_checkpoint(tmp_path):
    """ckpt_path=auto: no checkpoint in the run directory -> a fresh start; then the newest of last.ckpt and a
    SLURM hpc_ckpt_N.ckpt (a requeued job keeps its command)."""
    from segkit.pipeline import resolve_resume

    run = tmp_path / "run"
    assert resolve_resume("auto", run) is None
    (run / "checkpoints").mkdir(parents=True)
    last, hpc = run / "checkpoints" / "last.ckpt", run / "hpc_ckpt_1.ckpt"
    last.write_bytes(b"x")
    assert resolve_resume("auto", run) == str(last)
    hpc.write_bytes(b"x")
    os.utime(last, (1, 1))
    assert resolve_resume("auto", run) == str(hpc)
    os.utime(hpc, (0, 0))
    assert resolve_resume("auto", run) == str(last)


def test_loaders_are_never_resharded_by_lightning(tmp_path):
    """Lightning adds its own DistributedSampler unless the loader already has one; segkit's samplers are."""
    import lightning as L
    from lightning.pytorch.trainer.connectors.data_connector import _DataConnector
    from torch.utils.data import DistributedSampler

    cfg = compose_cfg("train", [*SMALL, *TINY_DATA], tmp_path)
    dm = instantiate(cfg.data)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", use_distributed_sampler=True, logger=False)
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        assert isinstance(loader.sampler, DistributedSampler)
        assert not _DataConnector(trainer)._requires_distributed_sampler(loader)


def test_sidecar_units_match_the_input_it_declares(trained, tmp_path):
    """safetensors export: the sidecar's mean/std, applied as it says, reproduce the task's own normalisation."""
    import subprocess
    import sys
    from pathlib import Path

    from segkit.pipeline import load_task_from_checkpoint

    _, ckpt, _ = trained
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "w.safetensors"
    proc = subprocess.run([sys.executable, str(root / "scripts" / "export.py"), f"ckpt_path={ckpt}",
                           "format=safetensors", f"output={out}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads(out.with_suffix(".json").read_text())["input"]
    assert meta["dtype"] == "uint8" and meta["range"] == "0-255"
    task, _ = load_task_from_checkpoint(str(ckpt))
    x = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    norm = meta["normalisation"]
    mine = (x.float() / 255 - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(mine, task.normalize(x))


@pytest.mark.parametrize("node", ["model", "task", "task.loss"])
def test_checkpoint_with_unsafe_model_or_task_target_is_refused(trained, tmp_path, node):
    """What evaluate/predict/export instantiate from a checkpoint (model, task, data) is checked; nothing runs."""
    from segkit.config import UnsafeConfigError
    from segkit.pipeline import load_task_from_checkpoint

    _, ckpt, _ = trained
    state = torch.load(ckpt, weights_only=True)
    target = state["segkit"]["config"]
    for key in node.split("."):
        target = target[key]
    target["_target_"] = "os.system"
    path = tmp_path / "evil.ckpt"
    torch.save(state, path)
    with pytest.raises(UnsafeConfigError, match=rf"{node.replace('.', r'.')}\._target_='os.system'"):
        load_task_from_checkpoint(str(path))


AUGMENTS = sorted(p.stem for p in (Path(__file__).parent.parent / "configs" / "data" / "augment").glob("*.yaml"))


@pytest.mark.parametrize("augment", AUGMENTS)
def test_every_augmentation_takes_any_channel_count_and_bit_depth(augment, tmp_path):
    """Each data/augment preset, as composed for data=folder, on 1- to 5-channel uint8 and float 0-1 images: the
    shape, dtype and value range come out as they went in, the mask stays aligned with the image."""
    cfg = compose_cfg("train", ["data=folder", f"data/augment={augment}", "data.crop_size=24", "data.in_channels=3",
                                "data.source.root=unused"], tmp_path)
    if augment == "auto":  # planned: crops of larger images (whole images get the flip alone, a subset)
        fill_planned(cfg, crop_size=24)
    transform = instantiate(cfg.data.train_transform)
    rng = np.random.default_rng(0)
    for channels in range(1, 6):
        for dtype in (np.uint8, np.float32):
            image = rng.random((20, 28, channels)).astype(np.float32)
            image = (image * 255).astype(np.uint8) if dtype == np.uint8 else image
            mask = (np.arange(20 * 28).reshape(20, 28) % 3).astype(np.uint8)
            for _ in range(3):
                out = transform(image=image, mask=mask)
                assert out["image"].dtype == dtype and out["image"].ndim == 3 and out["image"].shape[-1] == channels
                assert out["image"].shape[:2] == out["mask"].shape
                if dtype == np.float32:
                    assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0


def test_foreground_crops_find_small_objects(tmp_path):
    """data/augment=scale_crop_foreground: about a third of the crops hold labelled foreground even when it covers
    0.1% of a large image (random crops almost never would), and padding is ignore_index, never a class."""
    cfg = compose_cfg("train", ["data=folder", "data/augment=scale_crop_foreground", "data.crop_size=32",
                                "data.in_channels=3", "data.source.root=unused"], tmp_path)
    transform = instantiate(cfg.data.train_transform)
    rng = np.random.default_rng(0)
    np.random.seed(0)
    image = (rng.random((200, 240, 3)) * 255).astype(np.uint8)
    mask = np.zeros((200, 240), np.uint8)
    mask[150:157, 30:37] = 2  # 49 px of 48,000
    mask[:, :4] = cfg.data.ignore_index
    draws = [transform(image=image, mask=mask)["mask"] for _ in range(300)]
    with_fg = np.mean([(m == 2).any() for m in draws])
    assert 0.2 < with_fg < 0.55, with_fg
    small = [transform(image=image[:10, :10], mask=mask[:10, :10])["mask"] for _ in range(5)]  # padded to 32x32
    assert all(m.shape == (32, 32) and set(np.unique(m)) <= {0, cfg.data.ignore_index} for m in small)
    assert any((m == cfg.data.ignore_index).sum() > 10 * 4 for m in small)


@pytest.mark.parametrize("kind", ["rgb8", "gray16"])
def test_cache_size_estimate_matches_the_decoded_arrays(kind, tmp_path):
    """data.cache=auto decides from file headers; the estimate must be the memory the decoded samples really take."""
    from segkit.data import FolderSource
    from segkit.data.dataset import SegmentationDataset

    for d in ("images", "masks"):
        (tmp_path / d).mkdir()
    for i in range(3):
        if kind == "rgb8":
            Image.fromarray(np.full((20, 30, 3), i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
        else:
            Image.fromarray(np.full((20, 30), 1000 * i, np.uint16)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "masks" / f"{i}.png")
    samples = FolderSource(str(tmp_path), val_ratio=0.0).samples("train")
    dataset = SegmentationDataset(samples, num_classes=2, channels=None)
    estimate = dataset.decoded_bytes_estimate()
    dataset.preload()
    assert estimate == sum(image.nbytes + mask.nbytes for image, mask in dataset._cache)

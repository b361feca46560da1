"""Configs compose and instantiate; training, evaluation and prediction agree with each other and with sklearn."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from sklearn.metrics import confusion_matrix

from conftest import CONFIG_DIR, TINY_DATA, compose_cfg, fill_planned
from segkit.pipeline import _instantiate_group, evaluate, predict, train

GROUPS = {g: sorted(p.stem for p in (Path(CONFIG_DIR) / g).glob("*.yaml"))
          for g in ["data", "model", "model/upsampler", "task/loss", "task/optimizer", "task/scheduler", "trainer",
                    "callbacks", "logger", "data/augment", "experiment"]}
SMALL_MODEL = {"unet": ["++model.encoder_kwargs={base_channels:4,depth:3}"],
               "unet_small": ["++model.encoder_kwargs={base_channels:4,depth:3}"],
               "deeplabv3": ["model.encoder=resnet18"], "deeplabv3plus": ["model.encoder=resnet18"],
               "unetplusplus": ["model.encoder=resnet18"], "fpn": ["model.encoder=resnet18"],
               "pspnet": ["model.encoder=resnet18"], "lraspp": ["model.encoder=mobilenet_v3_small"]}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_config_option_composes_and_instantiates(group, option, tmp_path, monkeypatch):
    extra = SMALL_MODEL.get(option, []) if group == "model" else []
    if group == "experiment":  # presets: compose, then build their data module and (randomly initialised) model
        cfg = compose_cfg("train", [f"experiment={option}", "model.encoder_weights=null"], tmp_path)
        fill_planned(cfg, instantiate(cfg.data.source))  # what the preset leaves to the data (train() plans it)
        dm = instantiate(cfg.data)
        net = instantiate(cfg.model).eval()
        with torch.no_grad():
            assert net(torch.randn(1, 3, 64, 64)).shape == (1, dm.num_classes, 64, 64)
        return
    if group == "data" and option == "folder":
        extra = ["data.source.root=/nonexistent"]
    if group == "data" and option == "streaming":  # the layout reads its shards' segkit.json when built
        pytest.importorskip("litdata")
        from segkit.data import FolderSource
        from segkit.data.streaming import write_shards
        from test_streaming import make_folder

        shards = tmp_path / "shards"
        write_shards(FolderSource(str(make_folder(tmp_path / "folder", 4, 2))), str(shards), num_workers=1,
                     log=lambda _: None)
        extra = [f"data.source.root={shards}"]
    cfg = compose_cfg("train", [f"{group}={option}", *extra], tmp_path)
    # layouts and data/augment=auto: `auto` values as train() would plan them (labels from the layout's source)
    fill_planned(cfg, instantiate(cfg.data.source) if "root" in cfg.data.source else None)
    if group.startswith("task/"):
        if str(cfg.task.loss.get("weights", {}).get("dice")) == "auto":  # task/loss=auto: train() plans it
            cfg.task.loss.weights.dice = 1.0
        net = torch.nn.Conv2d(3, cfg.data.num_classes, 1)
        task = instantiate(cfg.task, net=net, spec=instantiate(cfg.data).spec)
        if group == "task/loss":
            logits = torch.randn(2, cfg.data.num_classes, 5, 5, requires_grad=True)
            target = torch.randint(0, cfg.data.num_classes, (2, 5, 5))
            target[0, 0] = cfg.data.ignore_index
            task.loss(logits, target).backward()
            assert torch.isfinite(logits.grad).all()
        if group == "task/optimizer":
            assert isinstance(task.optimizer_factory(net.parameters()), torch.optim.Optimizer)
        return
    node = {"data/augment": "data", "model/upsampler": "model"}.get(group, group)
    if node == "data" and option in ("voc", "cityscapes", "folder", "streaming"):
        dm = instantiate(cfg.data)
        assert dm.num_classes == cfg.data.num_classes == len(dm.class_names)
        assert cfg.data.train_transform.transforms is not None
        return
    if node == "trainer":
        if option in ("gpu", "ddp"):
            assert cfg.trainer.precision == "bf16-mixed" and cfg.data.pin_memory and cfg.trainer.benchmark
            assert cfg.trainer._target_ == "lightning.Trainer"
            return
        trainer = instantiate(cfg.trainer, callbacks=[], logger=False)
        assert trainer.max_epochs == cfg.trainer.max_epochs
        return
    if node in ("callbacks", "logger"):
        if node == "logger" and option in ("mlflow", "wandb"):
            if importlib.util.find_spec(option) is not None:  # the extra is installed: it builds; then hide it
                assert all(obj is not None for obj in _instantiate_group(cfg[node], node))
                monkeypatch.setattr(f"lightning.pytorch.loggers.{option}._{option.upper()}_AVAILABLE", False)
            # without the extra, train() stops before reading data, naming the key and the install command
            with pytest.raises(ImportError, match=rf"logger\.{option} .*pip install .* -e '\.\[{option}\]'"):
                _instantiate_group(cfg[node], node)
            return
        assert all(obj is not None for obj in _instantiate_group(cfg[node], node))
        return
    obj = instantiate(cfg[node])
    if node == "model":
        x = torch.randn(2, 3, 33, 35)
        assert obj(x).shape == (2, cfg.data.num_classes, 33, 35)
    else:
        assert obj.num_classes == cfg.data.num_classes


@pytest.mark.parametrize("model", sorted(SMALL_MODEL))
def test_fast_dev_run_each_model(model, tmp_path, shared_data_dir):
    cfg = compose_cfg("train", [f"model={model}", *SMALL_MODEL[model], *TINY_DATA, "+trainer.fast_dev_run=true",
                                "logger=csv"], tmp_path, shared_data_dir)
    metrics = train(cfg)
    assert 0.0 <= metrics["mIoU"] <= 1.0 and metrics["num_images"] > 0


def test_sanity_validation_steps_and_epoch_summary(tmp_path, shared_data_dir, caplog):
    """trainer.num_sanity_val_steps > 0 runs validation before the first epoch: the epoch summary must not count it."""
    import logging

    cfg = compose_cfg("train", ["model=unet_small", *SMALL_MODEL["unet"], *TINY_DATA, "trainer.max_epochs=2",
                                "trainer.check_val_every_n_epoch=2", "trainer.num_sanity_val_steps=2", "logger=csv"],
                      tmp_path, shared_data_dir)
    with caplog.at_level(logging.INFO):
        metrics = train(cfg)
    assert 0.0 <= metrics["mIoU"] <= 1.0
    lines = {m.split(" |")[0]: m for m in (r.getMessage() for r in caplog.records) if m.startswith("epoch ")}
    assert "img/s" in lines["epoch 0"] and "val/mIoU" not in lines["epoch 0"]  # the sanity check is not a validation
    assert "val/mIoU" in lines["epoch 1"] and "s val" in lines["epoch 1"]


def test_train_evaluate_predict_agree(tmp_path, shared_data_dir):
    cfg = compose_cfg("train", ["model=unet_small", *TINY_DATA, "trainer.max_epochs=2", "data.source.num_train=64"],
                      tmp_path, shared_data_dir)
    metrics = train(cfg)
    run = tmp_path / "run"
    for f in ["config.yaml", "metrics.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "csv/metrics.csv"]:
        assert (run / f).is_file(), f
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    on_disk = json.loads((run / "metrics.json").read_text())
    assert set(on_disk) >= {"mIoU", "pixel_accuracy", "per_class_iou", "num_images", "split"}
    assert on_disk["split"] == "val" and on_disk["num_images"] == 8

    ev_cfg = compose_cfg("eval", [f"ckpt_path={run / 'checkpoints/best.ckpt'}", f"output_dir={tmp_path / 'eval'}"],
                         tmp_path, shared_data_dir)
    ev = evaluate(ev_cfg)
    # one evaluation path: the same Lightning validation step, so equal to the last bit
    assert ev["mIoU"] == metrics["mIoU"] and ev["per_class_iou"] == metrics["per_class_iou"]
    assert ev["pixel_accuracy"] == metrics["pixel_accuracy"] and ev["num_images"] == metrics["num_images"]
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()

    # predict.py's masks, scored independently with scikit-learn, give evaluate's mIoU
    dm = instantiate(cfg.data)
    samples = dm.source.samples("val")
    image_dir = tmp_path / "val_images"
    image_dir.mkdir()
    for image_path, _ in samples:
        (image_dir / image_path.name).write_bytes(image_path.read_bytes())
    pr_cfg = compose_cfg("predict", [f"ckpt_path={run / 'checkpoints/best.ckpt'}", f"input={image_dir}",
                                     f"output={tmp_path / 'pred'}"], tmp_path, shared_data_dir)
    predict(pr_cfg)
    y_true, y_pred = [], []
    for image_path, mask_path in samples:
        pred_img = Image.open(tmp_path / "pred" / f"{image_path.stem}.png")
        assert pred_img.mode == "P"
        y_pred.append(np.asarray(pred_img).ravel())
        y_true.append(np.asarray(Image.open(mask_path)).ravel())
        assert (tmp_path / "pred" / f"{image_path.stem}_overlay.png").is_file()
    cm = confusion_matrix(np.concatenate(y_true), np.concatenate(y_pred), labels=list(range(6)))
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    assert abs(np.nanmean(iou) - ev["mIoU"]) <= 1e-6
    for name, value in zip(dm.class_names, iou):
        assert (ev["per_class_iou"][name] is None) == bool(np.isnan(value))


def _palette_png(arr, path):
    img = Image.fromarray(arr.astype(np.uint8), mode="P")
    pal = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (768 - 9)
    pal[255 * 3:255 * 3 + 3] = [224, 224, 192]
    img.putpalette(pal)
    img.save(path)


def test_voc_layout(tmp_path):
    root = tmp_path / "VOC2012"
    for d in ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"]:
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ["2007_000001", "2007_000002"]:
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        mask = np.zeros((20, 30), np.uint8)
        mask[5:10, 5:10] = 15
        mask[4, 4:11] = 255
        _palette_png(mask, root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("2007_000001\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000002\n")
    cfg = compose_cfg("train", ["data=voc", f"data.source.root={root}", "data.crop_size=16"], tmp_path)
    fill_planned(cfg, instantiate(cfg.data.source), num_classes=21, crop_size=16)
    dm = instantiate(cfg.data)
    item = dm.dataset("val")[0]
    assert item["image"].shape == (3, 20, 30) and item["image"].dtype == torch.uint8
    assert set(item["mask"].unique().tolist()) == {0, 15, 255}  # palette indices, not colours
    train_item = dm.dataset("train", train=True)[0]
    assert train_item["image"].shape == (3, 16, 16)
    assert set(train_item["mask"].unique().tolist()) <= {0, 15, 255}  # nearest resize; padding is ignore
    dm.batch_size = 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (1, 3, 16, 16) and batch["image"].dtype == torch.uint8


def test_cityscapes_layout(tmp_path):
    root = tmp_path / "cityscapes"
    img_dir, gt_dir = root / "leftImg8bit/val/aachen", root / "gtFine/val/aachen"
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(img_dir / "aachen_000000_000019_leftImg8bit.png")
    label_ids = np.array([[7, 8, 11, 26, 33, 0, 1, 4] * 2] * 8, np.uint8)
    Image.fromarray(label_ids).save(gt_dir / "aachen_000000_000019_gtFine_labelIds.png")
    cfg = compose_cfg("train", ["data=cityscapes", f"data.source.root={root}"], tmp_path)
    fill_planned(cfg, instantiate(cfg.data.source))  # the layout's 19 classes and colours
    dm = instantiate(cfg.data)
    mask = dm.dataset("val")[0]["mask"]
    assert mask[0, :8].tolist() == [0, 1, 2, 13, 18, 255, 255, 255]
    assert dm.num_classes == 19 and len(dm.palette) == 19


def test_fast_path_knobs_train_on_cpu(tmp_path, shared_data_dir):
    """The GPU fast path's switches (bf16 autocast, channels_last, torch.compile) forced on CPU: a run completes,
    and its best checkpoint loads into a plain fp32 model (no compile-wrapper keys) that scores the same mIoU up
    to bf16 rounding."""
    cfg = compose_cfg("train", ["model=unet_small", *SMALL_MODEL["unet_small"], *TINY_DATA, "logger=csv",
                                "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
                                "trainer.precision=bf16-mixed", "callbacks.speed.channels_last=true",
                                "callbacks.speed.compile=eager"], tmp_path, shared_data_dir)
    metrics = train(cfg)
    assert 0.0 <= metrics["mIoU"] <= 1.0 and metrics["num_images"] > 0
    ckpt = tmp_path / "run/checkpoints/best.ckpt"
    ev_cfg = compose_cfg("eval", [f"ckpt_path={ckpt}", f"output_dir={tmp_path / 'eval'}"], tmp_path, shared_data_dir)
    fp32 = evaluate(ev_cfg)["mIoU"]
    assert abs(fp32 - metrics["mIoU"]) <= 0.02
    # evaluation's own bf16 autocast (precision=bf16) agrees with fp32 up to bf16 rounding
    ev_cfg = compose_cfg("eval", [f"ckpt_path={ckpt}", f"output_dir={tmp_path / 'eval_bf16'}", "precision=bf16"],
                         tmp_path, shared_data_dir)
    assert abs(evaluate(ev_cfg)["mIoU"] - fp32) <= 0.02
    with pytest.raises(ValueError, match="precision must be 32 or bf16, got 'fp8'"):
        evaluate(compose_cfg("eval", [f"ckpt_path={ckpt}", "precision=fp8"], tmp_path, shared_data_dir))


def test_device_speedups_apply_channels_last_and_compile():
    import lightning as L

    from segkit.callbacks import DeviceSpeedups
    from segkit.models import UNet

    module = L.LightningModule()
    module.net = UNet("unet", 3, encoder_kwargs={"base_channels": 4, "depth": 2}).eval()
    x = torch.randn(1, 3, 16, 16)
    expected = module.net(x)
    DeviceSpeedups(channels_last="auto").setup_module(module, torch.device("cpu"))
    assert not module.channels_last and module.net.head.weight.is_contiguous()  # auto: off on CPU
    before = torch.backends.cudnn.benchmark
    DeviceSpeedups(channels_last=False).setup_module(module, torch.device("cuda"))  # no CUDA needed to decide
    assert torch.backends.cudnn.benchmark == before  # left to Trainer(benchmark=..., deterministic=...)
    DeviceSpeedups(channels_last=True, compile="eager").setup_module(module, torch.device("cpu"))
    assert module.net.head.weight.is_contiguous(memory_format=torch.channels_last)
    assert module.net._compiled_call_impl is not None and "_orig_mod" not in str(list(module.net.state_dict()))
    torch.testing.assert_close(module.net(x.contiguous(memory_format=torch.channels_last)), expected)
    with pytest.raises(ValueError, match="callbacks.speed.channels_last must be auto, true or false"):
        DeviceSpeedups(channels_last="yes")


@pytest.mark.parametrize("aux_head", [False, True])
def test_compiled_net_is_what_training_runs(aux_head):
    """callbacks.speed.compile compiles the net in place; the training step (logits + aux logits) must go through the
    compiled call, not around it, and give the eager step's loss."""
    from segkit.models import DeepLabV3
    from segkit.tasks import SegmentationTask

    torch.manual_seed(0)
    net = DeepLabV3("resnet18", 3, aux_head=aux_head).eval()  # eval: dropout and BN statistics deterministic
    task = SegmentationTask(net, 3)
    batch = {"image": torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8),
             "mask": torch.randint(0, 3, (2, 32, 32), dtype=torch.uint8), "name": ["a", "b"]}
    eager = task.training_step(batch, 0)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    net.compile(backend=counting_backend)
    compiled = task.training_step(batch, 0)
    assert graphs, "the training step bypassed the compiled module"
    torch.testing.assert_close(compiled, eager)

"""The importable functions behind scripts/: train, evaluate, predict. The scripts only compose configs."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf, open_dict

from segkit.config import check_targets, load_checkpoint, model_config_from_checkpoint, to_plain


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def ensure_writable(directory: Path, what: str = "output directory") -> None:
    """Fail at start-up, not after the first epoch, when results could not be saved."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise PermissionError(f"cannot write to the {what} {directory} ({exc.strerror}); choose another with "
                              "paths.output_dir=... or free space/permissions there") from None


def _instantiate_group(cfg: Optional[DictConfig]) -> List[Any]:
    """Every node with a ``_target_`` in a group such as ``callbacks`` or ``logger``."""
    return [instantiate(c) for c in (cfg or {}).values() if c is not None and "_target_" in c]


def dry_run(net: torch.nn.Module, crop_size: Optional[int], batch_size: int = 2) -> None:
    """Run the composed model once on a dummy batch of the training crop size, so that a size mismatch anywhere
    (skip connection, upsampler) fails at start-up with the layer and the fix, not after data loading."""
    if not crop_size:
        return
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(batch_size, int(getattr(net, "in_channels", 3)), int(crop_size), int(crop_size)))
    finally:
        net.train(was_training)


def train(cfg: DictConfig) -> Dict[str, Any]:
    """Compose -> data, model, task, trainer -> fit -> validate the best checkpoint -> metrics.json."""
    check_targets(cfg, cfg.get("allowed_targets") or ())
    run_dir = Path(cfg.paths.output_dir)
    ensure_writable(run_dir, "run directory")
    L.seed_everything(cfg.seed, workers=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.model)
    dry_run(net, datamodule.crop_size)
    task = instantiate(cfg.task, net=net)
    task.run_config = to_plain(cfg)  # set after instantiate: Hydra would instantiate the _target_s inside
    trainer = instantiate(cfg.trainer, callbacks=_instantiate_group(cfg.get("callbacks")),
                          logger=_instantiate_group(cfg.get("logger")) or False)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        ckpt_path = str(last) if last.is_file() else None
    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - start

    monitored = [c for c in trainer.checkpoint_callbacks if c.monitor]
    best = monitored[0].best_model_path if monitored else ""
    trainer.validate(task, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    metrics = dict(task.last_metrics)
    metrics.update({"checkpoint": best or None, "fit_seconds": round(fit_seconds, 1)})
    if cfg.get("test"):
        trainer.test(task, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        write_json_atomic(run_dir / "metrics_test.json", task.last_metrics)
    if trainer.is_global_zero:
        write_json_atomic(run_dir / "metrics.json", metrics)
        from segkit.metrics import format_table
        rank_zero_info(f"final validation ({best or 'last weights'}):\n{format_table(metrics)}")
        rank_zero_info(f"run directory: {run_dir}")
    return metrics


def load_task_from_checkpoint(ckpt_path: str, allowed=()) -> tuple[Any, DictConfig]:
    """Rebuild the trained task (network, normalisation, class names) from the checkpoint alone."""
    ckpt = load_checkpoint(ckpt_path)
    cfg = model_config_from_checkpoint(ckpt, allowed, ckpt_path)
    net = instantiate(cfg.model)
    task = instantiate(cfg.task, net=net)
    task.run_config = ckpt["segkit"]["config"]
    task.load_state_dict(ckpt["state_dict"])
    return task.eval(), cfg


def resolve_data_config(ckpt_cfg: DictConfig, cli_data: Optional[DictConfig]) -> DictConfig:
    """The checkpoint's data config, with any CLI ``data.*`` keys merged on top; a full ``data=NAME`` replaces it."""
    if cli_data is not None and "_target_" in cli_data:
        return cli_data
    data = ckpt_cfg.data
    if cli_data:
        data = OmegaConf.merge(data, cli_data)
    return data


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_for(device: torch.device, precision: Any) -> Any:
    """The autocast context for ``precision``: ``32`` (none) or ``bf16``."""
    if str(precision) in ("32", "32-true"):
        return contextlib.nullcontext()
    if str(precision) in ("bf16", "bf16-mixed"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be 32 or bf16, got {precision!r}")


def _load_for_inference(cfg: DictConfig) -> tuple[Any, DictConfig, torch.device, Dict[str, Any], Any]:
    """What evaluate and predict share: check targets, rebuild the task from ``cfg.ckpt_path`` on the chosen
    device (channels_last and TF32 there when it is a GPU), the ``inference`` options as plain keyword arguments,
    and the autocast context for ``cfg.precision``."""
    from segkit.callbacks import DeviceSpeedups

    allowed = cfg.get("allowed_targets") or ()
    check_targets(cfg, allowed)
    task, ckpt_cfg = load_task_from_checkpoint(cfg.ckpt_path, allowed)
    device = pick_device(cfg.get("device", "auto"))
    amp = autocast_for(device, cfg.get("precision", 32))
    task = task.to(device)
    DeviceSpeedups(channels_last="auto").setup_module(task, device, autotune=False)
    inference = OmegaConf.to_container(cfg.inference, resolve=True) if cfg.get("inference") is not None else {}
    return task, ckpt_cfg, device, dict(inference or {}), amp


def evaluate(cfg: DictConfig) -> Dict[str, Any]:
    """Rebuild the model from ``cfg.ckpt_path``, run it on a split, write metrics.json + confusion_matrix.png."""
    import numpy as np

    from segkit.analysis.plots import confusion_matrix_image
    from segkit.inference import infer
    from segkit.metrics import format_table, segmentation_metrics, summarize

    task, ckpt_cfg, device, inference, amp = _load_for_inference(cfg)
    data_cfg = resolve_data_config(ckpt_cfg, cfg.get("data"))
    check_targets(data_cfg, cfg.get("allowed_targets") or (), source="data config")
    datamodule = instantiate(data_cfg)
    split = datamodule.split
    run_dir = Path(cfg.ckpt_path).resolve().parent.parent
    output_dir = Path(cfg.output_dir) if cfg.get("output_dir") else run_dir / f"eval-{split}"
    ensure_writable(output_dir)
    metrics = segmentation_metrics(task.num_classes, task.ignore_index).to(device)
    num_images = 0
    start = time.perf_counter()
    with torch.inference_mode(), amp:
        for batch in datamodule.eval_dataloader(split):
            logits = infer(task, batch["image"].to(device), **inference)
            metrics.update(logits.argmax(dim=1), batch["mask"].to(device))
            num_images += len(batch["image"])
    seconds = time.perf_counter() - start
    confusion = metrics.compute()
    summary = {**summarize(confusion, task.class_names), "num_images": num_images, "split": split}
    write_json_atomic(output_dir / "metrics.json", summary)
    cm = confusion.cpu().numpy()
    np.savetxt(output_dir / "confusion_matrix.csv", cm, fmt="%d", delimiter=",")
    confusion_matrix_image(cm, task.class_names).save(output_dir / "confusion_matrix.png")
    print(format_table(summary))
    print(f"{num_images} images ({split}) in {seconds:.1f} s, inference={inference.get('mode', 'whole')}; "
          f"results in {output_dir}")
    return summary


def predict(cfg: DictConfig) -> List[Path]:
    """Write a palette PNG mask (class indices) and a colour overlay for every input image."""
    import numpy as np
    from PIL import Image

    from segkit.data.io import IMAGE_SUFFIXES, default_palette, read_image
    from segkit.inference import infer

    task, ckpt_cfg, device, inference, amp = _load_for_inference(cfg)
    source = Path(cfg.input)
    if source.is_dir():
        inputs = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif source.is_file():
        inputs = [source]
    else:
        raise FileNotFoundError(f"input={source} is neither an image nor a folder of images")
    if not inputs:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in input={source}")
    output = Path(cfg.output)
    ensure_writable(output)
    palette = ckpt_cfg.data.get("palette") or default_palette(task.num_classes)
    palette_arr = np.array(palette, dtype=np.uint8)
    flat = [c for colour in palette for c in colour] + [0] * (768 - 3 * len(palette))
    alpha = float(cfg.get("alpha", 0.5))
    written = []
    with torch.inference_mode(), amp:
        for path in inputs:
            image = read_image(path)
            x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None].to(device)
            pred = infer(task, x, **inference).argmax(dim=1)[0].cpu().numpy().astype(np.uint8)
            mask = Image.fromarray(pred, mode="P")
            mask.putpalette(flat)
            mask.save(output / f"{path.stem}.png")
            overlay = (image * (1 - alpha) + palette_arr[pred] * alpha).round().astype(np.uint8)
            Image.fromarray(overlay).save(output / f"{path.stem}_overlay.png")
            written.append(output / f"{path.stem}.png")
    print(f"wrote {len(written)} masks and overlays to {output}")
    return written

"""The importable functions behind scripts/: train, evaluate, predict. The scripts only compose configs."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from segkit.checkpoint import AtomicCheckpointIO
from segkit.config import (check_targets, load_checkpoint, model_config_from_checkpoint, to_plain,
                           upgrade_model_config, without_pretrained_weights)
from segkit.models.segmenter import load_weights_or_explain


class _DropTips(logging.Filter):
    """Lightning advertises a cloud logger on every run; the console should only speak about the user's run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropTips())
# torch 2.14 deprecates an isinstance check that Lightning 2.6 still makes on every batch transfer.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


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


# config targets whose packages are segkit extras (pyproject.toml), for the install hint of a missing one
EXTRAS = {"lightning.pytorch.loggers.MLFlowLogger": "mlflow", "segkit.tracking.MLflowTracking": "mlflow",
          "lightning.pytorch.loggers.WandbLogger": "wandb"}


def _instantiate_group(cfg: Optional[DictConfig], group: str) -> List[Any]:
    """Every node with a ``_target_`` in a group such as ``callbacks`` or ``logger``. A node whose package is not
    installed (``logger=mlflow`` without the mlflow extra) fails with the config key and the install command."""
    objects = []
    for key, node in (cfg or {}).items():
        if node is None or "_target_" not in node:
            continue
        try:
            objects.append(instantiate(node))
        except InstantiationException as exc:
            if not isinstance(exc.__cause__, ModuleNotFoundError):
                raise
            extra = EXTRAS.get(node._target_)
            how = f"install the extra: pip install -c constraints.txt -e '.[{extra}]'" if extra else \
                "install the package it names"
            raise ImportError(f"{group}.{key} ({node._target_}) needs a package that is not installed: "
                              f"{exc.__cause__}. To use it, {how}; or drop {group}.{key} from the run") from None
    return objects


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


def resolve_resume(ckpt_path: Optional[str], run_dir: Path) -> Optional[str]:
    """The checkpoint ``train`` resumes from.

    ``last``: ``<run dir>/checkpoints/last.ckpt``, which must exist: resuming that silently starts a fresh run would
    overwrite the run's checkpoints. ``auto``: the newest of ``last.ckpt`` and Lightning's SLURM ``hpc_ckpt_N.ckpt``
    in the run directory when there is one, else a fresh start (a requeued or restarted job keeps its command)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if ckpt_path == "auto":
        found = [p for p in [last, *run_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
        if not found:
            rank_zero_info(f"ckpt_path=auto: no checkpoint in {run_dir}; starting afresh")
            return None
        newest = max(found, key=lambda p: p.stat().st_mtime)
        rank_zero_info(f"ckpt_path=auto: resuming from {newest}")
        return str(newest)
    if ckpt_path != "last":
        if ckpt_path and not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint to resume from (give a .ckpt file, "
                                    "last, or auto)")
        return ckpt_path
    if not last.is_file():
        raise FileNotFoundError(
            f"ckpt_path=last: no {last} to resume from (the run directory is {run_dir}). Resume a run by pointing "
            "hydra.run.dir at its directory, give ckpt_path=<path to a .ckpt>, use ckpt_path=auto (resume when "
            "there is a checkpoint, else start), or drop ckpt_path to start afresh.")
    return str(last)


def resume_model_layout(cfg: DictConfig, ckpt_path: str) -> None:
    """Resuming a checkpoint whose stored model config predates an argument (:data:`LEGACY_MODEL_ARGS`): build the
    layout its weights have, and say so, instead of failing to load them into today's default."""
    stored = load_checkpoint(ckpt_path, mmap=True)["segkit"]["config"].get("model")
    if stored is None or cfg.get("model") is None or stored.get("_target_") != cfg.model.get("_target_"):
        return
    filled = upgrade_model_config(cfg.model, saved=stored)
    if filled:
        rank_zero_info(f"resume: {ckpt_path} was written by an older segkit; its model keeps that layout: "
                       + ", ".join(f"model.{k}={v}" for k, v in filled.items()))


def build_task(cfg: DictConfig, datamodule: Any, resuming: bool = False) -> Any:
    """The network and the task for ``cfg``, checked against the data's spec (classes, channels, ignore_index).
    ``resuming``: the checkpoint's weights replace the encoder's, so its training-time weights (a file since
    deleted, an ImageNet download on an offline node) are not read again."""
    spec = datamodule.spec
    net = instantiate(without_pretrained_weights(cfg.model) if resuming else cfg.model)
    spec.check_model(getattr(net, "num_classes", spec.num_classes), getattr(net, "in_channels", spec.in_channels),
                     where=f"model ({cfg.model.get('_target_')})")
    dry_run(net, datamodule.crop_size)
    task = instantiate(cfg.task, net=net, spec=spec)
    task.run_config = to_plain(cfg)  # set after instantiate: Hydra would instantiate the _target_s inside
    return task


def train(cfg: DictConfig, extra_callbacks: Sequence[Any] = ()) -> Dict[str, Any]:
    """Compose -> data, model, task, trainer -> fit -> validate the best checkpoint -> metrics.json.

    ``extra_callbacks``: Lightning callbacks added to the config's (``segkit.sweep`` reports to Optuna this way)."""
    check_targets(cfg, cfg.get("allowed_targets") or ())
    run_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_resume(cfg.get("ckpt_path"), run_dir)
    if ckpt_path:
        resume_model_layout(cfg, ckpt_path)
    ensure_writable(run_dir, "run directory")
    L.seed_everything(cfg.seed, workers=True)

    from segkit.data.plan import plan_from_config, planned_keys

    loggers = _instantiate_group(cfg.get("logger"), "logger")  # before the data is read: a missing extra fails fast
    if planned_keys(cfg):  # values left as `auto`: the training data decides, and the log says why
        for line in plan_from_config(cfg, instantiate(cfg.data.source)):
            (rank_zero_warn if line.startswith("warning:") else rank_zero_info)(f"plan: {line}")
    datamodule = instantiate(cfg.data)
    task = build_task(cfg, datamodule, resuming=bool(ckpt_path))
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    # checkpoints renamed into place, never half written (unless the config brings its own plugins)
    plugins = {} if cfg.trainer.get("plugins") else {"plugins": [AtomicCheckpointIO()]}
    trainer = instantiate(cfg.trainer, callbacks=[*_instantiate_group(cfg.get("callbacks"), "callbacks"),
                                                      *extra_callbacks], logger=loggers or False, **plugins)
    start = time.perf_counter()
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:  # stopped from outside; the Preemption callback wrote last.ckpt and said so
        raise SystemExit(143) from None
    fit_seconds = time.perf_counter() - start

    monitored = [c for c in trainer.checkpoint_callbacks if c.monitor]
    best = monitored[0].best_model_path if monitored else ""
    trainer.validate(task, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    metrics = dict(task.last_metrics)
    metrics.update({"checkpoint": best or None, "fit_seconds": round(fit_seconds, 1)})
    if cfg.get("test"):
        trainer.test(task, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        if trainer.is_global_zero:
            write_json_atomic(run_dir / "metrics_test.json", task.last_metrics)
    if trainer.is_global_zero:
        write_json_atomic(run_dir / "metrics.json", metrics)
        from segkit.metrics import format_table
        rank_zero_info(f"final validation ({best or 'last weights'}):\n{format_table(metrics)}")
        rank_zero_info(f"run directory: {run_dir}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # every rank done, then the process group closed before the interpreter exits (left to the interpreter's
        # shutdown, gloo's threads sometimes abort a rank: "terminate called without an active exception")
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return metrics


def load_task_from_checkpoint(ckpt_path: str, allowed=()) -> tuple[Any, DictConfig]:
    """Rebuild the trained task (network, spec: classes, channels, normalisation) from the checkpoint alone.

    The network is built without its training-time encoder weights (:func:`segkit.config.without_pretrained_weights`:
    a local file that may be gone, an ImageNet download that may be impossible offline): the checkpoint's weights
    replace them all. The returned config and ``task.run_config`` keep what the run was trained with."""
    from segkit.data.spec import DataSpec

    ckpt = load_checkpoint(ckpt_path)
    # only what evaluate/predict/export rebuild is checked (model, task, data): a training-time callback or logger
    # target is never built again; a model config from an older segkit gets the arguments its weights need
    cfg = model_config_from_checkpoint(ckpt, allowed, str(ckpt_path))
    spec = ckpt["segkit"].get("spec")
    if spec is None:
        raise ValueError(f"{ckpt_path} was written by segkit 0.1 (no data spec inside); retrain it with this version "
                         "or evaluate it with segkit 0.1")
    net = instantiate(without_pretrained_weights(cfg.model))
    task = instantiate(cfg.task, net=net, spec=DataSpec.from_dict(spec))
    task.run_config = to_plain(cfg)
    load_weights_or_explain(task, ckpt["state_dict"], str(ckpt_path),
                            f"that its stored config builds ({cfg.model.get('_target_')})")
    task.checkpoint_path = str(ckpt_path)
    return task.eval(), cfg


def resolve_data_config(ckpt_cfg: DictConfig, cli_data: Optional[DictConfig]) -> DictConfig:
    """The checkpoint's data config, with any CLI ``data.*`` keys merged on top; a full ``data=NAME`` replaces it."""
    if cli_data is not None and "_target_" in cli_data:
        return cli_data
    data = ckpt_cfg.data
    if cli_data:
        data = OmegaConf.merge(data, cli_data)
    return data


PRECISION = {"32": "32-true", "32-true": "32-true", "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed"}


def inference_trainer(cfg: DictConfig, callbacks: Sequence[Any] = ()) -> L.Trainer:
    """A single-device Trainer for evaluate/predict: ``device`` (auto, cpu, cuda, cuda:N) and ``precision`` (32 or
    bf16) from ``cfg``; channels_last and TF32 on a GPU; no cudnn re-tuning per image size; no logger/checkpoints."""
    from segkit.callbacks import DeviceSpeedups

    precision = str(cfg.get("precision", 32))
    if precision not in PRECISION:
        raise ValueError(f"precision must be 32 or bf16, got {precision!r}")
    device = str(cfg.get("device", "auto"))
    if device == "auto":
        accelerator, devices = "auto", 1
    elif device.startswith("cuda"):
        accelerator, devices = "gpu", [int(device.split(":")[1])] if ":" in device else 1
    elif device == "cpu":
        accelerator, devices = "cpu", 1
    else:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return L.Trainer(accelerator=accelerator, devices=devices, precision=PRECISION[precision], logger=False,
                     enable_checkpointing=False, enable_model_summary=False, benchmark=False,
                     callbacks=[DeviceSpeedups(channels_last="auto"), *callbacks],
                     enable_progress_bar=bool(cfg.get("progress_bar", True)))


def _inference_options(cfg: DictConfig) -> Dict[str, Any]:
    inference = OmegaConf.to_container(cfg.inference, resolve=True) if cfg.get("inference") is not None else {}
    return dict(inference or {"mode": "whole"})


def evaluate(cfg: DictConfig) -> Dict[str, Any]:
    """Rebuild the model from ``cfg.ckpt_path`` and score a split through the same Lightning validation step that
    training uses (so training-time and evaluation-time mIoU agree exactly); write metrics.json and the confusion
    matrix as CSV and PNG."""
    import numpy as np

    from segkit.analysis.plots import confusion_matrix_image
    from segkit.metrics import format_table

    from segkit.ensemble import load_task

    allowed = cfg.get("allowed_targets") or ()
    check_targets(cfg, allowed)
    task, ckpt_cfg, cv_dir = load_task(cfg.ckpt_path, allowed, cfg.get("postprocessing"))
    if cfg.get("seed") is None:  # the same seeded splits as training
        with open_dict(cfg):
            cfg.seed = ckpt_cfg.get("seed", 0)
    data_cfg = resolve_data_config(ckpt_cfg, cfg.get("data"))
    check_targets(data_cfg, allowed, source="data config")
    fill_auto_from_spec(data_cfg, task.spec)
    datamodule = instantiate(data_cfg)
    check_data_matches(task, datamodule)
    split = datamodule.split
    output_dir = Path(cfg.output_dir) if cfg.get("output_dir") else default_eval_dir(task, cv_dir, split)
    ensure_writable(output_dir)
    task.inference = _inference_options(cfg)
    report_images = int(cfg.get("report_images", 8))
    task.per_image = [] if report_images > 0 else None
    if cfg.get("save_probabilities"):  # each image's class probabilities, float16 (K, H, W): probabilities/NAME.npy
        task.save_probabilities = output_dir / "probabilities"
    trainer = inference_trainer(cfg)
    datamodule.trainer = trainer  # data.num_workers=auto follows the device, as in training
    start = time.perf_counter()
    trainer.validate(task, dataloaders=datamodule.eval_dataloader(split), verbose=False)
    seconds = time.perf_counter() - start
    summary = {**task.last_metrics, "split": split}
    if getattr(task, "members", None):
        summary["ensemble_of"] = list(task.members)
    if task.postprocessing:
        from segkit.postprocess import describe

        summary["postprocessing"] = task.postprocessing
        print(f"postprocessing: {describe(task.postprocessing)}")
    write_json_atomic(output_dir / "metrics.json", summary)
    cm = task.last_confusion.numpy()
    np.savetxt(output_dir / "confusion_matrix.csv", cm, fmt="%d", delimiter=",")
    confusion_matrix_image(cm, task.class_names).save(output_dir / "confusion_matrix.png")
    if report_images > 0:
        write_evaluation_report(output_dir, summary, cm, task, trainer, datamodule.dataset(split), report_images)
    print(format_table(summary))
    print(f"{summary['num_images']} images ({split}) in {seconds:.1f} s, inference={task.inference.get('mode')}; "
          f"results in {output_dir} (report.html)")
    return summary


def default_eval_dir(task: Any, cv_dir: Optional[Path], split: str) -> Path:
    """``<run dir>/eval-<split>`` for one checkpoint; ``<cv dir>/eval-ensemble-<split>`` for a cross-validation's
    folds; beside the first member's run, ``eval-ensemble<N>-<split>``, for any other ensemble."""
    members = getattr(task, "members", None)
    if cv_dir is not None:
        return cv_dir / f"eval-ensemble-{split}"
    if members:
        return Path(members[0]).resolve().parent.parent / f"eval-ensemble{len(members)}-{split}"
    return Path(task.checkpoint_path).resolve().parent.parent / f"eval-{split}"


def write_evaluation_report(output_dir: Path, summary: Dict[str, Any], confusion: Any, task: Any, trainer: L.Trainer,
                            dataset: Any, count: int) -> Path:
    """report.html: per-class IoU, the confusion matrix and the ``count`` images with the lowest per-image mIoU
    (their predictions recomputed by the same inference step, on the trainer's device and at its precision:
    Lightning's teardown has moved the model back to the CPU, so it is moved to that device again here)."""
    from segkit.analysis.html_report import worst_images, write_report

    worst = worst_images(task.per_image or [], count=count)
    index = {name: i for i, name in enumerate(dataset.names())}
    task.to(trainer.strategy.root_device).eval()
    for item in worst:
        image, truth = dataset.load(index[item["name"]])
        x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None].to(task.device)
        with torch.inference_mode(), trainer.strategy.precision_plugin.forward_context():
            item.update(image=image, truth=truth, pred=task.predictions(task.infer(x))[0].cpu().numpy())
    return write_report(output_dir, summary, confusion, task.class_names, task.spec.palette, worst, task.ignore_index)


def fill_auto_from_spec(data_cfg: DictConfig, spec: Any) -> None:
    """Evaluating with a data config whose values are ``auto`` (planned from training data at train time): the
    model's own spec decides classes, channels and normalisation; crop and batch size do not matter for evaluation."""
    fill = {"num_classes": spec.num_classes, "class_names": list(spec.class_names), "in_channels": spec.in_channels,
            "mean": list(spec.mean), "std": list(spec.std), "crop_size": None, "batch_size": 1}
    with open_dict(data_cfg):
        data_cfg.train_transform = None  # evaluation never trains (and its crop may be `auto`)
        for key, value in fill.items():
            if str(data_cfg.get(key, "")) == "auto":
                data_cfg[key] = value


def check_data_matches(task: Any, datamodule: Any) -> None:
    """Evaluating on another dataset: its classes, ignore_index and channels must be the model's."""
    spec = task.spec
    for key, mine, theirs in (("num_classes", spec.num_classes, datamodule.num_classes),
                              ("ignore_index", spec.ignore_index, datamodule.ignore_index),
                              ("in_channels", spec.in_channels, datamodule.in_channels)):
        if mine != theirs:
            raise ValueError(f"the checkpoint's model has {key}={mine} but the data config has data.{key}={theirs}; "
                             f"set data.{key}={mine} (or map the dataset's labels to the model's classes)")


def predict(cfg: DictConfig) -> List[Path]:
    """Write a palette PNG mask (class indices) and a colour overlay for every input image, through the task's
    predict step (the inference mode of ``cfg.inference``)."""
    from torch.utils.data import DataLoader

    from segkit.callbacks import MaskWriter
    from segkit.data.dataset import ImageFolder

    from segkit.ensemble import load_task

    allowed = cfg.get("allowed_targets") or ()
    check_targets(cfg, allowed)
    task, _, _ = load_task(cfg.ckpt_path, allowed, cfg.get("postprocessing"))
    images = ImageFolder(cfg.input, channels=task.spec.in_channels)
    output = Path(cfg.output)
    ensure_writable(output)
    task.inference = _inference_options(cfg)
    writer = MaskWriter(output, task.spec.palette, float(cfg.get("alpha", 0.5)))
    trainer = inference_trainer(cfg, callbacks=[writer])
    loader = DataLoader(images, batch_size=1, num_workers=int(cfg.get("num_workers", 0)), collate_fn=ImageFolder.collate)
    trainer.predict(task, dataloaders=loader, return_predictions=False)
    print(f"wrote {len(writer.written)} masks and overlays to {output}")
    return writer.written

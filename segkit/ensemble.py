"""Several checkpoints as one model for evaluate, predict and export: which checkpoints a ``ckpt_path`` names, and
the task that averages their softmax outputs (:class:`segkit.models.ensemble.Ensemble`).

``ckpt_path`` may be a ``.ckpt`` file, a run directory (its best checkpoint), a cross-validation directory written
by ``scripts/cv.py`` (the best checkpoint of every fold, and its chosen postprocessing), or a list of any of these.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf

CV_FILE = "cv.json"
POSTPROCESSING_FILE = "postprocessing.json"


def is_cv_dir(path: Path) -> bool:
    return path.is_dir() and (path / CV_FILE).is_file()


def fold_dirs(cv_dir: Path) -> List[Path]:
    """The fold run directories of a cross-validation directory, in fold order."""
    info = json.loads((cv_dir / CV_FILE).read_text())
    return [cv_dir / f"fold_{k}" for k in range(int(info["folds"]))]


def run_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a finished run chose (metrics.json's ``checkpoint``), else ``checkpoints/best.ckpt``."""
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        chosen = json.loads(metrics.read_text()).get("checkpoint")
        if chosen and Path(chosen).is_file():
            return Path(chosen)
    for name in ("best.ckpt", "last.ckpt"):
        if (run_dir / "checkpoints" / name).is_file():
            return run_dir / "checkpoints" / name
    raise FileNotFoundError(f"{run_dir} holds no finished run (no metrics.json naming a checkpoint, no "
                            "checkpoints/best.ckpt); give a .ckpt file or a run directory that finished")


def resolve_checkpoints(ckpt_path: Any) -> Tuple[List[Path], Optional[Path]]:
    """The checkpoint files ``ckpt_path`` names (see the module doc) and the cross-validation directory among them
    (for its postprocessing and its data), if exactly one was given."""
    items = list(ckpt_path) if isinstance(ckpt_path, (list, tuple, ListConfig)) else [ckpt_path]
    if not items:
        raise ValueError("ckpt_path is an empty list; give a .ckpt file, a run or CV directory, or a list of them")
    paths: List[Path] = []
    cv_dirs: List[Path] = []
    for item in items:
        path = Path(str(item)).expanduser()
        if is_cv_dir(path):
            cv_dirs.append(path)
            unfinished = [d.name for d in fold_dirs(path) if not (d / "metrics.json").is_file()]
            if unfinished:
                raise FileNotFoundError(f"{path} is a cross-validation whose folds {unfinished} have not finished; "
                                        "run the same scripts/cv.py command with hydra.run.dir=" + str(path))
            paths += [run_checkpoint(d) for d in fold_dirs(path)]
        elif path.is_dir():
            paths.append(run_checkpoint(path))
        elif path.is_file():
            paths.append(path)
        else:
            raise FileNotFoundError(f"ckpt_path: {path} does not exist (a .ckpt file, a run directory or a "
                                    "cross-validation directory)")
    return paths, (cv_dirs[0] if len(cv_dirs) == 1 and len(items) == 1 else None)


def unwrap_fold_source(data_cfg: Any) -> Any:
    """A fold's data config as the dataset it was drawn from: the layout inside a FoldSource (its ``val`` split is
    then the layout's held-out split, on which a fold ensemble is scored)."""
    data = OmegaConf.create(OmegaConf.to_container(data_cfg, resolve=False)) if data_cfg is not None else None
    source = data.get("source") if data is not None else None
    if source is not None and str(source.get("_target_", "")).endswith("FoldSource"):
        data.source = source.source
    return data


def ensemble_model_config(configs: Sequence[Dict[str, Any]], specs: Sequence[Any]) -> Dict[str, Any]:
    """The Hydra node that builds the ensemble: each member's model config and normalisation."""
    return {"_target_": "segkit.models.ensemble.Ensemble", "members": [dict(c) for c in configs],
            "mean": [list(s.mean) for s in specs], "std": [list(s.std) for s in specs]}


def check_members_agree(paths: Sequence[Path], specs: Sequence[Any]) -> None:
    first = specs[0]
    for path, spec in zip(paths[1:], specs[1:]):
        for key in ("num_classes", "ignore_index", "in_channels", "class_names"):
            if getattr(spec, key) != getattr(first, key):
                raise ValueError(f"cannot ensemble {paths[0]} and {path}: their {key} differ "
                                 f"({getattr(first, key)} and {getattr(spec, key)}); every member must predict the "
                                 "same classes from the same inputs")


def load_ensemble(paths: Sequence[Path], allowed: Sequence[str] = ()) -> Tuple[Any, DictConfig]:
    """One task whose network is the ensemble of the checkpoints' networks (their softmax averaged), its spec
    the members' labels with identity normalisation (each member normalises for itself), its config the first
    member's with the ensemble's model and the fold layout unwrapped."""
    from segkit.config import to_plain
    from segkit.data.spec import DataSpec
    from segkit.losses import CrossEntropyLoss
    from segkit.models.ensemble import Ensemble
    from segkit.pipeline import load_task_from_checkpoint
    from segkit.tasks.segmentation import SegmentationTask

    loaded = [load_task_from_checkpoint(str(p), allowed) for p in paths]
    tasks, configs = [t for t, _ in loaded], [c for _, c in loaded]
    specs = [t.spec for t in tasks]
    check_members_agree(paths, specs)
    net = Ensemble([t.net for t in tasks], [s.mean for s in specs], [s.std for s in specs])
    c = specs[0].in_channels
    spec = DataSpec.from_dict({**specs[0].to_dict(), "mean": [0.0] * c, "std": [1.0] * c,
                               "image_dtype": "float32" if any(s.image_dtype == "float32" for s in specs)
                               else "uint8"})
    # the ensemble's loss is its negative log-likelihood: cross-entropy of log(mean probability)
    task = SegmentationTask(net=net, spec=spec, loss=CrossEntropyLoss(spec.ignore_index if spec.ignore_index
                                                                       is not None else 255))
    cfg = configs[0].copy()
    cfg.model = ensemble_model_config([t.run_config["model"] for t in tasks], specs)
    cfg.data = unwrap_fold_source(cfg.get("data"))
    task.run_config = to_plain(cfg)
    task.members = [str(p) for p in paths]
    return task.eval(), cfg


def postprocessing_rules(choice: Any, cv_dir: Optional[Path], num_classes: int) -> List[Dict[str, Any]]:
    """``postprocessing``: ``auto`` (a cross-validation directory's chosen rules, else none), ``none``, or the path
    of a postprocessing.json (scripts/cv.py, scripts/find_best.py)."""
    from segkit.postprocess import check_rules, read_rules

    choice = "auto" if choice is None else str(choice)
    if choice == "none":
        return []
    if choice == "auto":
        if cv_dir is None or not (cv_dir / POSTPROCESSING_FILE).is_file():
            return []
        return check_rules(read_rules(cv_dir / POSTPROCESSING_FILE), num_classes, str(cv_dir / POSTPROCESSING_FILE))
    return check_rules(read_rules(choice), num_classes, choice)


def load_task(ckpt_path: Any, allowed: Sequence[str] = (), postprocessing: Any = "auto"
              ) -> Tuple[Any, DictConfig, Optional[Path]]:
    """The task a ``ckpt_path`` names: one checkpoint's, or the ensemble of several (see the module doc), with its
    postprocessing rules set (:func:`postprocessing_rules`); its config; the cross-validation directory, if any."""
    from segkit.pipeline import load_task_from_checkpoint

    paths, cv_dir = resolve_checkpoints(ckpt_path)
    if len(paths) == 1 and cv_dir is None:
        task, cfg = load_task_from_checkpoint(str(paths[0]), allowed)
    else:
        task, cfg = load_ensemble(paths, allowed)
    task.postprocessing = postprocessing_rules(postprocessing, cv_dir, task.num_classes)
    return task, cfg, cv_dir


__all__ = ["CV_FILE", "POSTPROCESSING_FILE", "ensemble_model_config", "fold_dirs", "is_cv_dir", "load_ensemble", "load_task", "postprocessing_rules",
           "resolve_checkpoints", "run_checkpoint", "unwrap_fold_source"]

"""k-fold cross-validation: ``python scripts/cv.py [train overrides] [cv.folds=5 ...]`` (configs/cv.yaml).

The pool is the layout's training split; its held-out split (``cv.holdout``, ``val`` by default) is never trained
on. The plan (``auto`` values: crop, augmentation, normalisation, loss ...) is made once, on the whole pool, so
every fold trains the same recipe. Folds are drawn seeded and stratified by the classes each image holds
(:mod:`segkit.data.folds`) and written to ``<cv dir>/folds.json``; ``cv.folds_file=<other cv dir>/folds.json``
reuses another configuration's folds, so configurations are compared on the same splits (``scripts/find_best.py``).

Each fold is a normal run directory, ``<cv dir>/fold_K``: trained on the pool without fold K, validated on fold K,
and scored on the held-out split (``metrics_test.json``). Its best checkpoint's class probabilities on fold K (the
out-of-fold predictions) go to ``fold_K/oof/probabilities/NAME.npy``. Running the same command with
``hydra.run.dir=<cv dir>`` skips finished folds and resumes an interrupted one from its ``last.ckpt``.

At the end: per-fold and mean +/- std mIoU, the mIoU of the pooled out-of-fold predictions, connected-component
postprocessing chosen on them (``postprocessing.json``, kept per class only where it raises the out-of-fold mIoU),
and the fold ensemble scored on the held-out split with and without it; in ``cv.json`` and ``cv.md``.
"""
from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from segkit.ensemble import CV_FILE, POSTPROCESSING_FILE, fold_dirs, run_checkpoint

log = logging.getLogger(__name__)

FOLDS_FILE, DATA_FILE, REPORT_FILE = "folds.json", "data.yaml", "cv.md"


def _quoted(value: Any) -> str:
    from segkit.sweep import _quoted as quoted  # a Hydra override value that keeps spaces, commas, = in a path

    return quoted(str(value))


def plan_pool(base: DictConfig) -> Tuple[DictConfig, List[str]]:
    """``base`` with its ``auto`` values planned on the pool (the layout's training split), and the plan's lines."""
    from segkit.data.plan import plan_from_config, planned_keys

    planned = copy.deepcopy(base)
    source = instantiate(planned.data.source)
    if hasattr(source, "stats"):  # data=streaming: folds are drawn over files by index
        from segkit.data.io import DataError

        raise DataError(f"cross-validation needs a layout of image files (data=folder, voc, ...); "
                        f"data.source.root={planned.data.source.root} is streamed shards: run cv.py on the dataset "
                        "they were written from")
    lines = plan_from_config(planned, source) if planned_keys(planned) else []
    return planned, lines


def fold_config(compose_train: Callable[[List[str]], DictConfig], overrides: Sequence[str], planned: DictConfig,
                cv_dir: Path, fold: int, holdout: Optional[str]) -> DictConfig:
    """The train config of fold ``fold``: the command's overrides, the pool's plan, the fold's layout and run dir."""
    from segkit.data.plan import planned_keys

    fold_dir = cv_dir / f"fold_{fold}"
    extra = [f"paths.output_dir={_quoted(fold_dir)}", f"test={'true' if holdout else 'false'}"]
    if (fold_dir / "checkpoints" / "last.ckpt").is_file():
        extra.append("ckpt_path=last")  # interrupted: resume it
    cfg = compose_train([*overrides, *extra])
    for key in [*planned_keys(cfg), "data.palette"]:  # the palette: set from labelmap.txt with the class names
        OmegaConf.update(cfg, key, OmegaConf.select(planned, key), merge=False)
    source = OmegaConf.to_container(cfg.data.source, resolve=True)
    with open_dict(cfg):
        cfg.data.source = {"_target_": "segkit.data.folds.FoldSource", "source": source,
                           "folds_file": str(cv_dir / FOLDS_FILE), "fold": fold, "pool": "train", "holdout": holdout}
    return cfg


def prepare_folds(cv_cfg: DictConfig, planned: DictConfig, cv_dir: Path) -> Dict[str, Any]:
    """``<cv dir>/folds.json``: kept when it is there (a resumed run), copied from ``cv.folds_file``, or drawn."""
    from segkit.data.folds import check_folds_cover, make_folds, read_folds
    from segkit.data.sampling import class_presence
    from segkit.pipeline import write_json_atomic

    datamodule = instantiate(planned.data)
    pool = datamodule.dataset("train")
    target = cv_dir / FOLDS_FILE
    given = Path(cv_cfg.folds_file).expanduser() if cv_cfg.get("folds_file") else None
    if given is not None and given.resolve() != target.resolve():
        data = read_folds(given)
        check_folds_cover(data, pool.samples, given)
        if target.is_file() and read_folds(target)["assignment"] != data["assignment"]:
            raise ValueError(f"{target} holds other folds than cv.folds_file={given}; use another hydra.run.dir or "
                             "drop cv.folds_file to resume with this directory's folds")
        write_json_atomic(target, data)
    elif target.is_file():
        data = read_folds(target)
        check_folds_cover(data, pool.samples, target)
    else:
        presence = class_presence(pool, datamodule.num_classes)
        data = make_folds(pool.samples, presence, int(cv_cfg.folds), int(cv_cfg.seed))
        write_json_atomic(target, data)
        held = np.asarray(data["classes_per_fold"])
        missing = [datamodule.class_names[c] for c in range(held.shape[1])
                   if presence[:, c].sum() >= len(held) and (held[:, c] == 0).any()]
        if missing:
            log.warning("classes %s are in some folds only", missing)
    if int(cv_cfg.folds) != len(data["assignment"]):
        raise ValueError(f"cv.folds={cv_cfg.folds} but {target} holds {len(data['assignment'])} folds; set "
                         f"cv.folds={len(data['assignment'])} or use another hydra.run.dir")
    return data


def evaluate_config(ckpt_path: Any, output_dir: Path, split: str, cv_cfg: DictConfig, allowed: Sequence[str],
                    postprocessing: str = "none", save_probabilities: bool = False) -> Dict[str, Any]:
    """scripts/evaluate.py's config for one scoring pass of the CV."""
    from segkit.pipeline import evaluate

    inference = OmegaConf.to_container(cv_cfg.inference, resolve=True) if cv_cfg.get("inference") else None
    cfg = OmegaConf.create({"ckpt_path": ckpt_path, "output_dir": str(output_dir), "report_images": 0,
                            "save_probabilities": save_probabilities, "postprocessing": postprocessing,
                            "inference": inference or {"mode": "whole"}, "device": cv_cfg.get("device", "auto"),
                            "precision": 32, "progress_bar": False, "allowed_targets": list(allowed), "seed": None,
                            "data": {"split": split}})
    return evaluate(cfg)


# ---- reading a finished cross-validation ------------------------------------------------------------------------
def pool_masks(cv_dir: Path) -> Tuple[Callable[[str], np.ndarray], Any]:
    """The ground truth of the pool by image name, and the data module (class names, ``ignore_index``)."""
    from segkit.config import check_targets

    data_cfg = OmegaConf.load(cv_dir / DATA_FILE)
    check_targets(data_cfg, (), source=str(cv_dir / DATA_FILE))
    with open_dict(data_cfg):
        data_cfg.train_transform = None
    datamodule = instantiate(data_cfg)
    pool = datamodule.dataset("train")
    index = {Path(image).stem: i for i, (image, _) in enumerate(pool.samples)}
    return (lambda name: pool.load_mask(index[name])), datamodule


def oof_files(cv_dir: Path) -> Dict[str, Path]:
    """Image name -> its out-of-fold probabilities, over every fold."""
    files: Dict[str, Path] = {}
    for d in fold_dirs(cv_dir):
        probabilities = d / "oof" / "probabilities"
        if not probabilities.is_dir():
            raise FileNotFoundError(f"{probabilities} is missing: fold {d.name} has not finished; run scripts/cv.py "
                                    f"again with hydra.run.dir={cv_dir}")
        files.update({p.stem: p for p in sorted(probabilities.glob("*.npy"))})
    return files


def oof_items(cv_dirs: Sequence[Path]) -> Tuple[Callable[[], Iterator[Tuple[np.ndarray, np.ndarray]]], Any]:
    """A callable yielding ``(probabilities (K, H, W), truth (H, W))`` per pooled out-of-fold image, the
    probabilities averaged over ``cv_dirs`` (configurations cross-validated on the same folds: an ensemble of
    them); and the pool's data module."""
    same_folds(cv_dirs)
    truth, datamodule = pool_masks(cv_dirs[0])
    files = [oof_files(d) for d in cv_dirs]
    names = sorted(files[0])
    for d, f in zip(cv_dirs[1:], files[1:]):
        if sorted(f) != names:
            raise ValueError(f"{d} and {cv_dirs[0]} hold out-of-fold predictions of different images")

    def items() -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        for name in names:
            probabilities = sum(np.load(f[name]).astype(np.float32) for f in files) / len(files)
            yield probabilities, truth(name)

    return items, datamodule


def same_folds(cv_dirs: Sequence[Path]) -> None:
    from segkit.data.folds import read_folds

    first = read_folds(cv_dirs[0] / FOLDS_FILE)["assignment"]
    for d in cv_dirs[1:]:
        if read_folds(d / FOLDS_FILE)["assignment"] != first:
            raise ValueError(f"{d} and {cv_dirs[0]} were cross-validated on different folds, so their out-of-fold "
                             f"predictions cannot be compared or ensembled; re-run one with "
                             f"cv.folds_file={cv_dirs[0] / FOLDS_FILE}")


def pooled_metrics(items: Callable[[], Iterator[Tuple[np.ndarray, np.ndarray]]], datamodule: Any,
                   rules: Sequence[Dict[str, Any]] = ()) -> Dict[str, Any]:
    """mIoU, pixel accuracy and per-class IoU of the pooled out-of-fold predictions (with ``rules`` applied)."""
    import torch

    from segkit.metrics import summarize
    from segkit.postprocess import apply_rules, confusion

    k = datamodule.num_classes
    total = np.zeros((k, k), dtype=np.int64)
    count = 0
    for probabilities, truth in items():
        pred = apply_rules(probabilities, rules) if rules else probabilities.argmax(0)
        total += confusion(pred, truth, k, datamodule.ignore_index)
        count += 1
    return {**summarize(torch.from_numpy(total), datamodule.class_names), "num_images": count}


def _mean_std(values: Sequence[Optional[float]]) -> Tuple[float, float]:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarize_cv(cv_dir: Path, rules_report: Optional[Dict[str, Any]], ensemble: Dict[str, Any]) -> Dict[str, Any]:
    """cv.json's results: per fold (out-of-fold and held-out), mean +/- std, pooled, ensemble."""
    items, datamodule = oof_items([cv_dir])
    folds = []
    for d in fold_dirs(cv_dir):
        oof = json.loads((d / "oof" / "metrics.json").read_text())
        held = json.loads((d / "metrics_test.json").read_text()) if (d / "metrics_test.json").is_file() else None
        folds.append({"fold": d.name, "oof": oof, "holdout": held})
    names = datamodule.class_names
    oof_mean = _mean_std([f["oof"]["mIoU"] for f in folds])
    per_class = {n: _mean_std([f["oof"]["per_class_iou"].get(n) for f in folds]) for n in names}
    result = {"per_fold": folds, "oof_mIoU_mean": oof_mean[0], "oof_mIoU_std": oof_mean[1],
              "oof_per_class_mean_std": per_class, "pooled_oof": pooled_metrics(items, datamodule),
              "postprocessing": rules_report, **ensemble}
    held = [f["holdout"]["mIoU"] for f in folds if f["holdout"]]
    if held:
        chosen = max(folds, key=lambda f: f["oof"]["mIoU"])  # the fold a user would pick by its validation
        result.update({"holdout_mIoU_mean": _mean_std(held)[0], "holdout_mIoU_std": _mean_std(held)[1],
                       "holdout_mIoU_best_fold": max(held),
                       "holdout_mIoU_best_val_fold": chosen["holdout"]["mIoU"] if chosen["holdout"] else None})
    return result


def report(result: Dict[str, Any], class_names: Sequence[str]) -> str:
    """cv.md: the per-fold table, means, pooled out-of-fold and the held-out ensemble."""
    def f(v: Any) -> str:
        return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"

    lines = ["| fold | val (out-of-fold) mIoU | " + " | ".join(class_names) + " | held-out mIoU |",
             "|---|---:|" + "---:|" * len(class_names) + "---:|"]
    for fold in result["per_fold"]:
        per = fold["oof"]["per_class_iou"]
        lines.append(f"| {fold['fold']} | {f(fold['oof']['mIoU'])} | " + " | ".join(f(per.get(n)) for n in class_names)
                     + f" | {f((fold['holdout'] or {}).get('mIoU'))} |")
    per = result["oof_per_class_mean_std"]
    lines.append(f"| mean ± std | {f(result['oof_mIoU_mean'])} ± {f(result['oof_mIoU_std'])} | "
                 + " | ".join(f"{f(per[n][0])} ± {f(per[n][1])}" for n in class_names)
                 + (f" | {f(result['holdout_mIoU_mean'])} ± {f(result['holdout_mIoU_std'])} |"
                    if "holdout_mIoU_mean" in result else " | — |"))
    pooled = result["pooled_oof"]
    lines.append(f"| pooled out-of-fold | {f(pooled['mIoU'])} | "
                 + " | ".join(f(pooled["per_class_iou"].get(n)) for n in class_names) + " | |")
    lines.append("")
    pp = result.get("postprocessing")
    if pp is not None:
        from segkit.postprocess import describe

        lines.append(f"Postprocessing chosen on the out-of-fold predictions: {describe(pp['rules'])} "
                     f"(out-of-fold mIoU {f(pp['mIoU_before'])} -> {f(pp['mIoU_after'])}).")
    if "ensemble_holdout" in result:
        e, ep = result["ensemble_holdout"], result.get("ensemble_holdout_postprocessed")
        lines.append(f"Held-out split ({e.get('num_images')} images): mean fold {f(result.get('holdout_mIoU_mean'))}, "
                     f"fold with the best validation {f(result.get('holdout_mIoU_best_val_fold'))}, best fold "
                     f"{f(result.get('holdout_mIoU_best_fold'))}; ensemble of the {len(result['per_fold'])} folds "
                     f"{f(e['mIoU'])}" + (f", with postprocessing {f(ep['mIoU'])}" if ep else "") + ".")
    return "\n".join(lines) + "\n"


# ---- the run ----------------------------------------------------------------------------------------------------
def check_holdout(planned: DictConfig, holdout: Optional[str]) -> None:
    """Before the first fold trains: the held-out split ``cv.holdout`` exists in the layout and holds images."""
    if not holdout:
        return
    try:
        samples = instantiate(planned.data.source).samples(holdout)
    except Exception as exc:  # MissingSplitError, a missing list file ...
        raise ValueError(f"cv.holdout={holdout}: the layout has no such split ({exc}); name one it has "
                         "(cv.holdout=val or test) or cv.holdout=null to score the folds on their own validation only") \
            from None
    if not samples:
        raise ValueError(f"cv.holdout={holdout}: that split of the layout holds no images; name another or "
                         "cv.holdout=null")


def check_same_command(cv_dir: Path, overrides: Sequence[str]) -> None:
    """Resuming into a cross-validation directory: the folds must all come from one configuration."""
    info_file = cv_dir / CV_FILE
    if not info_file.is_file():
        return
    try:
        before = json.loads(info_file.read_text()).get("overrides")
    except (OSError, ValueError):
        return
    if before is not None and list(before) != list(overrides):
        raise ValueError(f"{cv_dir} holds a cross-validation of another command ({' '.join(before)}); this one is "
                         f"{' '.join(overrides)}. Resume it with the same overrides, or give this configuration its "
                         "own directory (hydra.run.dir=...) and cv.folds_file=" + str(cv_dir / FOLDS_FILE) +
                         " to use the same folds")


def run_cv(cv_cfg: DictConfig, overrides: Sequence[str], cv_dir: Path,
           compose_train: Callable[[List[str]], DictConfig]) -> Dict[str, Any]:
    """Cross-validate the train config that ``overrides`` compose (see the module doc); returns cv.json's content."""
    from segkit.pipeline import ensure_writable, train, write_json_atomic
    from segkit.postprocess import choose_rules
    from segkit.sweep import check_single_process

    folds = int(cv_cfg.folds)
    holdout = cv_cfg.get("holdout") or None
    cv_dir = cv_dir.resolve()
    base = compose_train([*overrides, f"paths.output_dir={_quoted(cv_dir)}"])
    check_single_process(base, "scripts/cv.py runs its folds")
    ensure_writable(cv_dir, "cross-validation directory")
    planned, lines = plan_pool(base)
    for line in lines:
        log.info("plan (on the pool, for every fold): %s", line)
    (cv_dir / DATA_FILE).write_text(OmegaConf.to_yaml(planned.data, resolve=True))
    check_holdout(planned, holdout)
    check_same_command(cv_dir, overrides)
    data = prepare_folds(cv_cfg, planned, cv_dir)
    allowed = list(base.get("allowed_targets") or ())
    info = {"format": "segkit-cv", "folds": folds, "seed": int(cv_cfg.seed), "pool": "train", "holdout": holdout,
            "overrides": list(overrides), "plan": lines, "fold_sizes": [len(a) for a in data["assignment"]]}
    write_json_atomic(cv_dir / CV_FILE, info)
    for fold, fold_dir in enumerate(fold_dirs(cv_dir)):
        if (fold_dir / "oof" / "metrics.json").is_file():
            log.info("fold %d: finished earlier (%s), skipped", fold, fold_dir)
            continue
        if not (fold_dir / "metrics.json").is_file():
            cfg = fold_config(compose_train, overrides, planned, cv_dir, fold, holdout)
            log.info("fold %d of %d: %d training images, %d validation images -> %s", fold, folds,
                     sum(len(a) for i, a in enumerate(data["assignment"]) if i != fold), len(data["assignment"][fold]),
                     fold_dir)
            train(cfg)
        shutil.rmtree(fold_dir / "oof", ignore_errors=True)  # a half-written earlier attempt
        # the last checkpoint, as nnU-Net: the best one was chosen on this very fold, so its out-of-fold scores
        # (and what is chosen on them: postprocessing, find_best's ranking) would be optimistic
        last = fold_dir / "checkpoints" / "last.ckpt"
        evaluate_config(str(last if last.is_file() else run_checkpoint(fold_dir)), fold_dir / "oof", "val", cv_cfg,
                        allowed, save_probabilities=True)
    rules_report = None
    (cv_dir / POSTPROCESSING_FILE).unlink(missing_ok=True)  # a resumed run with cv.postprocessing=false keeps none
    if cv_cfg.get("postprocessing", True):
        items, datamodule = oof_items([cv_dir])
        rules_report = choose_rules(items, datamodule.num_classes, datamodule.ignore_index, datamodule.class_names)
        write_json_atomic(cv_dir / POSTPROCESSING_FILE, rules_report)
    ensemble: Dict[str, Any] = {}
    if holdout:
        ensemble["ensemble_holdout"] = evaluate_config(str(cv_dir), cv_dir / f"eval-ensemble-{holdout}", holdout,
                                                       cv_cfg, allowed)
        if rules_report and rules_report["rules"]:
            ensemble["ensemble_holdout_postprocessed"] = evaluate_config(
                str(cv_dir), cv_dir / f"eval-ensemble-{holdout}-postprocessed", holdout, cv_cfg, allowed,
                postprocessing=str(cv_dir / POSTPROCESSING_FILE))
        best = ensemble.get("ensemble_holdout_postprocessed") or ensemble["ensemble_holdout"]
        write_json_atomic(cv_dir / "metrics.json", best)  # the ensemble's, as a run's metrics.json
    result = {**info, **summarize_cv(cv_dir, rules_report, ensemble)}
    write_json_atomic(cv_dir / CV_FILE, result)
    text = report(result, list(result["pooled_oof"]["per_class_iou"]))
    (cv_dir / REPORT_FILE).write_text(text)
    log.info("cross-validation of %d folds:\n%s\ncv directory: %s (predict with the fold ensemble: python "
             "scripts/predict.py ckpt_path=%s input=... output=...)", folds, text, cv_dir, cv_dir)
    return result


def find_best(cv_dirs: Sequence[Path], output_dir: Path, postprocessing: bool = True) -> Dict[str, Any]:
    """Rank configurations (cross-validation directories on the same folds) and their pairwise ensembles by the
    mIoU of their pooled out-of-fold predictions (nnU-Net's ``find_best_configuration``); choose postprocessing on
    the winner's; write ``best.json``, ``postprocessing.json`` and ``find_best.md`` to ``output_dir``."""
    from itertools import combinations

    from segkit.pipeline import ensure_writable, write_json_atomic
    from segkit.postprocess import choose_rules, describe

    cv_dirs = [Path(d).expanduser().resolve() for d in cv_dirs]
    if not cv_dirs:
        raise ValueError("cv_dirs is empty: give the cross-validation directories to compare, "
                         "'cv_dirs=[outputs/cv/A,outputs/cv/B]'")
    for d in cv_dirs:
        if not (d / CV_FILE).is_file():
            raise FileNotFoundError(f"{d} is not a cross-validation directory (no {CV_FILE}); give directories "
                                    "written by scripts/cv.py")
    same_folds(cv_dirs)
    ensure_writable(output_dir)
    rows = []
    for size in (1, 2):
        for members in combinations(cv_dirs, size):
            items, datamodule = oof_items(list(members))
            metrics = pooled_metrics(items, datamodule)
            rows.append({"members": [str(d) for d in members], "mIoU": metrics["mIoU"],
                         "per_class_iou": metrics["per_class_iou"]})
            log.info("%s: pooled out-of-fold mIoU %.4f", " + ".join(d.name for d in members), metrics["mIoU"])
    rows.sort(key=lambda r: (-r["mIoU"], len(r["members"])))  # a single configuration wins a tie
    best = rows[0]
    rules_report = None
    if postprocessing:
        items, datamodule = oof_items([Path(m) for m in best["members"]])
        rules_report = choose_rules(items, datamodule.num_classes, datamodule.ignore_index, datamodule.class_names)
        write_json_atomic(output_dir / POSTPROCESSING_FILE, rules_report)
    members = best["members"][0] if len(best["members"]) == 1 else "[" + ",".join(best["members"]) + "]"
    command = (f"python scripts/predict.py 'ckpt_path={members}' "
               + (f"postprocessing={output_dir / POSTPROCESSING_FILE} " if rules_report and rules_report["rules"]
                  else "postprocessing=none ")
               + "input=IMAGES output=MASKS")
    result = {"ranking": rows, "best": best, "postprocessing": rules_report, "command": command}
    write_json_atomic(output_dir / "best.json", result)
    lines = ["| rank | configuration | pooled out-of-fold mIoU |", "|---:|---|---:|"]
    lines += [f"| {i + 1} | {' + '.join(Path(m).name for m in r['members'])} | {r['mIoU']:.4f} |"
              for i, r in enumerate(rows)]
    if rules_report is not None:
        lines += ["", f"Postprocessing of the best: {describe(rules_report['rules'])} (out-of-fold mIoU "
                      f"{rules_report['mIoU_before']:.4f} -> {rules_report['mIoU_after']:.4f})."]
    lines += ["", f"Predict with it: `{command}`"]
    (output_dir / "find_best.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


__all__ = ["find_best", "oof_items", "pooled_metrics", "report", "run_cv", "same_folds", "summarize_cv"]

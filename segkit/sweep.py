"""Hyperparameter search with Optuna: each trial is a ``scripts/train.py`` run with sampled overrides.

``python scripts/sweep.py [train overrides] [sweep.n_trials=20 sweep.params=...]`` (configs/sweep.yaml). Optuna is
used directly (``pip install -e .[sweep]``): Hydra's Optuna sweeper plugin pins Optuna < 3. A trial composes the
train config from the command's own overrides plus its sampled ones (config groups such as ``task/loss`` or
``model/upsampler`` included), trains in this process in ``<sweep dir>/trial_NNN`` and returns the final
validation mIoU of its best checkpoint. Validation mIoU is reported to Optuna at every validation, so a pruner can
stop hopeless trials early. A trial that fails (out of memory, a loss gone NaN: ``task.nan_policy=raise``) is
stored as failed, its reason logged and kept in the trial's ``fail_reason`` user attribute, and the sweep goes on;
a failed trial is never the best one. The study lives in ``<sweep dir>/optuna.db``: run the same command with
``hydra.run.dir=<sweep dir>`` to add trials to it, ``optuna-dashboard sqlite:///<sweep dir>/optuna.db`` to browse it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf

from segkit.config import train_command

log = logging.getLogger(__name__)

PARAM_TYPES = ("float", "int", "categorical")
# Errors that fail one trial, not the sweep: out of memory (RuntimeError), a crop larger than the images
# (ValueError), a diverging run (FloatingPointError from task.nan_policy=raise, an ArithmeticError). Such a trial
# is stored as FAIL with ``fail_reason`` in its user attributes; Optuna never picks a failed trial as best.
TRIAL_ERRORS = (RuntimeError, ValueError, ArithmeticError)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise SystemExit("scripts/sweep.py needs Optuna: pip install -c constraints.txt -e '.[sweep]'") from None
    return optuna


def search_space(sweep_cfg: DictConfig) -> Dict[str, Any]:
    """``sweep.params`` when given (it replaces the default space), else ``sweep.default_params``."""
    return OmegaConf.to_container(sweep_cfg.get("params") or sweep_cfg.get("default_params") or {}, resolve=True)


def check_space(params: Mapping[str, Any]) -> None:
    """Refuse a malformed search space before the first trial, naming the ``sweep.params`` key and the fix."""
    if not params:
        raise ValueError("sweep.params is empty: give at least one key, e.g. "
                         "'sweep.params={task.optimizer.lr:{type:float,low:1e-4,high:1e-2,log:true}}'")
    for key, spec in params.items():
        where = f"sweep.params.{key}"
        if not isinstance(spec, Mapping) or spec.get("type") not in PARAM_TYPES:
            raise ValueError(f"{where}: needs type: float, int or categorical (got {spec!r})")
        if spec["type"] == "categorical":
            choices = spec.get("choices")
            if not choices or isinstance(choices, (str, Mapping)):
                raise ValueError(f"{where}: a categorical parameter needs a non-empty list of choices")
        else:
            if spec.get("low") is None or spec.get("high") is None or not float(spec["low"]) < float(spec["high"]):
                raise ValueError(f"{where}: a {spec['type']} parameter needs low < high (got low={spec.get('low')}, "
                                 f"high={spec.get('high')})")
            if spec.get("log") and float(spec["low"]) <= 0:
                raise ValueError(f"{where}: log: true needs low > 0")


def _override_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def suggest(trial: Any, params: Mapping[str, Any]) -> List[str]:
    """Sample one value per ``sweep.params`` key; the Hydra overrides that set them (``key=value``)."""
    overrides = []
    for key, spec in params.items():
        kind = spec["type"]
        if kind == "float":
            value = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
        elif kind == "int":
            value = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)),
                                      log=bool(spec.get("log")))
        else:
            value = trial.suggest_categorical(key, list(spec["choices"]))
        overrides.append(f"{key}={_override_value(value)}")
    return overrides


class OptunaReport(L.Callback):
    """Reports the monitored metric to an Optuna trial after every validation (not the sanity check) and raises
    ``optuna.TrialPruned`` when the study's pruner says so."""

    def __init__(self, trial: Any, monitor: str = "val/mIoU") -> None:
        self.trial, self.monitor = trial, monitor

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # only validations inside fit: the final `trainer.validate` of the best checkpoint is the trial's value,
        # not a step to prune on (a finished trial below the median would be thrown away)
        if (trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking
                or self.monitor not in trainer.callback_metrics):
            return
        self.trial.report(float(trainer.callback_metrics[self.monitor]), step=trainer.current_epoch)
        if self.trial.should_prune():
            raise _optuna().TrialPruned(f"{self.monitor} at epoch {trainer.current_epoch}")


def _quoted(value: str) -> str:
    """A Hydra override value that keeps ``,``, ``=``, spaces or brackets in a path literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _device_count(devices: Any, accelerator: Any) -> int:
    """How many devices a Trainer given ``devices``/``accelerator`` would use (``auto``: every visible GPU)."""
    if isinstance(devices, str):
        text = devices.replace(" ", "")
        if text == "auto":
            import torch

            return 1 if str(accelerator) == "cpu" else max(1, torch.cuda.device_count())
        if "," not in text and text.lstrip("-").isdigit():
            devices = int(text)
        else:
            return len([p for p in text.split(",") if p])
    if isinstance(devices, int):
        return 2 if devices == -1 else devices  # -1: all devices, counted as several
    return len(devices)


def check_single_process(cfg: DictConfig, what: str = "scripts/sweep.py runs its trials") -> None:
    """Trials (folds) run one after another in this process. Several devices would start one process per device,
    each running its own loop over them: refuse that, naming the keys."""
    t = cfg.get("trainer") or {}
    devices, strategy = t.get("devices", 1), str(t.get("strategy", "auto"))
    nodes = int(t.get("num_nodes", 1) or 1)
    if _device_count(devices, t.get("accelerator", "auto")) > 1 or nodes > 1 or "ddp" in strategy \
            or "fsdp" in strategy:
        raise ValueError(f"{what} one after another on one device, but the train config "
                         f"asks for trainer.devices={devices}, trainer.num_nodes={nodes}, trainer.strategy={strategy}:"
                         " set trainer.devices=1 trainer.num_nodes=1 trainer.strategy=auto")


def _sampler(optuna: Any, name: str, seed: Optional[int]):
    samplers = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
                "random": lambda: optuna.samplers.RandomSampler(seed=seed),
                "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed)}
    if name not in samplers:
        raise ValueError(f"sweep.sampler must be one of {sorted(samplers)}, got {name!r}")
    return samplers[name]()


def _pruner(optuna: Any, name: Optional[str]):
    pruners = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
               "none": optuna.pruners.NopPruner}
    key = "none" if name in (None, False) else str(name)
    if key not in pruners:
        raise ValueError(f"sweep.pruner must be median or none, got {name!r}")
    return pruners[key]()


def run_sweep(sweep_cfg: DictConfig, base_overrides: Sequence[str], sweep_dir: Path,
              compose_train: Callable[[List[str]], DictConfig], seed: Optional[int] = None) -> Dict[str, Any]:
    """Run ``sweep_cfg.n_trials`` trials (more when the study in ``sweep_dir`` already has some, see module doc).

    ``compose_train(overrides)`` composes the train config; each trial adds its sampled overrides and its run
    directory to ``base_overrides``. Writes ``best.json`` (value, params, overrides, run directory) and returns it.
    """
    from segkit.pipeline import train

    optuna = _optuna()
    params = search_space(sweep_cfg)
    check_space(params)
    clash = sorted({o.split("=", 1)[0].lstrip("+~") for o in base_overrides} & set(params))
    if clash:
        raise ValueError(f"{', '.join(clash)}: set on the command line and swept in sweep.params; drop one of them")
    for values in _probe_values(params):  # every choice composes before the first trial, or fail now
        compose_train([*base_overrides, *suggest(optuna.trial.FixedTrial(values), params)])
    check_single_process(compose_train(list(base_overrides)))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = _sampler(optuna, sweep_cfg.sampler, seed)  # checked before the study file is created
    study = optuna.create_study(study_name=sweep_cfg.study_name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}",
                                direction="maximize", load_if_exists=True, sampler=sampler,
                                pruner=_pruner(optuna, sweep_cfg.pruner))
    if study.trials:  # resumed: new draws (the same seed would replay the first trials), interrupted trials failed
        study.sampler = _sampler(optuna, sweep_cfg.sampler, None if seed is None else seed + len(study.trials))
        for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(stale.number, state=optuna.trial.TrialState.FAIL)
            log.info("trial %d was interrupted in an earlier run: marked failed", stale.number)

    def objective(trial: Any) -> float:
        sampled = suggest(trial, params)
        run_dir = sweep_dir / f"trial_{trial.number:03d}"
        cfg = compose_train([*base_overrides, *sampled, f"paths.output_dir={_quoted(str(run_dir))}"])
        log.info("trial %d: %s", trial.number, " ".join(sampled))
        trial.set_user_attr("overrides", sampled)
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            metrics = train(cfg, extra_callbacks=[OptunaReport(trial)])
        except TRIAL_ERRORS as exc:  # the trial fails (Optuna marks it so); the reason stays in the study
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason[:2000])
            log.warning("trial %d failed (%s): %s", trial.number, " ".join(sampled), reason)
            raise
        log.info("trial %d: val mIoU %.4f (%s)", trial.number, metrics["mIoU"], run_dir)
        return float(metrics["mIoU"])

    # a trial that fails (out of memory at a large swept crop, a crop larger than the images, a diverging loss) is
    # logged with its parameters and the reason and the sweep goes on; errors in the sweep itself still stop it
    study.optimize(objective, n_trials=int(sweep_cfg.n_trials), timeout=sweep_cfg.get("timeout"),
                   gc_after_trial=True, catch=TRIAL_ERRORS)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise RuntimeError(f"no trial of the sweep in {sweep_dir} completed (all pruned or failed)")
    best = study.best_trial
    result = {"value": best.value, "trial": best.number, "params": best.params,
              "overrides": best.user_attrs["overrides"], "run_dir": best.user_attrs["run_dir"],
              "trials": {state.name.lower(): sum(t.state == state for t in study.trials)
                         for state in optuna.trial.TrialState if any(t.state == state for t in study.trials)}}
    from segkit.pipeline import write_json_atomic

    write_json_atomic(sweep_dir / "best.json", result)
    log.info("best: trial %d, val mIoU %.4f\n  %s", best.number, best.value,
             train_command([*base_overrides, *result["overrides"]]))
    log.info("sweep directory: %s (%s)", sweep_dir, json.dumps(result["trials"]))
    return result


def _probe_values(params: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Parameter sets that together use every categorical choice and both ends of every range, so that each one
    is composed once before the first trial (a misspelt loss name fails in seconds, not hours into a sweep)."""
    def ends(spec: Mapping[str, Any]) -> List[Any]:
        if spec["type"] == "categorical":
            return list(spec["choices"])
        cast = int if spec["type"] == "int" else float
        return [cast(spec["low"]), cast(spec["high"])]

    options = {k: ends(s) for k, s in params.items()}
    return [{k: v[min(i, len(v) - 1)] for k, v in options.items()} for i in range(max(map(len, options.values())))]

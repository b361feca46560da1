"""Config helpers: ``_target_`` checked against an allowlist before anything is instantiated; configs stored as
plain types."""
from __future__ import annotations

import functools
import importlib
import shlex
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Tuple, TypeVar

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

# What a ``_target_`` may name without ``allowed_targets``: a class, found under one of these dotted prefixes and
# defined in that package, that subclasses one of the listed bases. Rules go by kind, not by name, so a new segkit
# encoder, an albumentations transform or a lightning callback/logger is admitted without editing this table,
# while functions (``torch.load``, ``torch.hub.load``, ``torch.multiprocessing.spawn``, ``os.system``) never are:
# a function can do anything with its arguments; constructing these classes only builds an object.
TARGET_RULES: Dict[str, Tuple[str, ...]] = {
    "segkit": ("builtins.object",),
    "torch.nn": ("torch.nn.Module",),
    "torch.optim": ("torch.optim.Optimizer", "torch.optim.lr_scheduler.LRScheduler",
                    "torch.optim.lr_scheduler.ReduceLROnPlateau"),
    "albumentations": ("albumentations.core.transforms_interface.BasicTransform",
                       "albumentations.core.composition.BaseCompose"),
    "torchmetrics": ("torchmetrics.Metric", "torchmetrics.MetricCollection"),
    "lightning": ("lightning.pytorch.Trainer", "lightning.pytorch.Callback", "lightning.pytorch.loggers.Logger",
                  "lightning.pytorch.strategies.Strategy", "lightning.pytorch.profilers.Profiler",
                  "lightning.pytorch.plugins.precision.Precision",
                  "lightning.fabric.plugins.environments.ClusterEnvironment"),
}
# segkit functions that build objects for configs; mark new ones with @config_target instead of listing them here.

F = TypeVar("F", bound=Callable[..., Any])


def config_target(fn: F) -> F:
    """Mark a segkit function as a factory that configs may name in ``_target_`` (classes need no mark)."""
    fn.__segkit_config_target__ = True  # type: ignore[attr-defined]
    return fn


class UnsafeConfigError(ValueError):
    """A ``_target_`` outside the allowlist; raised before anything is instantiated."""


def _resolve(name: str) -> Any:
    """The object a dotted name points to, the way Hydra finds it (attributes, else submodule imports). Called only
    for names under a trusted package, so only modules of that package are imported."""
    parts = name.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=2):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[:i]))
    return obj


@functools.lru_cache(maxsize=None)
def _refusal(name: str) -> Optional[str]:
    """Why ``name`` may not be instantiated, or None when a rule admits it."""
    parts = name.split(".")
    if not name or any(not p.isidentifier() or p.startswith("_") for p in parts):
        return "not a plain dotted name of a public object"
    prefix = next((p for p in TARGET_RULES if name.startswith(p + ".")), None)
    if prefix is None:
        return "outside the trusted packages"
    try:
        obj = _resolve(name)
    except Exception as exc:  # a missing module or attribute, or a trusted module that fails to import
        return f"cannot be imported ({type(exc).__name__}: {exc})"
    package = prefix.split(".")[0]
    if package == "segkit" and not isinstance(obj, type):
        if getattr(obj, "__segkit_config_target__", False):
            return None
        return "a segkit function not marked @config_target"
    if not isinstance(obj, type):
        return f"a {type(obj).__name__}, not a class"
    if obj.__module__.split(".")[0] != package:
        return f"a class from {obj.__module__}, not from {package}"
    bases = tuple(_resolve(b) for b in TARGET_RULES[prefix])
    if not issubclass(obj, bases):
        return f"not a subclass of {' or '.join(TARGET_RULES[prefix])}"
    return None


def _allowed_by_user(name: str, allowed: Iterable[str]) -> bool:
    """``allowed_targets`` entries: an exact name (``mypkg.Thing``), or a package with everything under it
    (``mypkg`` or ``mypkg.*``)."""
    for entry in allowed:
        entry = str(entry).removesuffix(".*")
        if name == entry or name.startswith(entry + "."):
            return True
    return False


def _resolved(node: Any, key: Any) -> Any:
    """``node[key]`` with interpolations resolved (a resolver such as ``oc.create`` can make a config node out of a
    string, which instantiate would follow), or None when it cannot be resolved here (a missing ``???`` value, or
    ``${hydra:...}`` outside a Hydra run): such a value fails at instantiation instead."""
    try:
        return node[key]
    except Exception:
        return None


def _walk(node: Any, path: str):
    """``(key path, target)`` for every ``_target_``, looking through resolved interpolations; an interpolated
    ``_target_`` itself is yielded unresolved, and so refused rather than followed."""
    if isinstance(node, DictConfig):
        for key in node.keys():
            child = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield child, (OmegaConf.to_container(node, resolve=False)[key]
                              if OmegaConf.is_interpolation(node, key) else node[key])
            else:
                yield from _walk(_resolved(node, key), child)
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _walk(_resolved(node, i), f"{path}[{i}]")
    elif isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield child, value
            else:
                yield from _walk(value, child)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def check_targets(cfg: Any, allowed: Iterable[str] = (), source: str = "config") -> None:
    """Refuse any ``_target_`` that :data:`TARGET_RULES` does not admit and ``allowed`` (the ``allowed_targets``
    config key) does not name, with the key, the reason and the fix. Only trusted packages are imported."""
    for key, target in _walk(cfg, ""):
        name = str(target)
        if _allowed_by_user(name, allowed):
            continue
        why = _refusal(name) if isinstance(target, str) else "not a string"
        if why:
            raise UnsafeConfigError(
                f"{source}: {key}={name!r} is not an allowed target: {why}. segkit instantiates only its own "
                "classes, torch.nn modules, torch.optim optimisers and schedulers, albumentations transforms, "
                "torchmetrics metrics and lightning's Trainer, callbacks, loggers, strategies and profilers "
                "(never functions such as torch.load or os.system). If you trust it, add "
                f"allowed_targets=[{name}] (or allowed_targets=[{name.split('.')[0]}] for its whole package)."
            )


def train_command(overrides: Iterable[Any]) -> str:
    """``python scripts/train.py <overrides>``, each override shell-quoted so the line can be pasted as is."""
    return " ".join(["python scripts/train.py", *(shlex.quote(str(o)) for o in overrides)])


def to_plain(cfg: DictConfig) -> Dict[str, Any]:
    """The resolved config as plain dicts/lists/str/numbers (safe for ``torch.load(weights_only=True)``)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def load_checkpoint(path: str | Path, mmap: bool = False) -> Dict[str, Any]:
    """Load a segkit checkpoint safely: ``weights_only=True`` never runs pickled code. ``mmap=True`` maps the tensors
    instead of reading them (for a caller that only needs the stored config)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}; pass ckpt_path=PATH to a .ckpt from a training run")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        raise ValueError(f"refusing to load {path}: it is not a plain-tensor checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]}). segkit checkpoints load with weights_only=True; "
                         "a file that needs arbitrary unpickling may execute code and is rejected.") from None
    if "segkit" not in ckpt or not ckpt["segkit"].get("config"):
        raise ValueError(f"{path} has no segkit config; it was not written by scripts/train.py")
    return ckpt


# The parts of a checkpoint's stored config that evaluation, prediction and export rebuild. The run's callbacks,
# loggers and trainer are never instantiated from a checkpoint, so a custom callback the run trusted with
# allowed_targets does not have to be trusted again to evaluate it.
CHECKPOINT_REBUILT = ("model", "task", "data")


def model_config_from_checkpoint(ckpt: Dict[str, Any], allowed: Iterable[str] = (), path: Optional[str] = None
                                 ) -> DictConfig:
    """The run config stored in a checkpoint, its :data:`CHECKPOINT_REBUILT` parts checked against the allowlist
    (``allowed`` comes from the current command line, never from the checkpoint), its model config brought up to
    date by :func:`upgrade_model_config`."""
    cfg = OmegaConf.create(ckpt["segkit"]["config"])
    check_targets({k: cfg.get(k) for k in CHECKPOINT_REBUILT}, allowed,
                  source=f"checkpoint {path}" if path else "checkpoint")
    if cfg.get("model") is not None:
        upgrade_model_config(cfg.model)
    return cfg


# Model config keys that load pretrained weights while the model is built, with the value that means "from scratch":
# segkit's encoder_weights (a file, or a weights name such as DEFAULT that downloads), the pretrained flag of
# segkit's torchvision/timm encoders (also inside encoder_kwargs), timm's checkpoint_path.
PRETRAINED_WEIGHT_KEYS: Dict[str, Any] = {"encoder_weights": None, "pretrained": False, "checkpoint_path": ""}


def without_pretrained_weights(model_cfg: Any) -> DictConfig:
    """A copy of a stored model config (a checkpoint's, a pretrained folder's) that builds the network from scratch:
    every :data:`PRETRAINED_WEIGHT_KEYS` key, at any depth (``encoder_kwargs``, a nested encoder node), set to its
    "scratch" value. The trained weights are loaded on top of it, so the training-time encoder weights (a local
    file that may be gone, an ImageNet download that may be impossible offline) are never read again."""
    cfg = OmegaConf.create(OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig)
                           else model_cfg)

    def scratch(node: Any) -> None:
        if isinstance(node, DictConfig):
            for key in list(node.keys()):
                if key in PRETRAINED_WEIGHT_KEYS and not isinstance(node.get(key), (DictConfig, ListConfig)):
                    node[key] = PRETRAINED_WEIGHT_KEYS[key]
                else:
                    scratch(node.get(key))
        elif isinstance(node, ListConfig):
            for item in node:
                scratch(item)

    scratch(cfg)
    return cfg


# Model arguments added after configs were saved without them, per target, with the value that rebuilds the layout
# those older configs' weights have (the new default differs).
LEGACY_MODEL_ARGS: Dict[str, Dict[str, Any]] = {
    # 2026-12-02: the U-Net's last, skip-less step to stride 1 went from two 3x3 convs (smp's) to one
    "segkit.models.UNet": {"final_step_convs": 2},
    "segkit.models.architectures.UNet": {"final_step_convs": 2},
}


def legacy_model_args(model_cfg: Any) -> Dict[str, Any]:
    """The :data:`LEGACY_MODEL_ARGS` a stored model config lacks: what an older segkit built for it."""
    args = LEGACY_MODEL_ARGS.get(str(model_cfg.get("_target_")), {})
    return {key: value for key, value in args.items() if key not in model_cfg}


def upgrade_model_config(model_cfg: DictConfig, saved: Any = None) -> Dict[str, Any]:
    """Fill in, in place, the arguments that the model config ``saved`` by an older segkit lacks
    (:data:`LEGACY_MODEL_ARGS`; ``saved`` defaults to ``model_cfg`` itself), so that the weights saved with it fit
    the model ``model_cfg`` builds; returns what was filled in."""
    filled = legacy_model_args(model_cfg if saved is None else saved)
    with open_dict(model_cfg):
        model_cfg.update(filled)
    return filled

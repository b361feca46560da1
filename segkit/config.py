"""Config helpers: only trusted ``_target_`` namespaces are instantiated; configs stored as plain types."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

TRUSTED_NAMESPACES = ("segkit", "torch", "torchvision", "torchmetrics", "albumentations", "lightning",
                      "pytorch_lightning")
# Callables inside trusted namespaces that load or run foreign code.
DENIED_TARGETS = ("torch.hub", "torch.load", "torch.jit.load", "torch.package", "torch.utils.cpp_extension",
                  "torch.ops.load_library", "torch.classes.load_library", "torch.compile", "torch.export.load")


class UnsafeConfigError(ValueError):
    """A ``_target_`` outside the trusted namespaces; raised before anything is instantiated."""


def _walk(node: Any, path: str):
    """``(key path, target)`` for every ``_target_``; interpolations stay unresolved (an interpolated target is
    refused rather than followed)."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
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
    """Refuse any ``_target_`` outside segkit/torch/torchvision/torchmetrics/albumentations/lightning and the
    namespaces in ``allowed`` (the ``allowed_targets`` config key)."""
    trusted = tuple(TRUSTED_NAMESPACES) + tuple(allowed)
    for key, target in _walk(cfg, ""):
        name = str(target)
        ok = any(name == ns or name.startswith(ns + ".") for ns in trusted)
        denied = any(name == d or name.startswith(d + ".") for d in DENIED_TARGETS)
        if not ok or denied:
            raise UnsafeConfigError(
                f"{source}: {key}={name!r} is not an allowed target. segkit instantiates only "
                f"{', '.join(TRUSTED_NAMESPACES)} (minus loaders like torch.load/torch.hub). If you trust "
                f"{name.split('.')[0]!r}, add it with allowed_targets=[{name.split('.')[0]}]."
            )


def to_plain(cfg: DictConfig) -> Dict[str, Any]:
    """The resolved config as plain dicts/lists/str/numbers (safe for ``torch.load(weights_only=True)``)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def load_checkpoint(path: str | Path) -> Dict[str, Any]:
    """Load a segkit checkpoint safely: ``weights_only=True`` never runs pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}; pass ckpt_path=PATH to a .ckpt from a training run")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"refusing to load {path}: it is not a plain-tensor checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]}). segkit checkpoints load with weights_only=True; "
                         "a file that needs arbitrary unpickling may execute code and is rejected.") from None
    if "segkit" not in ckpt or not ckpt["segkit"].get("config"):
        raise ValueError(f"{path} has no segkit config; it was not written by scripts/train.py")
    return ckpt


def model_config_from_checkpoint(ckpt: Dict[str, Any], allowed: Iterable[str] = (), path: Optional[str] = None
                                 ) -> DictConfig:
    cfg = OmegaConf.create(ckpt["segkit"]["config"])
    check_targets(cfg, allowed, source=f"checkpoint {path}" if path else "checkpoint")
    return cfg

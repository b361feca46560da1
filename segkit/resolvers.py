"""OmegaConf resolvers that segkit's configs use; registered when segkit is imported."""
from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def val_every(max_epochs: Any) -> int:
    """Default validation cadence (``trainer.check_val_every_n_epoch``): every epoch for runs of up to 10 epochs,
    about 10 validations for longer runs (on small datasets, validating every epoch costs a good share of training)."""
    try:
        return max(1, round(int(max_epochs) / 10))
    except (TypeError, ValueError):  # max_epochs null/-1: step-limited runs
        return 1


def register() -> None:
    OmegaConf.register_new_resolver("val_every", val_every, replace=True)


register()

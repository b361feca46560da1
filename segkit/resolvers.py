"""OmegaConf resolvers that segkit's configs use; registered when segkit is imported."""
from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def val_every(max_epochs: Any) -> int:
    """Default validation cadence (``trainer.check_val_every_n_epoch``): every epoch for runs of up to 10 epochs;
    for longer runs the largest divisor of ``max_epochs`` not above ``max_epochs / 10``, so there are at least
    10 validations and the last epoch is always one of them (30 epochs: every 3rd; 100: every 10th; a prime number
    of epochs: every epoch). On small datasets, validating every epoch costs a good share of training."""
    try:
        n = int(max_epochs)
    except (TypeError, ValueError):  # max_epochs null: step-limited runs
        return 1
    if n <= 10:
        return 1
    return max(d for d in range(1, n // 10 + 1) if n % d == 0)


def register() -> None:
    OmegaConf.register_new_resolver("val_every", val_every, replace=True)


register()

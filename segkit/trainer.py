"""Build a Lightning Trainer from config, adding the device-aware speed settings."""
from __future__ import annotations

from typing import Any, List, Optional, Union

import lightning as L

from segkit.callbacks import DeviceSpeedups


def make_trainer(callbacks: Optional[List[L.Callback]] = None, logger: Any = None, compile: Union[bool, str] = False,
                 channels_last: Union[str, bool] = "auto", **trainer_kwargs: Any) -> L.Trainer:
    """``lightning.Trainer(**trainer_kwargs)`` plus :class:`DeviceSpeedups` (``compile``, ``channels_last``)."""
    callbacks = list(callbacks or []) + [DeviceSpeedups(channels_last=channels_last, compile=compile)]
    return L.Trainer(callbacks=callbacks, logger=logger, **trainer_kwargs)

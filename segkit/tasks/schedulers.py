"""Learning-rate schedules."""
from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class PolyLR(LambdaLR):
    """Linear warmup for ``warmup_steps``, then ``(1 - t/T)^power`` decay to 0 at ``total_steps`` (DeepLab)."""

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, power: float = 0.9,
                 warmup_factor: float = 0.001, last_epoch: int = -1) -> None:
        if total_steps <= warmup_steps:
            raise ValueError(f"PolyLR needs total_steps ({total_steps}) > warmup_steps ({warmup_steps}); lower "
                             "task.scheduler.warmup_steps or train longer")
        self.total_steps, self.warmup_steps, self.power = total_steps, warmup_steps, power
        self.warmup_factor = warmup_factor
        super().__init__(optimizer, self._factor, last_epoch)

    def _factor(self, step: int) -> float:
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            return self.warmup_factor * (1 - alpha) + alpha
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return (1.0 - progress) ** self.power

"""PolyLR against its closed form, with and without warmup."""
import pytest
import torch

from segkit.tasks.schedulers import PolyLR


def _closed_form(step: int, base: float, total: int, warmup: int, power: float, factor: float) -> float:
    if step < warmup:
        return base * (factor + (1 - factor) * step / warmup)
    return base * max(0.0, 1 - (step - warmup) / (total - warmup)) ** power


@pytest.mark.parametrize("total,warmup,power", [(50, 0, 0.9), (50, 10, 0.9), (20, 5, 2.0)])
def test_poly_lr_follows_closed_form(total, warmup, power):
    base, factor = 0.1, 0.001
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = PolyLR(opt, total_steps=total, warmup_steps=warmup, power=power, warmup_factor=factor)
    seen = []
    for _ in range(total + 3):  # a few steps past the end stay at 0
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([_closed_form(s, base, total, warmup, power, factor) for s in range(total + 3)],
                                 rel=1e-9, abs=1e-12)
    assert seen[0] == pytest.approx(base * (factor if warmup else 1.0))
    assert seen[warmup] == pytest.approx(base) and seen[total] == 0.0


def test_poly_lr_needs_steps_after_warmup():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="warmup_steps"):
        PolyLR(opt, total_steps=10, warmup_steps=10)

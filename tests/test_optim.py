"""``fused: auto``: torch's fused optimizer kernel where it applies, the same updates as torch's default loop."""
import copy
import functools

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from conftest import compose_cfg
from segkit.tasks import SegmentationTask
from segkit.tasks.optim import AutoFusedOptimizer, resolve_fused


def _net():
    torch.manual_seed(0)
    # No bias before the BatchNorm: its gradient is pure rounding noise, which Adam's g / sqrt(v) blows up to lr-sized
    # steps that differ between any two implementations.
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 4, 1))


def _train(net, optimizer, steps=6):
    torch.manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(torch.randn(2, 3, 8, 8)), torch.randint(0, 4, (2, 8, 8))).backward()
        optimizer.step()
    return net


@pytest.mark.parametrize("cls,kwargs", [(torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.05, betas=(0.8, 0.95))),
                                        (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3,
                                                               nesterov=True))])
def test_auto_fused_takes_the_fused_kernel_and_matches_torchs_default_loop(cls, kwargs):
    auto, ref = _net(), _net()
    factory = resolve_fused(functools.partial(cls, fused="auto", **kwargs))
    optimizer = factory(auto.parameters())
    assert optimizer.defaults["fused"] is True and "fused kernel" in factory.chosen
    reference = cls(ref.parameters(), foreach=False, **kwargs)  # torch's per-parameter loop, the CPU default
    _train(auto, optimizer), _train(ref, reference)
    moved = max((p0 - p).abs().max().item() for p0, p in zip(_net().parameters(), ref.parameters()))
    assert moved > 1e-3  # the weights did change; the comparison below is not trivial
    for a, b in zip(auto.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_auto_fused_steps_aside_where_it_cannot_apply():
    params = list(_net().parameters())
    make = lambda cls, **kw: resolve_fused(functools.partial(cls, lr=1e-3, fused="auto", **kw))  # noqa: E731
    factory = make(torch.optim.RMSprop)  # no fused kernel: the key is dropped, not passed on
    assert isinstance(factory(params), torch.optim.RMSprop) and "no fused kernel" in factory.chosen
    factory = make(torch.optim.AdamW, foreach=True)
    assert factory(params).defaults["foreach"] is True and "foreach" in factory.chosen
    factory = make(torch.optim.AdamW)
    assert not factory(params, allow_fused=False).defaults["fused"]
    meta = [torch.nn.Parameter(torch.empty(3, device="meta"))]
    assert factory(meta).defaults["fused"] is False and "meta" in factory.chosen
    groups = [{"params": params[:2], "lr": 1e-2}, {"params": params[2:]}]  # parameter groups are walked too
    assert factory(groups).defaults["fused"] is True
    explicit = functools.partial(torch.optim.AdamW, lr=1e-3, fused=False)
    assert resolve_fused(explicit) is explicit  # true/false pass through untouched


@pytest.mark.parametrize("precision,clip,fused", [("32-true", 1.0, True), ("bf16-mixed", None, True),
                                                  ("bf16-mixed", 1.0, False)])
def test_task_uses_the_fused_kernel_unless_lightning_would_refuse_it(precision, clip, fused, tmp_path):
    """Lightning refuses to clip gradients under AMP with a fused optimizer; the task then builds the plain one."""
    cfg = compose_cfg("train", [], tmp_path)
    assert cfg.task.optimizer.fused == "auto"
    cfg.task.loss.weights.dice = 1.0  # `auto` is train()'s to plan from the data
    net = torch.nn.Conv2d(3, 4, 3, padding=1)
    task = instantiate(cfg.task, net=copy.deepcopy(net), spec=4, _convert_="partial")
    assert isinstance(task.optimizer_factory, AutoFusedOptimizer)
    samples = [{"image": torch.rand(3, 16, 16), "mask": torch.randint(0, 4, (16, 16)), "name": str(i)} for i in range(8)]
    trainer = L.Trainer(accelerator="cpu", max_steps=3, precision=precision, gradient_clip_val=clip, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, torch.utils.data.DataLoader(samples, batch_size=4))
    assert bool(trainer.optimizers[0].param_groups[0]["fused"]) is fused
    assert SegmentationTask(net, 4).optimizer_factory(net.parameters()).defaults["fused"] is True  # the default too

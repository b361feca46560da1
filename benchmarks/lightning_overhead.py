"""Framework overhead: segkit's full Lightning training loop vs a raw PyTorch loop, same model, data, optimizer.

    python benchmarks/lightning_overhead.py [--steps 60] [--repeats 3]

Both loops train the default model (small U-Net) on the same pre-collated uint8 batches of the embedded dataset
(48x48, batch 16) for the same number of steps, with normalisation, loss and AdamW identical. The first 5 steps are
not timed (start-up). Prints the median seconds per step of each and the overhead (lightning / raw - 1).
"""
from __future__ import annotations

import argparse
import time

import lightning as L
import torch
from torch.utils.data import DataLoader

from common import Batches, StepTimer, interleaved, machine, median, quartiles, run_callbacks
from segkit.models import UNet
from segkit.tasks import SegmentationTask


def make_task():
    torch.manual_seed(0)
    net = UNet("unet", 6, encoder_kwargs={"base_channels": 16, "depth": 4})
    return SegmentationTask(net, 6, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))


def run_lightning(data: Batches, skip: int) -> float:
    task = make_task()
    loader = DataLoader(data, batch_size=None, shuffle=False)
    timer = StepTimer(skip)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        callbacks=[*run_callbacks(), timer], enable_model_summary=False, num_sanity_val_steps=0,
                        enable_progress_bar=True, limit_val_batches=0)
    trainer.fit(task, train_dataloaders=loader)
    return (timer.end - timer.start) / (len(data) - skip)


def run_raw(data: Batches, skip: int) -> float:
    task = make_task().train()
    opt = task.configure_optimizers()
    t0 = time.perf_counter()
    for i, batch in enumerate(data.items):
        if i == skip:
            t0 = time.perf_counter()
        loss = task.loss(task(batch["image"]), task.targets(batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / (len(data) - skip)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    data, skip = Batches(args.steps, size=48, batch=16, classes=6), 5
    times = interleaved({"lightning": lambda: run_lightning(data, skip), "raw": lambda: run_raw(data, skip)},
                        args.repeats, warmup=0, value=True)
    tl, tr = median(times["lightning"]), median(times["raw"])
    q1, q2, q3 = quartiles([a / b - 1 for a, b in zip(times["lightning"], times["raw"])])
    print(f"machine: {machine()}")
    print(f"| loop | s/step (median of {args.repeats}) |\n|---|---|\n| raw PyTorch | {tr:.4f} |\n"
          f"| Lightning (segkit task, the run's progress bar and EpochSummary) | {tl:.4f} |")
    print(f"Lightning overhead: {100 * (tl / tr - 1):+.1f}% of step time "
          f"(per-round median {100 * q2:+.1f}%, IQR [{100 * q1:+.1f}%, {100 * q3:+.1f}%])")


if __name__ == "__main__":
    main()

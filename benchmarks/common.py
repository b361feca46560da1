"""Timing helpers shared by the benchmarks: interleaved repetitions, medians, machine description."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Dict, List

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import Dataset

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads), {gpu}; "
            f"torch {torch.__version__}")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes, the device synchronised before and after."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def interleaved(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                value: bool = False) -> Dict[str, List[float]]:
    """Seconds per call of each function (or, with ``value=True``, the number each call returns), interleaved and
    alternating the order every round (ABBA...), so that drift and "who runs first" effects hit all equally."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            if value:
                times[name].append(float(fns[name]()))
            else:
                times[name].append(timed(fns[name]))
    return times


def median(values: List[float]) -> float:
    return statistics.median(values)


def quartiles(values: List[float]) -> List[float]:
    """First quartile, median and third quartile (all three the value itself for a single value)."""
    return statistics.quantiles(values, n=4) if len(values) > 1 else list(values) * 3


class Batches(Dataset):
    """``n`` pre-collated segkit batches (uint8 images and masks, as the data loader ships them) held in memory, for
    ``DataLoader(batch_size=None)`` or direct iteration over ``.items``; ``pin`` pins them for asynchronous copies."""

    def __init__(self, n: int, size: int, batch: int, classes: int, pin: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.items = [{"image": torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g),
                       "mask": torch.randint(0, classes, (batch, size, size), dtype=torch.uint8, generator=g),
                       "name": ["x"] * batch}
                      for _ in range(n)]
        if pin:
            self.items = [{k: (v.pin_memory() if isinstance(v, torch.Tensor) else v) for k, v in item.items()}
                          for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


class StepTimer(L.Callback):
    """Wall time from the start of batch ``skip`` to the end of the last batch: steady state, no start-up.
    Synchronises the device at both ends, so queued GPU work is counted."""

    def __init__(self, skip: int) -> None:
        self.skip, self.start, self.end = skip, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.skip:
            sync()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == trainer.num_training_batches - 1:
            sync()
            self.end = time.perf_counter()


def run_callbacks(compile_net: bool = False) -> List[L.Callback]:
    """The progress bar, per-epoch summary and device speed settings of ``configs/callbacks/default.yaml``, as a
    training run has them (checkpointing, which the benchmarks switch off, left out)."""
    cfg = OmegaConf.load(os.path.join(CONFIGS, "callbacks", "default.yaml"))
    cfg.speed.compile = compile_net
    return [instantiate(cfg.progress_bar), instantiate(cfg.epoch_summary), instantiate(cfg.speed)]

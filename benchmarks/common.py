"""Timing helpers shared by the benchmarks: interleaved repetitions, medians, machine description."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Dict, List

import torch


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


def interleaved(fns: Dict[str, Callable[[], None]], repeats: int, warmup: int = 1) -> Dict[str, List[float]]:
    """Seconds per call of each function, interleaved and alternating the order every round (ABBA...), so that
    drift and "who runs first" effects hit all equally."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn = fns[name]
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def median(values: List[float]) -> float:
    return statistics.median(values)

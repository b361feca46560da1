"""Samplers whose output depends only on (seed, epoch, rank), so a resumed or distributed run sees exactly the
samples and augmentations an uninterrupted single run would."""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def _world(rank: Optional[int] = None, world_size: Optional[int] = None) -> Tuple[int, int]:
    """Explicit ``rank``/``world_size`` win; otherwise torch.distributed's, or ``(0, 1)`` in a single process."""
    if dist.is_available() and dist.is_initialized():
        r, w = dist.get_rank(), dist.get_world_size()
    else:
        r, w = 0, 1
    return (r if rank is None else rank), (w if world_size is None else world_size)


class SeededSampler(Sampler):
    """Training order and per-sample augmentation seeds drawn from ``(seed, epoch)`` only.

    Yields ``(index, sample_seed)``; :class:`SegmentationDataset` seeds its albumentations pipeline with
    ``sample_seed``, so augmentation is reproducible in any worker and after a resume. Under DDP each rank takes
    every ``world``-th sample of the same permutation, all ranks the same count (the tail is dropped).
    Lightning calls :meth:`set_epoch` at every epoch.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True, rank: Optional[int] = None,
                 world_size: Optional[int] = None) -> None:
        self.rank, self.world_size = _world(rank, world_size)
        self.num_samples, self.seed, self.shuffle, self.epoch = num_samples, int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples // self.world_size

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g) if self.shuffle else torch.arange(self.num_samples)
        seeds = torch.randint(0, 2 ** 31 - 1, (self.num_samples,), generator=g)
        per_rank = len(self)
        picks = range(self.rank, per_rank * self.world_size, self.world_size)
        return iter([(int(order[i]), int(seeds[i])) for i in picks])


class ShardSampler(Sampler):
    """Evaluation: rank ``r`` of ``w`` takes indices ``r, r + w, ...`` — no padding, so no sample is counted twice
    when metrics are summed across ranks (DistributedSampler pads uneven sets with duplicates)."""

    def __init__(self, num_samples: int, rank: Optional[int] = None, world_size: Optional[int] = None) -> None:
        self.rank, self.world_size = _world(rank, world_size)
        self.num_samples = num_samples

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples, self.world_size))

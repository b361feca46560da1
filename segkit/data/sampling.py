"""Samplers whose output depends only on (seed, epoch, rank), so a resumed or distributed run sees exactly the
samples and augmentations an uninterrupted single run would.

Both are ``DistributedSampler`` subclasses: Lightning leaves a loader whose sampler already is one alone, so data is
sharded exactly once however several devices were asked for (``trainer=ddp``, ``trainer.devices=2``,
``trainer.strategy=ddp``, torchrun, SLURM), whatever ``use_distributed_sampler`` says. The rank and world size are
read when iterating, so a sampler built before the process group exists still shards correctly.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


def _world(rank: Optional[int] = None, world_size: Optional[int] = None) -> Tuple[int, int]:
    """Explicit ``rank``/``world_size`` win; otherwise torch.distributed's, or ``(0, 1)`` in a single process."""
    if dist.is_available() and dist.is_initialized():
        r, w = dist.get_rank(), dist.get_world_size()
    else:
        r, w = 0, 1
    return (r if rank is None else rank), (w if world_size is None else world_size)


class _RankAware(DistributedSampler):
    """``DistributedSampler`` only by type: no process group needed at construction, rank resolved lazily."""

    def __init__(self, num_samples: int, rank: Optional[int] = None, world_size: Optional[int] = None) -> None:
        # DistributedSampler.__init__ would require an initialised process group; keep its attribute names.
        self._rank, self._world_size = rank, world_size
        self.num_samples_total, self.epoch = int(num_samples), 0

    @property
    def rank(self) -> int:  # type: ignore[override]
        return _world(self._rank, self._world_size)[0]

    @property
    def num_replicas(self) -> int:  # type: ignore[override]
        return _world(self._rank, self._world_size)[1]

    @property
    def world_size(self) -> int:
        return self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


def class_presence(dataset: Any, num_classes: int) -> np.ndarray:
    """``presence[i, c]``: training image ``i`` of ``dataset`` (a :class:`~segkit.data.dataset.SegmentationDataset`)
    holds class ``c`` (its masks are read, or taken from its cache; ``ignore_index`` is no class)."""
    presence = np.zeros((len(dataset), num_classes), dtype=bool)
    for i in range(len(dataset)):
        present = np.unique(dataset.load_mask(i))
        presence[i, present[(present >= 0) & (present < num_classes)]] = True
    return presence


def repeat_factors(presence: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Repeat-factor sampling weights (Gupta et al., LVIS 2019), one per image, from ``presence[i, c]`` (image
    ``i`` contains class ``c``): ``r_c = max(1, sqrt(threshold / f_c))`` with ``f_c`` the fraction of images that
    contain class ``c``, and an image's factor is the largest ``r_c`` of its classes (1 for an image with none).
    Classes in at least ``threshold`` of the images are not oversampled."""
    presence = np.asarray(presence, dtype=bool)
    if presence.ndim != 2 or len(presence) == 0:
        raise ValueError("presence must be an (images, classes) boolean array with at least one image")
    if not 0 < threshold <= 1:
        raise ValueError(f"data.repeat_threshold must be in (0, 1], got {threshold}")
    freq = presence.mean(0)
    per_class = np.where(freq > 0, np.sqrt(threshold / np.maximum(freq, 1e-12)), 1.0).clip(min=1.0)
    return np.where(presence, per_class[None, :], 1.0).max(1)


class SeededSampler(_RankAware):
    """Training order and per-sample augmentation seeds drawn from ``(seed, epoch)`` only.

    Yields ``(index, sample_seed)``; :class:`SegmentationDataset` seeds its albumentations pipeline with
    ``sample_seed``, so augmentation is reproducible in any worker and after a resume. Under DDP each rank takes
    every ``world``-th sample of the same permutation, all ranks the same count (the tail is dropped).
    Lightning calls :meth:`set_epoch` at every epoch.

    ``weights`` (one per sample, e.g. :func:`repeat_factors`): an epoch is then ``num_samples`` draws with
    replacement, each sample drawn in proportion to its weight (rare-class images more often, the epoch length
    and so the schedule unchanged).

    ``min_samples``: an epoch holds at least this many draws; a smaller dataset is shuffled again for each pass
    (one image and a batch of 2: that image twice, with two augmentation seeds).
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True, rank: Optional[int] = None,
                 world_size: Optional[int] = None, weights: Optional[Sequence[float]] = None,
                 min_samples: int = 0) -> None:
        super().__init__(num_samples, rank, world_size)
        self.dataset_size = self.num_samples_total
        self.num_samples_total = max(self.dataset_size, int(min_samples))
        self.seed, self.shuffle = int(seed), shuffle
        self.resume_at: Optional[Tuple[int, int]] = None  # (epoch, samples this rank already trained on)
        self.weights = None
        if weights is not None:
            self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
            if self.weights.shape != (self.dataset_size,) or not bool((self.weights > 0).all()):
                raise ValueError(f"sampler weights must be {self.dataset_size} positive numbers")

    def __len__(self) -> int:
        return self.num_samples_total // self.num_replicas

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        n = self.num_samples_total
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        size = self.dataset_size
        if self.weights is not None:
            order = torch.multinomial(self.weights, n, replacement=True, generator=g)
        elif n == size:
            order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        else:  # several passes over a small dataset, each in its own order
            passes = -(-n // size)
            order = torch.cat([torch.randperm(size, generator=g) if self.shuffle else torch.arange(size)
                               for _ in range(passes)])[:n]
        seeds = torch.randint(0, 2 ** 31 - 1, (n,), generator=g)
        rank, world = self.rank, self.num_replicas
        picks = range(rank, (n // world) * world, world)
        if self.resume_at is not None:  # once: the rest of an epoch interrupted mid-way
            epoch, done = self.resume_at
            self.resume_at = None
            if epoch == self.epoch:
                picks = picks[done:]
        return iter([(int(order[i]), int(seeds[i])) for i in picks])

    def resume(self, epoch: int, samples: int) -> None:
        """The next pass over ``epoch`` leaves out the first ``samples`` of this rank's order for it: a run resumed
        from a checkpoint written mid-epoch trains on the rest of that epoch, nothing seen twice or skipped. The
        sampler's length is unchanged (Lightning's epoch length, and so the schedule, stay those of the run)."""
        self.resume_at = (int(epoch), int(samples))


class ShardSampler(_RankAware):
    """Evaluation: rank ``r`` of ``w`` takes indices ``r, r + w, ...`` — no padding, so no sample is counted twice
    when metrics are summed across ranks (DistributedSampler pads uneven sets with duplicates)."""

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples_total, self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples_total, self.num_replicas))

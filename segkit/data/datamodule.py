"""LightningDataModule: a source (layout), albumentations pipelines from config, seeded loaders."""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, List, Optional, Sequence

import lightning as L
from torch.utils.data import DataLoader

from segkit.data.dataset import SegmentationDataset, pad_collate
from segkit.data.sampling import SeededSampler, ShardSampler
from segkit.data.io import default_palette
from segkit.data.sources import class_names_or_default


class SegmentationDataModule(L.LightningDataModule):
    """``num_classes``, ``ignore_index``, ``class_names`` and ``palette`` live here, once; configs interpolate them.

    ``split`` is the split that evaluation and prediction use (``val`` by default); ``crop_size`` is the training
    input size that the augmentation pipeline produces.
    """

    def __init__(self, source: Any, num_classes: int, ignore_index: int = 255,
                 class_names: Optional[Sequence[str]] = None, palette: Optional[Sequence[Sequence[int]]] = None,
                 batch_size: int = 8, eval_batch_size: int = 1, num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: bool = False, train_transform: Optional[Callable] = None,
                 eval_transform: Optional[Callable] = None, split: str = "val", seed: int = 0,
                 crop_size: Optional[int] = None) -> None:
        super().__init__()
        self.source = source
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.class_names = class_names_or_default(class_names, self.num_classes)
        self.palette = [list(c) for c in palette] if palette is not None else default_palette(self.num_classes)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.split, self.seed = split, seed
        self.crop_size = crop_size  # the training input size (used for the start-up shape check)
        self._datasets: dict[str, SegmentationDataset] = {}

    def dataset(self, split: str, train: bool = False) -> SegmentationDataset:
        key = f"{split}:{train}"
        if key not in self._datasets:
            self._datasets[key] = SegmentationDataset(
                self.source.samples(split), self.num_classes, self.ignore_index,
                self.train_transform if train else self.eval_transform, getattr(self.source, "label_map", None))
        return self._datasets[key]

    def _loader(self, dataset: SegmentationDataset, batch_size: int, train: bool) -> DataLoader:
        # Samplers are built here, rank-aware, so the order depends only on (seed, epoch, rank): exact resume, and
        # no duplicated evaluation samples under DDP (trainer configs set use_distributed_sampler=false there).
        sampler = SeededSampler(len(dataset), self.seed) if train else ShardSampler(len(dataset))
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.persistent_workers,
                          collate_fn=partial(pad_collate, ignore_index=self.ignore_index), drop_last=train)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("train", train=True), self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), self.eval_batch_size, train=False)

    def eval_dataloader(self, split: Optional[str] = None) -> DataLoader:
        """The loader for ``split`` (default: the configured evaluation split)."""
        return self._loader(self.dataset(split or self.split), self.eval_batch_size, train=False)

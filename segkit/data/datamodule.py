"""LightningDataModule: a source (layout), albumentations pipelines from config, seeded loaders."""
from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
from functools import partial
from typing import Any, Callable, Optional, Sequence, Union

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from segkit.data.dataset import SegmentationDataset, channel_stats, pad_collate
from segkit.data.sampling import SeededSampler, ShardSampler, class_presence, repeat_factors
from segkit.data.spec import IMAGENET_MEAN, IMAGENET_STD, DataSpec


def worker_init(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM and SIGUSR1: a stop signal sent to the whole process group (torchrun
    stopping its workers, a Kubernetes eviction, SLURM) is the training process's to handle (it checkpoints, see
    :class:`segkit.callbacks.Preemption`), and a worker killed by it would end the run first. Workers still end with
    their loader. Then Lightning's per-worker seeding, which it adds itself only to loaders without an init function."""
    for name in ("SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", "0")):
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


def _kill_workers_at_exit() -> None:
    """DataLoader workers ignore SIGTERM (:func:`worker_init`), which is how multiprocessing ends daemonic children
    when the interpreter exits: a run that stops with a loader's workers still up (an error raised while they run,
    with the iterator still referenced) would wait for them forever. At exit they get SIGKILL instead; registered
    after multiprocessing's own exit handler, so it runs first."""
    if hasattr(signal, "SIGCHLD"):  # torch's handler would report the killed workers as failed, at exit
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        if child.daemon and child.pid:
            try:
                os.kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


atexit.register(_kill_workers_at_exit)


class SegmentationDataModule(L.LightningDataModule):
    """The data config in one object: the source (layout), loaders, augmentation and the :class:`DataSpec`
    (``num_classes``, ``ignore_index``, class names, palette, ``in_channels``, ``mean``/``std``), set here once.

    ``split`` is the split that evaluation and prediction use (``val`` by default); ``crop_size`` is the training
    input size that the augmentation pipeline produces. ``class_names`` is a list or a file: ``class_names.txt`` (one
    per line) or a VOC/CVAT ``labelmap.txt`` (``name:r,g,b::``, whose colours become the palette). ``mean``/``std`` (0-1 units, one per channel) default to
    ImageNet's for 3-channel 8-bit images and are measured from the training images otherwise. ``cache``: keep
    decoded images in memory (``"auto"``: when they fit in ``cache_limit_mb``), so small datasets are decoded once.
    ``num_workers="auto"``: on a GPU, one loader process per core up to 8 (the node's cores divided among its
    devices' processes); on the CPU none when the images are
    held in memory (training then uses every core, measured faster on 2 cores), else half the cores up to 4.
    ``sampling``: ``uniform`` (each training image once per epoch) or ``repeat_factor``: images that contain classes
    present in fewer than ``repeat_threshold`` of the training images are drawn more often
    (:func:`~segkit.data.sampling.repeat_factors`; the masks are read once to find which classes each image holds).
    """

    def __init__(self, source: Any, num_classes: int, ignore_index: int = 255,
                 class_names: Union[Sequence[str], str, None] = None, palette: Optional[Sequence[Sequence[int]]] = None,
                 in_channels: int = 3, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 batch_size: int = 8, eval_batch_size: int = 1, num_workers: Union[int, str] = 0,
                 pin_memory: bool = False,
                 persistent_workers: bool = False, train_transform: Optional[Callable] = None,
                 eval_transform: Optional[Callable] = None, split: str = "val", seed: int = 0,
                 crop_size: Optional[int] = None, cache: Union[bool, str] = "auto",
                 cache_limit_mb: float = 512, sampling: str = "uniform", repeat_threshold: float = 0.1) -> None:
        super().__init__()
        if sampling not in ("uniform", "repeat_factor"):
            raise ValueError(f"data.sampling must be uniform or repeat_factor, got {sampling!r}")
        self.sampling, self.repeat_threshold = sampling, float(repeat_threshold)
        unresolved = [k for k, v in (("num_classes", num_classes), ("class_names", class_names),
                                     ("in_channels", in_channels), ("mean", mean), ("std", std),
                                     ("crop_size", crop_size), ("batch_size", batch_size)) if v == "auto"]
        if getattr(train_transform, "transforms", None) == "auto":
            unresolved.append("train_transform.transforms")
        if unresolved:
            raise ValueError(f"data.{unresolved[0]}=auto is decided from the training images by scripts/train.py "
                             "(segkit.data.plan); outside it, give a value")
        if cache not in (True, False, "auto"):
            raise ValueError(f"data.cache must be true, false or auto, got {cache!r}")
        self.source = source
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        if num_workers != "auto" and not (isinstance(num_workers, int) and num_workers >= 0):
            raise ValueError(f"data.num_workers must be auto or a number >= 0, got {num_workers!r}")
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.persistent_workers = persistent_workers
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.split, self.seed = split, seed
        self.crop_size = crop_size  # the training input size (used for the start-up shape check)
        self.cache, self.cache_limit_mb = cache, cache_limit_mb
        self._datasets: dict[str, SegmentationDataset] = {}
        if isinstance(class_names, (str, os.PathLike)):  # class_names.txt (one per line) or labelmap.txt
            from segkit.data.classnames import read_class_names

            class_names, file_palette = read_class_names(class_names)
            palette = file_palette if palette is None else palette
        if (mean is None) != (std is None):
            raise ValueError("set both data.mean and data.std, or neither (null: measured from the data)")
        self._spec_args = dict(num_classes=num_classes, ignore_index=ignore_index, class_names=class_names,
                               palette=palette, in_channels=in_channels)
        self._mean_std = (list(mean), list(std)) if mean is not None else None
        # labels and channels are known (and checked) now; normalisation may be measured later
        c = int(in_channels)
        labels = DataSpec(**self._spec_args, mean=[0.0] * c, std=[1.0] * c)
        self.num_classes, self.ignore_index, self.in_channels = labels.num_classes, labels.ignore_index, c
        self.class_names, self.palette = labels.class_names, labels.palette
        self._spec: Optional[DataSpec] = None

    # ---- the spec ------------------------------------------------------------------------------------------
    @property
    def spec(self) -> DataSpec:
        """The :class:`DataSpec`; measuring ``mean``/``std`` from the training images the first time if unset."""
        if self._spec is None:
            mean_std = self._mean_std
            floats = self._float_images()
            if mean_std is None:
                if self.in_channels == 3 and not floats:
                    mean_std = (list(IMAGENET_MEAN), list(IMAGENET_STD))
                    why = "ImageNet's (3-channel 8-bit images)"
                else:
                    mean_std = channel_stats(self.dataset("train"))
                    why = "measured on the training images"
                rank_zero_info(f"data.mean={[round(v, 4) for v in mean_std[0]]} data.std="
                               f"{[round(v, 4) for v in mean_std[1]]}: {why}")
            self._spec = DataSpec(**self._spec_args, mean=mean_std[0], std=mean_std[1],
                                  image_dtype="float32" if floats else "uint8")
        return self._spec

    def _float_images(self) -> bool:
        """Whether training images are read as float (16-bit or float files; any of them, as a batch mixing 8- and
        16-bit files is float): from the decoded cache when there is one, else from the files' headers."""
        from segkit.data.io import reads_as_float

        try:
            dataset = self.dataset("train")
        except Exception:  # no train split (evaluation-only data): the spec comes from the checkpoint anyway
            return False
        if getattr(dataset, "streamed", False):  # measured when the shards were written
            return self.source.bit_depth() > 8
        if dataset._cache is not None:
            return any(image.dtype.kind == "f" for image, _ in dataset._cache)
        return any(reads_as_float(path) for path, _ in dataset.samples)

    # ---- datasets and loaders ------------------------------------------------------------------------------
    def dataset(self, split: str, train: bool = False) -> SegmentationDataset:
        key = f"{split}:{train}"
        if key not in self._datasets and hasattr(self.source, "dataset"):  # streamed shards (data=streaming)
            self._datasets[key] = self.source.dataset(
                split, self.num_classes, self.ignore_index, self.train_transform if train else self.eval_transform,
                self.in_channels, seed=self.seed, shuffle=train)
        if key not in self._datasets:
            base = self._datasets.get(f"{split}:{not train}")
            if base is not None:  # the same files with the other transform: share the decoded cache
                dataset = SegmentationDataset(base.samples, base.num_classes, base.ignore_index,
                                              self.train_transform if train else self.eval_transform,
                                              getattr(self.source, "label_map", None), base.channels)
                dataset._cache = base._cache
            else:
                dataset = SegmentationDataset(
                    self.source.samples(split), self.num_classes, self.ignore_index,
                    self.train_transform if train else self.eval_transform, getattr(self.source, "label_map", None),
                    self.in_channels)
            self._datasets[key] = dataset
        return self._datasets[key]

    def _maybe_preload(self, dataset: SegmentationDataset) -> None:
        if dataset._cache is not None or self.cache is False or getattr(dataset, "streamed", False):
            return
        if self.cache == "auto" and dataset.decoded_bytes_estimate() > self.cache_limit_mb * 2 ** 20:
            return
        dataset.preload()

    def _loader(self, dataset: SegmentationDataset, batch_size: int, train: bool) -> DataLoader:
        # Samplers are rank-aware DistributedSampler subclasses, so the order depends only on (seed, epoch, rank):
        # exact resume, no duplicated evaluation samples under DDP, and Lightning never shards a second time.
        if getattr(dataset, "streamed", False):
            return self._streamed_loader(dataset, batch_size, train)
        self._maybe_preload(dataset)
        if train:
            weights = self._sample_weights(dataset) if self.sampling == "repeat_factor" else None
            # a split smaller than one batch per device (one large image, say) is drawn several times per epoch, so
            # that an epoch holds at least one full batch (drop_last would otherwise leave no step at all)
            world = int(getattr(self.trainer, "world_size", 1) or 1)
            least = batch_size * world
            if len(dataset) < least:
                rank_zero_info(f"data.batch_size={batch_size}: the training split has {len(dataset)} image(s), "
                               f"fewer than one batch{' per device' if world > 1 else ''}; each epoch draws "
                               f"{least} samples from them (different augmentations)")
            sampler = SeededSampler(len(dataset), self.seed, weights=weights, min_samples=least)
        else:
            sampler = ShardSampler(len(dataset))
        workers = self._workers(dataset)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                          pin_memory=self.pin_memory, persistent_workers=self.persistent_workers and workers > 0,
                          collate_fn=partial(pad_collate, ignore_index=self.ignore_index), drop_last=train,
                          worker_init_fn=worker_init)

    def _streamed_loader(self, dataset: Any, batch_size: int, train: bool) -> DataLoader:
        """Training: litdata's StreamingDataLoader (shuffled chunks split across ranks and workers; its position is
        in every checkpoint, so a resumed run finishes the epoch it stopped in). Evaluation: every sample once, by
        index, in the rank-aware order of the other layouts (no sample dropped or repeated under DDP)."""
        from segkit.data.streaming import IndexedSplit

        workers = self._workers(dataset)
        collate = partial(pad_collate, ignore_index=self.ignore_index)
        if not train:
            return DataLoader(IndexedSplit(dataset), batch_size=batch_size, sampler=ShardSampler(dataset.total),
                              num_workers=workers, pin_memory=self.pin_memory, collate_fn=collate,
                              worker_init_fn=worker_init)
        if self.sampling != "uniform":
            raise ValueError(f"data.sampling={self.sampling} draws images by index; streamed data is read in shuffled "
                             "chunks: set data.sampling=uniform")
        from segkit.data.streaming import StreamLoader

        world = int(getattr(self.trainer, "world_size", 1) or 1)
        if dataset.total < batch_size * world:
            raise ValueError(f"data.batch_size={batch_size}: the streamed training split has {dataset.total} samples, "
                             f"fewer than one batch per device ({world} device(s)); lower data.batch_size")
        # persistent workers would keep the dataset copy of the first epoch (litdata sets the epoch in this process)
        return StreamLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=self.pin_memory,
                            collate_fn=collate, drop_last=True, worker_init_fn=worker_init,
                            batches_done=self._batches_done)

    def _batches_done(self) -> Optional[int]:
        """Training batches of the current epoch that finished (a checkpoint written inside on_train_batch_end
        counts that batch), or None outside fit."""
        trainer = self.trainer
        # a checkpoint written at a mid-epoch validation is a fit checkpoint too (trainer.training is False then)
        if trainer is None or trainer.state.fn != "fit" or trainer.sanity_checking:
            return None
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def _workers(self, dataset: SegmentationDataset) -> int:
        """``num_workers``, with ``auto`` resolved for this dataset and the trainer's device (see the class doc)."""
        if self.num_workers != "auto":
            return int(self.num_workers)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        trainer = self.trainer  # attached by fit/validate through the DataModule, and by segkit's evaluate
        on_gpu = trainer is not None and trainer.strategy.root_device.type != "cpu"
        # a SLURM task bound to its --cpus-per-task cores has them to itself; otherwise the cores this process may
        # use are shared by the node's (or container's) processes, one per device
        per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
        shared = not (per_task.isdigit() and cores <= int(per_task))
        if on_gpu:
            per_process = cores // trainer.num_devices if shared else cores
            workers = min(8, max(1, per_process))
            why = (f"GPU run, {cores} cores for {trainer.num_devices} device(s)" if shared else
                   f"GPU run, {cores} cores bound to this SLURM task")
        elif dataset._cache is not None:
            workers, why = 0, "CPU run, images decoded once and held in memory"
        else:
            workers, why = min(4, cores // 2), f"CPU run, images read from disk, {cores} cores"
        if not getattr(self, "_told_workers", False):
            rank_zero_info(f"data.num_workers=auto -> {workers} ({why})")
            self._told_workers = True
        return workers

    def _sample_weights(self, dataset: SegmentationDataset) -> np.ndarray:
        """Repeat factors of the training images (computed once; the masks are read, or taken from the cache)."""
        if getattr(self, "_repeat_factors", None) is None or len(self._repeat_factors) != len(dataset):
            presence = class_presence(dataset, self.num_classes)
            factors = repeat_factors(presence, self.repeat_threshold)
            rare = [self.class_names[c] if self.class_names else str(c)
                    for c in np.flatnonzero(presence.mean(0) < self.repeat_threshold) if presence[:, c].any()]
            rank_zero_info(f"data.sampling=repeat_factor: repeat factors {factors.min():.2f}-{factors.max():.2f} "
                           f"(mean {factors.mean():.2f}); classes in under {self.repeat_threshold:.0%} of the "
                           f"training images: {', '.join(rare) or 'none'}")
            self._repeat_factors = factors
        return self._repeat_factors

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("train", train=True), self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), self.eval_batch_size, train=False)

    def eval_dataloader(self, split: Optional[str] = None) -> DataLoader:
        """The loader for ``split`` (default: the configured evaluation split)."""
        return self._loader(self.dataset(split or self.split), self.eval_batch_size, train=False)


"""Streamed datasets: any segkit layout written as litdata shards, read back from a folder or an object store.

``write_shards`` (``scripts/shard.py``) stores every sample of every split as its files' own encoded bytes (the JPEG,
PNG or TIFF as it was, and the mask PNG), in chunks of ``chunk_bytes``, one litdata dataset per split, plus
``segkit.json``: the sample counts, the class list, the layout's label map and the plan's statistics of the training
split (sizes, channels, bit depth, mean/std, class pixels), so that ``auto`` values need no pass over the data::

    write_shards(FolderSource("data/cells"), "s3://bucket/cells")      # or a local folder
    source = StreamingSource("s3://bucket/cells")                      # data=streaming data.source.root=...

Training reads a split through litdata's ``StreamingDataset``: chunks shuffled, then samples within a window of
chunks; the chunks split across ranks and DataLoader workers so that no sample is drawn twice in an epoch (with
several processes litdata drops the last few samples, fewer than one batch per process and worker, so that every rank
takes the same number of steps); the loader's position is saved in every checkpoint and a resumed run continues the
epoch where it stopped (Lightning restores ``StreamingDataLoader`` state). Evaluation reads every sample exactly once,
by index, in segkit's rank-aware order (:class:`~segkit.data.sampling.ShardSampler`). Decoding, channel conversion,
label mapping, mask checks and augmentation are those of the folder layouts (:mod:`segkit.data.io`); the augmentation
of a sample is seeded by ``(seed, epoch, name)``, so it does not depend on which worker or rank draws it, or on a
resume.

Object stores: ``s3://`` (and litdata's ``gs://``, ``r2://``) URLs; credentials and the endpoint come from the usual
AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for S3-compatible servers) or
``storage_options`` (boto3 client arguments, e.g. ``{endpoint_url: http://minio:9000}``). Remote chunks are cached in
``cache_dir`` (litdata's default cache folder when unset).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from segkit.data.io import DataError, _check_file, check_mask_values, label_lookup, mask_dtype, read_image, read_mask
from segkit.data.sources import SPLITS, MissingSplitError

META_FILE = "segkit.json"
FORMAT = "segkit-shards"
FORMAT_VERSION = 1
REMOTE_SCHEMES = ("s3://", "gs://", "r2://")
_EXTRA = "pip install 'segkit[streaming]' (litdata; it brings boto3 for s3:// URLs)"


def _litdata():
    """litdata, imported on first use (an optional extra), with its S3 client allowed to talk to http:// endpoints.

    litdata 0.2.76 downloads chunks through obstore with client options that replace obstore's defaults, so an
    S3-compatible server on plain http (MinIO, Ceph or moto inside a cluster) fails with "builder error" even when the
    endpoint URL says http://. Allowing http does not change https endpoints: the scheme of the endpoint decides."""
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")  # no query to PyPI (offline machines)
    try:
        import litdata
        from litdata.streaming import downloader
    except ImportError as exc:
        raise DataError(f"streamed datasets need litdata ({exc}); {_EXTRA}") from None
    options = getattr(downloader, "_OBSTORE_CLIENT_OPTIONS", None)
    if isinstance(options, dict):
        options.setdefault("allow_http", True)
    return litdata


def is_remote(location: str) -> bool:
    return str(location).startswith(REMOTE_SCHEMES)


def _join(root: str, *parts: str) -> str:
    if is_remote(root):
        return "/".join([str(root).rstrip("/"), *parts])
    return str(Path(root).expanduser().joinpath(*parts))


# ---- writing ------------------------------------------------------------------------------------------------

def _shard_item(sample: Sequence[Optional[str]]) -> Dict[str, Any]:
    """One sample as stored: the image file's bytes and name (its suffix tells the decoder), the mask file's bytes
    (empty when the sample has none). Runs in litdata's conversion workers."""
    image_path, mask_path, name = sample
    image = _check_file(Path(image_path), "image").read_bytes()
    mask = _check_file(Path(mask_path), "mask").read_bytes() if mask_path else b""
    return {"name": name, "file": Path(image_path).name, "image": image, "mask": mask}


def _split_samples(source: Any, splits: Optional[Sequence[str]]) -> Dict[str, List[tuple]]:
    out: Dict[str, List[tuple]] = {}
    for split in splits or SPLITS:
        try:
            samples = list(source.samples(split))
        except MissingSplitError:
            if splits:  # asked for by name
                raise
            continue
        if not samples:
            continue
        names: Dict[str, str] = {}
        rows = []
        for image, mask in samples:
            name = Path(image).stem
            if name in names:
                raise DataError(f"the {split} split has two images named {name!r} ({names[name]} and {image}); "
                                "sample names must be unique within a split")
            names[name] = str(image)
            for path, what in ((image, "image"), (mask, "mask")):
                if path is not None and not (Path(path).is_file() and Path(path).stat().st_size > 0):
                    raise DataError(f"the {split} split's {what} {path} is missing or empty; fix the file, or "
                                    f"write only the other splits (splits=[...])")
            rows.append((str(image), str(mask) if mask is not None else None, name))
        out[split] = rows
    if "train" not in out and not splits:
        raise DataError(f"{getattr(source, 'root', source)} has no training split to write")
    return out


def _exists(location: str, storage_options: Optional[dict]) -> bool:
    if not is_remote(location):
        return Path(location).expanduser().is_file()
    from litdata.streaming.fs_provider import _get_fs_provider

    return _get_fs_provider(location, storage_options).exists(location)


def _write_meta(output: str, meta: Dict[str, Any], storage_options: Optional[dict]) -> None:
    """``segkit.json`` last, and whole: a conversion that stopped early leaves none, and reading says so."""
    text = json.dumps(meta)
    if not is_remote(output):
        path = Path(output).expanduser() / META_FILE
        tmp = path.with_name(f".{META_FILE}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        return
    from litdata.streaming.fs_provider import _get_fs_provider

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / META_FILE
        local.write_text(text)
        _get_fs_provider(output, storage_options).upload_file(str(local), _join(output, META_FILE))


def write_shards(source: Any, output: str, splits: Optional[Sequence[str]] = None, chunk_bytes: str = "64MB",
                 num_workers: Optional[int] = None, ignore_index: Optional[int] = 255, overwrite: bool = False,
                 storage_options: Optional[dict] = None, max_images: Optional[int] = 1000,
                 log: Callable[[str], None] = print, class_names: Optional[Sequence[str]] = None,
                 palette: Optional[Sequence[Sequence[int]]] = None) -> Dict[str, Any]:
    """Write every split of ``source`` (a segkit layout) to ``output`` (a folder or an ``s3://`` URL) as litdata
    shards, then ``segkit.json``; return that metadata. ``splits``: the splits to write (default: all the layout has).
    The plan's statistics are measured on up to ``max_images`` evenly spread training images, as training would.
    A folder that already holds a converted dataset is refused unless ``overwrite``."""
    from segkit.data.plan import class_list_file, measure

    litdata = _litdata()
    output = str(output)
    if not is_remote(output):
        output = str(Path(output).expanduser().resolve())
    meta_path = _join(output, META_FILE)
    if not overwrite and _exists(meta_path, storage_options):
        raise DataError(f"{output} already holds a streamed dataset ({META_FILE}); pass overwrite=true to replace it, "
                        "or another output")
    rows = _split_samples(source, splits)
    if overwrite and _exists(meta_path, storage_options):  # an interrupted overwrite must not read as the old data
        if is_remote(output):
            from litdata.streaming.fs_provider import _get_fs_provider

            _get_fs_provider(meta_path, storage_options).delete_file_or_directory(meta_path)
        else:
            Path(meta_path).unlink()
    label_map = getattr(source, "label_map", None)
    stats = None
    if "train" in rows:
        stats = measure(source, "train", 0, ignore_index, max_images=max_images).to_dict()
    names = class_names if class_names is not None else getattr(source, "class_names", None)
    palette = palette if palette is not None else getattr(source, "palette", None)
    if names is None and class_list_file(source) is not None:
        from segkit.data.classnames import read_class_names

        names, palette = read_class_names(class_list_file(source))
    counts = {}
    with tempfile.TemporaryDirectory(prefix="segkit-shard-") as cache:
        previous = os.environ.get("DATA_OPTIMIZER_CACHE_FOLDER")
        os.environ["DATA_OPTIMIZER_CACHE_FOLDER"] = cache  # litdata's staging folder: not one /tmp/chunks for all
        try:
            for split, samples in rows.items():
                workers = num_workers if num_workers else max(1, min(os.cpu_count() or 1, len(samples) // 1000))
                log(f"{split}: {len(samples)} samples -> {_join(output, split)} ({workers} worker(s))")
                litdata.optimize(fn=_shard_item, inputs=samples, output_dir=_join(output, split),
                                 chunk_bytes=chunk_bytes, num_workers=workers, mode="overwrite",
                                 reorder_files=False, storage_options=storage_options or {}, verbose=False)
                counts[split] = len(samples)
        finally:
            if previous is None:
                os.environ.pop("DATA_OPTIMIZER_CACHE_FOLDER", None)
            else:
                os.environ["DATA_OPTIMIZER_CACHE_FOLDER"] = previous
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "splits": counts, "ignore_index": ignore_index,
            "label_map": {str(k): int(v) for k, v in label_map.items()} if label_map else None,
            "class_names": [str(n) for n in names] if names is not None else None,
            "palette": [list(map(int, c)) for c in palette] if palette is not None else None,
            "source": str(getattr(source, "root", type(source).__name__)), "stats": stats}
    _write_meta(output, meta, storage_options)
    return meta


# ---- reading ------------------------------------------------------------------------------------------------

def read_meta(root: str, storage_options: Optional[dict] = None) -> Dict[str, Any]:
    """``segkit.json`` of a streamed dataset, with errors that say what is wrong with ``root``."""
    location = _join(root, META_FILE)
    try:
        if is_remote(root):
            _litdata()
            from litdata.streaming.fs_provider import _get_fs_provider

            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / META_FILE
                _get_fs_provider(location, storage_options).download_file(location, str(local))
                text = local.read_text()
        else:
            text = Path(location).read_text()
    except FileNotFoundError:
        text = None
    except Exception as exc:  # botocore's errors: no such bucket or key, no credentials, no connection
        if "404" in str(exc) or "NoSuchKey" in str(exc) or "Not Found" in str(exc):
            text = None
        else:
            raise DataError(f"cannot read {location} ({type(exc).__name__}: {exc}); check the URL, the credentials "
                            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and the endpoint (AWS_ENDPOINT_URL or "
                            "data.source.storage_options.endpoint_url)") from None
    if text is None:
        raise DataError(f"{location} not found: data.source.root must be a folder or URL written by scripts/shard.py "
                        "(a conversion that stopped before the end leaves none: run it again with overwrite=true)")
    meta = json.loads(text)
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > FORMAT_VERSION:
        raise DataError(f"{location} is not a segkit streamed dataset of version <= {FORMAT_VERSION}")
    return meta


class StreamingSource:
    """``data=streaming``: the shards ``scripts/shard.py`` wrote, in a folder or at an object-store URL.

    Like the other layouts it names its classes (``class_names``/``palette`` from the original dataset's class list,
    or None) and its ``label_map``; :meth:`stats` gives the plan the statistics measured at conversion, and
    :meth:`dataset` the split itself. ``samples`` does not exist: there are no files to list."""

    def __init__(self, root: str, cache_dir: Optional[str] = None, storage_options: Optional[dict] = None,
                 shuffle_window: Optional[int] = None) -> None:
        self.root = str(root) if is_remote(str(root)) else str(Path(root).expanduser())
        self.cache_dir = str(Path(cache_dir).expanduser()) if cache_dir else None
        self.storage_options = dict(storage_options or {})
        self.shuffle_window = shuffle_window
        _litdata()  # the extra is needed to read any shards: say so now, not at the first batch
        self.meta = read_meta(self.root, self.storage_options)
        self.class_names = self.meta.get("class_names")
        self.class_names_origin = f"the dataset's class list, stored with the shards in {META_FILE}"
        self.palette = self.meta.get("palette")
        label_map = self.meta.get("label_map")
        self.label_map = {int(k): int(v) for k, v in label_map.items()} if label_map else None

    def splits(self) -> Dict[str, int]:
        return dict(self.meta["splits"])

    def _check_split(self, split: str) -> None:
        if split not in self.meta["splits"]:
            raise MissingSplitError(f"{self.root} holds no {split} split (it has {', '.join(self.meta['splits'])}); "
                                    f"write it with scripts/shard.py from a layout that has one")

    def stats(self, split: str = "train", num_classes: int = 0, ignore_index: Optional[int] = 255):
        """The plan's :class:`~segkit.data.plan.DatasetStats` of ``split``, as measured when the shards were written
        (only the training split's are stored). ``num_classes`` checks the class ids found against the config."""
        from segkit.data.plan import DatasetStats

        self._check_split(split)
        stored = self.meta.get("stats")
        if split != "train" or not stored:
            raise DataError(f"{self.root}: no statistics of the {split} split were stored")
        if ignore_index != self.meta.get("ignore_index"):
            raise DataError(f"data.ignore_index={ignore_index} but {self.root} was measured with ignore_index="
                            f"{self.meta.get('ignore_index')}; write the shards again with ignore_index={ignore_index}")
        stats = DatasetStats(**stored)
        if num_classes:
            pixels = list(stats.class_pixels)
            if len(pixels) > num_classes and any(pixels[num_classes:]):
                raise DataError(f"data.num_classes={num_classes} but the training masks of {self.root} hold class "
                                f"ids up to {len(pixels) - 1}; set data.num_classes={len(pixels)} (or auto)")
            stats.class_pixels = (pixels + [0] * num_classes)[:num_classes]
        return stats

    def bit_depth(self) -> int:
        return int((self.meta.get("stats") or {}).get("bit_depth", 8))

    def samples(self, split: str) -> List[Any]:
        raise DataError(f"{self.root} is a streamed dataset: it has no image files to list. This command needs a "
                        "folder layout (data=folder, data=voc, ...): use the dataset the shards were written from")

    def dataset(self, split: str, num_classes: int, ignore_index: Optional[int], transform: Optional[Callable],
                channels: Optional[int], seed: int = 0, shuffle: bool = False) -> "StreamedSplit":
        self._check_split(split)
        return StreamedSplit(_join(self.root, split), int(self.meta["splits"][split]), num_classes, ignore_index, transform, self.label_map, channels,
                             seed=seed, shuffle=shuffle, cache_dir=_join(self.cache_dir, split) if self.cache_dir
                             else None, storage_options=self.storage_options, shuffle_window=self.shuffle_window)


try:  # an optional extra: without it the module imports and StreamingSource says what to install
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
    from litdata import StreamingDataLoader as _StreamingDataLoader
    from litdata import StreamingDataset as _StreamingDataset

    # its INFO lines (the cache budget, the read mode) repeat for every split, worker and epoch
    logging.getLogger("litdata").setLevel(logging.WARNING)
except ImportError:  # pragma: no cover - exercised only without the extra
    _StreamingDataset = _StreamingDataLoader = object


class StreamedSplit(_StreamingDataset):
    """One split of a streamed dataset: litdata's ``StreamingDataset`` whose items are segkit's (the image as
    uint8 or float 0-1, ``(C, H, W)``; the mask in its compact dtype; the sample's name), decoded, checked and
    augmented as :class:`~segkit.data.dataset.SegmentationDataset` does. Iterating it streams (shuffled when
    ``shuffle``); ``load(i)`` and ``split[i]`` read one sample by index."""

    streamed = True  # the data module builds a StreamingDataLoader for it

    def __init__(self, input_dir: str, total: int, num_classes: int, ignore_index: Optional[int] = 255,
                 transform: Optional[Callable] = None, label_map: Optional[Dict[int, int]] = None,
                 channels: Optional[int] = None, seed: int = 0, shuffle: bool = False,
                 cache_dir: Optional[str] = None, storage_options: Optional[dict] = None,
                 shuffle_window: Optional[int] = None) -> None:
        kwargs = {"item_shuffle_window": shuffle_window} if shuffle_window else {}
        try:
            super().__init__(input_dir, cache_dir=cache_dir, shuffle=shuffle, seed=seed,
                             storage_options=storage_options or {}, **kwargs)
        except (AssertionError, FileNotFoundError, ValueError) as exc:
            raise DataError(f"cannot open the streamed split {input_dir} ({exc}); write it again with "
                            "scripts/shard.py") from None
        self.input_location = input_dir
        # every sample of the split (len() is litdata's: this rank's share of an epoch, after drop_last)
        self.total = int(total)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        # not `transform`: StreamingDataset applies an attribute of that name to the raw item itself
        self.augment, self.channels, self.base_seed = transform, channels, int(seed)
        self.mask_dtype = mask_dtype(num_classes, ignore_index)
        self.lut = label_lookup(label_map, 255 if ignore_index is None else ignore_index)
        self._cache = None  # never held in memory (the datamodule's cache logic reads this)

    def _where(self, item: Dict[str, Any]) -> str:
        return f"{self.input_location}:{item['name']} ({item['file']})"

    def decode(self, item: Dict[str, Any]) -> tuple:
        where = self._where(item)
        image = read_image(Path(f"{self.input_location}/{item['file']}"), self.channels, data=item["image"])
        if not len(item["mask"]):
            raise DataError(f"no mask for the streamed sample {where}")
        mask = read_mask(Path(where), data=item["mask"])
        if self.lut is not None:
            mask = self.lut[np.clip(mask, 0, len(self.lut) - 1)]
        check_mask_values(mask, self.num_classes, self.ignore_index, Path(where))
        if image.shape[:2] != mask.shape:
            raise DataError(f"the streamed sample {where} has an image of {image.shape[1]}x{image.shape[0]} and "
                            f"a mask of {mask.shape[1]}x{mask.shape[0]}; they must have the same size")
        return image, mask.astype(self.mask_dtype, copy=False)

    def load(self, index: int) -> tuple:
        """The raw image and checked mask of sample ``index`` (no augmentation)."""
        return self.decode(super().__getitem__(index))

    def names(self) -> List[str]:
        """Every sample's name, in index order (reads the samples' bytes, decodes nothing)."""
        return [super(StreamedSplit, self).__getitem__(i)["name"] for i in range(self.total)]

    def __getitem__(self, index: Any) -> Dict[str, Any]:
        item = super().__getitem__(index)
        image, mask = self.decode(item)
        if self.augment is not None:
            if hasattr(self.augment, "set_random_seed"):  # the same augmentation wherever it is drawn
                key = f"{self.base_seed}:{self.current_epoch}:{item['name']}".encode()
                self.augment.set_random_seed(zlib.crc32(key))
            out = self.augment(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": torch.from_numpy(np.require(image.transpose(2, 0, 1), requirements=("C", "W"))),
            "mask": torch.from_numpy(np.require(mask, dtype=self.mask_dtype, requirements=("C", "W"))),
            "name": item["name"],
        }



class IndexedSplit(Dataset):
    """A streamed split read by index (evaluation: every sample once, in the order of segkit's samplers)."""

    def __init__(self, split: StreamedSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return self.split.total

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.split[int(index)]


class StreamLoader(_StreamingDataLoader):
    """litdata's StreamingDataLoader whose saved position is what training consumed, not what was fetched.

    litdata counts a batch when the loader hands it out, and Lightning fetches ahead of the step it trains (and the
    workers ahead of that), so a checkpoint written mid-epoch said the epoch was further on (at step 6 of 4-step
    epochs, 16 samples of 16 instead of 8): the resumed run skipped the batches in between, and started the next
    epoch's order one epoch late. ``batches_done()`` gives the batches of this epoch that training finished (Lightning's
    progress), and the state is written for those; with several workers, which worker yields next follows from the
    round-robin order the workers yield in."""

    def __init__(self, *args: Any, batches_done: Optional[Callable[[], Optional[int]]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches_done = batches_done
        self._resumed_epoch_started = False

    def load_state_dict(self, obj: Dict[str, Any]) -> None:
        super().load_state_dict(obj)
        self._resumed_epoch_started = False

    def __iter__(self) -> Any:
        # litdata clears its "restored" flag only when the resumed epoch's iterator runs to its end; Lightning stops
        # drawing once the epoch's remaining batches are done, so the next epoch found the flag still set and the
        # resumed position (a whole epoch drawn): no batch at all. A resumed epoch that yielded a batch is over when
        # the next iterator is asked for.
        if self.restore and self._resumed_epoch_started:
            self.restore = False
        resuming = self.restore
        self._resumed_epoch_started = False
        for batch in super().__iter__():
            self._resumed_epoch_started = resuming
            yield batch

    def state_dict(self) -> Dict[str, Any]:
        done = self._batches_done() if self._batches_done is not None else None
        if done is None:
            return super().state_dict()
        fetched = self._num_samples_yielded_streaming, self._latest_worker_idx
        self._num_samples_yielded_streaming = int(done) * int(self.batch_size)
        self._latest_worker_idx = (int(done) - 1) % max(1, self.num_workers) if done else 0
        try:
            return super().state_dict()
        finally:
            self._num_samples_yielded_streaming, self._latest_worker_idx = fetched

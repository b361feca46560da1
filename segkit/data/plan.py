"""The dataset decides the recipe: measure the training split, then resolve config values left as ``auto``.

In the spirit of nnU-Net: image sizes give the crop and batch size, intensity statistics give the normalisation,
class frequencies decide whether the loss needs help with rare classes, and the run says what it chose and why::

    stats = measure(datamodule.source, "train", num_classes=cfg.data.num_classes, ignore_index=255)
    for line in resolve_auto(cfg, stats):
        log.info(line)          # "data.crop_size=224: chose ... because ..."

Only the keys listed in :func:`resolve_auto` whose value is the string ``"auto"`` are touched; a value the user set
always wins, and other ``auto`` values (``callbacks.speed.channels_last``, ``data.num_workers``) keep their own meaning.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from segkit.data.io import DataError, check_mask_values, label_lookup, read_mask
from segkit.data.spec import IMAGENET_MEAN, IMAGENET_STD

AUTO = "auto"
# A class whose share of the labelled training pixels is below this is "rare": plain cross-entropy lets the
# network ignore it (it costs almost nothing), so the loss gets a Dice term, which weighs every class equally.
RARE_CLASS_FREQUENCY = 0.05
# Training pixels per batch (16 crops of 256 x 256) and the fewest optimisation steps per epoch.
PIXELS_PER_BATCH = 16 * 256 * 256
MIN_STEPS_PER_EPOCH = 10
MAX_CROP = 512
# Mean absolute difference between colour channels (0-1 units) below which a 3-channel image is grey in disguise
# (grayscale saved as RGB, JPEG's chroma noise included).
GREY_TOLERANCE = 2.0 / 255
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL's convert("L") and segkit's read_image


def read_native(path: Path) -> np.ndarray:
    """An image as ``(H, W, C)`` in its own channels: segkit's reader (uint8 for 8-bit files, float32 in 0-1 for
    16-bit ones, float files as stored), without channel conversion."""
    from segkit.data.io import read_image

    return read_image(path, channels=None)


@dataclass
class DatasetStats:
    """What :func:`measure` found on one split. ``mean``/``std`` are per channel in 0-1 units (population std);
    sizes, statistics and class pixels are those of the ``num_measured`` images read (all ``num_images`` unless
    ``max_images`` was given)."""

    num_images: int
    num_measured: int
    channels: int
    bit_depth: int  # 8 (uint8 files) or 32 (read as float: 16-bit and float files)
    heights: List[int]
    widths: List[int]
    mean: List[float]
    std: List[float]
    class_pixels: List[int]
    ignored_pixels: int = 0
    grey_as_rgb: bool = False  # 3 channels that are (nearly) equal everywhere
    luma_mean: Optional[float] = None  # statistics of the luminance, for grey_as_rgb images read as 1 channel
    luma_std: Optional[float] = None
    split: str = "train"
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def class_frequency(self) -> List[float]:
        total = sum(self.class_pixels)
        return [c / total if total else 0.0 for c in self.class_pixels]

    @property
    def photographic(self) -> bool:
        """3-channel 8-bit colour images: the kind ImageNet statistics describe."""
        return self.channels == 3 and self.bit_depth == 8 and not self.grey_as_rgb

    def median_size(self) -> tuple[int, int]:
        return int(np.median(self.heights)), int(np.median(self.widths))

    def rare_classes(self, threshold: float = RARE_CLASS_FREQUENCY) -> List[int]:
        return [i for i, f in enumerate(self.class_frequency) if f < threshold]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def measure(source: Any, split: str = "train", num_classes: int = 0, ignore_index: Optional[int] = 255,
            max_images: Optional[int] = None, reader: Callable[[Path], np.ndarray] = read_native) -> DatasetStats:
    """Read every image and mask of ``split`` once and summarise them (see :class:`DatasetStats`).

    ``source`` is any segkit source (``samples(split)`` -> ``(image, mask)`` paths; its ``label_map`` applies).
    ``max_images`` measures an evenly spread subset instead. Masks are checked against ``num_classes``.
    """
    samples = list(source.samples(split))
    if not samples:
        raise DataError(f"the {split} split of {getattr(source, 'root', source)} has no images")
    num_images = len(samples)
    if max_images and len(samples) > max_images:
        samples = [samples[i] for i in np.linspace(0, len(samples) - 1, max_images).round().astype(int)]
    lut = label_lookup(getattr(source, "label_map", None), ignore_index if ignore_index is not None else 255)
    channels = bit_depth = None
    total = sq = None
    count = 0
    luma_sum = luma_sq = chroma = 0.0
    heights, widths = [], []
    class_pixels = np.zeros(max(num_classes, 1), np.int64)
    ignored = 0
    for image_path, mask_path in samples:
        image = reader(image_path)
        h, w, c = image.shape
        if channels is None:
            channels, bit_depth = c, 8 if image.dtype == np.uint8 else 32
            total, sq = np.zeros(c), np.zeros(c)
        elif c != channels:
            raise DataError(f"image {image_path} has {c} channels but earlier {split} images have {channels}; "
                            "convert the images to one channel count")
        x = image.reshape(-1, c).astype(np.float64)
        if image.dtype == np.uint8:
            x /= 255.0
        total += x.sum(0)
        sq += np.square(x).sum(0)
        count += x.shape[0]
        if c in (3, 4):  # colour (alpha ignored): luminance, and how far the channels differ
            luma = x[:, :3] @ _LUMA
            luma_sum += luma.sum()
            luma_sq += np.square(luma).sum()
            chroma += np.abs(x[:, 0] - x[:, 1]).sum() + np.abs(x[:, 1] - x[:, 2]).sum()
        heights.append(h)
        widths.append(w)
        if mask_path is not None and num_classes:
            mask = read_mask(mask_path)
            if lut is not None:
                mask = lut[mask]
            if mask.shape != (h, w):
                raise DataError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} "
                                f"is {w}x{h}; they must match")
            check_mask_values(mask, num_classes, ignore_index, mask_path)
            valid = mask != ignore_index if ignore_index is not None else np.ones(mask.shape, bool)
            class_pixels += np.bincount(mask[valid].ravel().astype(np.int64), minlength=num_classes)[:num_classes]
            ignored += int(mask.size - valid.sum())
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean ** 2, 0.0))
    grey = channels in (3, 4) and chroma / (2 * count) < GREY_TOLERANCE
    luma_mean = luma_sum / count if channels in (3, 4) else None
    luma_std = math.sqrt(max(luma_sq / count - luma_mean ** 2, 0.0)) if luma_mean is not None else None
    return DatasetStats(num_images=num_images, num_measured=len(samples), channels=int(channels), bit_depth=int(bit_depth),
                        heights=heights, widths=widths, mean=mean.tolist(), std=std.tolist(),
                        class_pixels=class_pixels.tolist() if num_classes else [], ignored_pixels=ignored,
                        grey_as_rgb=bool(grey), luma_mean=luma_mean, luma_std=luma_std, split=split)


# ---- resolving "auto" -----------------------------------------------------------------------------------------

def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value == AUTO


def auto_keys(cfg: Any, prefix: str = "") -> List[str]:
    """Dotted paths of every value equal to ``"auto"`` in ``cfg`` (interpolations are not resolved)."""
    keys: List[str] = []
    if isinstance(cfg, DictConfig):
        for key in cfg.keys():
            path = f"{prefix}{key}"
            if OmegaConf.is_missing(cfg, key) or OmegaConf.is_interpolation(cfg, key):
                continue
            value = cfg[key]
            if _is_auto(value):
                keys.append(path)
            elif isinstance(value, (DictConfig, ListConfig)):
                keys += auto_keys(value, path + ".")
    return keys


DATA_KEYS = ("data.in_channels", "data.mean", "data.std", "data.crop_size", "data.batch_size")


def planned_keys(cfg: DictConfig) -> List[str]:
    """The ``auto`` keys that :func:`resolve_auto` decides; other ``auto`` values (``callbacks.speed.channels_last``,
    ``data.cache``, ``data.num_workers``) keep their own meaning and are left alone."""
    return [k for k in auto_keys(cfg) if k in DATA_KEYS
            or (k.startswith("task.loss.") and (k.endswith(".weights.dice") or k.endswith(".class_weights")))]


def crop_size_for(stats: DatasetStats, multiple: int = 32, largest: int = MAX_CROP) -> int:
    """The median image's longer side rounded up to ``multiple`` (whole images fit), at most ``largest``."""
    h, w = stats.median_size()
    return int(min(largest, math.ceil(max(h, w) / multiple) * multiple))


def batch_size_for(crop: int, num_images: int) -> int:
    """About ``PIXELS_PER_BATCH`` pixels per batch, but at least ``MIN_STEPS_PER_EPOCH`` steps per epoch; 2-16."""
    by_memory = PIXELS_PER_BATCH // (crop * crop)
    by_steps = num_images // MIN_STEPS_PER_EPOCH
    return int(max(2, min(16, by_memory, by_steps)))


def class_weights_for(stats: DatasetStats, clip: float = 10.0) -> List[float]:
    """Median-frequency balancing (Eigen & Fergus 2015): ``median(f) / f_c``, clipped to ``[1/clip, clip]``;
    classes absent from the training split get weight 1."""
    freq = np.array(stats.class_frequency)
    present = freq > 0
    weights = np.ones_like(freq)
    weights[present] = np.median(freq[present]) / freq[present]
    return np.clip(weights, 1.0 / clip, clip).round(4).tolist()


def _sig(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits (16-bit microscopy can have a mean of 0.00045 in 0-1 units)."""
    return float(f"{value:.{digits}g}")


def _std(value: float) -> float:
    """A measured std for normalising; a constant channel (std ~ 0) gets 1, so it is centred, not amplified."""
    return _sig(value) if value > 1e-6 else 1.0


def _normalisation(stats: DatasetStats, in_channels: int) -> tuple[list, list, str]:
    if stats.photographic and in_channels == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD), "the images are 3-channel 8-bit colour photos (ImageNet's)"
    if in_channels == 1 and stats.luma_mean is not None:  # colour files read as one channel: their luminance
        return ([_sig(stats.luma_mean)], [_std(stats.luma_std)],
                "measured on the luminance of the training images (read as 1 channel)")
    if in_channels == 3 and stats.channels == 1:  # grey files repeated to RGB by read_image
        return ([_sig(stats.mean[0])] * 3, [_std(stats.std[0])] * 3,
                "measured on the training images (grey, repeated to 3 channels)")
    if in_channels == 3 and stats.channels == 4:  # RGBA read as RGB: alpha dropped
        stats = DatasetStats(**{**stats.to_dict(), "channels": 3, "mean": stats.mean[:3], "std": stats.std[:3]})
        return _normalisation(stats, 3)
    if in_channels != stats.channels:
        raise DataError(f"data.in_channels={in_channels} but the training images have {stats.channels} channels; "
                        "set data.in_channels=auto or to the images' channel count")
    kind = {8: "8-bit"}.get(stats.bit_depth, "16-bit/float")
    what = "grey" if stats.channels == 1 or stats.grey_as_rgb else f"{stats.channels}-channel"
    return ([_sig(v) for v in stats.mean], [_std(v) for v in stats.std],
            f"measured on the training images ({what} {kind}, not photographs)")


def resolve_auto(cfg: DictConfig, stats: DatasetStats) -> List[str]:
    """Replace every ``"auto"`` value in the composed config ``cfg`` from ``stats``; return one line per choice.

    Rules (the values a user sets are never touched):
      - ``data.in_channels``: 1 for grey images stored as RGB, else the images' channel count.
      - ``data.mean``/``data.std``: ImageNet's for 3-channel 8-bit colour photos, else measured per channel.
      - ``data.crop_size``: the median image's longer side rounded up to 32, at most 512.
      - ``data.batch_size``: ~16 crops of 256^2 worth of pixels, at least 10 steps per epoch, 2-16.
      - ``*.weights.dice`` (``task/loss=auto``): 1 when a class holds under 5% of the labelled training pixels
        (CE + Dice), else 0 (plain CE).
      - ``*.class_weights``: median-frequency weights when a class is rare, else null.
    """
    lines: List[str] = []
    pending = planned_keys(cfg)
    rare = stats.rare_classes()
    freq = stats.class_frequency
    names = list(cfg.data.get("class_names") or []) if "data" in cfg else []

    def name(i: int) -> str:
        return str(names[i]) if i < len(names) else f"class {i}"

    rare_text = ", ".join(f"{name(i)} {100 * freq[i]:.2f}%" for i in rare)

    def put(key: str, value: Any, why: str) -> None:
        with open_dict(cfg):
            OmegaConf.update(cfg, key, value, merge=False)
        shown = value if not isinstance(value, list) or len(value) <= 8 else f"[{len(value)} values]"
        lines.append(f"{key}={shown}: chose this because {why}")

    if "data.in_channels" in pending:
        grey = stats.grey_as_rgb
        put("data.in_channels", 1 if grey else stats.channels,
            "the training images are grey saved as 3 identical channels" if grey
            else f"the training images have {stats.channels} channel(s)")
    if "data.mean" in pending or "data.std" in pending:
        in_channels = cfg.data.get("in_channels")
        in_channels = stats.channels if in_channels is None or _is_auto(in_channels) else int(in_channels)
        mean, std, why = _normalisation(stats, in_channels)
        for key, value in (("data.mean", mean), ("data.std", std)):
            if key in pending:
                put(key, value, why)
    if "data.crop_size" in pending:
        h, w = stats.median_size()
        put("data.crop_size", crop_size_for(stats),
            f"the median training image is {w}x{h} (whole images fit, rounded up to 32, at most {MAX_CROP})")
    if "data.batch_size" in pending:
        crop = cfg.data.get("crop_size")
        crop = int(crop) if crop is not None and not _is_auto(crop) else crop_size_for(stats)
        size = batch_size_for(crop, stats.num_images)
        put("data.batch_size", size, f"{crop}x{crop} crops, ~{PIXELS_PER_BATCH // 65536} x 256^2 pixels per batch "
            f"and at least {MIN_STEPS_PER_EPOCH} steps per epoch over {stats.num_images} training images")
    for key in [k for k in pending if k.endswith(".weights.dice")]:
        put(key, 1.0 if rare else 0.0,
            f"classes under {100 * RARE_CLASS_FREQUENCY:.0f}% of the training pixels ({rare_text}) need a loss "
            "that weighs classes equally (CE + Dice)" if rare else
            f"every class holds at least {100 * RARE_CLASS_FREQUENCY:.0f}% of the training pixels (plain CE)")
    for key in [k for k in pending if k.endswith("class_weights")]:
        if rare:
            put(key, class_weights_for(stats), f"rare classes ({rare_text}): median-frequency weights")
        else:
            put(key, None, f"no class under {100 * RARE_CLASS_FREQUENCY:.0f}% of the training pixels")
    return lines


def plan_from_config(cfg: DictConfig, source: Any, max_images: Optional[int] = 1000) -> List[str]:
    """Measure the training split of ``source`` when ``cfg`` has keys to plan, resolve them, return the log lines
    (none, and nothing read, when there is nothing to resolve). Large datasets are measured on ``max_images``
    evenly spread training images (statistics of 1000 images are as good as of all, and Cityscapes-sized
    images take ~0.1 s each to decode)."""
    if not planned_keys(cfg):
        return []
    data = cfg.data
    stats = measure(source, "train", int(data.num_classes), data.get("ignore_index"), max_images=max_images)
    return resolve_auto(cfg, stats)


__all__ = ["AUTO", "DATA_KEYS", "DatasetStats", "auto_keys", "batch_size_for", "class_weights_for", "crop_size_for",
           "measure", "plan_from_config", "planned_keys", "read_native", "resolve_auto"]

"""The dataset decides the recipe: measure the training split, then resolve config values left as ``auto``.

In the spirit of nnU-Net: the class list comes from the dataset (a class list file in its root, else the mask
values), image sizes give whole images or crops, the batch size and the augmentation, intensity statistics give the
normalisation, class frequencies decide whether the loss needs help with rare classes, and the run says what it
chose and why::

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
# (grayscale saved as RGB, JPEG's chroma noise included) ...
GREY_TOLERANCE = 2.0 / 255
# ... and at most this fraction of the luminance's spread: 12-bit colour data stored in 16 bits (or a dim 8-bit
# photo) differs between channels by far less than 2/255 in absolute terms, yet it is colour.
GREY_RELATIVE_TOLERANCE = 0.05
# Class list files looked for in the dataset's root when data.class_names is auto (convert.py writes the first).
CLASS_LIST_FILES = ("class_names.txt", "labelmap.txt")
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
    ``max_images`` measures an evenly spread subset instead. Masks are checked against ``num_classes``; with
    ``num_classes=0`` (``data.num_classes=auto``) every mask value but ``ignore_index`` is counted, and
    ``class_pixels`` runs up to the largest value found.
    """
    samples = list(source.samples(split))
    if not samples:
        raise DataError(f"the {split} split of {getattr(source, 'root', source)} has no images")
    num_images = len(samples)
    if max_images and len(samples) > max_images:
        samples = [samples[i] for i in np.linspace(0, len(samples) - 1, max_images).round().astype(int)]
    lut = label_lookup(getattr(source, "label_map", None), ignore_index if ignore_index is not None else 255)
    channels = None
    depths = set()
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
            channels = c
            total, sq = np.zeros(c), np.zeros(c)
        elif c != channels:
            raise DataError(f"image {image_path} has {c} channels but earlier {split} images have {channels}; "
                            "convert the images to one channel count")
        depths.add(8 if image.dtype == np.uint8 else 32)
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
        if mask_path is not None and (num_classes or mask_path.is_file()):
            mask = read_mask(mask_path)
            if lut is not None:
                mask = lut[mask]
            if mask.shape != (h, w):
                raise DataError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} "
                                f"is {w}x{h}; they must match")
            if num_classes:
                check_mask_values(mask, num_classes, ignore_index, mask_path)
            valid = mask != ignore_index if ignore_index is not None else np.ones(mask.shape, bool)
            values = mask[valid].ravel().astype(np.int64)
            if values.size and values.min() < 0:
                raise DataError(f"mask {mask_path} has negative values; class ids are 0, 1, 2, ...")
            counts = np.bincount(values, minlength=max(num_classes, 1))
            if not num_classes and len(counts) > len(class_pixels):
                class_pixels = np.pad(class_pixels, (0, len(counts) - len(class_pixels)))
            class_pixels[:len(counts)] += counts[:len(class_pixels)]
            ignored += int(mask.size - valid.sum())
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean ** 2, 0.0))
    luma_mean = luma_sum / count if channels in (3, 4) else None
    luma_std = math.sqrt(max(luma_sq / count - luma_mean ** 2, 0.0)) if luma_mean is not None else None
    grey = channels in (3, 4) and is_grey(chroma / (2 * count), luma_std or 0.0)
    return DatasetStats(num_images=num_images, num_measured=len(samples), channels=int(channels),
                        bit_depth=max(depths), heights=heights, widths=widths, mean=mean.tolist(), std=std.tolist(),
                        class_pixels=class_pixels.tolist(), ignored_pixels=ignored,
                        grey_as_rgb=bool(grey), luma_mean=luma_mean, luma_std=luma_std, split=split,
                        extra={"mixed_bit_depth": True} if len(depths) > 1 else {})


def is_grey(channel_difference: float, luma_std: float) -> bool:
    """Whether colour channels whose mean absolute difference is ``channel_difference`` (0-1 units) hold one grey
    image: under ``GREY_TOLERANCE`` (JPEG's chroma noise on grey photos) and under ``GREY_RELATIVE_TOLERANCE`` of the
    luminance's spread, so that dim or high-bit-depth colour data (12 bits in 16: values below 0.0625) stays colour.
    Channels that are exactly equal are grey at any brightness."""
    return channel_difference <= min(GREY_TOLERANCE, GREY_RELATIVE_TOLERANCE * luma_std)


def class_list_file(source: Any) -> Optional[Path]:
    """The dataset's own class list: ``class_names.txt`` or ``labelmap.txt`` in the source's root, if any."""
    root = getattr(source, "root", None)
    for name in CLASS_LIST_FILES if root is not None else ():
        if (Path(root) / name).is_file():
            return Path(root) / name
    return None


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


DATA_KEYS = ("data.num_classes", "data.class_names", "data.in_channels", "data.mean", "data.std", "data.crop_size",
             "data.batch_size", "data.train_transform.transforms")


def planned_keys(cfg: DictConfig) -> List[str]:
    """The ``auto`` keys that :func:`resolve_auto` decides; other ``auto`` values (``callbacks.speed.channels_last``,
    ``data.cache``, ``data.num_workers``) keep their own meaning and are left alone."""
    return [k for k in auto_keys(cfg) if k in DATA_KEYS
            or (k.startswith("task.loss.") and (k.endswith(".weights.dice") or k.endswith(".class_weights")))]


def _round_up(value: int, multiple: int = 32) -> int:
    return int(math.ceil(value / multiple) * multiple)


def crop_size_for(stats: DatasetStats, multiple: int = 32, largest: int = MAX_CROP,
                  whole_images: bool = True) -> Optional[int]:
    """``None`` (whole images, padded per batch) when every training image fits in ``largest`` x ``largest``, as
    nnU-Net's patch is the whole image where it fits: nothing of an image is ever left out of an epoch, and the
    network sees the context it will see at evaluation. Larger images, or a chosen augmentation that crops
    (``whole_images=False``: ``data/augment=scale_crop`` needs a size): the median image's longer side rounded up to
    ``multiple``, at most ``largest``."""
    if whole_images and max(stats.heights) <= largest and max(stats.widths) <= largest:
        return None
    h, w = stats.median_size()
    return int(min(largest, _round_up(max(h, w), multiple)))


def batch_size_for(crop: Optional[int], num_images: int, stats: Optional[DatasetStats] = None) -> int:
    """About ``PIXELS_PER_BATCH`` pixels per batch, but at least ``MIN_STEPS_PER_EPOCH`` steps per epoch; 2-16.
    Whole images (``crop=None``) count as the largest training image, padded to 32, which a batch is padded to.
    A split smaller than the batch is drawn more than once per epoch (see ``SegmentationDataModule``)."""
    if crop:
        area = crop * crop
    else:
        if stats is None:
            raise ValueError("batch_size_for(crop=None) needs the dataset statistics (the image sizes)")
        area = _round_up(max(stats.heights)) * _round_up(max(stats.widths))
    by_memory = PIXELS_PER_BATCH // area
    by_steps = num_images // MIN_STEPS_PER_EPOCH
    return int(max(2, min(16, by_memory, by_steps)))


def augmentation_for(crop: Optional[int], ignore_index: Optional[int]) -> List[Dict[str, Any]]:
    """The training transforms (albumentations, as config nodes) for ``crop``: a horizontal flip of whole images, or
    for large images crops of ``crop`` (padded with ``ignore_index`` where an image is smaller), a third of them
    centred on labelled foreground as nnU-Net does, then the flip. No scale jitter and no photometric change: at
    the budgets measured (BENCHMARKS.md, the defaults panel) the flip alone beat DeepLab's 0.5-2x scale jitter with
    brightness/contrast by 0.1-0.3 mIoU; ``data/augment=scale_crop`` is that recipe for long schedules."""
    flip = {"_target_": "albumentations.HorizontalFlip"}
    if not crop:
        return [flip]
    fill_mask = 255 if ignore_index is None else int(ignore_index)
    ignore = [0] if ignore_index is None else [0, int(ignore_index)]
    return [
        {"_target_": "albumentations.PadIfNeeded", "min_height": crop, "min_width": crop, "position": "top_left",
         "fill": 0, "fill_mask": fill_mask},
        {"_target_": "albumentations.OneOf", "p": 1.0, "transforms": [
            {"_target_": "albumentations.CropNonEmptyMaskIfExists", "height": crop, "width": crop,
             "ignore_values": ignore, "p": 0.33},
            {"_target_": "albumentations.RandomCrop", "height": crop, "width": crop, "p": 0.67}]},
        flip,
    ]


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


def _put(cfg: DictConfig, lines: List[str], key: str, value: Any, why: str) -> None:
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False)
    shown = value if not isinstance(value, list) or len(value) <= 8 else f"[{len(value)} values]"
    if key.endswith("transforms") and isinstance(value, list):
        shown = "[" + ", ".join(str(t["_target_"]).rsplit(".", 1)[-1] for t in value) + "]"
    lines.append(f"{key}={shown}: chose this because {why}")


def resolve_labels(cfg: DictConfig, source: Any) -> List[str]:
    """``data.class_names`` and ``data.num_classes`` left as ``auto``, from the dataset itself: the layout's own
    classes (Cityscapes' 19), else a class list file in its root (:data:`CLASS_LIST_FILES`, as ``convert.py``
    writes; a labelmap's colours become the palette). ``num_classes`` then is the list's length; without a list it
    stays ``auto`` here and :func:`resolve_auto` takes it from the training masks. Returns the log lines."""
    from segkit.data.classnames import read_class_names

    lines: List[str] = []
    pending = planned_keys(cfg)
    data = cfg.data
    if "data.class_names" in pending:
        names, palette, where = getattr(source, "class_names", None), getattr(source, "palette", None), None
        if names is not None:
            where = getattr(source, "class_names_origin", None) or f"the {type(source).__name__} layout defines them"
        else:
            path = class_list_file(source)
            if path is not None:
                names, palette = read_class_names(path)
                where = f"the dataset lists them in {path.name}"
        if names is None:
            _put(cfg, lines, "data.class_names", None,
                 f"no {' or '.join(CLASS_LIST_FILES)} in the dataset's root (classes are named class_0, class_1, ...;"
                 " add the file, one name per line with class 0 first, to name them)")
        else:
            _put(cfg, lines, "data.class_names", [str(n) for n in names], where)
            if palette is not None and data.get("palette") is None:
                _put(cfg, lines, "data.palette", [list(map(int, c)) for c in palette], where)
    names = data.get("class_names")
    if "data.num_classes" in pending and isinstance(names, (list, ListConfig)) and names:
        _put(cfg, lines, "data.num_classes", len(names), "the class list names that many classes")
    elif isinstance(names, (list, ListConfig)) and names and not _is_auto(data.get("num_classes")) \
            and len(names) != int(data.num_classes):
        raise DataError(f"data.class_names has {len(names)} names but data.num_classes={data.num_classes}; set "
                        f"data.num_classes={len(names)} (or auto), or fix the class list")
    return lines


def resolve_auto(cfg: DictConfig, stats: DatasetStats) -> List[str]:
    """Replace every ``"auto"`` value in the composed config ``cfg`` from ``stats``; return one line per choice.

    Rules (the values a user sets are never touched; class names come first, from :func:`resolve_labels`):
      - ``data.num_classes``: the largest class id in the training masks + 1 (``ignore_index`` aside).
      - ``data.in_channels``: 1 for grey images stored as RGB, else the images' channel count.
      - ``data.mean``/``data.std``: ImageNet's for 3-channel 8-bit colour photos, else measured per channel.
      - ``data.crop_size``: null (whole images) when every training image fits in 512x512, else the median image's
        longer side rounded up to 32, at most 512.
      - ``data.batch_size``: ~16 x 256^2 pixels per batch, at least 10 steps per epoch, 2-16.
      - ``data.train_transform.transforms`` (``data/augment=auto``): a horizontal flip, after crops when the images
        are cropped (:func:`augmentation_for`).
      - ``*.weights.dice`` (``task/loss=auto``): 1 when a class holds under 5% of the labelled training pixels
        (CE + Dice), else 0 (plain CE).
      - ``*.class_weights``: median-frequency weights when a class is rare, else null.
    """
    lines: List[str] = []
    pending = planned_keys(cfg)

    def put(key: str, value: Any, why: str) -> None:
        _put(cfg, lines, key, value, why)

    if "data.num_classes" in pending:
        found = len(stats.class_pixels)
        if found < 2:
            ignore = cfg.data.get("ignore_index")
            raise DataError(
                f"data.num_classes=auto: the training masks hold no class id but 0 (ignore_index={ignore} aside). "
                "If they are 0/255 binary masks, divide them by 255 (object = 1) or set data.ignore_index=null and "
                "data.num_classes=256; else set data.num_classes yourself")
        put("data.num_classes", found, f"the largest class id in the training masks is {found - 1} "
            f"(ignore_index={cfg.data.get('ignore_index')} aside); set data.num_classes if a class is missing "
            "from the training split, or add a class_names.txt to the dataset")
    freq = stats.class_frequency  # one entry per class: measure() counted num_classes, or up to the largest id
    rare = stats.rare_classes()
    names = list(cfg.data.get("class_names") or []) if "data" in cfg else []

    def name(i: int) -> str:
        return str(names[i]) if i < len(names) else f"class {i}"

    rare_text = ", ".join(f"{name(i)} {100 * freq[i]:.2f}%" for i in rare)

    if "data.in_channels" in pending:
        grey = stats.grey_as_rgb
        put("data.in_channels", 1 if grey else stats.channels,
            "the training images are grey saved as 3 identical channels" if grey
            else f"the training images have {stats.channels} channel(s)")
    if stats.extra.get("mixed_bit_depth"):
        lines.append("note: the training images mix 8-bit and 16-bit/float files; each is scaled to 0-1 by its own "
                     "range (8-bit / 255, 16-bit / 65535) and batches are float")
    if "data.mean" in pending or "data.std" in pending:
        in_channels = cfg.data.get("in_channels")
        in_channels = stats.channels if in_channels is None or _is_auto(in_channels) else int(in_channels)
        mean, std, why = _normalisation(stats, in_channels)
        for key, value in (("data.mean", mean), ("data.std", std)):
            if key in pending:
                put(key, value, why)
    h, w = stats.median_size()
    # a recipe the user picked (data/augment=scale_crop) crops to data.crop_size: whole images only when planned
    whole = "data.train_transform.transforms" in pending or not (cfg.data.get("train_transform") or {}).get(
        "transforms") if "data" in cfg else True
    crop = cfg.data.get("crop_size") if "data" in cfg else None
    crop = int(crop) if crop and not _is_auto(crop) else None
    if "data.crop_size" in pending:
        crop = crop_size_for(stats, whole_images=whole)
        put("data.crop_size", crop,
            f"every training image fits in {MAX_CROP}x{MAX_CROP} (largest {max(stats.widths)}x{max(stats.heights)}):"
            " whole images, padded per batch" if crop is None else
            f"the median training image is {w}x{h} and the largest {max(stats.widths)}x{max(stats.heights)} "
            f"(crops of the median's longer side, rounded up to 32, at most {MAX_CROP})")
    if "data.batch_size" in pending:
        size = batch_size_for(crop, stats.num_images, stats)
        what = f"{crop}x{crop} crops" if crop else \
            f"whole images padded to {_round_up(max(stats.widths))}x{_round_up(max(stats.heights))}"
        put("data.batch_size", size, f"{what}, ~{PIXELS_PER_BATCH // 65536} x 256^2 pixels per batch "
            f"and at least {MIN_STEPS_PER_EPOCH} steps per epoch over {stats.num_images} training images")
    if "data.train_transform.transforms" in pending:
        put("data.train_transform.transforms", augmentation_for(crop, cfg.data.get("ignore_index")),
            ("whole images: a horizontal flip (no scale jitter or photometric change; data/augment=scale_crop is "
             "DeepLab's recipe for long schedules)") if not crop else
            (f"{crop}x{crop} crops of larger images (a third centred on labelled foreground, as nnU-Net), then a "
             "horizontal flip"))
    if "data.crop_size" not in pending and crop and h * w < crop * crop / 4:
        lines.append(f"warning: data.crop_size={crop} but the median training image is {w}x{h}: over 75% of every "
                     "crop is padding, which costs time and teaches nothing; set data.crop_size=auto (whole images "
                     "where they fit) or a size near the images'")
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
    """Resolve the labels (:func:`resolve_labels`), then measure the training split of ``source`` when ``cfg`` has
    keys left to plan and resolve them; return the log lines (none, and nothing read, when there is nothing to
    resolve). Large datasets are measured on ``max_images`` evenly spread training images (statistics of 1000
    images are as good as of all, and Cityscapes-sized images take ~0.1 s each to decode)."""
    if not planned_keys(cfg):
        return []
    lines = resolve_labels(cfg, source)
    if not planned_keys(cfg):
        return lines
    data = cfg.data
    num_classes = 0 if _is_auto(data.get("num_classes")) else int(data.num_classes)
    if hasattr(source, "stats"):  # streamed shards: measured when they were written, nothing to read now
        stats = source.stats("train", num_classes, data.get("ignore_index"))
    else:
        stats = measure(source, "train", num_classes, data.get("ignore_index"), max_images=max_images)
    return lines + resolve_auto(cfg, stats)


__all__ = ["AUTO", "CLASS_LIST_FILES", "DATA_KEYS", "DatasetStats", "augmentation_for", "auto_keys", "batch_size_for",
           "class_list_file", "class_weights_for", "crop_size_for", "is_grey", "measure", "plan_from_config",
           "planned_keys", "read_native", "resolve_auto", "resolve_labels"]

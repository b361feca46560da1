"""The one description of a dataset's labels and inputs that every part of segkit reads.

``num_classes``, ``ignore_index``, class names, palette, input channels and normalisation are set once, in the data
config; the DataModule builds a :class:`DataSpec` from it, the task and the losses read it, and it travels inside
every checkpoint (as a plain dict) so that evaluation, prediction and export rebuild exactly what training used.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_palette(num_classes: int) -> List[List[int]]:
    """The PASCAL VOC colour map, which extends to any number of classes."""
    palette = []
    for i in range(num_classes):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette


@dataclass
class DataSpec:
    """Labels and inputs of a dataset.

    ``mean``/``std`` are per input channel in 0-1 units: images arrive as uint8 (divided by 255) or as float in 0-1
    (16-bit and float sources are scaled to 0-1 when read), then ``(x - mean) / std``. ``image_dtype`` says which
    (``uint8`` or ``float32``): what the training images were read as, so exports take the same by default.
    """

    num_classes: int
    ignore_index: Optional[int] = 255
    class_names: List[str] = field(default_factory=list)
    palette: List[List[int]] = field(default_factory=list)
    in_channels: int = 3
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))
    image_dtype: str = "uint8"

    def __post_init__(self) -> None:
        self.num_classes = int(self.num_classes)
        if self.num_classes < 1:
            raise ValueError(f"data.num_classes must be >= 1, got {self.num_classes}")
        self.ignore_index = None if self.ignore_index is None else int(self.ignore_index)
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            raise ValueError(f"data.ignore_index={self.ignore_index} is a class id (data.num_classes="
                             f"{self.num_classes}); use a value outside 0..{self.num_classes - 1}, e.g. 255")
        names = list(self.class_names or [f"class_{i}" for i in range(self.num_classes)])
        if len(names) != self.num_classes:
            raise ValueError(f"data.class_names has {len(names)} names but data.num_classes is {self.num_classes}")
        self.class_names = [str(n) for n in names]
        palette = [list(map(int, c)) for c in (self.palette or default_palette(self.num_classes))]
        if len(palette) < self.num_classes:
            raise ValueError(f"data.palette has {len(palette)} colours for {self.num_classes} classes")
        self.palette = palette
        self.in_channels = int(self.in_channels)
        if self.in_channels < 1:
            raise ValueError(f"data.in_channels must be >= 1, got {self.in_channels}")
        self.mean = [float(v) for v in self.mean]
        self.std = [float(v) for v in self.std]
        for key, values in (("data.mean", self.mean), ("data.std", self.std)):
            if len(values) != self.in_channels:
                raise ValueError(f"{key} has {len(values)} values but the images have data.in_channels="
                                 f"{self.in_channels}; give one value per channel (0-1 units), or null to measure "
                                 "them from the training images")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"data.std must be positive, got {self.std}")
        if self.image_dtype not in ("uint8", "float32"):
            raise ValueError(f"image_dtype must be uint8 or float32, got {self.image_dtype!r}")

    def to_dict(self) -> Dict[str, Any]:
        """Plain types only (safe for ``torch.load(weights_only=True)``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "DataSpec":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def check_model(self, num_classes: int, in_channels: int, where: str = "model") -> None:
        """A network whose classes or input channels differ from the data's is an error at start-up."""
        if int(num_classes) != self.num_classes:
            raise ValueError(f"{where} predicts {num_classes} classes but the data has data.num_classes="
                             f"{self.num_classes}; leave model.num_classes as ${{data.num_classes}}")
        if int(in_channels) != self.in_channels:
            raise ValueError(f"{where} takes {in_channels} input channels but the images have data.in_channels="
                             f"{self.in_channels}; leave model.in_channels as ${{data.in_channels}}")


def as_spec(value: Any) -> DataSpec:
    """A DataSpec from a DataSpec, a dict, or anything with the same attributes."""
    if isinstance(value, DataSpec):
        return value
    if isinstance(value, dict):
        return DataSpec.from_dict(value)
    return DataSpec.from_dict({k: getattr(value, k) for k in DataSpec.__dataclass_fields__ if hasattr(value, k)})


__all__ = ["DataSpec", "IMAGENET_MEAN", "IMAGENET_STD", "as_spec", "default_palette"]

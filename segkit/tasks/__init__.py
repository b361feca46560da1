"""LightningModules and schedules."""
from segkit.tasks.schedulers import PolyLR
from segkit.tasks.segmentation import SegmentationTask

__all__ = ["PolyLR", "SegmentationTask"]

"""Datasets, sources (layouts), transforms and the LightningDataModule."""
from segkit.data.datamodule import SegmentationDataModule
from segkit.data.dataset import SegmentationDataset, pad_collate
from segkit.data.io import DataError, read_image, read_mask
from segkit.data.sources import CityscapesSource, FolderSource, VOCSource
from segkit.data.synthetic import SyntheticShapesSource

__all__ = ["SegmentationDataModule", "SegmentationDataset", "pad_collate", "DataError", "read_image", "read_mask",
           "CityscapesSource", "FolderSource", "VOCSource", "SyntheticShapesSource"]

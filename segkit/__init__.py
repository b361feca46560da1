"""segkit: semantic segmentation with U-Net and DeepLab."""
__version__ = "0.1.0"

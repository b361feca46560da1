"""segkit: semantic segmentation with U-Net and DeepLab."""
from segkit import resolvers as _resolvers  # noqa: F401  (registers the configs' OmegaConf resolvers)

__version__ = "0.1.0"

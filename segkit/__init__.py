"""segkit: semantic segmentation with U-Net and DeepLab."""
from typing import Any
from segkit import resolvers as _resolvers  # noqa: F401  (registers the configs' OmegaConf resolvers)

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so that `import segkit` stays cheap (no torch/hydra import until a model is loaded).
    if name == "from_pretrained":
        from segkit.hub import from_pretrained

        return from_pretrained
    raise AttributeError(f"module 'segkit' has no attribute {name!r}")

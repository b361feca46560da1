"""timm backbones as encoders via ``features_only`` (optional: ``pip install segkit[timm]``).

timm builds the feature extractor, adapts the stem to ``in_channels`` (summing RGB filters for one channel) and
dilates for ``output_stride`` where the model supports it; its ``feature_info`` declares channels and reductions.
"""
from __future__ import annotations

import importlib
import os
from typing import List, Optional, Sequence

import torch
from torch import nn

from segkit.models.encoders.weights import WeightsSpec, is_weights_file, resolve_weights


def import_timm():
    """``timm``, or an ImportError that says how to install it."""
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise ImportError("timm encoders (model.encoder=timm:<name>) need the optional timm package: "
                          "pip install 'segkit[timm]'") from None


class TimmEncoder(nn.Module):
    """``timm.create_model(name, features_only=True, ...)`` with segkit's encoder contract.

    ``encoder_weights``: a local file (timm state dict, .pth/.safetensors), ``"DEFAULT"``/``True`` for timm's default
    pretrained tag, another tag (``"ra2_in1k"``), or ``None``. Downloads only for a tag, through timm's hub cache.
    """

    def __init__(self, name: str, in_channels: int = 3, output_stride: Optional[int] = None,
                 encoder_weights: WeightsSpec = None, out_indices: Optional[Sequence[int]] = None,
                 pretrained: bool = False, **kwargs) -> None:
        super().__init__()
        timm = import_timm()
        spec = resolve_weights(encoder_weights, pretrained)
        kw = dict(kwargs, features_only=True, in_chans=in_channels, pretrained=spec is not None)
        if output_stride is not None and output_stride != 32:
            kw["output_stride"] = int(output_stride)
        if out_indices is not None:
            kw["out_indices"] = tuple(out_indices)
        model_name = name
        if spec is not None and is_weights_file(spec):
            if not os.path.isfile(spec):
                raise FileNotFoundError(f"encoder_weights file {spec!r} does not exist; set model.encoder_weights "
                                        "to a timm state dict (.pth/.safetensors), a pretrained tag, or null")
            kw["pretrained_cfg_overlay"] = {"file": os.path.abspath(spec)}
        elif spec not in (None, "DEFAULT"):
            model_name = f"{name}.{spec}"
        if not timm.is_model(name):
            raise ValueError(f"unknown timm model {name!r}; see timm.list_models() (e.g. 'timm:resnet18', "
                             "'timm:efficientnet_b3')")
        try:
            self.model = timm.create_model(model_name, **kw)
        except (TypeError, AssertionError, ValueError) as exc:
            if "output_stride" in kw:
                raise ValueError(f"timm model {name!r} could not be built with output_stride={output_stride} "
                                 f"({type(exc).__name__}: {exc}); use output_stride=32 (null) or a model that "
                                 "supports dilation (ResNets, EfficientNets, ConvNeXt ...)") from None
            raise ValueError(f"timm model {name!r}: {type(exc).__name__}: {exc}") from None
        except (OSError, RuntimeError) as exc:  # hub unreachable, missing file, state dict mismatch
            if spec is None:
                raise
            from timm.models._hub import get_cache_dir

            raise RuntimeError(
                f"could not load encoder_weights {spec!r} for timm model {name} ({type(exc).__name__}: {exc}). "
                f"Put the weights file in the Hugging Face cache ({_hf_cache()}) or timm's ({get_cache_dir()}), or "
                "pass a local file (model.encoder_weights=/path/to/weights.safetensors), or set "
                "model.encoder_weights=null to train from scratch."
            ) from None
        info = self.model.feature_info
        self.name = f"timm:{name}"
        self.in_channels = in_channels
        self.out_channels: List[int] = list(info.channels())
        stride = output_stride or max(info.reduction())
        self.reductions: List[int] = [min(int(r), stride) for r in info.reduction()]
        self.output_stride = max(self.reductions)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return list(self.model(x))


def _hf_cache() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return HF_HUB_CACHE
    except ImportError:
        return "~/.cache/huggingface/hub"

"""Encoder weights: local files (.pth/.pt/.safetensors) or torchvision weight names, never a silent download.

``encoder_weights`` is ``None`` (random init), a path to a state dict file, or a weights name of the backbone
(torchvision: ``"DEFAULT"``, ``"IMAGENET1K_V1"``, ...). Only a name downloads, and only into the torch hub cache;
an unreachable network fails within seconds with the cache path to copy the file to and the local-file alternative.
"""
from __future__ import annotations

import os
import socket
from typing import Dict, Optional, Sequence, Union

import torch
import torchvision
from torch import nn

WeightsSpec = Union[None, bool, str, os.PathLike]
DOWNLOAD_TIMEOUT_S = 10
_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def resolve_weights(encoder_weights: WeightsSpec, pretrained: bool = False) -> Optional[str]:
    """One normal form: ``None``, a weights name, or a file path. ``pretrained=True`` / ``True`` mean ``"DEFAULT"``."""
    if encoder_weights is None or encoder_weights is False:
        return "DEFAULT" if pretrained else None
    if encoder_weights is True:
        return "DEFAULT"
    return os.fspath(encoder_weights)


def is_weights_file(spec: str) -> bool:
    """A path (has a separator, a state-dict suffix, or exists) rather than a weights name."""
    return os.sep in spec or spec.lower().endswith(_FILE_SUFFIXES) or os.path.exists(spec)


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a ``torch.save``-d one (also inside a ``{"state_dict": ...}``
    or ``{"model": ...}`` checkpoint). Loads tensors only (``weights_only=True``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"encoder_weights file {path!r} does not exist; set model.encoder_weights to a "
                                ".pth/.pt/.safetensors state dict, a weights name such as DEFAULT, or null")
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickled objects, wrong format: name the file
        raise ValueError(f"encoder_weights file {path!r} is not a readable state dict ({type(exc).__name__}: "
                         f"{exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"encoder_weights file {path!r} does not hold a state dict (name -> tensor)")
    return state


def download_torchvision_weights(model_name: str, weights_name: str) -> Dict[str, torch.Tensor]:
    """torchvision's ``weights_name`` weights for ``model_name``, from the torch hub cache or downloaded into it."""
    try:
        enum = torchvision.models.get_model_weights(model_name)
    except ValueError:
        raise ValueError(f"torchvision has no weights for {model_name!r}; set encoder_weights to a local file "
                         "or null") from None
    if weights_name not in enum.__members__:
        raise ValueError(f"unknown encoder_weights {weights_name!r} for {model_name}; torchvision has "
                         f"{sorted(enum.__members__)}, or give a path to a local state dict file")
    weights = enum[weights_name]
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", weights.url.rsplit("/", 1)[-1])
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True, map_location="cpu")
    except Exception as exc:  # URLError, timeouts, hash mismatch: all mean "no weights here"
        raise RuntimeError(
            f"could not load {weights_name} weights for {model_name} ({type(exc).__name__}: {exc}). Download "
            f"{weights.url} elsewhere and copy it to {cached}, or pass the file itself "
            f"(model.encoder_weights=/path/to/{os.path.basename(cached)}), or set model.encoder_weights=null to "
            "train from scratch."
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)


def load_encoder_state(module: nn.Module, state: Dict[str, torch.Tensor], source: str,
                       prefixes: Sequence[str] = ("", "encoder.", "backbone.", "net.encoder.", "model.")) -> None:
    """Load ``state`` into ``module``: every module key must be there (under one of ``prefixes``, so torchvision
    classification and segmentation state dicts and segkit checkpoints all work); extra keys (heads) are ignored."""
    own = module.state_dict()
    prefix = max(prefixes, key=lambda p: sum(p + k in state for k in own))
    picked = {k: state[prefix + k] for k in own if prefix + k in state}
    # BatchNorm's num_batches_tracked is absent from older torchvision files (e.g. resnet18-f37072fd.pth)
    missing = [k for k in own if k not in picked and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"encoder_weights {source}: {len(missing)} of the encoder's {len(own)} tensors are missing "
                         f"(e.g. {missing[:3]}); is it a state dict of the same backbone?")
    wrong = [f"{k}: {tuple(picked[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if picked[k].shape != v.shape]
    if wrong:
        raise ValueError(f"encoder_weights {source}: shapes differ from the encoder's (file vs model): {wrong[:3]}")
    module.load_state_dict(picked, strict=False)


def first_conv(module: nn.Module) -> str:
    """Qualified name of the first ``nn.Conv2d`` (the stem conv that sees the image)."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            return name
    raise ValueError(f"{type(module).__name__} has no Conv2d to take the input channels")


def adapt_first_conv_(module: nn.Module, in_channels: int) -> None:
    """Give ``module``'s stem conv ``in_channels`` inputs, in place. RGB filters are summed for 1 channel (a gray
    image then gives the response of the gray RGB image), and otherwise tiled and rescaled by ``3 / in_channels``."""
    name = first_conv(module)
    conv: nn.Conv2d = module.get_submodule(name)
    if conv.in_channels == in_channels:
        return
    if conv.groups != 1:
        raise ValueError(f"cannot adapt the grouped stem conv {name} to in_channels={in_channels}")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        old = conv.weight
        if in_channels < old.shape[1]:
            new.weight.copy_(old.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * old.shape[1] / in_channels)
        else:
            idx = torch.arange(in_channels) % old.shape[1]
            new.weight.copy_(old[:, idx] * old.shape[1] / in_channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent, _, attr = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, attr, new)


def load_weights_(module: nn.Module, model_name: str, spec: Optional[str], in_channels: int) -> None:
    """Weights per ``spec`` (see :func:`resolve_weights`) for a 3-channel ``module``, then ``in_channels``.

    A file whose stem already has ``in_channels`` inputs (your own 1-channel weights) loads after adapting."""
    if spec is None:
        adapt_first_conv_(module, in_channels)
        return
    if is_weights_file(spec):
        state, source = read_state_dict(spec), f"file {spec!r}"
    else:
        state, source = download_torchvision_weights(model_name, spec), f"{spec!r} for {model_name}"
    stem = first_conv(module) + ".weight"
    own_stem = [k for k in state if k.endswith(stem)]
    if in_channels != 3 and own_stem and state[own_stem[0]].shape[1] == in_channels:
        adapt_first_conv_(module, in_channels)
        load_encoder_state(module, state, source)
    else:
        load_encoder_state(module, state, source)
        adapt_first_conv_(module, in_channels)

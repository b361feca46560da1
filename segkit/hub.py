"""A trained model as a self-describing folder: ``model.safetensors`` + ``config.json`` + a ``README.md`` model card.

``save_pretrained(ckpt_path, folder)`` writes it from a training checkpoint; ``from_pretrained(folder)`` rebuilds the
network for inference without the training config: a module that takes raw images the way the task does (uint8
0-255 or float 0-1, normalisation inside) and returns logits, in eval mode. Only the model's Hydra node is
instantiated, after :func:`segkit.config.check_targets`, so a folder from elsewhere cannot name arbitrary code.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import torch
from omegaconf import OmegaConf
from torch import nn

from segkit.config import check_targets, train_command, upgrade_model_config, without_pretrained_weights
from segkit.data.spec import IMAGENET_MEAN, IMAGENET_STD, DataSpec
from segkit.models.segmenter import load_weights_or_explain

log = logging.getLogger(__name__)

WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
FORMAT_VERSION = 1


class PretrainedSegmenter(nn.Module):
    """``images (N, C, H, W)`` as uint8 (0-255) or float (0-1) -> logits ``(N, num_classes, H, W)``.

    ``(x - mean) / std`` with the spec's per-channel statistics (0-1 units), computed in the same order as
    :class:`segkit.tasks.SegmentationTask` so logits match the task's bit for bit. ``spec`` holds class names,
    palette and ``ignore_index``; ``predict(images)`` gives class indices.
    """

    def __init__(self, net: nn.Module, spec: DataSpec, postprocessing: Optional[List[Dict[str, Any]]] = None) -> None:
        super().__init__()
        self.net, self.spec = net, spec
        self.postprocessing = list(postprocessing or [])
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.register_buffer("mean_u8", mean * 255.0, persistent=False)
        self.register_buffer("std_u8", std * 255.0, persistent=False)

    @property
    def class_names(self) -> List[str]:
        return list(self.spec.class_names)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.spec.in_channels:
            raise ValueError(f"expected images of shape (N, {self.spec.in_channels}, H, W) (uint8 0-255 or float "
                             f"0-1), got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            return self.net((images.float() - self.mean_u8) / self.std_u8)
        return self.net((images.float() - self.mean) / self.std)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class indices ``(N, H, W)``: the argmax of the logits, then the model's connected-component
        :attr:`postprocessing` rules (chosen on cross-validation predictions; empty for most models)."""
        from segkit.postprocess import apply_to_logits

        return apply_to_logits(self(images), self.postprocessing)


def spec_from_checkpoint(segkit_meta: Dict[str, Any]) -> DataSpec:
    """The checkpoint's DataSpec: ``segkit.spec`` when present, else rebuilt from the run config's data and task
    nodes (older checkpoints: normalisation in ``task.mean/std``, 0-1 units)."""
    if segkit_meta.get("spec"):
        return DataSpec.from_dict(segkit_meta["spec"])
    cfg = segkit_meta["config"]
    data, task, model = cfg.get("data", {}), cfg.get("task", {}), cfg.get("model", {})
    in_channels = int(data.get("in_channels") or model.get("in_channels") or 3)
    mean = data.get("mean") or task.get("mean") or (IMAGENET_MEAN if in_channels == 3 else None)
    std = data.get("std") or task.get("std") or (IMAGENET_STD if in_channels == 3 else None)
    if mean is None or std is None:
        raise ValueError(f"the checkpoint has neither segkit.spec nor data/task mean and std for its {in_channels} "
                         "input channels; export it with a segkit version that stores the DataSpec")
    return DataSpec(num_classes=data.get("num_classes", task.get("num_classes")),
                    ignore_index=data.get("ignore_index", 255), class_names=data.get("class_names") or [],
                    palette=data.get("palette") or [], in_channels=in_channels, mean=mean, std=std)


def _training_command(run_dir: Path) -> Optional[str]:
    """``python scripts/train.py <overrides>`` from Hydra's record of the run, when it is there."""
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        return None
    return train_command([_strip_override(o) for o in OmegaConf.load(overrides) or []])


LOCAL_PATH = "<local path>"
# An absolute path inside a longer text (a command line, a model card): starts at the beginning or after a space,
# quote, `=`, bracket or comma (so not inside a URL or a relative path), runs to the next space, quote or bracket.
_PATH_IN_TEXT = re.compile(r"(?<![^\s'\"`=(\[{,])(?:~?/|[A-Za-z]:[/\\])[^\s'\"`,;()\[\]{}<>]+")


def _is_absolute(text: str) -> bool:
    return text.startswith(("/", "\\", "~/", "~\\")) or bool(re.match(r"[A-Za-z]:[/\\]", text))


def _placeholder(path: str) -> str:
    """``<local path>/<file name>``: the name says what it was (``r18.pth``, ``best.ckpt``, ``VOC2012``), the
    directories, which are the user's machine's business, are gone."""
    name = re.split(r"[/\\]", path.rstrip("/\\"))[-1]
    return f"{LOCAL_PATH}/{name}" if name and name != "~" else LOCAL_PATH


def strip_local_paths(value: Any) -> Any:
    """``value`` (config dicts, lists, strings) with every absolute local path replaced by ``<local path>/<name>``,
    for what goes public (``config.json``, the model card): checkpoint, data root, cache and output directories,
    an encoder weights file, the paths in the training command. A string that is a path loses its directories as a
    whole (spaces included); paths inside a longer text are found by :data:`_PATH_IN_TEXT`. Relative paths stay."""
    if isinstance(value, dict):
        return {k: strip_local_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strip_local_paths(v) for v in value]
    if isinstance(value, str):
        if _is_absolute(value) and "\n" not in value:
            return _placeholder(value)
        return _PATH_IN_TEXT.sub(lambda m: _placeholder(m.group(0)), value)
    return value


def _strip_override(override: str) -> str:
    """``key=/abs/path`` -> ``key=<local path>/path`` (the value as a whole, spaces included)."""
    key, sep, value = str(override).partition("=")
    return key + sep + strip_local_paths(value) if sep else strip_local_paths(key)


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def model_card(config: Dict[str, Any]) -> str:
    """A README.md: what the model predicts, how well, on what data, how it was trained, how to load it."""
    spec, model, training = config["spec"], config["model"], config["training"]
    data = training.get("data") or {}
    metrics = training.get("metrics")
    lines = ["---", "tags: [segkit, semantic-segmentation]", "pipeline_tag: image-segmentation", "---", "",
             f"# segkit model: {model['_target_'].rsplit('.', 1)[-1]}", "",
             f"Semantic segmentation into {spec['num_classes']} classes, trained with segkit.", "",
             "```python", "import segkit", f"model = segkit.from_pretrained(\"{config.get('name', '.')}\")",
             "logits = model(images)   # images: (N, C, H, W) uint8 0-255 or float 0-1; normalisation is built in",
             "masks = logits.argmax(1)   # class indices, names in model.class_names", "```", "",
             "## Input", "",
             f"- {spec['in_channels']} channels, any height and width"
             + (f" (multiples of {training['size_divisor']} always work)" if training.get("size_divisor") else ""),
             f"- normalisation (0-1 units): mean {[round(v, 4) for v in spec['mean']]}, "
             f"std {[round(v, 4) for v in spec['std']]}",
             f"- ignore index in the training masks: {spec['ignore_index']}", "",
             "## Classes", "", "| id | name | colour | " + ("IoU |" if metrics else ""),
             "|---|---|---|" + ("---|" if metrics else "")]
    per_class = (metrics or {}).get("per_class_iou") or {}
    for i, name in enumerate(spec["class_names"]):
        r, g, b = spec["palette"][i]
        row = f"| {i} | {name} | `#{r:02x}{g:02x}{b:02x}` |"
        lines.append(row + (f" {_fmt(per_class.get(name))} |" if metrics else ""))
    lines += ["", "## Evaluation", ""]
    if metrics:
        lines += [f"mIoU **{_fmt(metrics.get('mIoU'))}**, pixel accuracy {_fmt(metrics.get('pixel_accuracy'))} on "
                  f"{metrics.get('num_images', '?')} images of the `{metrics.get('split', '?')}` split "
                  "(the run's metrics.json)."]
    else:
        lines += ["No metrics.json was found next to the checkpoint's run directory."]
    lines += ["", "## Training", ""]
    if data:
        source = (data.get("source") or {}).get("_target_", "?")
        lines.append(f"- data: `{source}`" + (f", root `{data['source']['root']}`"
                                                 if (data.get("source") or {}).get("root") else ""))
    if training.get("command"):
        lines.append(f"- command: `{training['command']}`")
    lines.append(f"- checkpoint: `{training.get('checkpoint')}`")
    lines += ["- model config:", "", "```yaml", OmegaConf.to_yaml(OmegaConf.create(model)).rstrip(), "```", ""]
    return "\n".join(lines)


def save_pretrained(ckpt_path: Any, folder: str | Path, allowed: Iterable[str] = (),
                    postprocessing: Any = "auto") -> Path:
    """Write ``folder/{model.safetensors, config.json, README.md}`` from a segkit training checkpoint, or from
    several (a list, a run or cross-validation directory: :func:`segkit.ensemble.load_task`), which become one
    ensemble model; its postprocessing rules (``postprocessing``: auto, none or a file) travel in config.json."""
    from segkit.config import load_checkpoint
    from segkit.ensemble import load_task, resolve_checkpoints
    from segkit.export import save_safetensors

    paths, _ = resolve_checkpoints(ckpt_path)
    meta = load_checkpoint(paths[0], mmap=True)["segkit"]  # the tensors are read once, by the next line
    task, run_cfg, cv_dir = load_task(ckpt_path, allowed, postprocessing)
    ensemble = getattr(task, "members", None)
    spec = task.spec if ensemble else spec_from_checkpoint(meta)
    run_dir = cv_dir if cv_dir is not None else paths[0].resolve().parent.parent
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data_cfg = (OmegaConf.to_container(run_cfg.data, resolve=False) if ensemble and run_cfg.get("data") is not None
                else meta["config"].get("data") or {})
    # what goes public holds no absolute local path (checkpoint, data root, cache dir, encoder weights file, output
    # dirs): each becomes `<local path>/<name>`; from_pretrained needs none of them
    config = {"format": "segkit-pretrained", "format_version": FORMAT_VERSION, "name": folder.name,
              "model": strip_local_paths(task.run_config["model"]),  # older configs brought up to date
              "spec": spec.to_dict(), "postprocessing": list(task.postprocessing),
              "training": strip_local_paths({"checkpoint": [str(p) for p in paths] if ensemble else str(paths[0]),
                                             "metrics": _read_json(run_dir / "metrics.json"),
                                             "command": _training_command(run_dir), "data": data_cfg,
                                             "size_divisor": getattr(task.net, "size_divisor", None)})}
    save_safetensors(task.net, folder / WEIGHTS, {"format": "pt"})
    (folder / CONFIG).write_text(json.dumps(config, indent=2, default=str) + "\n")
    (folder / CARD).write_text(model_card(config))
    return folder


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, token: Optional[str] = None) -> str:
    """Upload a pretrained folder to the Hugging Face Hub (``pip install 'segkit[hub]'``); the repository's URL."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ImportError("pushing to the Hugging Face Hub needs huggingface_hub: pip install 'segkit[hub]'") from None
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise FileNotFoundError(f"{folder / CONFIG} not found; push a folder written by save_pretrained")
    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="segkit-push-") as staging:
        upload = _without_local_paths(folder, Path(staging))
        api.upload_folder(repo_id=repo_id, folder_path=str(upload), repo_type="model",
                          allow_patterns=[WEIGHTS, CONFIG, CARD], commit_message="Upload segkit model")
    return str(url)


def _without_local_paths(folder: Path, staging: Path) -> Path:
    """``folder``, or, when its config.json or README.md hold absolute local paths (a folder written by an older
    segkit, or edited by hand), stripped copies of them in ``staging`` (the weights linked or copied): the user's
    folder is left as it is."""
    texts = {}
    for name in (CONFIG, CARD):
        path = folder / name
        if not path.is_file():
            continue
        text = path.read_text()
        try:
            stripped = json.dumps(strip_local_paths(json.loads(text)), indent=2) + "\n" if name == CONFIG else None
        except json.JSONDecodeError:
            stripped = None
        stripped = stripped if stripped is not None else strip_local_paths(text)
        if stripped != text and (name != CONFIG or json.loads(text) != json.loads(stripped)):
            texts[name] = stripped
    if not texts:
        return folder
    log.warning("push_to_hub: %s in %s hold local paths; uploading copies with them replaced by %r (re-export the "
                "folder with this segkit to fix it there)", " and ".join(sorted(texts)), folder, LOCAL_PATH)
    for name in (WEIGHTS, CONFIG, CARD):
        if name in texts:
            (staging / name).write_text(texts[name])
        elif (folder / name).is_file():
            try:
                os.link(folder / name, staging / name)
            except OSError:  # another file system, or no hard links there
                shutil.copy2(folder / name, staging / name)
    return staging


def _resolve(folder: str | Path) -> Path:
    """A local folder, or ``owner/name`` on the Hugging Face Hub (downloaded to its cache) when no such folder
    exists and huggingface_hub is installed."""
    path = Path(folder).expanduser()
    if path.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", str(folder)):
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return path  # reported below as a missing folder
    return Path(snapshot_download(str(folder), repo_type="model", allow_patterns=[WEIGHTS, CONFIG, CARD]))


def from_pretrained(folder: str | Path, allowed: Iterable[str] = (), map_location: str | torch.device = "cpu"
                    ) -> PretrainedSegmenter:
    """Rebuild a model written by :func:`save_pretrained` (``scripts/export.py format=pretrained``), in eval mode.

    ``folder``: a local folder, or a Hugging Face Hub repository ``owner/name`` (with ``segkit[hub]`` installed).
    ``allowed``: extra ``_target_`` namespaces to trust beyond segkit/torch/torchvision/... (as ``allowed_targets``).
    """
    from hydra.utils import instantiate
    from safetensors.torch import load_file

    folder = _resolve(folder)
    config_path, weights_path = folder / CONFIG, folder / WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; from_pretrained expects a folder written by "
                                    "`python scripts/export.py ckpt_path=... format=pretrained`")
    try:
        config = json.loads(config_path.read_text())
        model_cfg, spec = OmegaConf.create(config["model"]), DataSpec.from_dict(config["spec"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{config_path} is not a segkit pretrained config ({type(exc).__name__}: {exc}); "
                         "re-export it with scripts/export.py format=pretrained") from None
    check_targets(model_cfg, allowed, source=str(config_path))
    upgrade_model_config(model_cfg)  # a folder exported by an older segkit: the layout its weights have
    # the weights come from model.safetensors: no training-time encoder weights file is read, nothing is downloaded
    net = instantiate(without_pretrained_weights(model_cfg))
    load_weights_or_explain(net, load_file(str(weights_path)), str(weights_path), f"in {config_path}")
    from segkit.postprocess import check_rules

    rules = check_rules(config.get("postprocessing"), spec.num_classes, str(config_path))
    return PretrainedSegmenter(net, spec, rules).to(map_location).eval()


__all__ = ["PretrainedSegmenter", "from_pretrained", "model_card", "push_to_hub", "save_pretrained",
           "spec_from_checkpoint", "strip_local_paths"]

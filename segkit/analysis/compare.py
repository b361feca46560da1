"""Compare training runs (e.g. a Hydra multirun over model/upsampler): mIoU, throughput, parameters and
checkerboard scores at initialisation and after training, as a markdown table and a PNG bar chart."""
from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segkit.analysis.artifacts import model_checkerboard_scores
from segkit.analysis.plots import bar_chart, stack_vertical
from segkit.config import check_targets, upgrade_model_config, without_pretrained_weights


def expand_runs(paths: Sequence[str]) -> List[Path]:
    """Run directories (with metrics.json); a multirun folder expands to its finished runs."""
    runs: List[Path] = []
    for p in map(Path, paths):
        if (p / "metrics.json").is_file():
            runs.append(p)
        else:
            found = sorted(d for d in p.iterdir() if (d / "metrics.json").is_file()) if p.is_dir() else []
            if not found:
                raise FileNotFoundError(f"{p} holds no metrics.json (not a finished run or multirun folder)")
            runs += found
    return runs


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _throughput(run: Path) -> float:
    path = run / "csv" / "metrics.csv"
    if not path.is_file():
        return math.nan
    with open(path) as f:
        values = [float(r["train/img_per_s"]) for r in csv.DictReader(f) if r.get("train/img_per_s")]
    return values[-1] if values else math.nan  # running mean over the last epoch


def summarize_run(run: Path) -> Dict[str, Any]:
    metrics = json.loads((run / "metrics.json").read_text())
    cfg = OmegaConf.load(run / "config.yaml")
    check_targets(cfg.model, cfg.get("allowed_targets") or (), source=str(run / "config.yaml"))
    upgrade_model_config(cfg.model)  # a run of an older segkit: the layout its checkpoint has
    torch.manual_seed(0)
    scratch = without_pretrained_weights(cfg.model)
    try:
        fresh = instantiate(cfg.model)  # the network as its run initialised it (pretrained encoder included)
    except InstantiationException as exc:  # its weights file is gone, or ImageNet's cannot be downloaded offline
        if OmegaConf.to_container(scratch) == OmegaConf.to_container(cfg.model, resolve=True):
            raise  # no encoder weights to blame
        warnings.warn(f"{run}: cannot build the model with its training-time encoder weights ({exc.__cause__}); "
                      "its initial artifact scores are those of a randomly initialised encoder")
        torch.manual_seed(0)
        fresh = instantiate(scratch)
    init_scores = model_checkerboard_scores(fresh)
    trained_scores: Dict[str, float] = {}
    ckpt = metrics.get("checkpoint")
    if ckpt and Path(ckpt).is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        fresh.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
        trained_scores = model_checkerboard_scores(fresh)
    upsampler = cfg.model.get("upsampler", {}) or {}
    return {
        "run": run.name,
        "model": str(cfg.model._target_).rsplit(".", 1)[-1],
        "upsampler": str(upsampler.get("_target_", "?")).rsplit(".", 1)[-1],
        "output_stride": cfg.model.get("output_stride"),
        "mIoU": metrics["mIoU"],
        "img_per_s": _throughput(run),
        "params_M": sum(p.numel() for p in fresh.parameters()) / 1e6,
        "checkerboard_init": _mean(init_scores.values()),
        "checkerboard_trained": _mean(trained_scores.values()) if trained_scores else math.nan,
    }


def compare_runs(paths: Sequence[str], output: str) -> List[Dict[str, Any]]:
    rows = [summarize_run(r) for r in expand_runs(paths)]
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    header = ["run", "model", "upsampler", "output_stride", "mIoU", "img_per_s", "params_M",
              "checkerboard_init", "checkerboard_trained"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[h]:.4f}" if isinstance(r[h], float) else str(r[h]) for h in header) + " |")
    table = "\n".join(lines)
    (out / "comparison.md").write_text(table + "\n")
    (out / "comparison.json").write_text(json.dumps(rows, indent=2))
    labels = [f"{r['upsampler']}" + (f" os{r['output_stride']}" if r["output_stride"] else "") for r in rows]
    charts = [bar_chart(title, labels, [r[key] for r in rows]) for title, key in
              [("val mIoU", "mIoU"), ("training images/s", "img_per_s"), ("parameters (M)", "params_M"),
               ("checkerboard score at init", "checkerboard_init"),
               ("checkerboard score after training", "checkerboard_trained")]]
    stack_vertical(charts).save(out / "comparison.png")
    print(table)
    print(f"wrote {out / 'comparison.md'} and {out / 'comparison.png'}")
    return rows

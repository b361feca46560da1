"""The text report behind scripts/analyze.py."""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from segkit.analysis.artifacts import model_checkerboard_scores
from segkit.analysis.receptive_field import empirical_receptive_field, model_stages


def analyze_model(model: nn.Module, input_size: int = 129) -> Dict[str, Any]:
    stages = model_stages(model)
    rf = empirical_receptive_field(model, stages, (input_size, input_size))
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in
              (("encoder", model.encoder), ("decoder", model.decoder), ("head", model.head))}
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, model.in_channels, input_size, input_size))
    return {"input_size": input_size, "output_shape": list(out.shape), "parameters": params,
            "receptive_field": rf, "checkerboard": model_checkerboard_scores(model)}


def format_report(report: Dict[str, Any]) -> str:
    n = report["input_size"]
    lines = [f"input {n}x{n} -> logits {report['output_shape']}",
             "parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in report["parameters"].items()), "",
             f"empirical receptive field (centre output pixel; capped by the {n}px input):",
             "| stage | stride | RF height | RF width |", "|---|---|---|---|"]
    for name, r in report["receptive_field"].items():
        lines.append(f"| {name} | {r['stride']} | {r['height']} | {r['width']} |")
    lines += ["", "checkerboard score (0 = no stride-periodic pattern on a constant input):"]
    lines += [f"  {name}: {score:.4f}" for name, score in report["checkerboard"].items()] or ["  (no upsamplers)"]
    return "\n".join(lines)

"""Train step of segkit models vs their segmentation_models.pytorch (smp) peers: parameters, FLOPs and step time.

    python benchmarks/peers.py [--models UNet-R18 UNet-R34 DeepLabV3+-R50 [UNet-R34-2conv DeepLabV3+-R50-dwnorm]]
                               [--shapes 2x3x256x256 8x3x224x192] [--repeats 10] [--channels-last] [--smoke]

Needs the benchmark-only extra: ``pip install -c constraints.txt -e .[bench]`` (segmentation-models-pytorch).
Both models of a pair are built from scratch (``encoder_weights=None``) with the same encoder, classes and output
stride, and trained with AdamW on one fixed random batch; a step is forward + cross-entropy + backward + optimizer
step. The two run interleaved in one process, alternating who goes first every round (ABBA), after one warm-up
step each. The table gives parameters, forward GFLOPs per image (``torch.utils.flop_counter.FlopCounterMode``, eval
mode, one image; one multiply-add is 2 FLOPs), median seconds per step, the ratio of the medians segkit / smp
(< 1: segkit is faster) and the quartiles of the per-round ratios (each round times both back to back, so machine
drift cancels within a round; a wide spread means a noisy machine). ``--channels-last`` runs both models and the
batch in channels_last (NHWC) memory format instead of PyTorch's default. ``--smoke`` is a seconds-long toy run.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from common import interleaved, machine, median, quartiles
from segkit.models import DeepLabV3Plus, UNet

NUM_CLASSES = 21


def _smp():
    if importlib.util.find_spec("segmentation_models_pytorch") is None:
        sys.exit("benchmarks/peers.py needs segmentation-models-pytorch: pip install -c constraints.txt -e '.[bench]'")
    import segmentation_models_pytorch as smp

    return smp


def pairs() -> Dict[str, Tuple[Callable[[], nn.Module], Callable[[], nn.Module]]]:
    """Model name -> (segkit builder, smp builder), same encoder, classes and output stride."""
    smp = _smp()
    return {
        "UNet-R18": (lambda: UNet("resnet18", NUM_CLASSES),
                     lambda: smp.Unet("resnet18", encoder_weights=None, classes=NUM_CLASSES)),
        "UNet-R34": (lambda: UNet("resnet34", NUM_CLASSES),
                     lambda: smp.Unet("resnet34", encoder_weights=None, classes=NUM_CLASSES)),
        # segkit with smp's double conv in the last, skip-less U-Net step (final_step_convs=2; not run unless asked)
        "UNet-R34-2conv": (lambda: UNet("resnet34", NUM_CLASSES, final_step_convs=2),
                           lambda: smp.Unet("resnet34", encoder_weights=None, classes=NUM_CLASSES)),
        "DeepLabV3+-R50": (lambda: DeepLabV3Plus("resnet50", NUM_CLASSES, output_stride=16),
                           lambda: smp.DeepLabV3Plus("resnet50", encoder_weights=None, classes=NUM_CLASSES,
                                                     encoder_output_stride=16)),
        # segkit with TensorFlow DeepLab's BN + ReLU after each depthwise conv (not run unless asked for)
        "DeepLabV3+-R50-dwnorm": (lambda: DeepLabV3Plus("resnet50", NUM_CLASSES, output_stride=16, depthwise_norm=True),
                                  lambda: smp.DeepLabV3Plus("resnet50", encoder_weights=None, classes=NUM_CLASSES,
                                                            encoder_output_stride=16)),
    }


DEFAULT_MODELS = ["UNet-R18", "UNet-R34", "DeepLabV3+-R50"]


def parse_shape(text: str) -> Tuple[int, int, int, int]:
    try:
        n, c, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected NxCxHxW, e.g. 8x3x224x192") from None
    if c != 3 or n < 2:
        raise argparse.ArgumentTypeError(f"shape {text!r}: needs 3 channels and a batch of at least 2 "
                                         "(BatchNorm in training mode)")
    return n, c, h, w


def gflops_per_image(model: nn.Module, h: int, w: int) -> float:
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, h, w))
    model.train()
    return counter.get_total_flops() / 1e9


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def compare(name: str, builders, shape: Tuple[int, int, int, int], repeats: int,
            channels_last: bool = False) -> Dict[str, object]:
    n, c, h, w = shape
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    models = {"segkit": builders[0]().to(memory_format=fmt), "smp": builders[1]().to(memory_format=fmt)}
    x = torch.randn(n, c, h, w).contiguous(memory_format=fmt)
    y = torch.randint(0, NUM_CLASSES, (n, h, w))
    row: Dict[str, object] = {"model": name, "shape": "x".join(map(str, shape))}
    for who, model in models.items():
        row[f"{who}_params"] = sum(p.numel() for p in model.parameters()) / 1e6
        row[f"{who}_gflops"] = gflops_per_image(model, h, w)
    times = interleaved({who: train_step(m, x, y) for who, m in models.items()}, repeats=repeats)
    ratios: List[float] = [a / b for a, b in zip(times["segkit"], times["smp"])]
    row.update(segkit_s=median(times["segkit"]), smp_s=median(times["smp"]), ratios=ratios)
    row["ratio"] = row["segkit_s"] / row["smp_s"]  # type: ignore[operator]
    return row


def table(rows: List[Dict[str, object]]) -> str:
    lines = ["| model | input | params M (segkit / smp) | GFLOPs/img (segkit / smp) | s/step segkit | s/step smp "
             "| ratio segkit/smp | per-round ratio q1-q3 |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        q1, _, q3 = quartiles(r["ratios"])  # type: ignore[arg-type]
        lines.append(f"| {r['model']} | {r['shape']} | {r['segkit_params']:.1f} / {r['smp_params']:.1f} | "
                     f"{r['segkit_gflops']:.2f} / {r['smp_gflops']:.2f} | {r['segkit_s']:.3f} | {r['smp_s']:.3f} | "
                     f"**{r['ratio']:.2f}** | {q1:.2f}-{q3:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    available = pairs()
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(available))
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=None,
                        help="NxCxHxW batches (default: 2x3x256x256 8x3x224x192)")
    parser.add_argument("--repeats", type=int, default=10, help="ABBA rounds per model pair and shape")
    parser.add_argument("--channels-last", action="store_true", help="both models and the batch in channels_last")
    parser.add_argument("--smoke", action="store_true", help="toy run: 2x3x64x64, one round")
    args = parser.parse_args()
    shapes = args.shapes or ([(2, 3, 64, 64)] if args.smoke else [(2, 3, 256, 256), (8, 3, 224, 192)])
    repeats = 1 if args.smoke else args.repeats
    smp = _smp()
    print(f"# {machine()}; segmentation_models_pytorch {smp.__version__}; {repeats} ABBA rounds, "
          f"{NUM_CLASSES} classes, AdamW, {'channels_last' if args.channels_last else 'contiguous (NCHW)'}\n")
    rows = [compare(name, available[name], shape, repeats, args.channels_last)
            for shape in shapes for name in args.models]
    print(table(rows))


if __name__ == "__main__":
    main()

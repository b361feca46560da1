"""The encoder table: parameters, declared channels, output strides that build, and CPU forward time.

    python benchmarks/encoders.py [--markdown] [--size 256] [--repeats 5] [--encoders resnet18 mobilenet_v3_large ...]

Every number comes from building the encoder: parameters are counted, channels are the encoder's declaration
(checked against a forward by the tests), "output strides" lists which of 8/16/32 construct, and the time is the
median eval-mode forward of one 1x3xSIZExSIZE image (``torch.no_grad``, after one warm-up, interleaved over the
encoders so drift hits all alike). timm encoders are included when timm is installed.
"""
from __future__ import annotations

import argparse
import importlib.util
from typing import Dict, List

import torch

from common import interleaved, machine, median
from segkit.models import build_encoder

ENCODERS = ["unet", "resnet18", "resnet34", "resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_small",
            "mobilenet_v3_large", "efficientnet_b0", "efficientnet_b3", "efficientnet_v2_s", "convnext_tiny",
            "regnet_x_400mf", "regnet_y_800mf"]
TIMM = ["timm:efficientnet_b3", "timm:resnet18"]


def strides(name: str) -> List[int]:
    ok = []
    for s in (8, 16, 32):
        try:
            build_encoder(name, 3, s)
            ok.append(s)
        except ValueError:
            pass
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoders", nargs="+", default=None)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", action="store_true", help="print only the markdown table")
    args = parser.parse_args()
    names = args.encoders or ENCODERS + (TIMM if importlib.util.find_spec("timm") else [])
    x = torch.randn(1, 3, args.size, args.size)
    encoders = {n: build_encoder(n).eval() for n in names}
    with torch.no_grad():
        times: Dict[str, List[float]] = interleaved({n: (lambda e=e: e(x)) for n, e in encoders.items()},
                                                    repeats=args.repeats)
    if not args.markdown:
        print(f"# {machine()}; 1x3x{args.size}x{args.size}, median of {args.repeats}\n")
    print(f"| encoder | params (M) | channels | output strides | CPU ms / 1x3x{args.size}x{args.size} |")
    print("|---|---:|---|---|---:|")
    for n, e in encoders.items():
        params = sum(p.numel() for p in e.parameters()) / 1e6
        print(f"| `{n}` | {params:.1f} | {', '.join(map(str, e.out_channels))} | "
              f"{', '.join(map(str, strides(n)))} | {median(times[n]) * 1e3:.0f} |")


if __name__ == "__main__":
    main()

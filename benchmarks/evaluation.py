"""Evaluation throughput for whole, sliding-window and TTA inference, and the share of time in metric updates.

    python benchmarks/evaluation.py [--size 512 --window 256 --stride 256 --images 8]
"""
from __future__ import annotations

import argparse
import time

import torch

from common import machine, sync
from segkit.inference import infer
from segkit.metrics import segmentation_metrics
from segkit.models import DeepLabV3Plus


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--images", type=int, default=8)
    args = p.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    net = DeepLabV3Plus("resnet18", 21, output_stride=16).to(dev).eval()
    images = torch.randint(0, 256, (args.images, 1, 3, args.size, args.size), dtype=torch.uint8)
    masks = torch.randint(0, 21, (args.images, 1, args.size, args.size))
    model = lambda x: net(x.float() / 255.0)  # noqa: E731
    modes = {"whole": {}, "slide": {"window": args.window, "stride": args.stride},
             "tta": {"scales": [0.75, 1.0, 1.25], "flip": True}}
    print(f"machine: {machine()}\n{args.images} images of {args.size}x{args.size}, DeepLabV3+-R18")
    print("| mode | images/s | time vs whole | metric update share |\n|---|---|---|---|")
    base = None
    with torch.inference_mode():
        infer(model, images[0].to(dev))  # warm-up
        for mode, kw in modes.items():
            metrics = segmentation_metrics(21, 255).to(dev)
            t_metric, t0 = 0.0, time.perf_counter()
            for img, mask in zip(images, masks):
                preds = infer(model, img.to(dev), mode=mode, **kw).argmax(1)
                sync()
                tm = time.perf_counter()
                metrics.update(preds, mask.to(dev))
                sync()
                t_metric += time.perf_counter() - tm
            total = time.perf_counter() - t0
            base = base or total
            print(f"| {mode} | {args.images / total:.2f} | {total / base:.2f}x | {100 * t_metric / total:.2f}% |",
                  flush=True)
    windows = ((args.size - args.window) // args.stride + 1) ** 2
    print(f"slide pixel ratio (window pixels / image pixels): {windows * args.window ** 2 / args.size ** 2:.2f}")


if __name__ == "__main__":
    main()

"""Evaluation throughput for whole, sliding-window and TTA inference, and the share of time in metric updates.

    python benchmarks/evaluation.py [--size 512 --window 256 --images 8]

Sliding windows run twice: without overlap (stride = window) and with half-window overlap. Each is reported
against its pixel ratio (window pixels processed / image pixels), whose cost it should track. The metric update
is segkit's confusion matrix; torchmetrics' own ``MulticlassConfusionMatrix.update`` is timed on the same
predictions as the reference.
"""
from __future__ import annotations

import argparse
import math

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from common import machine, timed
from segkit.inference import infer
from segkit.metrics import segmentation_metrics
from segkit.models import DeepLabV3Plus


def pixel_ratio(size: int, window: int, stride: int) -> float:
    per_side = math.ceil(max(size - window, 0) / stride) + 1
    return per_side ** 2 * window ** 2 / size ** 2


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--images", type=int, default=8)
    args = p.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    classes = 21
    net = DeepLabV3Plus("resnet18", classes, output_stride=16).to(dev).eval()
    images = torch.randint(0, 256, (args.images, 1, 3, args.size, args.size), dtype=torch.uint8)
    masks = torch.randint(0, classes, (args.images, 1, args.size, args.size))
    masks[:, :, :8] = 255  # some ignored pixels, as in real masks
    model = lambda x: net(x.float() / 255.0)  # noqa: E731
    w = args.window
    modes = {"whole": ({}, 1.0),
             f"slide {w}, stride {w}": ({"mode": "slide", "window": w, "stride": w}, pixel_ratio(args.size, w, w)),
             f"slide {w}, stride {w // 2}": ({"mode": "slide", "window": w, "stride": w // 2},
                                             pixel_ratio(args.size, w, w // 2)),
             "tta (scales 0.75/1/1.25 + flip)": ({"mode": "tta", "scales": [0.75, 1.0, 1.25], "flip": True}, None)}
    print(f"machine: {machine()}\n{args.images} images of {args.size}x{args.size}, DeepLabV3+-R18, {classes} classes")
    print("| mode | images/s | time vs whole | pixel ratio | metric update share | torchmetrics update share |")
    print("|---|---|---|---|---|---|")
    base = None
    with torch.inference_mode():
        infer(model, images[0].to(dev))  # warm-up
        for name, (kw, ratio) in modes.items():
            ours = segmentation_metrics(classes, 255).to(dev)
            reference = MulticlassConfusionMatrix(classes, ignore_index=255, validate_args=False).to(dev)
            t_ours = t_ref = total = 0.0
            for img, mask in zip(images, masks):
                img, mask = img.to(dev), mask.to(dev)
                out = {}
                total += timed(lambda: out.setdefault("preds", infer(model, img, **kw).argmax(1)))
                dt = timed(lambda: ours.update(out["preds"], mask))
                t_ours += dt
                total += dt
                t_ref += timed(lambda: reference.update(out["preds"], mask))  # not part of the total
            assert torch.equal(ours.compute(), reference.compute())
            base = base or total
            shown_ratio = "—" if ratio is None else f"{ratio:.2f}"
            print(f"| {name} | {args.images / total:.2f} | {total / base:.2f}x | {shown_ratio} "
                  f"| {100 * t_ours / total:.2f}% | {100 * t_ref / (total - t_ours + t_ref):.2f}% |", flush=True)


if __name__ == "__main__":
    main()

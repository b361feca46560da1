"""Train step (forward + backward + optimizer step) of segkit models vs same-architecture references.

    python benchmarks/train_step.py [--size 256] [--batch 2] [--repeats 5] [--device cpu|cuda]

Pair: segkit DeepLabV3(resnet50, output_stride 8, aux head) vs torchvision deeplabv3_resnet50(aux_loss=True), the
same layers. U-Nets and DeepLabV3+ are measured against their peer, segmentation_models.pytorch, in peers.py.
Prints median seconds per step, the ratio of the medians segkit / reference (< 1 means segkit is faster), and the
spread of the per-round ratios (each round times both models back to back, so drift cancels within a round).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import torchvision

from common import interleaved, machine, median, quartiles
from segkit.models import DeepLabV3


def step_fn(model, x, y, aux_key: bool):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        if aux_key:  # segkit: logits and aux logits from one forward
            logits, aux = model.forward_with_aux(x)
            loss = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
        else:
            out = model(x)
            if isinstance(out, dict):  # torchvision: {"out", "aux"}
                loss = F.cross_entropy(out["out"], y) + 0.4 * F.cross_entropy(out["aux"], y)
            else:
                loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--models", nargs="+", default=["DeepLabV3-R50 os8 +aux"])
    args = p.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, args.classes, (args.batch, args.size, args.size), device=dev)
    print(f"machine: {machine()}\ninput: {args.batch}x3x{args.size}x{args.size}, {args.repeats} interleaved repeats")
    pairs = {
        "DeepLabV3-R50 os8 +aux": (
            lambda: DeepLabV3("resnet50", args.classes, output_stride=8, aux_head=True), True,
            lambda: torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None,
                                                                      num_classes=args.classes, aux_loss=True)),
    }
    print("| model | segkit s/step | reference s/step | ratio segkit/reference | per-round ratios: median [IQR] |")
    print("|---|---|---|---|---|")
    for name, (ours, aux, ref) in ((n, pairs[n]) for n in args.models):
        a, b = ours().to(dev).train(), ref().to(dev).train()
        times = interleaved({"segkit": step_fn(a, x, y, aux), "reference": step_fn(b, x, y, False)}, args.repeats)
        ta, tb = median(times["segkit"]), median(times["reference"])
        q1, q2, q3 = quartiles([sa / sb for sa, sb in zip(times["segkit"], times["reference"])])
        print(f"| {name} | {ta:.3f} | {tb:.3f} | {ta / tb:.3f} | {q2:.3f} [{q1:.3f}, {q3:.3f}] |", flush=True)


if __name__ == "__main__":
    main()

"""Train step (forward + backward + optimizer step) of segkit models vs same-architecture references.

    python benchmarks/train_step.py [--size 256] [--batch 2] [--repeats 5] [--device cpu|cuda]

Pairs: segkit DeepLabV3(resnet50, output_stride 8, aux head) vs torchvision deeplabv3_resnet50(aux_loss=True);
segkit UNet(resnet34) vs a plain-PyTorch U-Net-R34 written here with the same layers. Prints median seconds per
step, the ratio of the medians segkit / reference (< 1 means segkit is faster), and the spread of the per-round
ratios (each round times both models back to back, so drift cancels within a round).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from common import interleaved, machine, median, quartiles
from segkit.models import DeepLabV3, UNet


class PlainUNetR34(nn.Module):
    """Reference: torchvision ResNet-34 encoder + the same U-Net decoder written out by hand."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        r = torchvision.models.resnet34(weights=None)
        self.stem = nn.Sequential(r.conv1, r.bn1, r.relu)
        self.pool, self.layers = r.maxpool, nn.ModuleList([r.layer1, r.layer2, r.layer3, r.layer4])
        skips, dec = [256, 128, 64, 64], [256, 128, 64, 64, 32]
        c_in, self.ups, self.blocks = 512, nn.ModuleList(), nn.ModuleList()
        for i, c_out in enumerate(dec):
            c_skip = skips[i] if i < len(skips) else 0
            self.ups.append(nn.ConvTranspose2d(c_in, c_out, 3, 2, 1))
            self.blocks.append(nn.Sequential(
                nn.Conv2d(c_out + c_skip, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)))
            c_in = c_out
        self.head = nn.Conv2d(c_in, num_classes, 1)

    def forward(self, x):
        size = x.shape[-2:]
        s = self.stem(x)
        feats = [s]
        y = self.pool(s)
        for layer in self.layers:
            y = layer(y)
            feats.append(y)
        y = feats[-1]
        targets = [f.shape[-2:] for f in feats[-2::-1]] + [size]
        for i, (up, block) in enumerate(zip(self.ups, self.blocks)):
            y = up(y, output_size=targets[i])
            if i < len(feats) - 1:
                y = torch.cat([y, feats[-2 - i]], 1)
            y = block(y)
        return self.head(y)


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
    p.add_argument("--models", nargs="+", default=["DeepLabV3-R50 os8 +aux", "UNet-R34"])
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
        "UNet-R34": (lambda: UNet("resnet34", args.classes), False, lambda: PlainUNetR34(args.classes)),
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

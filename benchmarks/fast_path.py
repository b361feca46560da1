"""Training throughput of segkit's `trainer=gpu` fast path vs torchvision's reference training recipe, same model.

    python benchmarks/fast_path.py [--device cuda] [--size 512] [--batch 16] [--steps 30] [--compile]

Both sides train the same network on the same in-memory batches (pinned on CUDA) and report steady-state
images/s (the first 5 steps are not timed; the device is synchronised at both ends).

- reference: the loop of torchvision's `references/segmentation/train.py` — float32 images normalised on the
  host and copied each step, NCHW, fp32, cudnn.benchmark off, SGD (momentum 0.9, weight decay 1e-4), cross-entropy
  with ignore_index 255 and the 0.5-weighted aux loss where the model has one. `--ref-amp` adds its `--amp`
  option (fp16 autocast + GradScaler).
- segkit: `scripts/train.py trainer=gpu`'s Trainer, composed from `configs/trainer/gpu.yaml` (bf16-mixed,
  channels_last, cudnn.benchmark, TF32, uint8 batches normalised on the device), with the segkit task and the
  same optimizer; `--compile` adds `callbacks.speed.compile=true`. Progress bar on, loggers and checkpoints off.

On a machine without CUDA, `--device cpu` runs the same code at small sizes (the fast path's switches are then
what `trainer=gpu` would use, on CPU), which the test suite does to keep this script working.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from common import CONFIGS, Batches, StepTimer, machine, run_callbacks, sync
from segkit.models import DeepLabV3Plus, UNet
from segkit.tasks import SegmentationTask
from segkit.data.spec import IMAGENET_MEAN, IMAGENET_STD

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
MODELS = {
    "DeepLabV3+-R101 os8": lambda classes: DeepLabV3Plus("resnet101", classes, output_stride=8),
    "UNet-R34": lambda classes: UNet("resnet34", classes),
}
SKIP = 5


def sgd(params):
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)


def reference_recipe(net: torch.nn.Module, data: Batches, device: torch.device, amp: bool) -> float:
    """torchvision's reference loop; returns images/s over the steps after the first ``SKIP``."""
    torch.backends.cudnn.benchmark = False  # PyTorch's defaults, which the fast path changes
    torch.backends.cuda.matmul.allow_tf32 = False
    net = net.to(device).train()
    opt = sgd(net.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    host = [((b["image"].float() - MEAN) / STD, b["mask"].long()) for b in data.items]  # what its loader yields
    if device.type == "cuda":
        host = [(x.pin_memory(), y.pin_memory()) for x, y in host]
    start = 0.0
    for i, (image, target) in enumerate(host):
        if i == SKIP:
            sync()
            start = time.perf_counter()
        image, target = image.to(device), target.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            if getattr(net, "aux_head", None) is not None:
                out, aux = net.forward_with_aux(image)
                loss = F.cross_entropy(out, target, ignore_index=255) + 0.5 * F.cross_entropy(aux, target,
                                                                                             ignore_index=255)
            else:
                loss = F.cross_entropy(net(image), target, ignore_index=255)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    sync()
    return (len(host) - SKIP) * len(host[0][0]) / (time.perf_counter() - start)


def segkit_fast_path(net: torch.nn.Module, data: Batches, device: torch.device, classes: int,
                     compile_net: bool) -> float:
    """The Trainer that `trainer=gpu` composes; returns images/s over the steps after the first ``SKIP``."""
    overrides = ["trainer=gpu"]
    if device.type != "cuda":
        overrides += ["trainer.accelerator=cpu"]
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    timer = StepTimer(SKIP)
    trainer = instantiate(cfg.trainer, callbacks=[*run_callbacks(compile_net), timer], logger=False,
                          max_epochs=1, enable_checkpointing=False, enable_model_summary=False,
                          limit_val_batches=0, default_root_dir=None)
    task = SegmentationTask(net, classes, optimizer=sgd, aux_weight=0.5)
    loader = DataLoader(data, batch_size=None, shuffle=False)
    trainer.fit(task, train_dataloaders=loader)
    return (len(data) - SKIP) * len(data.items[0]["image"]) / (timer.end - timer.start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=30, help="steps per run, the first 5 untimed")
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--compile", action="store_true", help="segkit side with callbacks.speed.compile=true")
    p.add_argument("--ref-amp", action="store_true", help="also time the reference recipe with its --amp")
    args = p.parse_args()
    if args.steps <= SKIP:
        p.error(f"--steps must be more than the {SKIP} untimed warm-up steps")
    device = torch.device(args.device)
    data = Batches(args.steps, args.size, args.batch, args.classes, pin=device.type == "cuda")
    print(f"machine: {machine()}\n{args.steps} steps of {args.batch}x3x{args.size}x{args.size} "
          f"(first {SKIP} untimed), {args.classes} classes")
    print("| model | reference recipe img/s | segkit trainer=gpu img/s | speed-up |\n|---|---|---|---|")
    for name in args.models:
        torch.manual_seed(0)
        net = MODELS[name](args.classes)
        state = {k: v.clone() for k, v in net.state_dict().items()}
        recipes = {"fp32": reference_recipe(net, data, device, amp=False)}
        if args.ref_amp:
            net.load_state_dict(state)
            recipes["--amp"] = reference_recipe(net, data, device, amp=True)
        net.load_state_dict(state)
        ours = segkit_fast_path(net, data, device, args.classes, args.compile)
        for label, ref in recipes.items():
            print(f"| {name} ({label} reference) | {ref:.1f} | {ours:.1f} | {ours / ref:.2f}x |", flush=True)


if __name__ == "__main__":
    main()

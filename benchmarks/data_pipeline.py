"""Data pipeline throughput: images/s delivered by the DataModule (decode + albumentations + collate) at 512x512
crops from JPEG and PNG folders, per worker count, next to the model's consumption rate.

    python benchmarks/data_pipeline.py [--images 48] [--workers 0 1 2] [--model-batches 3]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from common import CONFIGS, machine, sync
from segkit.data import FolderSource, SegmentationDataModule
from segkit.models import DeepLabV3Plus



def make_folder(root: Path, n: int, fmt: str, size=(640, 800)) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        # smooth content so that JPEG/PNG sizes are realistic (pure noise would not compress)
        small = rng.integers(0, 256, (size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size[1], size[0]), Image.BILINEAR)
        img.save(root / "images" / f"{i:04d}.{fmt}", quality=90) if fmt == "jpg" else img.save(
            root / "images" / f"{i:04d}.png")
        Image.fromarray(rng.integers(0, 21, (size[0] // 32, size[1] // 32), dtype=np.uint8)).resize(
            (size[1], size[0]), Image.NEAREST).save(root / "masks" / f"{i:04d}.png")


def loader_rate(root: Path, workers: int, crop: int) -> float:
    aug = OmegaConf.load(Path(CONFIGS) / "data" / "augment" / "scale_crop.yaml")
    cfg = OmegaConf.create({"data": {"crop_size": crop, "ignore_index": 255}, "aug": aug})
    transform = instantiate(cfg.aug)
    dm = SegmentationDataModule(FolderSource(str(root), val_ratio=0.0), num_classes=21, batch_size=8,
                                num_workers=workers, train_transform=transform, crop_size=crop)
    loader = dm.train_dataloader()
    it = iter(loader)
    next(it)  # start-up (worker spawn) not counted
    t0, n = time.perf_counter(), 0
    for batch in it:
        n += len(batch["image"])
    return n / (time.perf_counter() - t0)


def model_rate(crop: int, batches: int) -> float:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = DeepLabV3Plus("resnet50", 21, output_stride=16).to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(2, 3, crop, crop, device=device)
    y = torch.randint(0, 21, (2, crop, crop), device=device)
    t0 = None
    for i in range(batches + 1):
        if i == 1:
            sync()
            t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync()
    return 2 * batches / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--crop", type=int, default=512)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--model-batches", type=int, default=3)
    args = p.parse_args()
    if args.images < 16:
        p.error("--images must be at least 16: two batches of 8, the first of which is not timed")
    print(f"machine: {machine()}")
    print(f"| format | workers | images/s delivered ({args.crop}x{args.crop} crops) |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("jpg", "png"):
            root = Path(tmp) / fmt
            make_folder(root, args.images, fmt)
            for w in args.workers:
                print(f"| {fmt} | {w} | {loader_rate(root, w, args.crop):.1f} |", flush=True)
    rate = model_rate(args.crop, args.model_batches)
    print(f"model consumption (DeepLabV3+-R50 train step, batch 2): {rate:.1f} images/s")


if __name__ == "__main__":
    main()

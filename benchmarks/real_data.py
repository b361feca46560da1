"""Train to a fixed budget on real data: segkit's pipeline vs smp's U-Net in a plain PyTorch loop.

    python scripts/build_real_datasets.py --out data_cache/real       # once (needs the realdata extra)
    python benchmarks/real_data.py --datasets brain_tissue,nuclei --epochs 30 --out benchmarks/results/real_data.md

The budget, the same for every row: U-Net with a ResNet-18 encoder, no pretrained weights, AdamW lr 1e-3 with poly
decay (power 0.9, per step), batch 8, horizontal flip only, ``--epochs`` epochs, the dataset's own train/val split.
Rows (``--runs``):

- ``segkit``: ``scripts/train.py data=folder model=unet model.encoder=resnet18 ...`` in a subprocess: the whole
  pipeline (data loading, Lightning, validation, checkpoints) with the data config's own choices (``auto``
  normalisation and channels, the default loss) and no crop; mIoU of its best checkpoint, as metrics.json reports
  it; the time is the subprocess's wall time.
- ``smp``: ``segmentation_models_pytorch.Unet("resnet18", encoder_weights=None)`` in a plain loop: images decoded
  once into memory, normalised by their measured mean/std, padded to a multiple of 32, CE loss.
- ``segkit-net``: segkit's ``UNet(encoder="resnet18")`` in the same plain loop, to separate network from pipeline.

Plain loops validate every ``max(1, epochs // 10)`` epochs and at the end; they report the best and the last
validation mIoU. Every row runs in its own Python process and its wall time is that process's, start to exit
(interpreter start, imports, data loading, training, validation), measured the same way for all three. mIoU comes from a confusion matrix over the whole split; classes absent from both prediction and
target are left out of the mean. Per-class IoU and wall times are written as a markdown table to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segkit.data.io import read_mask  # noqa: E402
from segkit.data.plan import measure, read_native  # noqa: E402
from segkit.data.sources import FolderSource, VOCSource  # noqa: E402

RUNS = ("segkit", "smp", "segkit-net")


def is_voc(root: Path) -> bool:
    """A dataset in PASCAL VOC's layout (``JPEGImages/``, ``SegmentationClass/``, ``ImageSets/Segmentation/``)."""
    return (Path(root) / "JPEGImages").is_dir() and (Path(root) / "ImageSets" / "Segmentation").is_dir()


def source_for(root: Path):
    """The segkit source that reads ``root``: VOC's layout or the folder layout."""
    return VOCSource(str(root)) if is_voc(root) else FolderSource(str(root))


def dataset_info(root: Path) -> Dict:
    """Class names and split sizes: ``dataset.json`` (scripts/build_real_datasets.py) or ``classes.json`` (the
    synthetic presets' caches)."""
    for meta in (root / "dataset.json", root / "classes.json"):
        if meta.is_file():
            info = json.loads(meta.read_text())
            info.setdefault("num_classes", len(info["class_names"]))
            info.setdefault("num_images", {s: len(source_for(root).samples(s)) for s in ("train", "val")})
            return info
    raise SystemExit(f"{root / 'dataset.json'} not found; build the datasets first: python "
                     f"scripts/build_real_datasets.py --out {root.parent}")


def load_split(root: Path, split: str, mean: Sequence[float], std: Sequence[float]):
    """Images as normalised float tensors (C, H, W) and masks as int64 (H, W), decoded once."""
    images, masks = [], []
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    for image_path, mask_path in source_for(root).samples(split):
        arr = read_native(image_path)
        x = torch.tensor(arr.transpose(2, 0, 1), dtype=torch.float32)  # a copy: PIL arrays are read-only
        if arr.dtype == np.uint8:
            x = x / 255.0
        images.append((x - m) / s)
        masks.append(torch.from_numpy(read_mask(mask_path).astype(np.int64)))
    return images, masks


def pad_batch(images: List[torch.Tensor], masks: List[torch.Tensor], ignore_index: int, multiple: int = 32):
    """Stack, padding bottom/right to a common size that is a multiple of ``multiple`` (images with 0 = the mean
    after normalisation, masks with ``ignore_index``)."""
    h = math.ceil(max(x.shape[-2] for x in images) / multiple) * multiple
    w = math.ceil(max(x.shape[-1] for x in images) / multiple) * multiple
    x = torch.zeros(len(images), images[0].shape[0], h, w)
    y = torch.full((len(images), h, w), ignore_index, dtype=torch.int64)
    for i, (im, mk) in enumerate(zip(images, masks)):
        x[i, :, :im.shape[-2], :im.shape[-1]] = im
        y[i, :mk.shape[-2], :mk.shape[-1]] = mk
    return x, y


def confusion(net: torch.nn.Module, images, masks, num_classes: int, ignore_index: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), np.int64)
    net.eval()
    with torch.inference_mode():
        for im, mk in zip(images, masks):
            x, _ = pad_batch([im], [mk], ignore_index)
            pred = net(x).argmax(1)[0, :mk.shape[0], :mk.shape[1]]
            valid = mk != ignore_index
            cm += np.bincount(mk[valid].numpy() * num_classes + pred[valid].numpy(),
                              minlength=num_classes ** 2).reshape(num_classes, num_classes)
    net.train()
    return cm


def iou_summary(cm: np.ndarray, class_names: Sequence[str]) -> Dict:
    inter = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return {"mIoU": float(np.nanmean(iou)),
            "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(class_names, iou)}}


def plain_loop(make_net: Callable[[int, int], torch.nn.Module], root: Path, info: Dict, epochs: int,
               batch_size: int, lr: float, seed: int, ignore_index: int = 255, loss: str = "ce") -> Dict:
    """The plain PyTorch loop of the module docstring; ``loss``: ``ce`` or ``ce_dice`` (CE + segkit's Dice)."""
    from segkit.losses import DiceLoss

    dice = DiceLoss(ignore_index) if loss == "ce_dice" else None
    torch.manual_seed(seed)
    num_classes = int(info["num_classes"])
    start = time.perf_counter()
    stats = measure(source_for(root), "train", num_classes, ignore_index)
    train = load_split(root, "train", stats.mean, stats.std)
    val = load_split(root, "val", stats.mean, stats.std)
    net = make_net(stats.channels, num_classes)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    steps_per_epoch = max(1, len(train[0]) // batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: (1 - min(step, total - 1) / total) ** 0.9)
    rng = torch.Generator().manual_seed(seed)
    every = max(1, epochs // 10)
    best, last = None, None
    for epoch in range(epochs):
        order = torch.randperm(len(train[0]), generator=rng).tolist()
        for b in range(steps_per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            flips = torch.rand(len(idx), generator=rng) < 0.5
            ims = [train[0][i].flip(-1) if f else train[0][i] for i, f in zip(idx, flips)]
            mks = [train[1][i].flip(-1) if f else train[1][i] for i, f in zip(idx, flips)]
            x, y = pad_batch(ims, mks, ignore_index)
            logits = net(x)
            value = F.cross_entropy(logits, y, ignore_index=ignore_index)
            if dice is not None:
                value = value + dice(logits, y)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % every == 0 or epoch + 1 == epochs:
            last = iou_summary(confusion(net, *val, num_classes, ignore_index), info["class_names"])
            if best is None or last["mIoU"] > best["mIoU"]:
                best = last
            print(f"  epoch {epoch + 1}/{epochs}: loss {value.item():.4f}, val mIoU {last['mIoU']:.4f}, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    return {**best, "last_mIoU": last["mIoU"], "seconds": time.perf_counter() - start}


def smp_net(in_channels: int, num_classes: int) -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Unet("resnet18", encoder_weights=None, in_channels=in_channels, classes=num_classes)


def segkit_net(in_channels: int, num_classes: int) -> torch.nn.Module:
    from segkit.models import UNet

    return UNet(encoder="resnet18", num_classes=num_classes, in_channels=in_channels)


def segkit_pipeline(root: Path, info: Dict, epochs: int, batch_size: int, lr: float, seed: int, run_dir: Path,
                    extra: Sequence[str] = ()) -> Dict:
    """``scripts/train.py`` with the budget, in a subprocess; its metrics.json and wall time."""
    names = ",".join(info["class_names"])
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), f"data={'voc' if is_voc(root) else 'folder'}",
           f"data.source.root={root}", f"data.num_classes={info['num_classes']}", f"data.class_names=[{names}]",
           "model=unet", "model.encoder=resnet18", f"trainer.max_epochs={epochs}",
           f"data.batch_size={batch_size}", "data.crop_size=null", "data/augment=none",
           "data.train_transform.transforms=[{_target_:albumentations.HorizontalFlip}]",
           "task/optimizer=adamw", f"task.optimizer.lr={lr}", "task/scheduler=poly", f"seed={seed}",
           f"hydra.run.dir={run_dir}", *extra]
    return train_process(cmd, run_dir)


def train_process(cmd: Sequence[str], run_dir: Path) -> Dict:
    """``scripts/train.py`` in a subprocess (``cmd``): its metrics.json, its wall time and its planned config; the
    command and its output go to ``run_dir/harness.log``."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - start
    (run_dir / "harness.log").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "harness.log").write_text(" ".join(cmd) + "\n\n" + proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"segkit training failed (exit {proc.returncode}); log: {run_dir / 'harness.log'}\n"
                           + proc.stderr[-2000:])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    plan = [line.split("plan: ", 1)[1] for line in (proc.stdout + proc.stderr).splitlines() if "plan: " in line]
    return {"mIoU": metrics["mIoU"], "per_class_iou": metrics["per_class_iou"], "last_mIoU": None,
            "seconds": seconds, "plan": plan}


def table(results: Dict[str, Dict[str, Dict]], infos: Dict[str, Dict], epochs: int, note: str) -> str:
    lines = [f"Budget: U-Net ResNet-18 from scratch, AdamW lr 1e-3 + poly, batch 8, hflip only, {epochs} epochs. "
             + note, ""]
    for name, rows in results.items():
        classes = infos[name]["class_names"]
        freq = infos[name].get("train_class_frequency") or [None] * len(classes)
        head = " | ".join(f"{c} ({100 * f:.1f}%)" if f is not None else c for c, f in zip(classes, freq))
        lines += [f"**{name}** ({infos[name]['num_images']['train']} train / {infos[name]['num_images']['val']} val)",
                  "", f"| run | mIoU (best) | mIoU (last) | {head} | wall s |",
                  "|---" * (len(classes) + 4) + "|"]
        for run, r in rows.items():
            if "error" in r:
                lines.append(f"| {run} | failed: {r['error'][:80]} |" + " |" * (len(classes) + 2))
                continue
            per = " | ".join("—" if r["per_class_iou"].get(c) is None else f"{r['per_class_iou'][c]:.3f}"
                             for c in classes)
            last = "—" if r.get("last_mIoU") is None else f"{r['last_mIoU']:.3f}"
            lines.append(f"| {run} | {r['mIoU']:.3f} | {last} | {per} | {r['seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def plain_loop_process(run: str, root: Path, args: argparse.Namespace) -> Dict:
    """A plain loop in a fresh Python process, timed from outside as ``segkit`` is: both rows then include the
    interpreter start, imports and data loading a user waits for."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", run, "--datasets", str(root),
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
           "--seed", str(args.seed), "--loss", args.loss]
    return run_child(cmd, run)


def run_child(cmd: Sequence[str], what: str) -> Dict:
    """Run a plain-loop child (progress lines, then its row as JSON on the last line) in a fresh process; the row,
    with ``seconds`` the wall time measured from outside and ``loop_seconds`` the loop's own."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n" + proc.stderr[-2000:])
    *progress, last = proc.stdout.strip().splitlines()
    print("\n".join(progress), flush=True)
    row = json.loads(last)
    row["loop_seconds"], row["seconds"] = row["seconds"], seconds
    return row


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="brain_tissue,nuclei",
                        help="comma-separated dataset folders under --root (or paths to folder-layout datasets)")
    parser.add_argument("--root", type=Path, default=REPO / "data_cache" / "real")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated: " + ", ".join(RUNS))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "real_data.md")
    parser.add_argument("--work-dir", type=Path, default=REPO / "outputs" / "real_data")
    parser.add_argument("--loss", choices=("ce", "ce_dice"), default="ce", help="loss of the plain loops")
    parser.add_argument("--segkit-args", default="", help="extra space-separated overrides for scripts/train.py")
    parser.add_argument("--child", choices=("smp", "segkit-net"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one plain loop, its result as JSON on the last line (see plain_loop_process)
        root = Path(args.datasets).resolve()
        row = plain_loop(smp_net if args.child == "smp" else segkit_net, root, dataset_info(root), args.epochs,
                         args.batch_size, args.lr, args.seed, loss=args.loss)
        print(json.dumps(row), flush=True)
        return row
    runs = [r for r in args.runs.split(",") if r]
    unknown = set(runs) - set(RUNS)
    if unknown:
        parser.error(f"unknown --runs {sorted(unknown)}; choose from {', '.join(RUNS)}")
    results: Dict[str, Dict[str, Dict]] = {}
    infos = {}
    load_before = os.getloadavg()[0]
    for name in [d for d in args.datasets.split(",") if d]:
        root = (args.root / name) if not Path(name).is_dir() else Path(name)
        info = infos[root.name] = dataset_info(root.resolve())
        rows = results[root.name] = {}
        for run in runs:
            print(f"[{root.name}] {run}: training {args.epochs} epochs ...", flush=True)
            try:
                if run == "segkit":
                    rows[run] = segkit_pipeline(root.resolve(), info, args.epochs, args.batch_size, args.lr,
                                                args.seed, (args.work_dir / root.name).resolve(),
                                                args.segkit_args.split())
                else:
                    rows[run] = plain_loop_process(run, root.resolve(), args)
            except Exception as exc:  # one failing row must not lose the others' numbers
                rows[run] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"[{root.name}] {run}: {json.dumps(rows[run])}", flush=True)
    note = (f"Plain loops: {args.loss} loss. Measured on {torch.get_num_threads()} CPU threads ({os.cpu_count()} "
            f"cores; 1-minute load average {load_before:.1f} before the first row, {os.getloadavg()[0]:.1f} after "
            "the last: a load above the core count means the wall times are contended).")
    text = table(results, infos, args.epochs, note)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)
    return results


if __name__ == "__main__":
    main()

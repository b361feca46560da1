"""DeepLabV3+ on real data, one plain loop for all: segkit's default, segkit with TensorFlow DeepLab's BN + ReLU after
each depthwise conv (``depthwise_norm=True``) and smp's ``DeepLabV3Plus``; same encoder, budget and loss.

    python scripts/build_real_datasets.py --out data_cache/real       # once (needs the realdata extra)
    python benchmarks/deeplab_real_data.py --datasets brain_tissue,nuclei --encoder resnet18 --epochs 30

The loop, data handling and budget are ``benchmarks/real_data.py``'s (AdamW lr 1e-3 + poly, batch 8, hflip only,
images decoded once and normalised by their measured mean/std, padded to a multiple of 32), with CE + Dice, the loss
segkit's plan picks for these datasets. Output stride 16, no pretrained weights. Every row runs in its own process;
mIoU is the best of the loop's validations. Prints a markdown table (and writes it to ``--out`` when given).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import real_data

RUNS = ("segkit", "segkit-dwnorm", "smp")


def make_net(run: str, encoder: str):
    def build(in_channels: int, num_classes: int):
        if run == "smp":
            import segmentation_models_pytorch as smp

            return smp.DeepLabV3Plus(encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes,
                                     encoder_output_stride=16)
        from segkit.models import DeepLabV3Plus

        return DeepLabV3Plus(encoder, num_classes, in_channels, output_stride=16,
                             depthwise_norm=run == "segkit-dwnorm")

    return build


def child(args: argparse.Namespace) -> None:
    root = args.root / args.datasets
    row = real_data.plain_loop(make_net(args.child, args.encoder), root, real_data.dataset_info(root), args.epochs,
                               args.batch_size, args.lr, args.seed, loss="ce_dice")
    print(json.dumps(row), flush=True)


def run_row(run: str, dataset: str, args: argparse.Namespace) -> Dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", run, "--datasets", dataset, "--root",
           str(args.root.resolve()), "--encoder", args.encoder, "--epochs", str(args.epochs), "--batch-size",
           str(args.batch_size), "--lr", str(args.lr), "--seed", str(args.seed)]
    try:
        return real_data.run_child(cmd, f"{run} on {dataset}")
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None


def table(results: Dict[str, Dict[str, Dict]], infos: Dict[str, Dict], args: argparse.Namespace) -> str:
    lines = [f"DeepLabV3+-{args.encoder} (output stride 16) from scratch, AdamW lr {args.lr} + poly, batch "
             f"{args.batch_size}, hflip only, CE + Dice, {args.epochs} epochs, seed {args.seed}; one plain loop.", ""]
    for name, rows in results.items():
        classes: List[str] = infos[name]["class_names"]
        lines += [f"**{name}**", "", "| run | mIoU (best) | " + " | ".join(classes) + " | wall s |",
                  "|---" * (len(classes) + 3) + "|"]
        for run, r in rows.items():
            per = " | ".join("—" if r["per_class_iou"].get(c) is None else f"{r['per_class_iou'][c]:.3f}"
                             for c in classes)
            lines.append(f"| {run} | {r['mIoU']:.3f} | {per} | {r['seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Dict]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="brain_tissue,nuclei")
    parser.add_argument("--root", type=Path, default=real_data.REPO / "data_cache" / "real")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated: " + ", ".join(RUNS))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return {}
    results: Dict[str, Dict[str, Dict]] = {}
    infos = {}
    for dataset in args.datasets.split(","):
        name = Path(dataset).name
        infos[name] = real_data.dataset_info(args.root / dataset)
        results[name] = {}
        for run in args.runs.split(","):
            row = results[name][run] = run_row(run, dataset, args)
            print(f"{name} {run}: mIoU {row['mIoU']:.3f}, {row['seconds']:.0f} s", flush=True)
    text = table(results, infos, args)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()

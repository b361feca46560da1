"""The defaults as users get them, on a panel of datasets: ``scripts/train.py`` given only the layout, the root and
the budget, against smp's U-Net in a plain loop, in one invocation.

    python scripts/build_real_datasets.py --out data_cache/real       # once (needs the realdata extra)
    python benchmarks/defaults_panel.py --epochs 30 --out benchmarks/results/defaults_panel.md

Rows per dataset (``--runs``):

- ``segkit``: ``scripts/train.py data=<layout> data.source.root=<root> model=unet model.encoder=resnet18
  data.batch_size=8 trainer.max_epochs=<epochs>``: nothing else (``<layout>`` is ``voc`` for a dataset in PASCAL
  VOC's layout, else ``folder``; ``hydra.run.dir`` only says where the run goes). Classes, channels, normalisation,
  crop, augmentation, loss, learning rate and schedule are what segkit decides; its plan lines are kept.
- ``smp``: ``segmentation_models_pytorch.Unet("resnet18")`` in ``benchmarks/real_data.py``'s plain loop: whole
  images padded to a multiple of 32, horizontal flip, CE, AdamW 1e-3 + poly, batch 8, the same epochs.
- ``segkit-recipe``: ``scripts/train.py`` told the plain loop's recipe (``real_data.py``'s segkit row: whole
  images, flip only, AdamW 1e-3 + poly, the class list given): a second row, named as such.

Datasets (``--datasets``): folders under ``--root`` (``scripts/build_real_datasets.py`` writes them), paths, or
``synthetic_hard`` (generated once into ``--root``/synthetic_hard). Every row runs in its own process, timed from
outside. The verdict per dataset is the issue's bar: segkit's mIoU >= smp's, wall time <= 1.1x smp's, and no class
holding >= 0.5% of the training pixels at 0 IoU.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import real_data

RUNS = ("segkit", "smp", "segkit-recipe")
DEFAULT_DATASETS = ("brain_tissue", "nuclei", "synthetic_hard")
MIN_FREQUENCY = 0.005  # classes at least this common in the training pixels must not be at 0 IoU
TIME_BAR = 1.1


def dataset_root(name: str, root: Path) -> Path:
    if Path(name).is_dir():
        return Path(name).resolve()
    if name == "synthetic_hard":  # generated once into root/synthetic_hard/<its name>/, folder layout + classes.json
        from segkit.data.synthetic_hard import HardSyntheticSource

        return HardSyntheticSource(str(root / name)).root.resolve()
    return (root / name).resolve()


def defaults_command(root: Path, epochs: int, run_dir: Path) -> List[str]:
    """The command of the ``segkit`` row: the layout, the root and the budget, nothing else."""
    return [sys.executable, str(real_data.REPO / "scripts" / "train.py"),
            f"data={'voc' if real_data.is_voc(root) else 'folder'}", f"data.source.root={root}", "model=unet",
            "model.encoder=resnet18", "data.batch_size=8", f"trainer.max_epochs={epochs}", f"hydra.run.dir={run_dir}"]


def class_frequency(info: Dict, root: Path) -> List[float]:
    if info.get("train_class_frequency"):
        return list(info["train_class_frequency"])
    from segkit.data.plan import measure

    return measure(real_data.source_for(root), "train", int(info["num_classes"]), 255).class_frequency


def verdict(rows: Dict[str, Dict], freq: Sequence[float]) -> Dict:
    """The issue's bar for the ``segkit`` row against ``smp``."""
    mine, peer = rows.get("segkit", {}), rows.get("smp", {})
    if "mIoU" not in mine or "mIoU" not in peer:
        return {"pass": False, "why": "a row failed"}
    ious = list(mine["per_class_iou"].values())  # class order (names may differ: class_0 ... without a list)
    zero = [i for i, (f, v) in enumerate(zip(freq, ious)) if f >= MIN_FREQUENCY and (v or 0.0) == 0.0]
    ratio = mine["seconds"] / peer["seconds"]
    ok = mine["mIoU"] >= peer["mIoU"] and ratio <= TIME_BAR and not zero
    return {"pass": ok, "miou_delta": mine["mIoU"] - peer["mIoU"], "time_ratio": ratio, "zero_classes": zero}


def markdown(results: Dict[str, Dict[str, Dict]], infos: Dict[str, Dict], verdicts: Dict[str, Dict],
             args: argparse.Namespace, note: str) -> str:
    lines = [f"Budget: U-Net ResNet-18 from scratch, batch 8, {args.epochs} epochs. {note}", "",
             "| dataset | run | val mIoU | smallest class IoU (>= 0.5% px) | wall s | x smp | verdict |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name, rows in results.items():
        info, v = infos[name], verdicts[name]
        freq = info["frequency"]
        label = (f"{name} ({info['num_images']['train']} / {info['num_images']['val']}, {info['num_classes']} "
                 f"classes, {info.get('layout', 'folder')})")
        for run, r in rows.items():
            if "error" in r:
                lines.append(f"| {label} | {run} | failed: {r['error'][:60]} | | | | |")
                continue
            ious = list(r["per_class_iou"].values())
            common = [(v or 0.0) for f, v in zip(freq, ious) if f >= MIN_FREQUENCY]
            ratio = r["seconds"] / rows["smp"]["seconds"] if "seconds" in rows.get("smp", {}) else float("nan")
            verdict_text = ("**pass**" if v["pass"] else f"fail ({v.get('why') or _why(v)})") if run == "segkit" \
                else ""
            lines.append(f"| {label} | {run} | {r['mIoU']:.3f} | {min(common) if common else float('nan'):.3f} | "
                         f"{r['seconds']:.0f} | {ratio:.2f} | {verdict_text} |")
            label = ""
    lines.append("")
    for name, rows in results.items():
        plan = rows.get("segkit", {}).get("plan")
        if plan:
            lines += [f"segkit's plan on {name}:", ""] + [f"- {line}" for line in plan] + [""]
    return "\n".join(lines)


def _why(v: Dict) -> str:
    parts = []
    if v["miou_delta"] < 0:
        parts.append(f"mIoU {v['miou_delta']:+.3f}")
    if v["time_ratio"] > TIME_BAR:
        parts.append(f"time {v['time_ratio']:.2f}x")
    if v["zero_classes"]:
        parts.append(f"classes {v['zero_classes']} at 0")
    return ", ".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DEFAULT_DATASETS),
                        help="comma-separated dataset folders under --root, paths, or synthetic_hard")
    parser.add_argument("--root", type=Path, default=real_data.REPO / "data_cache" / "real")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--runs", default="segkit,smp", help="comma-separated: " + ", ".join(RUNS))
    parser.add_argument("--out", type=Path, default=real_data.REPO / "benchmarks" / "results" / "defaults_panel.md")
    parser.add_argument("--work-dir", type=Path, default=real_data.REPO / "outputs" / "defaults_panel")
    parser.add_argument("--variant", action="append", default=[],
                        help="space-separated overrides added to the segkit row's command: an extra row named "
                             "'segkit <overrides>' (repeatable), to measure a candidate default")
    args = parser.parse_args(argv)
    runs = [r for r in args.runs.split(",") if r]
    if set(runs) - set(RUNS):
        parser.error(f"unknown --runs {sorted(set(runs) - set(RUNS))}; choose from {', '.join(RUNS)}")
    # the plain loop's child reads these (real_data.plain_loop_process): the budget above, CE, seed 0
    loop_args = argparse.Namespace(epochs=args.epochs, batch_size=8, lr=1e-3, seed=0, loss="ce")
    results: Dict[str, Dict[str, Dict]] = {}
    infos: Dict[str, Dict] = {}
    verdicts: Dict[str, Dict] = {}
    load_before = os.getloadavg()[0]
    for name in [d for d in args.datasets.split(",") if d]:
        root = dataset_root(name, args.root)
        info = infos[root.name] = real_data.dataset_info(root)
        info["layout"] = "voc" if real_data.is_voc(root) else "folder"
        info["frequency"] = class_frequency(info, root)
        rows = results[root.name] = {}
        for run in runs + [f"segkit {v}" for v in args.variant]:
            run_dir = (args.work_dir / root.name / re.sub(r"[^A-Za-z0-9._-]", "_", run)).resolve()
            shutil.rmtree(run_dir, ignore_errors=True)
            print(f"[{root.name}] {run}: {args.epochs} epochs ...", flush=True)
            try:
                if run == "segkit":
                    rows[run] = real_data.train_process(defaults_command(root, args.epochs, run_dir), run_dir)
                elif run.startswith("segkit "):
                    cmd = defaults_command(root, args.epochs, run_dir) + run.split()[1:]
                    rows[run] = real_data.train_process(cmd, run_dir)
                elif run == "segkit-recipe":
                    rows[run] = real_data.segkit_pipeline(root, info, args.epochs, 8, 1e-3, 0, run_dir)
                else:
                    rows[run] = real_data.plain_loop_process(run, root, loop_args)
            except Exception as exc:  # one failing row must not lose the others' numbers
                rows[run] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"[{root.name}] {run}: {json.dumps({k: v for k, v in rows[run].items() if k != 'plan'})}",
                  flush=True)
        verdicts[root.name] = verdict(rows, info["frequency"])
    note = (f"Measured on {os.cpu_count()} CPU cores; 1-minute load average {load_before:.1f} before the first row, "
            f"{os.getloadavg()[0]:.1f} after the last (above the core count: wall times are contended).")
    text = markdown(results, infos, verdicts, args, note)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"results": results, "verdicts": verdicts}, indent=2) + "\n")
    print(text)
    return {"results": results, "verdicts": verdicts}


if __name__ == "__main__":
    sys.exit(0 if all(v["pass"] for v in main()["verdicts"].values()) else 1)

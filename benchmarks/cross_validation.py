"""5-fold cross-validation on the real datasets: the per-fold table, the fold ensemble on the held-out split against
the best single fold and the mean fold, and the effect of the postprocessing chosen on the out-of-fold predictions.

    python scripts/build_real_datasets.py --out data_cache/real       # once (needs the realdata extra)
    python benchmarks/cross_validation.py --epochs 15 --out benchmarks/results/cross_validation.md

Per dataset, one command, in its own process, timed from outside: ``scripts/cv.py data=<layout>
data.source.root=<root> model=unet model.encoder=resnet18 data.batch_size=8 trainer.max_epochs=<epochs>
cv.folds=<folds>``: the layout, the root and the budget, everything else segkit's defaults (planned once on the
pool: the layout's train split). The held-out split is the layout's val split, which no fold trains on.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import real_data


def cv_command(root: Path, epochs: int, folds: int, cv_dir: Path) -> List[str]:
    return [sys.executable, str(real_data.REPO / "scripts" / "cv.py"),
            f"data={'voc' if real_data.is_voc(root) else 'folder'}", f"data.source.root={root}", "model=unet",
            "model.encoder=resnet18", "data.batch_size=8", f"trainer.max_epochs={epochs}", f"cv.folds={folds}",
            f"hydra.run.dir={cv_dir}"]


def run(root: Path, epochs: int, folds: int, cv_dir: Path) -> Dict:
    cmd = cv_command(root, epochs, folds, cv_dir)
    shutil.rmtree(cv_dir, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=real_data.REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(real_data.REPO)})
    seconds = time.perf_counter() - start
    cv_dir.mkdir(parents=True, exist_ok=True)
    (cv_dir / "harness.log").write_text(" ".join(cmd) + "\n\n" + proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"cross-validation failed (exit {proc.returncode}); log: {cv_dir / 'harness.log'}\n"
                           + proc.stderr[-2000:])
    result = json.loads((cv_dir / "cv.json").read_text())
    fit = [json.loads((cv_dir / f"fold_{k}" / "metrics.json").read_text())["fit_seconds"] for k in range(folds)]
    return {"command": " ".join(["python", *cmd[1:]]), "seconds": seconds, "fit_seconds": fit, "cv": result}


def markdown(rows: Dict[str, Dict], args: argparse.Namespace, note: str) -> str:
    def f(v) -> str:
        return "—" if v is None else f"{v:.3f}"

    lines = [f"Budget per fold: U-Net ResNet-18 from scratch, batch 8, {args.epochs} epochs; {args.folds} folds. "
             + note, ""]
    for name, row in rows.items():
        if "error" in row:
            lines += [f"**{name}**: failed: {row['error'][:300]}", ""]
            continue
        cv = row["cv"]
        classes = list(cv["pooled_oof"]["per_class_iou"])
        lines += [f"**{name}**: `{row['command']}` ({row['seconds']:.0f} s in all; fits "
                  f"{', '.join(f'{s:.0f}' for s in row['fit_seconds'])} s)", "",
                  "| fold | out-of-fold mIoU | " + " | ".join(classes) + " | held-out mIoU |",
                  "|---|---:|" + "---:|" * len(classes) + "---:|"]
        for fold in cv["per_fold"]:
            per = fold["oof"]["per_class_iou"]
            lines.append(f"| {fold['fold']} | {f(fold['oof']['mIoU'])} | " + " | ".join(f(per.get(c)) for c in classes)
                         + f" | {f((fold['holdout'] or {}).get('mIoU'))} |")
        per = cv["oof_per_class_mean_std"]
        lines.append(f"| mean ± std | {f(cv['oof_mIoU_mean'])} ± {f(cv['oof_mIoU_std'])} | "
                     + " | ".join(f"{f(per[c][0])} ± {f(per[c][1])}" for c in classes)
                     + f" | {f(cv.get('holdout_mIoU_mean'))} ± {f(cv.get('holdout_mIoU_std'))} |")
        pooled = cv["pooled_oof"]
        lines.append(f"| pooled out-of-fold | {f(pooled['mIoU'])} | "
                     + " | ".join(f(pooled['per_class_iou'].get(c)) for c in classes) + " | |")
        e, ep = cv.get("ensemble_holdout"), cv.get("ensemble_holdout_postprocessed")
        pp = cv.get("postprocessing") or {}
        from segkit.postprocess import describe

        lines += ["", "| held-out split | mIoU |", "|---|---:|",
                  f"| mean single fold | {f(cv.get('holdout_mIoU_mean'))} |",
                  f"| fold with the best out-of-fold mIoU | {f(cv.get('holdout_mIoU_best_val_fold'))} |",
                  f"| best single fold (chosen on the held-out split itself) | {f(cv.get('holdout_mIoU_best_fold'))} |",
                  f"| ensemble of the {len(cv['per_fold'])} folds | {f(e['mIoU'] if e else None)} |",
                  f"| ensemble + postprocessing ({describe(pp.get('rules', []))}) | "
                  f"{f(ep['mIoU']) if ep else 'same (no rule kept)'} |", "",
                  f"Postprocessing on the out-of-fold predictions: mIoU {f(pp.get('mIoU_before'))} -> "
                  f"{f(pp.get('mIoU_after'))}.", ""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="brain_tissue,nuclei")
    parser.add_argument("--root", type=Path, default=real_data.REPO / "data_cache" / "real")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=real_data.REPO / "benchmarks" / "results" / "cross_validation.md")
    parser.add_argument("--work-dir", type=Path, default=real_data.REPO / "outputs" / "cv_benchmark")
    args = parser.parse_args(argv)
    rows: Dict[str, Dict] = {}
    load_before = os.getloadavg()[0]
    for name in [d for d in args.datasets.split(",") if d]:
        root = Path(name) if Path(name).is_dir() else args.root / name
        print(f"[{root.name}] {args.folds}-fold cross-validation, {args.epochs} epochs per fold ...", flush=True)
        try:
            rows[root.name] = run(root.resolve(), args.epochs, args.folds, (args.work_dir / root.name).resolve())
        except Exception as exc:  # one failing dataset must not lose the others' numbers
            rows[root.name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"[{root.name}] {json.dumps({k: v for k, v in rows[root.name].items() if k != 'cv'})}", flush=True)
    note = (f"Measured on {os.cpu_count()} CPU cores; 1-minute load average {load_before:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after.")
    text = markdown(rows, args, note)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)
    return rows


if __name__ == "__main__":
    sys.exit(0 if all("error" not in r for r in main().values()) else 1)

"""Streamed shards (data=streaming, litdata) against the folder layout, on the same generated images:

  - conversion speed: scripts/shard.py as a user runs it (images/s, the plan's statistics included);
  - loader throughput: images/s out of the data module's training loader (decode, flip, collate), 0/2/4 workers,
    the two layouts interleaved (ABBA) in one process;
  - loader memory: proportional set size (PSS: shared pages counted once) of the loading process and its workers
    over a whole epoch, each size in a fresh process, as the dataset grows from 10k to 40k images.

    python benchmarks/streaming.py [--images 20000] [--memory-sizes 10000 20000 40000] [--size 64] [--workers 0 2 4]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine, median  # noqa: E402

from segkit.data import FolderSource, SegmentationDataModule  # noqa: E402
from segkit.data.streaming import StreamingSource  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def make_folder(root: Path, n: int, size: int, start: int = 0) -> None:
    """``n`` JPEG images (smooth content, so they compress like photos) with palette-free PNG masks of 4 classes."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BILINEAR).save(root / "images" / f"{i:06d}.jpg",
                                                                          quality=90)
        Image.fromarray(rng.integers(0, 4, (size // 16, size // 16), dtype=np.uint8)).resize(
            (size, size), Image.NEAREST).save(root / "masks" / f"{i:06d}.png")


def datamodule(source, workers: int, batch: int) -> SegmentationDataModule:
    import albumentations as A

    return SegmentationDataModule(source, num_classes=4, in_channels=3, batch_size=batch, num_workers=workers,
                                  train_transform=A.Compose([A.HorizontalFlip()]), cache=False,
                                  persistent_workers=False)


def epoch_rate(dm: SegmentationDataModule, batches: int) -> float:
    """Images/s over ``batches`` batches of a fresh training loader (worker start-up included, as each epoch)."""
    loader = dm.train_dataloader()
    start, seen = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        seen += len(batch["name"])
        if i + 1 >= batches:
            break
    rate = seen / (time.perf_counter() - start)
    del loader
    return rate


def pss_tree(pid: int, field: str = "Pss:") -> int:
    """PSS bytes of ``pid`` and its descendants (from /proc; shared pages divided among their sharers). ``field``
    ``Pss_Anon:`` counts the processes' own memory only, without the file pages they map (litdata maps its chunk
    files: those pages are the kernel's page cache, counted in PSS while mapped, and dropped under pressure)."""
    children: dict = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith(field):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def memory_child(layout: str, root: str, workers: int, batch: int) -> None:
    """In a fresh process: one whole epoch, the peak PSS of the loading processes sampled every 10 batches."""
    source = StreamingSource(root) if layout == "streaming" else FolderSource(root, val_ratio=0.0)
    dm = datamodule(source, workers, batch)
    peak, anons, images = 0, [], 0
    for i, b in enumerate(dm.train_dataloader()):
        images += len(b["name"])
        if i % 10 == 0:
            peak = max(peak, pss_tree(os.getpid()))
            anons.append(pss_tree(os.getpid(), "Pss_Anon:"))
    print(json.dumps({"peak_pss_mb": peak / 2 ** 20, "peak_anon_mb": max(anons) / 2 ** 20,
                      "median_anon_mb": float(np.median(anons)) / 2 ** 20, "images": images}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[10000, 20000, 40000])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=100, help="batches per throughput measurement")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-workers", type=int, default=2)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--no-save", action="store_true", help="print only (toy runs): keep benchmarks/results")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        memory_child(args.child[0], args.child[1], int(args.child[2]), args.batch)
        return
    tmp = Path(tempfile.mkdtemp(prefix="segkit-stream-bench-"))
    largest = max([args.images, *args.memory_sizes])
    t0 = time.perf_counter()
    make_folder(tmp / "all", largest, args.size)
    print(f"generated {largest} {args.size}x{args.size} JPEG images in {time.perf_counter() - t0:.0f} s ({tmp})")

    def folder_of(n: int) -> Path:  # the first n images, as a folder of their own (symlinks)
        root = tmp / f"folder{n}"
        if not root.exists():
            for sub in ("images", "masks"):
                (root / sub).mkdir(parents=True)
                for p in sorted((tmp / "all" / sub).iterdir())[:n]:
                    (root / sub / p.name).symlink_to(p)
        return root

    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "command": "python " + " ".join(sys.argv),
           "image_size": args.size, "batch": args.batch}
    conversions = {}
    for n in sorted({args.images, *args.memory_sizes}):
        # the user's command, in a process of its own (litdata's conversion leaves threads behind that a forked
        # DataLoader worker must not inherit); its own timing, from reading the config to the last chunk written
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "shard.py"), "data=folder",
                               f"data.source.root={folder_of(n)}", "data.source.val_ratio=0", "splits=[train]",
                               f"out={tmp / f'shards{n}'}"], capture_output=True, text=True, check=True)
        took = float(re.search(r" in ([0-9.]+) s ", proc.stdout).group(1))
        conversions[n] = {"seconds": round(took, 1), "images_per_s": round(n / took)}
        print(f"conversion of {n} images: {took:.1f} s, {n / took:.0f} images/s")
    out["conversion"] = conversions

    n = args.images
    rates = {}
    for workers in [] if args.skip_throughput else args.workers:
        dms = {"folder": datamodule(FolderSource(str(folder_of(n)), val_ratio=0.0), workers, args.batch),
               "streaming": datamodule(StreamingSource(str(tmp / f"shards{n}")), workers, args.batch)}
        times = interleaved({k: (lambda dm=dm: epoch_rate(dm, args.batches)) for k, dm in dms.items()},
                            repeats=args.repeats, warmup=1, value=True)
        rates[workers] = {k: round(median(v)) for k, v in times.items()}
        rates[workers]["ratio"] = round(rates[workers]["streaming"] / rates[workers]["folder"], 2)
        print(f"{workers} workers: folder {rates[workers]['folder']} img/s, streaming {rates[workers]['streaming']} "
              f"img/s (x{rates[workers]['ratio']})")
    out["throughput"] = rates

    memory = {}
    for size in args.memory_sizes:
        memory[size] = {}
        for layout, root in (("streaming", tmp / f"shards{size}"), ("folder", folder_of(size))):
            proc = subprocess.run([sys.executable, __file__, "--child", layout, str(root), str(args.memory_workers),
                                   "--batch", str(args.batch)], capture_output=True, text=True, check=True)
            memory[size][layout] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"memory, {size} images, {layout}: peak {memory[size][layout]['peak_pss_mb']:.0f} MB, own "
                  f"(anonymous) {memory[size][layout]['peak_anon_mb']:.0f} MB, median own "
                  f"{memory[size][layout]['median_anon_mb']:.0f} MB "
                  f"({memory[size][layout]['images']} images in the epoch)")
    out["memory"] = memory
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "streaming.json").write_text(json.dumps(out, indent=1))
    lines = [f"Machine: {out['machine']}; {out['date']}; `{out['command']}`", "",
             "| workers | folder img/s | streaming img/s | streaming / folder |", "|---|---|---|---|"]
    lines += [f"| {w} | {r['folder']} | {r['streaming']} | {r['ratio']} |" for w, r in rates.items()]
    lines += ["", "| images | conversion s | conversion img/s | streaming peak PSS MB (own peak, own median) | "
              "folder peak PSS MB (own peak, own median) |", "|---|---|---|---|---|"]
    for size in args.memory_sizes:
        st, fo = memory[size]["streaming"], memory[size]["folder"]
        lines.append(f"| {size} | {conversions[size]['seconds']} | {conversions[size]['images_per_s']} | "
                     f"{st['peak_pss_mb']:.0f} ({st['peak_anon_mb']:.0f}, {st['median_anon_mb']:.0f}) | "
                     f"{fo['peak_pss_mb']:.0f} ({fo['peak_anon_mb']:.0f}, {fo['median_anon_mb']:.0f}) |")
    if not args.no_save:
        (RESULTS / "streaming.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

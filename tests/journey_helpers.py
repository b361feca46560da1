"""Helpers of tests/test_journeys.py: toy datasets in every layout and input kind a user brings, the CLI steps run as a
user runs them (a journey's ``python scripts/NAME.py ...`` commands one after another in one fresh process, each run
as the CLI runs it), a network guard for those processes, and the checks of what the steps write."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tifffile
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]

# ---- running the CLI ---------------------------------------------------------------------------------------------

NETWORK_BLOCKED = "network blocked by test"
# Put first on PYTHONPATH, this sitecustomize.py runs before anything else in the interpreter: every socket connect
# raises, and each attempt is appended (with its stack) to $JOURNEY_NETWORK_LOG, so that an attempt whose error some
# library swallows is still seen.
SITECUSTOMIZE = f'''
import os, socket, traceback

def _blocked(*args, **kwargs):
    log = os.environ.get("JOURNEY_NETWORK_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"connect{{args!r}}\\n" + "".join(traceback.format_stack(limit=12)) + "\\n")
    raise OSError({NETWORK_BLOCKED!r})

socket.socket.connect = socket.socket.connect_ex = _blocked
socket.create_connection = _blocked
'''


def write_network_guard(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


def cli_env(guard: Optional[Path] = None, **extra: str) -> Dict[str, str]:
    """The environment of a journey's process: the checkout importable (PYTHONPATH, as tests/test_cli.py), one thread
    per process (the journeys run two at a time on two cores; training and evaluation use the same count, so their mIoU
    agree to the last digit), no albumentations update check; with ``guard`` (a folder from
    :func:`write_network_guard`), Python starts with the network blocked."""
    path = ([str(guard)] if guard else []) + [str(REPO)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "NO_ALBUMENTATIONS_UPDATE": "1", **extra}


class StepFailed(AssertionError):
    pass


# A journey's fresh Python process: ``python -c DRIVER PLAN.json`` runs the plan's steps one after another as the CLI
# runs them: ``python scripts/NAME.py ARGS`` is ``runpy.run_path`` of the script as ``__main__`` with that
# ``sys.argv`` (Hydra's global state cleared first, as a new interpreter has it), a snippet is ``exec``'d as
# ``python -c CODE ARGS``. Each step's stdout and stderr (file descriptors 1 and 2, so C-level output too) go to its
# own file, and its time and exit (SystemExit's code: None/0 is 0, a message is printed and is 1; an exception is
# printed and is 1) to steps.log. A failing step ends the process unless the plan says otherwise. Nothing is imported
# before the first step but the standard library: its time includes the imports a user's first command pays.
DRIVER = r"""
import json, os, runpy, sys, time, traceback

plan = json.load(open(sys.argv[1]))
cwd = os.getcwd()
done = []
with open(plan["steps_log"], "a") as log:
    log.write(f"-- a fresh process (pid {os.getpid()}): {plan['title']}\n")
for step in plan["steps"]:
    sys.stdout.flush(); sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    out = os.open(step["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1); os.dup2(out, 2); os.close(out)
    start = time.perf_counter()
    try:
        if "script" in step:
            from hydra.core.global_hydra import GlobalHydra

            GlobalHydra.instance().clear()
            sys.argv = [step["script"], *step["args"]]
            sys.path[0] = os.path.dirname(step["script"])  # as python scripts/NAME.py has it
            runpy.run_path(step["script"], run_name="__main__")
        else:
            sys.argv = ["-c", *step["args"]]
            sys.path[0] = ""
            exec(compile(step["code"], "<string>", "exec"), {"__name__": "__main__"})
        code = 0
    except SystemExit as exc:
        code = exc.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    seconds = time.perf_counter() - start
    os.chdir(cwd)  # each command is typed in the same folder
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(saved[0], 1); os.dup2(saved[1], 2); os.close(saved[0]); os.close(saved[1])
    with open(plan["steps_log"], "a") as log:
        log.write(f"{seconds:6.1f} s  exit {code}  {step['label']}\n")
    done.append({"exit": code, "seconds": seconds})
    if code != 0 and step["check"]:
        break
json.dump(done, open(plan["results"], "w"))
"""


@dataclass
class StepResult:
    label: str
    command: str  # as a user types it, from the journey's folder
    exit: Optional[int]  # None: not run (an earlier step failed)
    seconds: float
    output: str  # stdout and stderr together


@dataclass
class Process:
    """One fresh Python process of a journey (``python -c DRIVER``, cwd the journey's folder): the CLI steps added
    with :meth:`script` and :meth:`python`, run one after another by :meth:`run`."""

    cwd: Path
    title: str
    env: Dict[str, str] = field(default_factory=cli_env)
    steps: List[Dict] = field(default_factory=list)

    def script(self, script: str, *args: str, check: bool = True) -> "Process":
        """``python scripts/<script>.py ARGS``."""
        return self._add({"script": str(REPO / "scripts" / f"{script}.py"), "args": list(args)}, check,
                         f"{script} {' '.join(args)}", f"python scripts/{script}.py {' '.join(args)}", script)

    def python(self, code: str, *args: str, label: str, check: bool = True) -> "Process":
        """``python -c CODE ARGS``."""
        return self._add({"code": code, "args": list(args)}, check, label, f"python -c <{label}> {' '.join(args)}",
                         "python")

    def _add(self, step: Dict, check: bool, label: str, command: str, name: str) -> "Process":
        logs = self.cwd / "step-logs"
        logs.mkdir(exist_ok=True)
        output = logs / f"{len(list(logs.glob('*.log'))):02d}-{name}.log"
        output.touch()
        self.steps.append({**step, "check": check, "label": label[:200], "command": command,
                           "output": str(output)})
        return self

    def run(self, timeout: float = 1200) -> List[StepResult]:
        """Run the steps in one fresh process; raise :class:`StepFailed` (with the failed step's command and
        output) if a checked step exits non-zero or the process dies."""
        plan, results = self.cwd / "step-logs" / "plan.json", self.cwd / "step-logs" / "results.json"
        results.unlink(missing_ok=True)
        plan.write_text(json.dumps({"title": self.title, "steps": self.steps, "steps_log": str(self.cwd / "steps.log"),
                                    "results": str(results)}))
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", DRIVER, str(plan)], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - start
        with open(self.cwd / "steps.log", "a") as log:  # the process's own time: its steps' and its start's
            log.write(f"{wall:6.1f} s  process exit {proc.returncode} (wall time of the fresh process)\n")
        done = json.loads(results.read_text()) if results.is_file() else []
        out = [StepResult(s["label"], f"(cd {self.cwd} && {s['command']})", d["exit"] if d else None,
                          d["seconds"] if d else 0.0, Path(s["output"]).read_text(errors="replace"))
               for s, d in zip(self.steps, done + [None] * (len(self.steps) - len(done)))]
        failed = [r for r, s in zip(out, self.steps) if r.exit not in (0, None) and s["check"]]
        if failed or proc.returncode != 0 or len(done) < len(self.steps):
            last = failed[0] if failed else next((r for r in out if r.exit is None), out[-1])
            raise StepFailed(f"exit {last.exit}: {last.command}\n--- its output (end) ---\n{last.output[-8000:]}\n"
                             f"--- the process (exit {proc.returncode}) ---\n{proc.stdout[-2000:]}"
                             f"{proc.stderr[-4000:]}")
        return out


def run_python(cwd: Path, code: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """``python -c CODE`` in a fresh process, checked."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env or cli_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@dataclass
class Background:
    """``python scripts/<script>.py ARGS`` as a process of its own, in the background (to be SIGKILLed), output to
    ``<script>.log`` in ``cwd``; :func:`kill` writes its time to steps.log."""

    proc: subprocess.Popen
    cwd: Path
    label: str
    started: float


def start(cwd: Path, script: str, *args: str, env: Optional[Dict[str, str]] = None) -> Background:
    log = open(cwd / f"{script}.log", "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / f"{script}.py"), *args], cwd=cwd,
                            env=env or cli_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    with open(cwd / "steps.log", "a") as steps_log:
        steps_log.write(f"-- a fresh process (pid {proc.pid}), in the background: python scripts/{script}.py\n")
    return Background(proc, cwd, f"{script} {' '.join(args)}"[:200], time.perf_counter())


def wait_for(path_or_check: Callable[[], bool], job: Background, what: str, timeout: float = 600) -> None:
    """Poll (every 20 ms) until ``path_or_check()`` holds; fail if the process ends first or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not path_or_check():
        if job.proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {job.proc.returncode}) before {what}:\n"
                                 + (job.cwd / f"{job.label.split()[0]}.log").read_text()[-5000:])
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout} s")
        time.sleep(0.02)


def kill(job: Background) -> None:
    """SIGKILL the process we started (its own session: its process group, data loader workers included)."""
    os.killpg(job.proc.pid, 9)
    job.proc.wait(timeout=60)
    with open(job.cwd / "steps.log", "a") as log:
        log.write(f"{time.perf_counter() - job.started:6.1f} s  killed (SIGKILL)  {job.label}\n"
                  f"{time.perf_counter() - job.started:6.1f} s  process exit {job.proc.returncode} (wall time of the "
                  f"fresh process)\n")


# ---- toy images: every input kind ---------------------------------------------------------------------------------

KINDS = ("rgb8", "grey8", "grey16", "rgb16", "tiff4")
CHANNELS = {"rgb8": 3, "rgb16": 3, "grey8": 1, "grey16": 1, "tiff4": 4}
EIGHT_BIT = ("rgb8", "grey8")  # read as uint8; the other kinds are read as float 0-1 (16-bit)
CLASSES = ["background", "road", "car", "tree"]  # class 0 and the three object classes every scene holds
COLOURS = [(0, 0, 0), (128, 64, 128), (0, 0, 142), (107, 142, 35)]  # CVAT/labelmap colours of CLASSES
SIZES = [(40, 56), (48, 48), (32, 64), (64, 40), (56, 48)]  # (height, width): 32-64 px, not all multiples of 32

# A shape: (class id, labelme shape type, points). Points are (x, y) in pixels as labelme stores them.
Shape = Tuple[int, str, List[Tuple[float, float]]]


def scene(rng: np.random.Generator, size: Tuple[int, int]) -> List[Shape]:
    """Three objects on background, one per class (a rectangle, a polygon, a point), drawn in this order."""
    h, w = size

    def corner(extent: int) -> Tuple[int, int]:
        return int(rng.integers(0, w - extent)), int(rng.integers(0, h - extent))

    x, y = corner(18)
    rect = [(x, y), (x + int(rng.integers(10, 18)), y + int(rng.integers(10, 18)))]
    x, y = corner(16)
    tri = [(x, y + 15), (x + 8, y), (x + 15, y + 15)]
    x, y = corner(12)
    return [(1, "rectangle", rect), (2, "polygon", tri), (3, "point", [(x + 6, y + 6)])]


def polygon(shape: Shape) -> List[Tuple[float, float]]:
    """The shape as a polygon (a point: a 10-px diamond), for COCO and for drawing."""
    _, kind, pts = shape
    if kind == "rectangle":
        (x0, y0), (x1, y1) = pts
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if kind == "point":
        (cx, cy), = pts
        return [(cx - 5, cy), (cx, cy - 5), (cx + 5, cy), (cx, cy + 5)]
    return list(pts)


def rasterize(shapes: Sequence[Shape], size: Tuple[int, int]) -> np.ndarray:
    """The class-id mask (uint8) of ``shapes``, later shapes on top."""
    canvas = Image.new("L", size[::-1], 0)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        draw.polygon(polygon(shape), fill=shape[0], outline=shape[0])
    return np.asarray(canvas).copy()


def render(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A colour picture (float 0-1, HxWx3) of a mask: each class its own colour, plus noise; a fourth band (NIR)
    for multi-band kinds is derived from it."""
    tint = np.array([[0.35, 0.3, 0.25], [0.55, 0.4, 0.7], [0.1, 0.2, 0.75], [0.45, 0.65, 0.2]])
    return np.clip(tint[mask % 4] + rng.normal(0, 0.06, (*mask.shape, 3)), 0, 1)


def write_image(stem: Path, kind: str, picture: np.ndarray, jpeg: bool = False) -> Path:
    """``picture`` stored as ``kind``: 8-bit RGB (PNG, or JPEG), 8-bit grey (PNG/JPEG), 16-bit grey (PIL mode I;16),
    16-bit RGB (cv2, BGR order), 4-band 16-bit TIFF (tifffile: interleaved, or planar as GeoTIFFs store bands, chosen
    by the name, so that a TIFF dataset holds both). Returns the file written."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    grey = picture @ np.array([0.299, 0.587, 0.114])
    if kind == "rgb8":
        path = stem.with_suffix(".jpg" if jpeg else ".png")
        Image.fromarray((picture * 255).round().astype(np.uint8)).save(path, **({"quality": 95} if jpeg else {}))
    elif kind == "grey8":
        path = stem.with_suffix(".jpg" if jpeg else ".png")
        Image.fromarray((grey * 255).round().astype(np.uint8)).save(path)
    elif kind == "grey16":
        path = stem.with_suffix(".png")
        Image.fromarray((grey * 65535).round().astype(np.uint16)).save(path)
    elif kind == "rgb16":
        import cv2

        path = stem.with_suffix(".png")
        assert cv2.imwrite(str(path), (picture[..., ::-1] * 65535).round().astype(np.uint16))
    elif kind == "tiff4":  # RGB + a NIR-like band, 16-bit
        path = stem.with_suffix(".tif")
        bands = (np.concatenate([picture, 1 - picture[..., 1:2]], axis=2) * 65535).round().astype(np.uint16)
        if sum(map(ord, stem.name)) % 2:  # planar (C, H, W), as multi-band GeoTIFFs store bands
            tifffile.imwrite(path, bands.transpose(2, 0, 1), photometric="minisblack", planarconfig="separate")
        else:  # interleaved (H, W, 4), tifffile's default (RGB + an extra sample)
            tifffile.imwrite(path, bands)
    else:
        raise ValueError(kind)
    return path


def image_size(path: Path) -> Tuple[int, int]:
    """(height, width) of an image file, read independently of segkit."""
    if path.suffix.lower() in (".tif", ".tiff"):
        shape = tifffile.TiffFile(path).series[0].shape
        return (shape[1], shape[2]) if len(shape) == 3 and shape[0] == 4 else (shape[0], shape[1])
    with Image.open(path) as img:
        return img.height, img.width


@dataclass
class Sample:
    name: str
    size: Tuple[int, int]
    shapes: List[Shape]
    mask: np.ndarray
    picture: np.ndarray
    kind: str


def samples(rng: np.random.Generator, kinds: Sequence[str], n: int, prefix: str) -> List[Sample]:
    """``n`` scenes; sample ``i`` is stored as ``kinds[i % len(kinds)]`` (two kinds of one channel count: a dataset
    mixing 8- and 16-bit files, read as float batches)."""
    out = []
    for i in range(n):
        size = SIZES[(i + len(prefix)) % len(SIZES)]
        shapes = scene(rng, size)
        mask = rasterize(shapes, size)
        out.append(Sample(f"{prefix}{i:03d}", size, shapes, mask, render(mask, rng), kinds[i % len(kinds)]))
    return out


# ---- layouts -----------------------------------------------------------------------------------------------------

@dataclass
class Dataset:
    """A dataset as the journeys train on it: the ``data=`` layout and ``data.source.root``, the folder to predict,
    and what training must find in it."""

    layout: str
    root: Path
    predict_dir: Path
    class_names: List[str]
    palette: Optional[List[List[int]]] = None  # expected when the dataset gives colours (a labelmap.txt)
    probe: Optional[Path] = None  # an image whose logits the exports must reproduce


def palette_png(mask: np.ndarray, path: Path) -> None:
    png = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [v for c in COLOURS for v in c] + [v for i in range(4, 256) for v in ((i * 37) % 256, i, 255 - i)]
    png.putpalette(flat)
    path.parent.mkdir(parents=True, exist_ok=True)
    png.save(path)


def write_folder(root: Path, kinds: Sequence[str], rng: np.random.Generator, class_list: Optional[str],
                 split_lists: bool, n_train: int = 8, n_val: int = 4) -> Dataset:
    """``root/images`` + ``root/masks`` (grey index PNGs, some pixels 255); split lists or none (a seeded val split);
    ``class_list``: ``class_names.txt``, ``labelmap.txt`` (names and colours) or None (names class_0 ...)."""
    items = samples(rng, kinds, n_train + n_val, "img_")
    for s in items:
        write_image(root / "images" / s.name, s.kind, s.picture, jpeg=s.kind == "rgb8" and int(s.name[-1]) % 3 == 0)
        mask = s.mask.copy()
        mask[0, :4] = 255
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(root / "masks" / f"{s.name}.png")
    if split_lists:
        (root / "splits").mkdir()
        (root / "splits/train.txt").write_text("".join(f"{s.name}\n" for s in items[:n_train]))
        (root / "splits/val.txt").write_text("".join(f"{s.name}\n" for s in items[n_train:]))
    names, palette = CLASSES, None
    if class_list == "class_names.txt":
        (root / class_list).write_text("\n".join(CLASSES) + "\n")
    elif class_list == "labelmap.txt":
        (root / class_list).write_text("# label:color_rgb:parts:actions\n" + "".join(
            f"{n}:{r},{g},{b}::\n" for n, (r, g, b) in zip(CLASSES, COLOURS)))
        palette = [list(c) for c in COLOURS]
    else:
        names = [f"class_{i}" for i in range(len(CLASSES))]  # num_classes from the masks: the largest id + 1
    return Dataset("folder", root, root / "images", names, palette, probe=_first(root / "images"))


def _first(folder: Path) -> Path:
    return sorted(p for p in folder.iterdir() if p.is_file())[0]


def write_voc(root: Path, kinds: Sequence[str], rng: np.random.Generator) -> Dataset:
    """PASCAL VOC: ``JPEGImages/*.jpg`` (8-bit: VOCSource reads ``.jpg`` only), palette PNGs with 255 boundaries in
    ``SegmentationClass/``, ``ImageSets/Segmentation/{train,val}.txt``, ``class_names.txt``."""
    items = samples(rng, kinds, 12, "2007_")
    for s in items:
        write_image(root / "JPEGImages" / s.name, s.kind, s.picture, jpeg=True)
        mask = s.mask.copy()
        mask[(mask > 0) & (np.roll(mask, 1, axis=1) == 0)] = 255  # VOC's object boundaries
        palette_png(mask, root / "SegmentationClass" / f"{s.name}.png")
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("".join(f"{s.name}\n" for s in items[:8]))
    (lists / "val.txt").write_text("".join(f"{s.name}\n" for s in items[8:]))
    (root / "class_names.txt").write_text("\n".join(CLASSES) + "\n")
    return Dataset("voc", root, root / "JPEGImages", CLASSES, probe=root / "JPEGImages" / f"{items[8].name}.jpg")


# Cityscapes labelIds for the scene classes: background -> sky (23), road 7, car 26, building 11; the bottom rows
# are the ego vehicle (1), which the 19-class mapping ignores.
CITYSCAPES_LABEL_IDS = np.array([23, 7, 26, 11], np.uint8)


def write_cityscapes(root: Path, kinds: Sequence[str], rng: np.random.Generator) -> Dataset:
    """``leftImg8bit/{train,val}/CITY/X_leftImg8bit.png`` (PNG of any kind) and
    ``gtFine/{train,val}/CITY/X_gtFine_labelIds.png``."""
    from segkit.data.sources import CITYSCAPES_CLASSES

    for split, city, n in (("train", "aachen", 6), ("val", "lindau", 4)):
        for s in samples(rng, kinds, n, f"{city}_000000_"):
            stem = f"{s.name}_000019"
            write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit", s.kind, s.picture)
            label_ids = CITYSCAPES_LABEL_IDS[s.mask]
            label_ids[-3:] = 1
            (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
            Image.fromarray(label_ids).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
    val = root / "leftImg8bit" / "val" / "lindau"
    return Dataset("cityscapes", root, val, list(CITYSCAPES_CLASSES), probe=_first(val))


# ---- annotation tool exports (converted by scripts/convert.py) ---------------------------------------------------

COCO_CATEGORIES = [{"id": 0, "name": "_background_"}, {"id": 1, "name": "road"}, {"id": 3, "name": "car"},
                   {"id": 7, "name": "tree"}]  # labelme2coco's background category 0; ids not contiguous
COCO_CLASSES = ["_background_", "road", "car", "tree"]


def write_coco_export(folder: Path, kinds: Sequence[str], rng: np.random.Generator, split: str, n: int) -> Path:
    """A COCO export: ``folder/images/*`` and ``folder/annotations/instances_SPLIT.json`` (polygons; one crowd
    region per image, which becomes ignore_index)."""
    images, annotations = [], []
    cat_ids = [1, 3, 7]
    for k, s in enumerate(samples(rng, kinds, n, f"{split}_")):
        path = write_image(folder / "images" / s.name, s.kind, s.picture, jpeg=s.kind == "rgb8")
        images.append({"id": k + 1, "file_name": path.name, "height": s.size[0], "width": s.size[1]})
        for shape in s.shapes:
            poly = [float(v) for xy in polygon(shape) for v in xy]
            annotations.append({"id": len(annotations) + 1, "image_id": k + 1, "category_id": cat_ids[shape[0] - 1],
                                "segmentation": [poly], "iscrowd": 0, "area": 1.0, "bbox": [0, 0, 1, 1]})
        annotations.append({"id": len(annotations) + 1, "image_id": k + 1, "category_id": 1, "iscrowd": 1,
                            "segmentation": [[0.0, 0.0, 6.0, 0.0, 6.0, 3.0, 0.0, 3.0]], "area": 18.0,
                            "bbox": [0, 0, 6, 3]})
    path = folder / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": COCO_CATEGORIES}))
    return path


LABELME_LABELS = ["__ignore__", "_background_", "road", "car", "tree"]  # labelme's labels.txt convention


def write_labelme_export(folder: Path, kinds: Sequence[str], rng: np.random.Generator, n: int,
                         prefix: str = "img_") -> Dict[str, Path]:
    """labelme JSONs (half in a ``day1/`` sub-folder), each with a rectangle, a polygon, a point, a line and an
    ``__ignore__`` polygon; the image beside the JSON (``imagePath``) or embedded (``imageData``), alternately.
    Returns sample name (as convert.py names it: ``day1__NAME``) -> the image bytes' source file."""
    sources = {}
    for k, s in enumerate(samples(rng, kinds, n, prefix)):
        sub = folder / ("day1" if k % 2 else "")
        image = write_image(sub / s.name, s.kind, s.picture)
        h, w = s.size
        shapes = [{"label": LABELME_LABELS[cls + 1], "shape_type": kind, "points": [list(p) for p in pts],
                   "group_id": None, "flags": {}} for cls, kind, pts in s.shapes]
        shapes.append({"label": "road", "shape_type": "line", "points": [[0, h - 3], [w - 1, h - 3]], "flags": {}})
        shapes.append({"label": "__ignore__", "shape_type": "polygon", "points": [[0, 0], [5, 0], [5, 4]],
                       "flags": {}})
        doc = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imageHeight": h, "imageWidth": w,
               "imagePath": image.name, "imageData": None}
        if k % 3 == 1:  # embedded: the JSON alone is the annotation, no image file beside it
            doc["imageData"] = base64.b64encode(image.read_bytes()).decode()
            doc["imagePath"] = f"../elsewhere/{image.name}"
            moved = folder.parent / f"{folder.name}-embedded" / image.name
            moved.parent.mkdir(exist_ok=True)
            shutil.move(image, moved)
            image = moved
        (sub / f"{s.name}.json").write_text(json.dumps(doc))
        sources[("day1__" if k % 2 else "") + s.name] = image
    return sources


def write_cvat_export(folder: Path, kinds: Sequence[str], rng: np.random.Generator, n: int,
                      prefix: str = "frame_") -> Dict[str, Path]:
    """A CVAT "Segmentation mask 1.1" export: ``labelmap.txt``, colour masks in ``SegmentationClass/`` and images in
    ``JPEGImages/`` (any image format), half in a ``day1/`` sub-folder. Returns sample name -> image file."""
    (folder).mkdir(parents=True)
    (folder / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "".join(
        f"{n}:{r},{g},{b}::\n" for n, (r, g, b) in zip(CLASSES, COLOURS)))
    sources = {}
    for k, s in enumerate(samples(rng, kinds, n, prefix)):
        rel = Path("day1" if k % 2 else "") / s.name
        image = write_image(folder / "JPEGImages" / rel, s.kind, s.picture, jpeg=s.kind == "rgb8")
        colour = np.asarray(COLOURS, np.uint8)[s.mask]
        (folder / "SegmentationClass" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(colour).save(folder / "SegmentationClass" / rel.with_suffix(".png"))
        sources[("day1__" if k % 2 else "") + s.name] = image
    return sources


# ---- checks ------------------------------------------------------------------------------------------------------

def probe_batch(path: Path, channels: int, dtype: Optional[str] = None, pad_to: int = 64) -> np.ndarray:
    """The image at ``path`` as segkit reads it, as a ``(1, C, H, W)`` batch: edge-padded to at least ``pad_to``
    (64: the smallest size an export of a resize-based decoder takes), in an exported model's input ``dtype`` (uint8
    0-255 or float32 0-1; None: as read)."""
    from segkit.data.io import read_image

    image = read_image(path, channels)
    h, w = image.shape[:2]
    image = np.pad(image, ((0, max(0, pad_to - h)), (0, max(0, pad_to - w)), (0, 0)), mode="edge")
    if dtype == "float32" and image.dtype == np.uint8:
        image = image.astype(np.float32) / 255
    elif dtype == "uint8" and image.dtype != np.uint8:  # a 16-bit image for a model that takes 8 bits
        image = (image * 255).round().clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None])


def same_argmax(mask: np.ndarray, logits: np.ndarray) -> None:
    """``mask`` is ``logits.argmax(0)`` wherever the two best classes are clearly apart: by more than 2e-4 of the
    logits' largest magnitude (float32 sums in another order, another process or runtime, differ by ~1e-6 of it)."""
    margin = 2e-4 * max(1.0, float(np.abs(logits).max()))
    top2 = np.sort(logits, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > margin
    assert (mask[clear] == logits.argmax(0)[clear]).all(), \
        f"{int((mask[clear] != logits.argmax(0)[clear]).sum())} pixels differ from the checkpoint's argmax"

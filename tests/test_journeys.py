"""End-to-end journeys: what a user types, each journey in its own fresh Python process (cwd a tmp folder, PYTHONPATH
the checkout) that runs the user's commands one after another exactly as the CLI does (``python scripts/NAME.py ARGS``
is ``runpy.run_path`` of the script as ``__main__`` with that ``sys.argv``, Hydra's global state cleared between
scripts, a ``sys.exit`` caught and its code checked: journey_helpers.DRIVER), on toy data (32-64 px images, 4-12 per
split, one epoch), checked on what the user relies on: metrics.json with a finite mIoU, evaluate.py's mIoU equal to
training's (best checkpoint), a palette mask of the input's size and valid class ids per predicted image (and the
checkpoint's argmax), an ONNX export whose logits in onnxruntime match the checkpoint's to 1e-4.

Matrix: layout x input kind x encoder weights, chosen so that every pair of values is covered (not the product).
A row's dataset holds the files of its input kinds (two kinds of one channel count: a dataset mixing 8- and 16-bit
files). Layouts coco, labelme and cvat are folders written by ``scripts/convert.py`` from that tool's export: the
train export, then a second conversion of the val export into the same folder (``split=val``; labelme and CVAT
reuse sample names, so the val samples are renamed NAME_val and the train ones kept), with sub-folders, labelme
points, lines and ``__ignore__``, a COCO ``_background_`` category and crowd regions. Weights ``local``:
``model=unet model.encoder=resnet18 model.encoder_weights=<a torchvision resnet18 state dict file>``; after training
the file is deleted and evaluate, predict, export (onnx and pretrained) and ``segkit.from_pretrained`` run in a
second fresh process whose Python starts with every socket connect raising (a ``sitecustomize.py`` first on
PYTHONPATH) and an empty TORCH_HOME, and none of them may even try to connect. Weights ``scratch``: ``model=unet_small``.

| journey | layout | input kinds | weights | pairs covered |
|---|---|---|---|---|
| folder-rgb | folder | rgb8, rgb16 | scratch | folder x rgb8, folder x rgb16, folder x scratch, rgb8 x scratch, rgb16 x scratch |
| folder-grey | folder | grey8, grey16 | scratch | folder x grey8, folder x grey16, folder x scratch, grey8 x scratch, grey16 x scratch |
| folder-tiff | folder | tiff4 | local | folder x tiff4, folder x local, tiff4 x local |
| voc-rgb | voc | rgb8 | local | voc x rgb8, voc x local, rgb8 x local |
| voc-grey | voc | grey8 | scratch | voc x grey8, voc x scratch, grey8 x scratch |
| cityscapes-rgb | cityscapes | rgb8, rgb16 | local | cityscapes x rgb8, cityscapes x rgb16, cityscapes x local, rgb8 x local, rgb16 x local |
| cityscapes-grey | cityscapes | grey8, grey16 | scratch | cityscapes x grey8, cityscapes x grey16, cityscapes x scratch, grey8 x scratch, grey16 x scratch |
| coco-rgb | coco | rgb8, rgb16 | scratch | coco x rgb8, coco x rgb16, coco x scratch, rgb8 x scratch, rgb16 x scratch |
| coco-grey | coco | grey8, grey16 | local | coco x grey8, coco x grey16, coco x local, grey8 x local, grey16 x local |
| coco-tiff | coco | tiff4 | scratch | coco x tiff4, coco x scratch, tiff4 x scratch |
| labelme-rgb | labelme | rgb8, rgb16 | scratch | labelme x rgb8, labelme x rgb16, labelme x scratch, rgb8 x scratch, rgb16 x scratch |
| labelme-grey | labelme | grey8, grey16 | scratch | labelme x grey8, labelme x grey16, labelme x scratch, grey8 x scratch, grey16 x scratch |
| labelme-tiff | labelme | tiff4 | local | labelme x tiff4, labelme x local, tiff4 x local |
| cvat-rgb | cvat | rgb8, rgb16 | scratch | cvat x rgb8, cvat x rgb16, cvat x scratch, rgb8 x scratch, rgb16 x scratch |
| cvat-grey | cvat | grey8, grey16 | local | cvat x grey8, cvat x grey16, cvat x local, grey8 x local, grey16 x local |
| cvat-tiff | cvat | tiff4 | scratch | cvat x tiff4, cvat x scratch, tiff4 x scratch |

Together: all 26 (layout, input kind) pairs that exist, all 12 (layout, weights) pairs and all 10 (input kind,
weights) pairs (checked by test_the_matrix_covers_every_pair). Pairs that do not exist (NOT_APPLICABLE): voc with
rgb16, grey16 or tiff4 (VOCSource reads JPEGImages/NAME.jpg: 8-bit JPEG) and cityscapes with tiff4
(CityscapesSource reads *_leftImg8bit.png). Input kinds: rgb8 = 8-bit RGB PNG and JPEG, grey8 = 8-bit grey PNG (JPEG
in voc), grey16 = 16-bit grey PNG (PIL I;16), rgb16 = 16-bit RGB PNG (cv2), tiff4 = 4-band 16-bit TIFF (interleaved and
planar). Folder rows also vary the class list (class_names.txt; labelmap.txt, whose colours become the
palette; none: num_classes from the masks) and the splits (lists; none: a seeded val split).

Interrupted and repeated work, beside the matrix: a training run (``python scripts/train.py``, a process of its own)
SIGKILLed after its first last.ckpt, resumed in a fresh process with ``ckpt_path=last hydra.run.dir=<run>`` to
max_epochs; a sweep (a process of its own) whose seeded draws give one trial lr=1e20 (NaN training loss), killed while
a later trial runs, then the same command in a fresh process with ``hydra.run.dir=<sweep dir>`` (the interrupted
trial marked failed, new trials added, finished ones kept); the second conversion into one folder is in every coco,
labelme and cvat row.

segkit defects these journeys found, fixed since (commit 98d2f3f), each kept as a test at the end: a dataset mixing
8- and 16-bit files exported a uint8 model when an 8-bit file sorted first (every mixed journey's model.json now
says float32); a run whose validation loss is NaN (training loss finite) passed as trained under
task.nan_policy=raise (it now fails with a FloatingPointError and writes no metrics.json); convert.py format=labelme
could not open a 4-band TIFF that segkit itself reads (now converted: train and val exports into one folder).

The journeys' processes run two at a time (``SEGKIT_JOURNEY_WORKERS``), started together when the module starts
(only those of the tests selected), longest first; each test then waits for its own journey and checks its outputs.
Each journey's folder has steps.log (every process, each step's time and exit, each process's wall time) and
step-logs/ (each step's output). Time, measured with ``time python -m pytest -q tests/test_journeys.py`` on a 2-core
VM shared with a benchmark (load average 4.2 before, 4.6 after): 6.0 minutes (362 s wall, 362 s CPU user+sys with
the children's), 28 fresh processes (16 journeys, 6 of them a second offline process; 2 each for the killed run and
the sweep; 1 each for the NaN run and the 4-band TIFF conversion) whose wall times in the steps.log files sum to
706 s (two at a time: 353 s); of that, the first step of each process ~5-9 s (the torch/lightning imports), ONNX
exports 9-17 s, the rest 0.2-6 s per step. With the 2 cores to itself the module needs about its CPU time over two:
~3-3.5 minutes. Every journey but QUICK's is marked slow (all run by default); ``-m "not slow"`` took 72 s wall
under the same load.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from journey_helpers import (CHANNELS, CLASSES, COCO_CLASSES, EIGHT_BIT, KINDS, LABELME_LABELS, NETWORK_BLOCKED,
                             Dataset, Process, StepResult, cli_env, image_size, kill, probe_batch, run_python,
                             same_argmax, start, wait_for, write_cityscapes, write_coco_export, write_cvat_export,
                             write_folder, write_labelme_export, write_network_guard, write_voc)

LAYOUTS = ("folder", "voc", "cityscapes", "coco", "labelme", "cvat")
WEIGHTS = ("scratch", "local")
NOT_APPLICABLE = {("voc", "rgb16"): "VOCSource reads JPEGImages/NAME.jpg (8-bit JPEG)",
                  ("voc", "grey16"): "VOCSource reads JPEGImages/NAME.jpg (8-bit JPEG)",
                  ("voc", "tiff4"): "VOCSource reads JPEGImages/NAME.jpg (8-bit JPEG)",
                  ("cityscapes", "tiff4"): "CityscapesSource reads *_leftImg8bit.png"}


@dataclass(frozen=True)
class Journey:
    name: str
    layout: str
    kinds: Tuple[str, ...]
    weights: str

    def __str__(self) -> str:
        return self.name

    @property
    def pairs(self) -> list:
        return ([(self.layout, k) for k in self.kinds] + [(self.layout, self.weights)]
                + [(k, self.weights) for k in self.kinds])


RGB, GREY, TIFF = ("rgb8", "rgb16"), ("grey8", "grey16"), ("tiff4",)
MATRIX = (
    Journey("folder-rgb", "folder", RGB, "scratch"),
    Journey("folder-grey", "folder", GREY, "scratch"),
    Journey("folder-tiff", "folder", TIFF, "local"),
    Journey("voc-rgb", "voc", ("rgb8",), "local"),
    Journey("voc-grey", "voc", ("grey8",), "scratch"),
    Journey("cityscapes-rgb", "cityscapes", RGB, "local"),
    Journey("cityscapes-grey", "cityscapes", GREY, "scratch"),
    Journey("coco-rgb", "coco", RGB, "scratch"),
    Journey("coco-grey", "coco", GREY, "local"),
    Journey("coco-tiff", "coco", TIFF, "scratch"),
    Journey("labelme-rgb", "labelme", RGB, "scratch"),
    Journey("labelme-grey", "labelme", GREY, "scratch"),
    Journey("labelme-tiff", "labelme", TIFF, "local"),
    Journey("cvat-rgb", "cvat", RGB, "scratch"),
    Journey("cvat-grey", "cvat", GREY, "local"),
    Journey("cvat-tiff", "cvat", TIFF, "scratch"),
)


def table(matrix) -> str:
    """The module docstring's table of ``matrix``."""
    rows = [f"| {j.name} | {j.layout} | {', '.join(j.kinds)} | {j.weights} | "
            f"{', '.join(f'{a} x {b}' for a, b in j.pairs)} |" for j in matrix]
    return "\n".join(["| journey | layout | input kinds | weights | pairs covered |", "|---|---|---|---|---|", *rows])


def test_the_matrix_covers_every_pair():
    """The pairs the docstring claims, computed from MATRIX (which the journeys are parametrised from)."""
    covered = {pair for j in MATRIX for pair in j.pairs}
    assert {(lay, k) for lay, k in product(LAYOUTS, KINDS) if (lay, k) not in NOT_APPLICABLE} <= covered
    assert set(product(LAYOUTS, WEIGHTS)) <= covered and set(product(KINDS, WEIGHTS)) <= covered
    assert not covered & set(NOT_APPLICABLE)
    assert len({(lay, k) for lay, k in covered if lay in LAYOUTS and k in KINDS}) == 26
    assert table(MATRIX) in __doc__, "the docstring's table is not MATRIX's: paste table(MATRIX) there"
    for j in MATRIX:  # a row's kinds share a channel count (one model input)
        assert len({CHANNELS[k] for k in j.kinds}) == 1 and j.weights in WEIGHTS


# ---- running the journeys ----------------------------------------------------------------------------------------

WORKERS = int(os.environ.get("SEGKIT_JOURNEY_WORKERS", "2"))
RESNET_WEIGHTS_MARK = "layer4.1.bn2.weight"  # set to 0.5 in the local weights file (1.0 in a fresh ResNet)
# segkit.from_pretrained on the probe image (as the exported model takes it: model.json's dtype), as a user's snippet
FROM_PRETRAINED = """
import json, sys
from pathlib import Path

import numpy as np, torch, segkit

tests, folder, probe, channels, out = sys.argv[1:]
sys.path.insert(0, tests)
from journey_helpers import probe_batch

batch = probe_batch(Path(probe), int(channels), json.loads(Path("model.json").read_text())["input"]["dtype"])
model = segkit.from_pretrained(folder)
with torch.inference_mode():
    np.save(out, model(torch.from_numpy(batch)).numpy())
"""


def image_dtype(journey: Journey) -> Optional[str]:
    """What the exported model takes: uint8 for 8-bit files, float32 (0-1) for 16-bit ones; a dataset mixing both is
    read as float batches, whichever file sorts first (test_a_mixed_bit_depth_model_exports_float_input)."""
    return "uint8" if all(k in EIGHT_BIT for k in journey.kinds) else "float32"


def mixed_depths(journey: Journey) -> bool:
    return len({k in EIGHT_BIT for k in journey.kinds}) > 1


def converted(proc: Process, journey: Journey, rng) -> Tuple[Dataset, Callable[[], None]]:
    """A tool's train and val exports, converted one after the other into ``ds/`` as a user does (two convert steps
    of ``proc``). Returns the dataset and its check, to call once they ran: the second conversion kept the first's
    samples and renamed its own clashing names (it also sets the dataset's probe, a val image)."""
    work, kinds, layout = proc.cwd, journey.kinds, journey.layout
    if layout == "coco":  # COCO names its images uniquely (train_000, val_000): nothing to rename
        inputs = [write_coco_export(work / f"coco-{split}", kinds, rng, split, n) for split, n in (("train", 6),
                                                                                               ("val", 4))]
        sources = [{p.stem: p for p in (path.parent.parent / "images").iterdir()} for path in inputs]
        extra, names = [[], []], COCO_CLASSES
    elif layout == "labelme":  # both exports name their files img_000 ...: the val ones are renamed
        (work / "labels.txt").write_text("\n".join(LABELME_LABELS) + "\n")
        inputs = [work / "labelme-train", work / "labelme-val"]
        sources = [write_labelme_export(inputs[0], kinds, rng, 6), write_labelme_export(inputs[1], kinds, rng, 4)]
        # the second conversion names no class list: the folder's class_names.txt is reused
        extra, names = [["class_names=labels.txt"], []], LABELME_LABELS[1:]
    else:  # CVAT names frames frame_000000 ... in every task
        inputs = [work / "cvat-train", work / "cvat-val"]
        sources = [write_cvat_export(inputs[0], kinds, rng, 6), write_cvat_export(inputs[1], kinds, rng, 4)]
        extra, names = [[], []], CLASSES
    fmt = {"coco": "coco", "labelme": "labelme", "cvat": "cvat_mask"}[layout]
    for path, split, more in zip(inputs, ("train", "val"), extra):
        proc.script("convert", f"format={fmt}", f"input={path.relative_to(work)}", "output=ds", f"split={split}",
                    *more)
    ds = work / "ds"
    data = Dataset("folder", ds, ds / "images", list(names))

    def check() -> None:
        train_names = (ds / "splits/train.txt").read_text().split()
        val_names = (ds / "splits/val.txt").read_text().split()
        renamed = {n: f"{n}_val" if n in sources[0] else n for n in sources[1]}
        assert set(train_names) == set(sources[0]) and set(val_names) == set(renamed.values()), (train_names,
                                                                                                 val_names)
        if layout != "coco":  # sub-folders (day1/x -> day1__x), and clashing names renamed
            assert any(n.startswith("day1__") for n in train_names) and all(n.endswith("_val") for n in val_names)
        for name, src in [*sources[0].items(), *((renamed[n], s) for n, s in sources[1].items())]:
            written, = (ds / "images").glob(f"{name}.*")  # the train samples were not overwritten by the val ones
            assert written.read_bytes() == src.read_bytes(), f"{written} is not {src}"
        assert (ds / "class_names.txt").read_text().split() == names
        if layout != "cvat":  # COCO crowd regions and labelme __ignore__ shapes: ignore_index
            assert all(255 in np.asarray(Image.open(p)) for p in (ds / "masks").glob("*.png"))
        data.probe = next(p for p in sorted((ds / "images").iterdir()) if p.stem in val_names)

    return data, check


def dataset(proc: Process, journey: Journey) -> Tuple[Dataset, Callable[[], None]]:
    """The journey's dataset, written in its folder (a converted layout: the tool's exports, and ``proc``'s convert
    steps), and the check to call once ``proc`` ran."""
    rng = np.random.default_rng(zlib.crc32(journey.name.encode()))
    work, kinds = proc.cwd, journey.kinds
    if journey.layout == "folder":
        class_list, lists = {RGB: ("class_names.txt", True), GREY: ("labelmap.txt", False),
                             TIFF: (None, True)}[kinds]
        return write_folder(work / "ds", kinds, rng, class_list, lists), lambda: None
    if journey.layout == "voc":
        return write_voc(work / "ds", kinds, rng), lambda: None
    if journey.layout == "cityscapes":
        return write_cityscapes(work / "ds", kinds, rng), lambda: None
    return converted(proc, journey, rng)


@dataclass
class Outcome:
    journey: Journey
    work: Path
    data: Dataset
    steps: List[StepResult]


def run_journey(journey: Journey, work: Path, guard: Path, resnet_state: Dict[str, Any]) -> Outcome:
    """The journey's commands in one fresh process (local weights: up to training; then the file is deleted and the
    rest runs in a second fresh process, offline, with an empty TORCH_HOME)."""
    proc = Process(work, f"journey {journey.name}")
    data, check = dataset(proc, journey)
    root = data.root.relative_to(work)
    if journey.weights == "local":
        weights = work / "weights" / "r18.pth"
        weights.parent.mkdir()
        torch.save(resnet_state, weights)
        model = ["model=unet", "model.encoder=resnet18", f"model.encoder_weights={weights.relative_to(work)}"]
    else:
        model = ["model=unet_small"]
    proc.script("train", f"data={data.layout}", f"data.source.root={root}", *model, "trainer.max_epochs=1",
                "logger=csv", "hydra.run.dir=run")
    done = []
    if journey.weights == "local":  # the file is gone and so is the network: nothing may need either
        done += proc.run()
        check()
        weights.unlink()
        (work / "empty-torch-home").mkdir()
        proc = Process(work, f"journey {journey.name}, after the weights file was deleted: offline, empty TORCH_HOME",
                       env=cli_env(guard, TORCH_HOME=str(work / "empty-torch-home"),
                                   JOURNEY_NETWORK_LOG=str(work / "network-attempts.log")))
    ckpt = "ckpt_path=run/checkpoints/best.ckpt"
    proc.script("evaluate", ckpt, "progress_bar=false")
    proc.script("predict", ckpt, f"input={data.predict_dir.relative_to(work)}", "output=predictions",
                "progress_bar=false")
    proc.script("export", ckpt, "format=onnx", "output=model.onnx")
    if journey.weights == "local":
        proc.script("export", ckpt, "format=pretrained", "output=pretrained")
        proc.python(FROM_PRETRAINED, str(Path(__file__).parent), "pretrained", str(data.probe),
                    str(CHANNELS[journey.kinds[0]]), "from_pretrained.npy", label="segkit.from_pretrained")
    done += proc.run()
    if journey.weights != "local":
        check()
    return Outcome(journey, work, data, done)


def run_interrupted(work: Path, guard: Path, resnet_state: Dict[str, Any]) -> Dict[str, Any]:
    """train.py (a process of its own) killed (SIGKILL) once its first last.ckpt is written, then resumed with
    ckpt_path=last in a fresh process."""
    write_folder(work / "ds", ("rgb8",), np.random.default_rng(1), "class_names.txt", True, n_train=12, n_val=4)
    args = ["data=folder", "data.source.root=ds", "model=unet_small", "trainer.max_epochs=4", "logger=csv",
            "hydra.run.dir=run"]
    job = start(work, "train", *args)
    last = work / "run/checkpoints/last.ckpt"
    wait_for(last.is_file, job, f"{last} (the run was too fast to interrupt: give it more epochs)")
    kill(job)
    killed = torch.load(last, map_location="cpu", weights_only=True)
    finished_before_kill = (work / "run/metrics.json").exists()
    resumed, = Process(work, "the killed run resumed").script("train", *args, "ckpt_path=last").run()
    final = torch.load(last, map_location="cpu", weights_only=True)
    return {"killed": {k: killed[k] for k in ("epoch", "global_step")}, "final": {k: final[k] for k in
            ("epoch", "global_step")}, "finished_before_kill": finished_before_kill, "log": resumed.output,
            "work": work}


SWEEP_SEED = 8  # RandomSampler(seed=8) draws the 2nd, 1st, 1st choice; resumed (seed 8 + 3 trials) 2nd, 1st, 2nd
SWEEP_LRS = (0.003, 1.0e+20)  # lr=1e20: the training loss is NaN at the second step


def run_sweep(work: Path, guard: Path, resnet_state: Dict[str, Any]) -> Dict[str, Any]:
    """scripts/sweep.py over lr in {3e-3, 1e20} (a process of its own), killed while trial 2 runs, then the same
    command with hydra.run.dir=<its sweep dir> in a fresh process."""
    write_folder(work / "ds", ("rgb8",), np.random.default_rng(2), "class_names.txt", True, n_train=6, n_val=4)
    args = ["data=folder", "data.source.root=ds", "model=unet_small", "trainer.max_epochs=1", "logger=csv",
            f"seed={SWEEP_SEED}", "sweep.n_trials=3", "sweep.sampler=random",
            f"sweep.params={{task.optimizer.lr:{{type:categorical,choices:[{SWEEP_LRS[0]},{SWEEP_LRS[1]}]}}}}"]
    job = start(work, "sweep", *args)
    wait_for(lambda: any(work.glob("sweeps/*/trial_002")), job, "trial 2 of the sweep")
    kill(job)
    sweep_dir, = [p for p in (work / "sweeps").iterdir() if p.is_dir()]
    before = {p.parent.name: p.read_text() for p in sweep_dir.glob("trial_*/metrics.json")}
    resumed, = Process(work, "the killed sweep resumed").script(
        "sweep", *args, f"hydra.run.dir={sweep_dir.relative_to(work)}").run()
    return {"dir": sweep_dir, "before": before, "log": resumed.output, "first_log": (work / "sweep.log").read_text()}


def run_nan_validation(work: Path, guard: Path, resnet_state: Dict[str, Any]) -> Dict[str, Any]:
    """lr=1e6 on 6 images for one epoch: the training loss grows to ~1e16 (finite: BatchNorm rescales the huge
    weights) while the validation loss is already NaN."""
    write_folder(work / "ds", ("rgb8",), np.random.default_rng(2), "class_names.txt", True, n_train=6, n_val=4)
    step, = Process(work, "a diverging run").script(
        "train", "data=folder", "data.source.root=ds", "model=unet_small", "trainer.max_epochs=1", "logger=csv",
        "hydra.run.dir=run", "seed=8", "task.optimizer.lr=1000000.0", check=False).run()
    return {"step": step, "metrics.json": (work / "run/metrics.json").is_file(),
            "metrics.csv": (work / "run/csv/metrics.csv").read_text()
            if (work / "run/csv/metrics.csv").is_file() else ""}


def run_labelme_tiff(work: Path, guard: Path, resnet_state: Dict[str, Any]) -> Dict[str, Any]:
    """Two labelme exports (train, val) of an 8-bit 4-band TIFF each (bands as minisblack samples, as multispectral
    TIFFs are stored; segkit reads them with tifffile, PIL cannot open them), converted into one folder."""
    import tifffile

    (work / "labels.txt").write_text("\n".join(LABELME_LABELS) + "\n")
    proc = Process(work, "labelme exports of 4-band TIFFs converted")
    for split, name in (("train", "field"), ("val", "meadow")):
        export = work / f"labelme-{split}"
        export.mkdir()
        pixels = np.random.default_rng(len(name)).integers(0, 256, (40, 48, 4), dtype=np.uint8)
        tifffile.imwrite(export / f"{name}.tif", pixels, photometric="minisblack", planarconfig="contig")
        (export / f"{name}.json").write_text(json.dumps({
            "version": "5.4.1", "flags": {}, "imagePath": f"{name}.tif", "imageData": None, "imageHeight": 40,
            "imageWidth": 48, "shapes": [{"label": "road", "shape_type": "polygon",
                                          "points": [[2, 2], [30, 4], [20, 30]], "flags": {}}]}))
        proc.script("convert", "format=labelme", f"input={export.name}", "output=ds", f"split={split}",
                    *(["class_names=labels.txt"] if split == "train" else []), check=False)
    return {"steps": proc.run(), "read_by_segkit": probe_batch(work / "labelme-train/field.tif", 4).shape,
            "work": work}


LONGEST = (run_sweep, run_interrupted)  # two processes each, several epochs: started first
BACKGROUND = {"test_a_killed_training_run_resumes_to_max_epochs": run_interrupted,
              "test_a_sweep_goes_on_past_a_diverging_trial_and_resumes": run_sweep,
              "test_a_run_whose_validation_loss_is_nan_fails_under_nan_policy_raise": run_nan_validation,
              "test_labelme_converts_a_multiband_tiff_that_segkit_reads": run_labelme_tiff}


@pytest.fixture(scope="module")
def guard(tmp_path_factory) -> Path:
    return write_network_guard(tmp_path_factory.mktemp("network-guard"))


@pytest.fixture(scope="module")
def launched(request, tmp_path_factory, guard) -> Dict[str, Future]:
    """Start every selected journey now, ``WORKERS`` processes at a time, longest first."""
    wanted = set()
    for item in request.session.items:
        if item.module is request.module:
            params = getattr(item, "callspec", None)
            wanted.add(params.params["journey"].name if params and "journey" in params.params else item.originalname)
    state = torchvision.models.resnet18(weights=None).state_dict()
    state[RESNET_WEIGHTS_MARK].fill_(0.5)
    jobs = [(name, fn, None) for name, fn in BACKGROUND.items() if name in wanted and fn in LONGEST]
    jobs += [(j.name, run_journey, j) for j in MATRIX if j.weights == "local" and j.name in wanted]
    jobs += [(j.name, run_journey, j) for j in MATRIX if j.weights != "local" and j.name in wanted]
    jobs += [(name, fn, None) for name, fn in BACKGROUND.items() if name in wanted and fn not in LONGEST]
    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="journey")
    futures = {}
    for name, fn, journey in jobs:
        work = tmp_path_factory.mktemp(name[:40])
        futures[name] = pool.submit(fn, *([journey] if journey else []), work, guard, state)
    yield futures
    pool.shutdown(wait=False, cancel_futures=True)


def close(got: np.ndarray, logits: np.ndarray, what: str) -> None:
    """Within 1e-4 of the checkpoint's logits, in units of their largest magnitude (a ResNet U-Net after one epoch
    gives logits in the hundreds, where float32 sums in another order differ by ~2e-4), and the same classes."""
    scale = max(1.0, float(np.abs(logits).max()))
    np.testing.assert_allclose(got, logits, atol=1e-4 * scale, rtol=0, err_msg=what)
    same_argmax(got[0].argmax(0), logits[0])


@pytest.fixture
def background(request, launched) -> Any:
    """What the calling test's BACKGROUND runner returned (it ran in the pool, started with the module)."""
    return launched[request.node.originalname].result()


def _drop_artefacts(work: Path) -> None:
    """A passed journey's checkpoints and exports (170 MB per ResNet run) need not outlive it."""
    for pattern in ("**/*.ckpt", "**/*.onnx", "**/*.safetensors", "weights"):
        for path in work.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


# ---- the journeys ------------------------------------------------------------------------------------------------

def test_the_network_guard_blocks_connections(guard, tmp_path):
    """What the guarded steps start with: a connection to a listening local port, which succeeds without the
    guard, fails with the guard's error (and is logged) with it."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    try:
        plain = run_python(tmp_path, f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=10); "
                           "print('connected')")
        assert "connected" in plain.stdout
        log = tmp_path / "attempts.log"
        blocked = run_python(tmp_path, f"import urllib.request\ntry:\n    urllib.request.urlopen('http://127.0.0.1:"
                             f"{port}/', timeout=10)\nexcept OSError as exc:\n    print('failed:', exc)\nelse:\n"
                             "    print('got through')", env=cli_env(guard, JOURNEY_NETWORK_LOG=str(log)))
    finally:
        server.close()
    assert f"failed: <urlopen error {NETWORK_BLOCKED}>" in blocked.stdout, blocked.stdout + blocked.stderr
    assert f"'127.0.0.1', {port}" in log.read_text()


# Not marked slow: a quick pass (-m "not slow", ~1 minute) still runs a converted layout with both conversions and
# renames, local weights with the file deleted and the network blocked, and a mixed 8/16-bit dataset from scratch.
QUICK = ("folder-rgb", "labelme-tiff")


@pytest.mark.parametrize("journey", [pytest.param(j, marks=() if j.name in QUICK else pytest.mark.slow)
                                     for j in MATRIX], ids=str)
def test_journey(journey, launched):
    out: Outcome = launched[journey.name].result()
    work, data = out.work, out.data
    from segkit.pipeline import load_task_from_checkpoint

    # train: metrics.json, and what the layout and the files decided
    trained = json.loads((work / "run/metrics.json").read_text())
    assert math.isfinite(trained["mIoU"]) and 0 <= trained["mIoU"] <= 1, trained
    task, cfg = load_task_from_checkpoint(str(work / "run/checkpoints/best.ckpt"))
    spec, channels = task.spec, CHANNELS[journey.kinds[0]]
    assert (spec.class_names, spec.num_classes) == (data.class_names, len(data.class_names))
    assert spec.in_channels == channels and spec.image_dtype == image_dtype(journey)
    if data.palette:
        assert spec.palette == data.palette
    if journey.weights == "local":  # trained from the file (its mark survived a few small steps), then deleted
        state = torch.load(work / "run/checkpoints/best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        mark, = [v for k, v in state.items() if k.endswith(RESNET_WEIGHTS_MARK)]
        assert (mark - 0.5).abs().max() < 0.1, "the encoder did not start from model.encoder_weights"
        assert not (work / "weights/r18.pth").exists() and cfg.model.encoder_weights == "weights/r18.pth"
        attempts = work / "network-attempts.log"
        assert not attempts.exists(), f"a step tried to connect:\n{attempts.read_text()[:3000]}"

    # evaluate: the same mIoU as training's final validation of the best checkpoint
    evaluated = json.loads((work / "run/eval-val/metrics.json").read_text())
    assert evaluated["mIoU"] == trained["mIoU"], (evaluated["mIoU"], trained["mIoU"])
    assert (work / "run/eval-val/report.html").is_file()

    # predict: one palette mask of the input's size per image, valid class ids, the checkpoint's argmax
    images = sorted(p for p in data.predict_dir.iterdir() if p.is_file())
    assert images
    for path in images:
        mask = Image.open(work / "predictions" / f"{path.stem}.png")
        assert mask.mode == "P" and (mask.height, mask.width) == image_size(path), path
        assert np.asarray(mask).max() < spec.num_classes
        assert (work / "predictions" / f"{path.stem}_overlay.png").is_file()
    with torch.no_grad():
        as_read = task(torch.from_numpy(probe_batch(data.probe, channels, pad_to=0))).numpy()
    same_argmax(np.asarray(Image.open(work / "predictions" / f"{data.probe.stem}.png")), as_read[0])

    # export: the ONNX model takes what the sidecar says and gives the checkpoint's logits
    import onnxruntime as ort

    sidecar = json.loads((work / "model.json").read_text())
    assert sidecar["class_names"] == data.class_names
    assert (sidecar["input"]["dtype"], sidecar["input"]["channels"]) == (spec.image_dtype, channels)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(work / "model.onnx"), options, providers=["CPUExecutionProvider"])
    probe = probe_batch(data.probe, channels, spec.image_dtype)
    with torch.no_grad():
        logits = task(torch.from_numpy(probe)).numpy()
    close(session.run(None, {session.get_inputs()[0].name: probe})[0], logits, "ONNX in onnxruntime")
    if journey.weights == "local":  # segkit.from_pretrained in the second, offline process
        close(np.load(work / "from_pretrained.npy"), logits, "segkit.from_pretrained")
    _drop_artefacts(work)


def test_a_killed_training_run_resumes_to_max_epochs(background):
    out = background  # run_interrupted's
    assert not out["finished_before_kill"] and out["killed"]["epoch"] < 3, out["killed"]
    steps_per_epoch = 6  # 12 training images, batch size 2 (planned)
    assert out["final"] == {"epoch": 3, "global_step": 4 * steps_per_epoch}, out
    assert out["killed"]["global_step"] == (out["killed"]["epoch"] + 1) * steps_per_epoch, out
    assert "Restored all states from the checkpoint" in out["log"], out["log"][-3000:]
    metrics = json.loads((out["work"] / "run/metrics.json").read_text())
    assert math.isfinite(metrics["mIoU"]) and metrics["checkpoint"].endswith("best.ckpt")
    _drop_artefacts(out["work"])


@pytest.mark.slow
def test_a_sweep_goes_on_past_a_diverging_trial_and_resumes(background):
    import optuna

    out = background  # run_sweep's
    sweep_dir = out["dir"]
    trials = optuna.load_study(study_name="segkit", storage=f"sqlite:///{sweep_dir / 'optuna.db'}").trials
    lrs = [t.params.get("task.optimizer.lr") for t in trials]
    # the premise (the seeded draws): a diverging trial first, a sound one after it, then the one killed
    assert lrs[:2] == [SWEEP_LRS[1], SWEEP_LRS[0]], f"seed {SWEEP_SEED} no longer draws 1e20 then 3e-3: {lrs}"
    assert SWEEP_LRS[0] in lrs[3:], f"the resumed sweep drew no sound lr: {lrs}"
    assert len(trials) == 6 and [t.number for t in trials] == list(range(6))
    for t in trials:
        if t.number == 2:  # killed while running: marked failed by the resumed sweep
            assert t.state.name == "FAIL" and "fail_reason" not in t.user_attrs
            assert "trial 2 was interrupted in an earlier run: marked failed" in out["log"]
        elif t.params["task.optimizer.lr"] == SWEEP_LRS[1]:
            assert t.state.name == "FAIL" and t.user_attrs["fail_reason"].startswith("FloatingPointError"), t
        else:
            metrics = json.loads(Path(t.user_attrs["run_dir"], "metrics.json").read_text())
            assert t.state.name == "COMPLETE" and t.value == metrics["mIoU"]
        assert Path(t.user_attrs["run_dir"]) == sweep_dir / f"trial_{t.number:03d}"
    assert "trial 0 failed" in out["first_log"]
    # the finished trials are kept as they were, not run again
    assert out["before"] and all((sweep_dir / name / "metrics.json").read_text() == text
                                 for name, text in out["before"].items())
    best = json.loads((sweep_dir / "best.json").read_text())
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert best["value"] == max(t.value for t in complete) and best["trial"] in [t.number for t in complete]
    assert best["trials"] == {"complete": len(complete), "fail": 6 - len(complete)}
    _drop_artefacts(sweep_dir)


def test_a_mixed_bit_depth_model_exports_float_input(launched):
    """Training batches of a dataset mixing 8- and 16-bit files are float (0-1): the exported model takes float32,
    whichever file sorts first (the first training image once was the only one looked at). Checked on the mixed
    journeys that ran."""
    mixed = [j for j in MATRIX if mixed_depths(j) and j.name in launched and launched[j.name].exception() is None]
    if not mixed:
        pytest.skip("no journey with mixed bit depths selected")
    dtypes = {j.name: json.loads((launched[j.name].result().work / "model.json").read_text())["input"]["dtype"]
              for j in mixed}
    assert set(dtypes.values()) == {"float32"}, dtypes


def test_a_run_whose_validation_loss_is_nan_fails_under_nan_policy_raise(background):
    """lr=1e6: the training loss stays finite, the validation loss is NaN; under task.nan_policy=raise (the default)
    the run fails with a FloatingPointError instead of passing as trained (and a sweep storing it as COMPLETE)."""
    step = background["step"]  # run_nan_validation's
    assert "non-finite training loss" not in step.output, "the premise changed: the training loss itself diverged"
    assert step.exit not in (0, None) and "FloatingPointError" in step.output, \
        f"exit {step.exit}; the run's metrics.csv:\n{background['metrics.csv']}\n{step.output[-3000:]}"
    assert not background["metrics.json"], "a failed run wrote metrics.json"


def test_labelme_converts_a_multiband_tiff_that_segkit_reads(background):
    """convert.py format=labelme converts 4-band TIFFs that PIL cannot open (segkit's reader sizes them): the
    images as they were, masks of their size, the two splits listed."""
    assert background["read_by_segkit"] == (1, 4, 64, 64)  # run_labelme_tiff's
    ds = background["work"] / "ds"
    for step in background["steps"]:
        assert step.exit == 0, f"{step.command}\n{step.output[-3000:]}"
    for split, name in (("train", "field"), ("val", "meadow")):
        assert (ds / "splits" / f"{split}.txt").read_text().split() == [name]
        image = ds / "images" / f"{name}.tif"
        assert image.read_bytes() == (background["work"] / f"labelme-{split}" / f"{name}.tif").read_bytes()
        mask = np.asarray(Image.open(ds / "masks" / f"{name}.png"))
        assert image_size(image) == mask.shape == (40, 48)
        assert set(np.unique(mask)) == {0, 1}, np.unique(mask)  # background and the road polygon

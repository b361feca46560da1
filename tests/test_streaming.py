"""Streamed datasets (data=streaming, scripts/shard.py; litdata): bytes decode as files do, the plan is the folder
layout's without reading the data, and in fresh processes: 2-process DDP on shards sees every training sample once
per epoch and validates like one process, a preempted run resumes mid-epoch exactly, and the s3:// path works
against a real S3 API (moto's server, started here)."""
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_cfg
from resume_helpers import clean_env, read_losses

pytest.importorskip("litdata")

from segkit.data.io import DataError, read_image, read_mask  # noqa: E402
from segkit.data.plan import plan_from_config  # noqa: E402
from segkit.data.sources import FolderSource  # noqa: E402
from segkit.data.streaming import StreamingSource, write_shards  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["background", "disk", "bar"]
SMALL_MODEL = ["model=unet", "++model.encoder_kwargs={base_channels:4,depth:3}", "trainer.precision=32-true",
               "logger=csv"]


def make_folder(root: Path, n_train: int = 16, n_val: int = 7, size: int = 32, seed: int = 0) -> Path:
    """A learnable folder-layout dataset: a disk (class 1) and a bar (class 2) on a textured background."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks", "splits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    lists = {"train": [], "val": []}
    for i in range(n_train + n_val):
        mask = np.zeros((size, size), np.uint8)
        cy, cx, r = rng.integers(8, size - 8, 2).tolist() + [int(rng.integers(3, 7))]
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        x0 = int(rng.integers(0, size - 4))
        mask[:, x0:x0 + 3][mask[:, x0:x0 + 3] == 0] = 2
        colours = np.array([[40, 60, 40], [200, 60, 60], [60, 60, 220]])
        image = np.clip(colours[mask] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        name = f"s{i:03d}"
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
        lists["train" if i < n_train else "val"].append(name)
    for split, names in lists.items():
        (root / "splits" / f"{split}.txt").write_text("\n".join(names) + "\n")
    (root / "class_names.txt").write_text("\n".join(CLASSES) + "\n")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("stream-folder"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory, dataset):
    out = tmp_path_factory.mktemp("stream-shards") / "ds"
    write_shards(FolderSource(str(dataset)), str(out), chunk_bytes="8kB", num_workers=1, log=lambda _: None)
    return out


def _images(tmp_path):
    """One file of each input kind segkit reads, as (path, kind)."""
    rng = np.random.default_rng(1)
    out = []
    rgb = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.jpg")
    out.append(tmp_path / "a.jpg")
    grey16 = rng.integers(0, 4095, (20, 24), dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "b.png")
    out.append(tmp_path / "b.png")
    import cv2
    import tifffile

    cv2.imwrite(str(tmp_path / "c.png"), rng.integers(0, 65535, (20, 24, 3), dtype=np.uint16))  # 16-bit colour
    out.append(tmp_path / "c.png")
    tifffile.imwrite(tmp_path / "d.tif", rng.integers(0, 65535, (4, 20, 24), dtype=np.uint16))  # 4 bands, planar
    out.append(tmp_path / "d.tif")
    return out


def test_bytes_decode_exactly_as_the_file(tmp_path):
    for path in _images(tmp_path):
        data = memoryview(path.read_bytes())  # what litdata hands back
        for channels in (None, 1, 3) if path.suffix != ".tif" else (None,):
            a, b = read_image(path, channels), read_image(Path("elsewhere") / path.name, channels, data=data)
            assert a.dtype == b.dtype and np.array_equal(a, b), (path, channels)
    mask = np.random.default_rng(2).integers(0, 5, (9, 7), dtype=np.uint8)
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert np.array_equal(read_mask(tmp_path / "m.png", data=(tmp_path / "m.png").read_bytes()), mask)
    with pytest.raises(DataError, match="shard/x.png"):
        read_image(Path("shard/x.png"), data=b"not an image")


def test_streamed_split_items_equal_the_folder_layout(dataset, shards):
    """Every sample, by index and by streaming, decodes to the folder layout's arrays; evaluation reads each once."""
    from segkit.data.dataset import SegmentationDataset

    folder = SegmentationDataset(FolderSource(str(dataset)).samples("val"), 3)
    stream = StreamingSource(str(shards)).dataset("val", 3, 255, None, None)
    assert len(stream) == len(folder) == 7
    by_name = {s[0].stem: i for i, s in enumerate(folder.samples)}
    for i in range(stream.total):
        item = stream[i]
        image, mask = folder.load(by_name[item["name"]])
        assert np.array_equal(item["image"].numpy().transpose(1, 2, 0), image)
        assert np.array_equal(item["mask"].numpy(), mask)
    assert sorted(item["name"] for item in stream) == sorted(by_name)


def test_the_plan_is_the_folder_layouts_without_reading_the_data(tmp_path, dataset, shards, monkeypatch):
    folder = compose_cfg("train", ["data=folder", f"data.source.root={dataset}"], tmp_path)
    streamed = compose_cfg("train", ["data=streaming", f"data.source.root={shards}"], tmp_path)
    plan_from_config(folder, FolderSource(str(dataset)))
    import segkit.data.plan as plan

    monkeypatch.setattr(plan, "measure", lambda *a, **k: pytest.fail("streamed data was read to plan"))
    lines = plan_from_config(streamed, StreamingSource(str(shards)))
    assert any("class_names" in line for line in lines)
    for key in ("num_classes", "class_names", "in_channels", "mean", "std", "crop_size", "batch_size"):
        assert folder.data[key] == streamed.data[key], key
    assert folder.data.train_transform.transforms == streamed.data.train_transform.transforms
    assert list(streamed.data.class_names) == CLASSES


def test_bad_shard_locations_say_what_to_do(tmp_path, dataset, shards):
    with pytest.raises(DataError, match="segkit.json not found.*scripts/shard.py"):
        StreamingSource(str(tmp_path / "nothing"))
    with pytest.raises(DataError, match="already holds a streamed dataset.*overwrite=true"):
        write_shards(FolderSource(str(dataset)), str(shards), log=lambda _: None)
    with pytest.raises(DataError, match="no test split"):
        StreamingSource(str(shards)).dataset("test", 3, 255, None, None)
    with pytest.raises(DataError, match="data.num_classes=2 .*class ids up to 2"):
        StreamingSource(str(shards)).stats("train", num_classes=2)


def _run(cwd, script, *args, env=None, timeout=600, new_session=False):
    env = clean_env(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, start_new_session=new_session)


@pytest.mark.slow
def test_ddp_on_shards_sees_each_sample_once_and_validates_like_one_process(tmp_path, dataset):
    """The user's path: shard.py, then train.py data=streaming on 2 processes, then evaluate.py in one."""
    out = tmp_path / "shards"
    made = _run(tmp_path, "shard.py", "data=folder", f"data.source.root={dataset}", f"out={out}", "chunk_bytes=8kB")
    assert made.returncode == 0, made.stderr[-3000:]
    assert "wrote 23 samples (train 16, val 7)" in made.stdout
    again = _run(tmp_path, "shard.py", "data=folder", f"data.source.root={dataset}", f"out={out}")
    assert again.returncode == 1 and "overwrite=true" in again.stderr  # a second run into the same folder

    run, record = tmp_path / "ddp", tmp_path / "samples"
    proc = _run(tmp_path, "train.py", "data=streaming", f"data.source.root={out}", *SMALL_MODEL,
                "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_epochs=2",
                "data.batch_size=4", "data.eval_batch_size=2", "data.num_workers=1", f"hydra.run.dir={run}",
                "+callbacks.record._target_=resume_helpers.SampleRecorder", f"+callbacks.record.path={record}",
                "allowed_targets=[resume_helpers]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads(line) for rank in (0, 1) for line in Path(f"{record}.{rank}").read_text().splitlines()]
    orders = []
    for epoch in (0, 1):
        train = Counter(name for stage, e, _, name in seen if stage == "train" and e == epoch)
        val = Counter(name for stage, e, _, name in seen if stage == "val" and e == epoch)
        assert len(train) == 16 and set(train.values()) == {1}, train  # every training sample, once
        assert len(val) == 7 and set(val.values()) == {1}, val  # 4 + 3: nothing padded or dropped
        orders.append([name for stage, e, rank, name in seen if stage == "train" and e == epoch and rank == 0])
    assert orders[0] != orders[1]  # shuffled again each epoch
    ddp = json.loads((run / "metrics.json").read_text())
    single = _run(tmp_path, "evaluate.py", f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
                  f"output_dir={tmp_path / 'eval'}", "data=streaming", f"data.source.root={out}")
    assert single.returncode == 0, single.stderr[-3000:]
    one = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert ddp["num_images"] == one["num_images"] == 7
    assert abs(ddp["mIoU"] - one["mIoU"]) <= 1e-6
    assert ddp["per_class_iou"] == pytest.approx(one["per_class_iou"], abs=1e-6)


@pytest.mark.slow
def test_a_preempted_streamed_run_resumes_mid_epoch_exactly(tmp_path, shards):
    """SIGTERM to the process group (worker included) at step 6 of 12: the run writes the loader's position with the
    step, and ckpt_path=auto draws the rest of that epoch, in the uninterrupted run's order and augmentations."""
    def train(run, *extra):
        return _run(tmp_path, "train.py", "data=streaming", f"data.source.root={shards}", *SMALL_MODEL,
                    "trainer.max_epochs=3", "data.batch_size=4", "data.num_workers=1", f"hydra.run.dir={run}",
                    "data/augment=scale_crop", "data.crop_size=32",  # random augmentation: it must replay too
                    "+callbacks.losses._target_=resume_helpers.LossRecorder", f"+callbacks.losses.path={run}.losses",
                    "allowed_targets=[resume_helpers]", *extra, new_session=True)

    ref = train(tmp_path / "a")
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = read_losses(f"{tmp_path / 'a'}.losses")
    assert sorted(reference) == list(range(1, 13))  # 16 samples / 4 = 4 steps per epoch
    b = tmp_path / "b"
    stopped = train(b, "+callbacks.kill._target_=resume_helpers.KillAtStep", "+callbacks.kill.step=6",
                    "+callbacks.kill.signal=SIGTERM", "+callbacks.kill.group=true")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    resumed = train(b, "ckpt_path=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    losses = read_losses(f"{b}.losses")
    assert sorted(losses) == [s for s in range(1, 13) if s != 6]  # step 6 ran, stopped before its recorder
    for step, values in losses.items():
        assert values == [reference[step][0]], (step, values, reference[step])
    final = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)
    ref_final = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in ref_final["state_dict"].items():
        assert torch.equal(value, final["state_dict"][key]), key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server():
    """A real S3 API on localhost: moto's server (the `moto[server]` test dependency), with one bucket."""
    pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket="segkit-data")
    yield env
    server.stop()


@pytest.mark.slow
def test_shards_in_object_storage(tmp_path, dataset, s3_server):
    url = "s3://segkit-data/cells"
    made = _run(tmp_path, "shard.py", "data=folder", f"data.source.root={dataset}", f"out={url}",
                "chunk_bytes=8kB", env=s3_server)
    assert made.returncode == 0, made.stderr[-3000:]
    run = tmp_path / "run"
    proc = _run(tmp_path, "train.py", "data=streaming", f"data.source.root={url}",
                f"data.source.cache_dir={tmp_path / 'cache'}", *SMALL_MODEL, "trainer.max_epochs=1",
                "data.batch_size=4", "data.num_workers=1", f"hydra.run.dir={run}", env=s3_server)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_images"] == 7 and list(metrics["per_class_iou"]) == CLASSES
    assert any((tmp_path / "cache").rglob("*.bin"))  # chunks came from the server into the cache
    missing = _run(tmp_path, "train.py", "data=streaming", "data.source.root=s3://segkit-data/nothing",
                   *SMALL_MODEL, f"hydra.run.dir={tmp_path / 'x'}", env=s3_server)
    assert missing.returncode != 0 and "s3://segkit-data/nothing/segkit.json not found" in missing.stderr


@pytest.mark.slow
def test_a_broken_streamed_sample_fails_the_run_with_its_name(tmp_path, dataset):
    """A sample that does not decode, read in a DataLoader worker: the run exits 1 naming it, and does not hang at
    exit (workers ignore SIGTERM, which is how multiprocessing ends them when the interpreter exits)."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    (broken / "images" / "s005.png").write_bytes(b"not a png")
    out = tmp_path / "shards"
    # the plan's statistics measured on 2 images (s000 and s015): the broken one is first read by training
    write_shards(FolderSource(str(broken)), str(out), max_images=2, num_workers=1, log=lambda _: None)
    proc = _run(tmp_path, "train.py", "data=streaming", f"data.source.root={out}", *SMALL_MODEL,
                "trainer.max_epochs=1", "data.batch_size=4", "data.num_workers=1",
                f"hydra.run.dir={tmp_path / 'run'}", timeout=180)
    assert proc.returncode == 1
    assert "cannot decode image" in proc.stderr and "s005.png" in proc.stderr

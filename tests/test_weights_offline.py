"""A trained model never needs its training-time encoder weights again (the trained weights are in the checkpoint or
model.safetensors): rebuilding it reads no weights file and downloads nothing. And what save_pretrained writes
(config.json, the model card), which push_to_hub makes public, holds no absolute local path."""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

import segkit
from conftest import TINY_DATA, compose_cfg
from segkit.data.spec import DataSpec
from segkit.export import save_safetensors
from segkit.pipeline import load_task_from_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data_dir):
    """One training step of a ResNet-18 U-Net whose encoder starts from a local weights file, which is then deleted.
    The logits of the trained model on fixed images are taken while the file still exists."""
    root = tmp_path_factory.mktemp("offline")
    weights = root / "weights" / "r18.pth"
    weights.parent.mkdir()
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    overrides = ["model=unet", "model.encoder=resnet18", f"model.encoder_weights={weights}", *TINY_DATA,
                 "logger=csv", "trainer.max_epochs=1", "+trainer.limit_train_batches=1", "~callbacks.progress_bar"]
    train(compose_cfg("train", overrides, root, shared_data_dir))
    run_dir = root / "run"
    (run_dir / ".hydra").mkdir()  # what Hydra records for a real run: the command line, local paths included
    (run_dir / ".hydra/overrides.yaml").write_text("".join(
        f"- {o}\n" for o in [*overrides[:3], f"paths.data_dir={shared_data_dir}", f"hydra.run.dir={run_dir}"]))
    ckpt = run_dir / "checkpoints/best.ckpt"
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    task, _ = load_task_from_checkpoint(str(ckpt))
    with torch.no_grad():
        expected = task(images)
    torch.save({"images": images, "logits": expected}, root / "expected.pt")
    weights.unlink()
    return types.SimpleNamespace(root=root, ckpt=ckpt, run_dir=run_dir, images=images, expected=expected,
                                 weights=weights, basetemp=tmp_path_factory.getbasetemp())


# Runs in a fresh interpreter: no network (socket connects and torch's downloads raise), an empty torch hub cache.
DRIVER = r'''
import json, runpy, socket, sys

def blocked(*args, **kwargs):
    raise OSError("network access blocked by tests/test_weights_offline.py")

socket.socket.connect = socket.socket.connect_ex = socket.create_connection = blocked
import torch, torch.hub
torch.hub.load_state_dict_from_url = torch.hub.download_url_to_file = blocked

import numpy as np
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

import segkit
from segkit.pipeline import load_task_from_checkpoint

a = json.loads(sys.argv[1])
ref = torch.load(a["expected"])
images, expected = ref["images"], ref["logits"]


def script(name, *overrides):
    GlobalHydra.instance().clear()
    sys.argv = [name, f"ckpt_path={a['ckpt']}", f"hydra.run.dir={a['tmp']}/hydra", *overrides]
    runpy.run_path(name, run_name="__main__")


def same(got, what):
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5, msg=lambda m: f"{what}: {m}")
    print("same logits:", what)


task, _ = load_task_from_checkpoint(a["ckpt"])
with torch.no_grad():
    same(task(images), "load_task_from_checkpoint")
script("scripts/export.py", "format=pretrained", f"output={a['tmp']}/pretrained")
with torch.no_grad():
    same(segkit.from_pretrained(f"{a['tmp']}/pretrained")(images), "from_pretrained")
script("scripts/export.py", "format=torchscript", f"output={a['tmp']}/model.pt", "example_size=32")
with torch.no_grad():
    same(torch.jit.load(f"{a['tmp']}/model.pt")(images), "scripts/export.py format=torchscript")
script("scripts/evaluate.py", f"output_dir={a['tmp']}/eval", "progress_bar=false", "report_images=0")
ev = json.load(open(f"{a['tmp']}/eval/metrics.json"))
assert ev["mIoU"] == a["val_miou"], (ev["mIoU"], a["val_miou"])
print("scripts/evaluate.py: the run's val mIoU", ev["mIoU"])
script("scripts/predict.py", f"input={a['tmp']}/images", f"output={a['tmp']}/pred", "progress_bar=false")
mask = np.array(Image.open(f"{a['tmp']}/pred/img.png"))
assert (mask == expected[0].argmax(0).numpy()).all()
print("scripts/predict.py: the mask of the logits")
print("OFFLINE OK")
'''


def test_a_model_trained_from_a_local_weights_file_rebuilds_offline_after_the_file_is_gone(run, tmp_path):
    """from_pretrained, load_task_from_checkpoint, scripts/evaluate.py, predict.py and export.py, in a fresh
    process without network, after the encoder_weights file has been deleted: the same logits as before."""
    assert not run.weights.exists()
    (tmp_path / "images").mkdir()
    Image.fromarray(run.images[0].permute(1, 2, 0).numpy()).save(tmp_path / "images/img.png")
    args = {"ckpt": str(run.ckpt), "expected": str(run.root / "expected.pt"), "tmp": str(tmp_path),
            "val_miou": json.loads((run.run_dir / "metrics.json").read_text())["mIoU"]}
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "empty-torch-home"), HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "OFFLINE OK" in proc.stdout, (proc.stdout[-3000:] + proc.stderr[-5000:])


@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt to fetch pretrained weights (torchvision, timm, the network at all) raises."""
    import socket

    import timm.models._builder

    def blocked(*args, **kwargs):
        raise AssertionError("tried to download pretrained weights while rebuilding a trained model")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", blocked)
    monkeypatch.setattr(timm.models._builder, "load_pretrained", blocked)
    monkeypatch.setattr(socket.socket, "connect", blocked)


@pytest.mark.parametrize("stored", [{"encoder_weights": "DEFAULT"}, {"encoder_kwargs": {"pretrained": True}}],
                         ids=["encoder_weights=DEFAULT", "encoder_kwargs.pretrained=true"])
def test_a_checkpoint_whose_config_says_imagenet_weights_rebuilds_without_downloading(run, stored, tmp_path,
                                                                                      no_downloads):
    """configs/experiment/* train with encoder_weights=DEFAULT (torchvision's ImageNet download): evaluating the
    checkpoint must not download them again (offline machines, or a changed cache) since its weights replace them."""
    ckpt = torch.load(run.ckpt, map_location="cpu", weights_only=True)
    ckpt["segkit"]["config"]["model"].update(stored, encoder_weights=stored.get("encoder_weights"))
    torch.save(ckpt, tmp_path / "imagenet.ckpt")
    task, cfg = load_task_from_checkpoint(str(tmp_path / "imagenet.ckpt"))
    with torch.no_grad():
        torch.testing.assert_close(task(run.images), run.expected, atol=1e-6, rtol=0)
    assert task.run_config["model"]["encoder_weights"] == stored.get("encoder_weights")  # the record stays true


@pytest.mark.parametrize("encoder,stored", [("resnet18", {"encoder_weights": "DEFAULT"}),
                                            ("resnet18", {"encoder_kwargs": {"pretrained": True}}),
                                            ("timm:resnet18", {"encoder_weights": "DEFAULT"}),
                                            ("timm:resnet18", {"encoder_kwargs": {"pretrained": True}})])
def test_a_pretrained_folder_whose_config_says_imagenet_weights_loads_without_downloading(encoder, stored, tmp_path,
                                                                                          no_downloads):
    from segkit.hub import PretrainedSegmenter
    from segkit.models import UNet

    torch.manual_seed(0)
    net = UNet(encoder=encoder, num_classes=3, encoder_weights=None).eval()
    spec = DataSpec(num_classes=3, ignore_index=255, class_names=["a", "b", "c"], palette=[[0, 0, 0]] * 3,
                    in_channels=3, mean=[0.5] * 3, std=[0.25] * 3)
    model_cfg = {"_target_": "segkit.models.UNet", "encoder": encoder, "num_classes": 3, "in_channels": 3,
                 "final_step_convs": 1, "encoder_weights": None, **stored}
    tmp_path.joinpath("config.json").write_text(json.dumps({"format": "segkit-pretrained", "format_version": 1,
                                                            "model": model_cfg, "spec": spec.to_dict()}))
    save_safetensors(net, tmp_path / "model.safetensors")
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(segkit.from_pretrained(tmp_path)(images), PretrainedSegmenter(net, spec)(images),
                                   atol=1e-6, rtol=0)


def _local_paths_in(folder: Path, needles):
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix != ".safetensors":
            text = path.read_text()
            found += [f"{path.name}: {n}" for n in needles if n in text]
    return found


def test_save_pretrained_and_push_to_hub_write_no_local_paths(run, tmp_path, monkeypatch):
    """Checkpoint path, data cache dir, encoder weights file, output dirs, the command's paths: none of the run's
    absolute paths may reach config.json or the model card, and the folder still loads."""
    from segkit.hub import push_to_hub, save_pretrained

    needles = {str(run.basetemp), str(Path(run.basetemp).resolve()), str(Path.home())} - {"/"}
    stored = torch.load(run.ckpt, map_location="cpu", weights_only=True, mmap=True)["segkit"]["config"]
    assert str(run.weights) in json.dumps(stored)  # the run config does hold local paths
    folder = save_pretrained(run.ckpt, tmp_path / "shapes-r18")
    assert _local_paths_in(folder, needles) == []
    config = json.loads((folder / "config.json").read_text())
    assert config["model"]["encoder_weights"] == "<local path>/r18.pth"  # what the run started from, by name
    assert config["training"]["checkpoint"].endswith("best.ckpt")
    card = (folder / "README.md").read_text()
    assert "python scripts/train.py model=unet model.encoder=resnet18" in card and "r18.pth" in card
    with torch.no_grad():
        torch.testing.assert_close(segkit.from_pretrained(folder)(run.images), run.expected, atol=1e-6, rtol=0)

    # a folder written by an older segkit still has them: push_to_hub uploads stripped copies, the folder is kept
    old = tmp_path / "old"
    old.mkdir()
    for name in ("model.safetensors", "config.json", "README.md"):
        (old / name).write_bytes((folder / name).read_bytes())
    leaky = dict(config, training=dict(config["training"], checkpoint=str(run.ckpt)))
    (old / "config.json").write_text(json.dumps(leaky, indent=2))
    (old / "README.md").write_text(card + f"\n- checkpoint: `{run.ckpt}`\n")
    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, allow_patterns, **kwargs):
            uploaded.update({p.name: p.read_bytes() for p in Path(folder_path).iterdir() if p.name in allow_patterns})

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(HfApi=FakeApi))
    push_to_hub(old, "me/shapes-r18")
    assert set(uploaded) == {"model.safetensors", "config.json", "README.md"}
    assert uploaded["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    leaks = [f"{name}: {n}" for name, data in uploaded.items() if name != "model.safetensors" for n in needles
             if n in data.decode()]
    assert leaks == []
    assert str(run.ckpt) in (old / "config.json").read_text()  # the user's folder is left as it is
    assert json.loads(uploaded["config.json"])["training"]["checkpoint"] == "<local path>/best.ckpt"


def test_resuming_a_run_whose_encoder_weights_file_is_gone(run, tmp_path, shared_data_dir):
    """``ckpt_path=last`` (a requeued job, an interrupted run): the checkpoint's weights replace the encoder's, so
    the deleted training-time file is not read again."""
    import shutil

    shutil.copytree(run.run_dir, tmp_path / "run")
    shutil.copy(tmp_path / "run/checkpoints/best.ckpt", tmp_path / "run/checkpoints/last.ckpt")
    assert not run.weights.exists()
    overrides = ["model=unet", "model.encoder=resnet18", f"model.encoder_weights={run.weights}", *TINY_DATA,
                 "logger=csv", "trainer.max_epochs=2", "+trainer.limit_train_batches=1", "~callbacks.progress_bar",
                 "ckpt_path=last"]
    metrics = train(compose_cfg("train", overrides, tmp_path, shared_data_dir))
    assert 0.0 <= metrics["mIoU"] <= 1.0
    last = torch.load(tmp_path / "run/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1  # the second epoch ran on top of the first


def test_comparing_a_run_whose_encoder_weights_file_is_gone(run):
    from segkit.analysis.compare import summarize_run

    with pytest.warns(UserWarning, match="randomly initialised encoder"):
        summary = summarize_run(run.run_dir)
    assert summary["mIoU"] == json.loads((run.run_dir / "metrics.json").read_text())["mIoU"]

"""A checkpoint exported as a pretrained folder reloads, without the training config, into the same model."""
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

import segkit
from conftest import TINY_DATA, compose_cfg
from segkit.config import UnsafeConfigError
from segkit.pipeline import load_task_from_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, shared_data_dir):
    tmp_path = tmp_path_factory.mktemp("hub")
    cfg = compose_cfg("train", ["model=unet_small", "++model.encoder_kwargs={base_channels:4,depth:3}", *TINY_DATA,
                                "logger=csv", "trainer.max_epochs=1", "+trainer.limit_train_batches=1"],
                      tmp_path, shared_data_dir)
    train(cfg)
    (tmp_path / "run/.hydra").mkdir()
    (tmp_path / "run/.hydra/overrides.yaml").write_text("- model=unet_small\n- trainer.max_epochs=1\n")
    return tmp_path / "run/checkpoints/best.ckpt"


def test_export_pretrained_and_reload_gives_the_same_logits(checkpoint, tmp_path, monkeypatch):
    folder = tmp_path / "shapes-unet"
    script = str(ROOT / "scripts/export.py")  # run as `python scripts/export.py ...`, in this process
    monkeypatch.setattr(sys, "argv", [script, f"ckpt_path={checkpoint}", "format=pretrained", f"output={folder}"])
    runpy.run_path(script, run_name="__main__")
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "README.md"}
    config = json.loads((folder / "config.json").read_text())
    assert config["spec"]["class_names"][1] == "disk" and config["model"]["_target_"] == "segkit.models.UNet"
    card = (folder / "README.md").read_text()
    metrics = json.loads((checkpoint.parent.parent / "metrics.json").read_text())
    assert f"{metrics['mIoU']:.4f}" in card and "python scripts/train.py model=unet_small" in card
    assert "| 5 | cross |" in card

    model = segkit.from_pretrained(folder)
    assert not model.training and model.class_names == config["spec"]["class_names"]
    task, _ = load_task_from_checkpoint(str(checkpoint))
    images = torch.randint(0, 256, (2, 3, 40, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = task(images), model(images)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert torch.equal(model.predict(images), expected.argmax(1))
    # float images in 0-1 are the same images
    with torch.no_grad():
        torch.testing.assert_close(model(images.float() / 255), expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 3, H, W\)"):
        model(images[:, :1])


def test_from_pretrained_refuses_untrusted_targets_and_missing_files(checkpoint, tmp_path):
    from segkit.hub import save_pretrained

    folder = save_pretrained(checkpoint, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["model"]["_target_"] = "os.system"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafeConfigError, match="os.system"):
        segkit.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="format=pretrained"):
        segkit.from_pretrained(folder)


def test_from_pretrained_with_weights_of_another_layout_names_the_file(checkpoint, tmp_path):
    """Weights whose shapes no longer fit the config's model (an older segkit's layers): a ValueError naming the
    weights file and the reason, not load_state_dict's trace."""
    from safetensors.torch import load_file, save_file

    from segkit.hub import save_pretrained

    folder = save_pretrained(checkpoint, tmp_path / "m")
    weights = load_file(str(folder / "model.safetensors"))
    weights["head.weight"] = torch.cat([weights["head.weight"]] * 2, dim=1)  # a wider decoder than the config's
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model.safetensors do not fit the model in .*config.json.*older segkit"):
        segkit.from_pretrained(folder)


def test_spec_falls_back_to_the_run_config():
    from segkit.hub import spec_from_checkpoint

    config = {"data": {"num_classes": 3, "ignore_index": 255, "class_names": ["a", "b", "c"], "palette": None},
              "task": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}, "model": {"in_channels": 3}}
    spec = spec_from_checkpoint({"config": config})
    assert spec.class_names == ["a", "b", "c"] and spec.mean == [0.5] * 3 and len(spec.palette) == 3
    stored = dict(spec.to_dict(), class_names=["x", "y", "z"])
    assert spec_from_checkpoint({"config": config, "spec": stored}).class_names == ["x", "y", "z"]


def test_push_to_hub_and_load_by_repo_id_with_a_stand_in_hub(checkpoint, tmp_path, monkeypatch):
    """The Hub calls (no network in tests): create the repo, upload the three files; load an owner/name id."""
    import types

    from segkit.hub import push_to_hub, save_pretrained

    folder = save_pretrained(checkpoint, tmp_path / "m")
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))

    def snapshot_download(repo_id, **kwargs):
        calls.append(("snapshot_download", repo_id))
        return str(folder)

    monkeypatch.setitem(sys.modules, "huggingface_hub",
                        types.SimpleNamespace(HfApi=FakeApi, snapshot_download=snapshot_download))
    assert push_to_hub(folder, "me/shapes-unet", private=True) == "https://huggingface.co/me/shapes-unet"
    assert calls[1] == ("create_repo", "me/shapes-unet", {"repo_type": "model", "private": True, "exist_ok": True})
    upload = calls[2][1]
    assert upload["folder_path"] == str(folder) and set(upload["allow_patterns"]) == {
        "model.safetensors", "config.json", "README.md"}
    model = segkit.from_pretrained("me/shapes-unet")
    assert calls[-1] == ("snapshot_download", "me/shapes-unet") and model.class_names[0] == "background"
    assert (folder / "README.md").read_text().startswith("---\ntags: [segkit, semantic-segmentation]")

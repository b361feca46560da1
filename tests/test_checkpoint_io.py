"""Checkpoints are renamed into place from a file in their own directory (never copied in from /tmp, which a kill can
cut short on NFS or a volume), and a save that fails half-way leaves the previous checkpoint whole."""
import os

import pytest
import torch

from segkit.checkpoint import AtomicCheckpointIO


def test_a_checkpoint_is_renamed_into_place_from_its_own_directory(tmp_path, monkeypatch):
    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((str(src), str(dst))), real_replace(src, dst)))
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.arange(4)}, target)
    assert torch.load(target, weights_only=True)["step"] == 1
    assert len(renames) == 1 and os.path.dirname(renames[0][0]) == str(target.parent) and renames[0][1] == str(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_a_save_cut_short_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, target)

    def half_then_die(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the process is being stopped mid-write

    monkeypatch.setattr(torch, "save", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_training_runs_save_through_it(tmp_path, monkeypatch):
    from conftest import TINY_DATA, compose_cfg
    from segkit.pipeline import train

    saved = []
    real_save = AtomicCheckpointIO.save_checkpoint
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint",
                        lambda self, checkpoint, path, storage_options=None: (saved.append(os.path.basename(path)),
                                                                              real_save(self, checkpoint, path)))
    cfg = compose_cfg("train", [*TINY_DATA, "trainer.max_epochs=1", "logger=csv", "data.crop_size=32",
                                "++model.encoder_kwargs={base_channels:4,depth:3}"], tmp_path)
    metrics = train(cfg)
    ckpt = torch.load(metrics["checkpoint"], weights_only=True)
    assert ckpt["global_step"] == 4
    assert sorted(set(saved)) == ["best.ckpt", "last.ckpt"]
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]

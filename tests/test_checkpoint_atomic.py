"""An interruption while a checkpoint is being written leaves the previous checkpoint intact and loadable."""
import pytest
import torch
from fsspec.implementations.local import LocalFileOpener
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


def test_interrupted_save_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    io = TorchCheckpointIO()  # what Lightning's Trainer uses to write .ckpt files
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "global_step": 1}, path)

    real_write = LocalFileOpener.write

    def write_half_then_die(self, data):
        real_write(self, data[: len(data) // 2])
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(LocalFileOpener, "write", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(100000)}, "global_step": 2}, path)
    monkeypatch.undo()

    ckpt = torch.load(path, weights_only=True)
    assert ckpt["global_step"] == 1 and torch.equal(ckpt["state_dict"]["w"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no stray partial file beside it

"""The ``segkit`` console command: usage, errors, Hydra passthrough and one real (tiny) training run."""
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import TINY_DATA
from segkit import cli

REPO = Path(__file__).resolve().parents[1]


def _segkit(*args, cwd, env=None):
    """``segkit ARGS`` the way the console script runs it (``segkit.cli:main``), in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-c", "import sys; from segkit.cli import main; sys.exit(main())", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_entry_point_is_declared():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["segkit"].split(":")
    assert getattr(__import__(module, fromlist=[func]), func) is cli.main


def test_usage_lists_every_script(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ["train", "evaluate", "predict", "export", "check-data", "convert"]:
        assert f"\n  {name} " in out
    assert set(cli.commands()) >= {"train", "evaluate", "predict", "export", "check-data", "convert"}
    assert cli.commands()["check-data"] == REPO / "scripts" / "check_data.py"


def test_unknown_command_and_missing_checkout(tmp_path, capsys):
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err
    assert cli.main([]) == 2
    result = _segkit("train", cwd=tmp_path, env={"SEGKIT_HOME": str(tmp_path)})
    assert result.returncode == 2 and "pip install -e ." in result.stderr


def test_hydra_help_passes_through(tmp_path):
    result = _segkit("train", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "train is powered by Hydra" in result.stdout and "callbacks: default, ema" in result.stdout


def test_train_runs_from_any_directory(tmp_path):
    run = tmp_path / "run"
    result = _segkit("train", "model=unet_small", "++model.encoder_kwargs={base_channels:4,depth:3}", *TINY_DATA,
                     "trainer.max_epochs=1", "logger=csv", "~callbacks.progress_bar", f"hydra.run.dir={run}",
                     f"paths.data_dir={tmp_path / 'data'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 0 <= json.loads((run / "metrics.json").read_text())["mIoU"] <= 1
    assert (run / "checkpoints" / "best.ckpt").is_file()


def test_script_errors_keep_their_exit_status(tmp_path):
    result = _segkit("check-data", "data=folder", "data.num_classes=3", f"data.source.root={tmp_path / 'missing'}",
                     cwd=tmp_path)
    assert result.returncode == 1  # check_data.py's sys.exit(1) on problems
    assert f"image folder not found: {tmp_path / 'missing' / 'images'}" in result.stdout + result.stderr

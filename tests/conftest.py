import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def compose_cfg(config_name: str, overrides: list[str], tmp_path: Path, data_dir: Path | None = None):
    """Compose a config the way the scripts do, with paths pointing into tmp_path."""
    data_dir = data_dir or tmp_path / "data"
    paths = [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}", f"paths.data_dir={data_dir}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name, overrides=[*(paths if config_name != "predict" else []), *overrides])


TINY_DATA = ["data.source.num_train=32", "data.source.num_val=8", "data.source.num_test=8", "data.source.size=32",
             "data.batch_size=8", "data.eval_batch_size=4"]


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("segkit-data")

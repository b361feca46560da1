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


def fill_planned(cfg, source=None, **values):
    """A layout config's ``auto`` values for a test that builds the data module without training data to plan from:
    the labels as ``train()`` resolves them from ``source`` (the layout's or the root's class list), every other
    planned key from ``values`` or a small placeholder (3 classes, 3 channels, measured normalisation, 64-px crops with
    the planned crop augmentation, batch 2)."""
    from omegaconf import open_dict

    from segkit.data.plan import augmentation_for, planned_keys, resolve_labels

    if source is not None:
        resolve_labels(cfg, source)
    crop = values.get("crop_size", 64)
    defaults = {"data.num_classes": 3, "data.class_names": None, "data.in_channels": 3, "data.mean": None,
                "data.std": None, "data.crop_size": crop, "data.batch_size": 2,
                "data.train_transform.transforms": augmentation_for(crop, cfg.data.get("ignore_index"))}
    defaults.update({f"data.{k}": v for k, v in values.items()})
    with open_dict(cfg):
        for key in planned_keys(cfg):
            if key in defaults:
                node, leaf = key.rsplit(".", 1)
                cfg_node = cfg
                for part in node.split("."):
                    cfg_node = cfg_node[part]
                cfg_node[leaf] = defaults[key]
    return cfg

"""``_target_`` allowlist: loaders, process spawners and shell calls are refused from the command line and from a
checkpoint's stored config, before anything runs; every config the repository ships passes."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import segkit.losses
from conftest import CONFIG_DIR, compose_cfg
from segkit.config import (UnsafeConfigError, _refusal, check_targets, config_target, load_checkpoint,
                           model_config_from_checkpoint)

ROOT = Path(__file__).resolve().parents[1]
DANGEROUS = [
    "torch.serialization.load", "torch.utils.model_zoo.load_url", "torch.multiprocessing.spawn",
    "torchvision.io.write_file", "torch.hub.load", "torch.load", "torch.jit.load", "torch.utils.cpp_extension.load",
    "torch.ops.load_library", "torch.compile", "builtins.eval", "builtins.exec", "builtins.getattr", "os.system",
    "posix.system", "subprocess.run", "shutil.rmtree", "hydra.utils.instantiate", "hydra.utils.call",
    "functools.partial", "importlib.import_module",
    # segkit functions read and write files and run whole jobs; only classes (and marked factories) are targets
    "segkit.config.load_checkpoint", "segkit.pipeline.train", "segkit.pipeline.write_json_atomic",
    "segkit.data.synthetic.generate", "segkit.export.export_onnx",
    # reached through an attribute chain inside a trusted package
    "torch.nn.modules.module.torch.load", "segkit.config.torch.load", "segkit.pipeline.os.system",
    "albumentations.load", "albumentations.Compose.from_pretrained", "lightning.pytorch.Trainer.from_argparse_args",
    "torch.nn.functional.relu", "torch.optim.lr_scheduler.torch.load",
    # names that only look trusted
    "segkitx.evil", "torch_evil.X", "torch.nn._reduction.get_enum", "${oc.env:EVIL}",
]


@pytest.mark.parametrize("target", DANGEROUS)
def test_dangerous_targets_refused_in_any_key(target):
    for cfg in ({"model": {"upsampler": {"_target_": target}}}, {"callbacks": {"x": {"_target_": target}}},
                {"data": {"augment": {"transforms": [{"_target_": "albumentations.HorizontalFlip"},
                                                     {"_target_": target}]}}}):
        with pytest.raises(UnsafeConfigError, match=r"\._target_=.*is not an allowed target.*allowed_targets"):
            check_targets(OmegaConf.create(cfg))


@pytest.mark.parametrize("target", DANGEROUS)
def test_dangerous_target_from_overrides_stops_train_before_anything_runs(tmp_path, target):
    from segkit.pipeline import train

    marker = tmp_path / "pwned"
    cfg = compose_cfg("train", [f"task.optimizer._target_='{target}'", f"+task.optimizer._args_=['touch {marker}']"],
                      tmp_path)
    with pytest.raises(UnsafeConfigError, match=r"task\.optimizer\._target_="):
        train(cfg)
    assert not marker.exists() and not (tmp_path / "run").exists()


OVERRIDES = ["+foo._target_=os.system", "task.optimizer._target_=torch.serialization.load",
             "model.upsampler._target_=torch.multiprocessing.spawn",
             "+callbacks.evil._target_=torch.utils.model_zoo.load_url"]


@pytest.mark.parametrize("override", OVERRIDES)
def test_dangerous_override_in_any_group_stops_train_before_anything_runs(tmp_path, override):
    from segkit.pipeline import train

    marker = tmp_path / "pwned"
    cfg = compose_cfg("train", [override, f"+foo._args_=['touch {marker}']"], tmp_path)
    key, target = override.lstrip("+").split("=", 1)
    with pytest.raises(UnsafeConfigError, match=re.escape(f"{key}={target!r} is not an allowed target")):
        train(cfg)
    assert not marker.exists() and not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_cli_refuses_before_anything_runs(tmp_path):
    """The script's own path (one process; the groups above go through the same train())."""
    override = OVERRIDES[0]
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), override, f"+foo._args_=['touch {marker}']",
         f"hydra.run.dir={run_dir}", f"paths.data_dir={tmp_path / 'data'}", "hydra/job_logging=disabled"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0
    target = override.split("=", 1)[1]
    assert "UnsafeConfigError" in proc.stderr and f"_target_={target!r} is not an allowed target" in proc.stderr
    assert not marker.exists() and not (tmp_path / "data").exists()
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "checkpoints").exists()


# ---- checkpoints ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["torch.serialization.load", "os.system", "torch.multiprocessing.spawn",
                                    "segkit.config.load_checkpoint", "builtins.exec"])
@pytest.mark.parametrize("where", ["model", "task.loss", "task.optimizer", "data.source"])
def test_checkpoint_config_with_dangerous_target_refused(tmp_path, target, where):
    from segkit.pipeline import load_task_from_checkpoint

    cfg = compose_cfg("train", [], tmp_path)
    plain = OmegaConf.to_container(cfg, resolve=False)
    node = plain
    for key in where.split("."):
        node = node[key]
    node["_target_"] = target
    node["_args_"] = [f"touch {tmp_path / 'pwned'}"]
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "segkit": {"config": plain}}, path)
    ckpt = load_checkpoint(path)
    with pytest.raises(UnsafeConfigError, match=re.escape(f"checkpoint {path}: {where}._target_='{target}'")):
        model_config_from_checkpoint(ckpt, path=str(path))
    with pytest.raises(UnsafeConfigError):
        load_task_from_checkpoint(str(path))
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_of_a_run_with_a_trusted_custom_callback_evaluates(tmp_path):
    """Callbacks are not rebuilt from a checkpoint: a callback the run allowed is not checked again."""
    cfg = compose_cfg("train", ["+callbacks.mine._target_=mypkg.MyCallback", "allowed_targets=[mypkg.MyCallback]"],
                      tmp_path)
    check_targets(cfg, cfg.allowed_targets)
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": {}, "segkit": {"config": OmegaConf.to_container(cfg, resolve=False)}}, path)
    assert model_config_from_checkpoint(load_checkpoint(path)).callbacks.mine._target_ == "mypkg.MyCallback"


# ---- what is admitted ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [
    "segkit.models.UNet", "segkit.models.layers.ConvTransposeUpsample", "segkit.losses.DiceLoss",
    "segkit.tasks.PolyLR", "segkit.callbacks.EpochSummary", "segkit.data.FolderSource", "torch.optim.SGD",
    "torch.optim.AdamW", "torch.optim.lr_scheduler.OneCycleLR", "torch.optim.lr_scheduler.ReduceLROnPlateau",
    "torch.nn.BatchNorm2d", "torch.nn.ReLU", "albumentations.Compose", "albumentations.RandomCrop",
    "albumentations.augmentations.geometric.flip.HorizontalFlip", "lightning.Trainer", "lightning.pytorch.Trainer",
    "lightning.pytorch.callbacks.ModelCheckpoint", "lightning.pytorch.callbacks.WeightAveraging",
    "lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.loggers.MLFlowLogger",
    "lightning.pytorch.loggers.WandbLogger", "lightning.pytorch.strategies.DDPStrategy",
    "lightning.pytorch.plugins.environments.SLURMEnvironment", "torchmetrics.classification.MulticlassJaccardIndex",
])
def test_classes_segkit_configs_build_are_admitted(target):
    check_targets(OmegaConf.create({"x": {"_target_": target}}))


def test_marked_segkit_factory_is_admitted(monkeypatch):
    def make_loss():
        return segkit.losses.DiceLoss(255)

    monkeypatch.setattr(segkit.losses, "make_loss", make_loss, raising=False)
    _refusal.cache_clear()
    with pytest.raises(UnsafeConfigError, match="not marked @config_target"):
        check_targets({"loss": {"_target_": "segkit.losses.make_loss"}})
    monkeypatch.setattr(segkit.losses, "make_loss", config_target(make_loss))
    _refusal.cache_clear()
    check_targets({"loss": {"_target_": "segkit.losses.make_loss"}})
    _refusal.cache_clear()


def test_user_allowed_targets_exact_names_and_packages():
    cfg = OmegaConf.create({"a": {"_target_": "mypkg.sub.Thing"}, "b": [{"_target_": "mypkg.Other"}]})
    with pytest.raises(UnsafeConfigError, match=r"a\._target_='mypkg.sub.Thing'.*allowed_targets=\[mypkg.sub.Thing\]"):
        check_targets(cfg)
    with pytest.raises(UnsafeConfigError, match=r"b\[0\]\._target_"):
        check_targets(cfg, allowed=["mypkg.sub.Thing"])
    for allowed in (["mypkg.sub.Thing", "mypkg.Other"], ["mypkg.*"], ["mypkg"]):
        check_targets(cfg, allowed=allowed)
    with pytest.raises(UnsafeConfigError):
        check_targets(cfg, allowed=["mypkg.sub.Thin", "mypk.*", "mypkg.Other.*"])


def test_check_never_imports_an_untrusted_module(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil_segkit_plugin.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Thing: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnsafeConfigError, match="outside the trusted packages"):
        check_targets({"x": {"_target_": "evil_segkit_plugin.Thing"}})
    assert not marker.exists() and "evil_segkit_plugin" not in sys.modules


# ---- every shipped config ------------------------------------------------------------------------------------
def _group_options():
    """(group, option) for every yaml below configs/, walked so that options added later are covered too."""
    root = Path(CONFIG_DIR)
    return sorted(("/".join(p.relative_to(root).parts[:-1]), p.stem) for p in root.rglob("*.yaml")
                  if len(p.relative_to(root).parts) > 1)


def _compose(config_name, overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name, overrides=overrides)


@pytest.mark.parametrize("group,option", _group_options(), ids=lambda v: str(v))
def test_every_shipped_option_composes_and_passes(group, option):
    try:
        cfg = _compose("train", [f"{group}={option}"])
    except ConfigCompositionException:  # a group train.yaml does not list by default
        cfg = _compose("train", [f"+{group}={option}"])
    assert cfg.allowed_targets == []
    check_targets(cfg)


@pytest.mark.parametrize("config_name", sorted(p.stem for p in Path(CONFIG_DIR).glob("*.yaml")))
def test_every_primary_config_passes(config_name):
    check_targets(_compose(config_name, []))


def test_the_walk_sees_the_groups():
    groups = {g for g, _ in _group_options()}
    assert {"data", "data/augment", "model", "model/upsampler", "task/loss", "task/optimizer", "logger",
            "callbacks", "trainer", "experiment"} <= groups


# ---- targets hidden behind interpolations --------------------------------------------------------------------
@pytest.mark.parametrize("value", ["${oc.create:{_target_: builtins.print, _args_: [pwned]}}",
                                   "${oc.decode:'{_target_: builtins.print, _args_: [pwned]}'}",
                                   "${callbacks.evil}", "${oc.select:callbacks.evil}"])
def test_targets_made_by_interpolations_are_checked(value, capsys):
    from hydra.utils import instantiate

    cfg = OmegaConf.create({"model": {"_target_": "torch.nn.Identity", "x": value},
                            "callbacks": {"evil": {"_target_": "builtins.print", "_args_": ["pwned"]}}})
    with pytest.raises(UnsafeConfigError, match=r"model\.x\._target_='builtins.print'"):
        check_targets(cfg)
    with pytest.raises(UnsafeConfigError, match=r"model\.x\._target_='builtins.print'"):  # checkpoint: model only
        model_config_from_checkpoint({"segkit": {"config": OmegaConf.to_container(cfg, resolve=False)}})
    if "decode" not in value:  # what the check prevents: instantiate follows the resolved node
        instantiate(cfg.model)
        assert "pwned" in capsys.readouterr().out


def test_interpolated_target_is_refused_not_followed():
    cfg = OmegaConf.create({"name": "torch.optim.SGD", "opt": {"_target_": "${name}"}})
    with pytest.raises(UnsafeConfigError, match=r"opt\._target_='\$\{name\}'.*not a plain dotted name"):
        check_targets(cfg)


def test_default_validation_cadence_always_validates_the_last_epoch(tmp_path):
    """trainer.check_val_every_n_epoch defaults to a divisor of max_epochs (the last epoch is validated, so the best
    checkpoint can be the final weights) giving at least 10 validations, or every epoch for short runs."""
    from conftest import compose_cfg
    from segkit.resolvers import val_every

    for n in (7, 25, 30):
        assert compose_cfg("train", [f"trainer.max_epochs={n}"], tmp_path).trainer.check_val_every_n_epoch == val_every(n)
    for n in range(1, 301):
        every = val_every(n)
        assert n % every == 0, (n, every)
        assert n // every >= min(n, 10), (n, every)
        if n in (30, 100):
            assert every == n // 10

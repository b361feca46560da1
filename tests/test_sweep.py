"""scripts/sweep.py: an Optuna search over train overrides (config groups included), resumable from its study."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONFIG_DIR, TINY_DATA

optuna = pytest.importorskip("optuna")

from segkit.sweep import check_space, run_sweep, suggest  # noqa: E402

TOY = ["model=unet_small", "++model.encoder_kwargs={base_channels:4,depth:3}", *TINY_DATA, "trainer.max_epochs=2",
       "logger=csv", "~callbacks.progress_bar"]


def _composer(tmp_path):
    def compose_train(overrides):
        paths = [f"paths.root_dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}"]
        if not any(o.startswith("paths.output_dir=") for o in overrides):
            paths.append(f"paths.output_dir={tmp_path / 'probe'}")
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("train", overrides=[*paths, *overrides])
    return compose_train


def _sweep_cfg(n_trials=2, **params):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("sweep", overrides=["paths.root_dir=.", "paths.output_dir=."]).sweep
    cfg.n_trials = n_trials
    if params:
        cfg.params = OmegaConf.create(params)
    return cfg


def test_two_trial_sweep_trains_each_trial_with_its_sampled_overrides(tmp_path):
    params = {"task.optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
              "task/loss": {"type": "categorical", "choices": ["ce", "lovasz"]},
              "model/upsampler": {"type": "categorical", "choices": ["nearest", "resize_conv"]}}
    sweep_dir = tmp_path / "sweep"
    result = run_sweep(_sweep_cfg(2, **params), TOY, sweep_dir, _composer(tmp_path), seed=0)

    study = optuna.load_study(study_name="segkit", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    assert len(study.trials) == 2 and result["trials"] == {"complete": 2}
    for trial in study.trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert trial.value == metrics["mIoU"]
        ran = OmegaConf.load(run_dir / "config.yaml")  # what the trial really trained with
        assert ran.task.optimizer.lr == pytest.approx(trial.params["task.optimizer.lr"])
        assert ran.task.loss._target_ == {"ce": "segkit.losses.CrossEntropyLoss",
                                          "lovasz": "segkit.losses.LovaszSoftmaxLoss"}[trial.params["task/loss"]]
        up = ran.model.upsampler._target_.rsplit(".", 1)[-1]
        assert up == {"nearest": "InterpolateUpsample", "resize_conv": "ResizeConvUpsample"}[trial.params["model/upsampler"]]
        assert trial.intermediate_values  # val mIoU reported per validation, for the pruner
    best = json.loads((sweep_dir / "best.json").read_text())
    assert best["value"] == max(t.value for t in study.trials)

    # the same sweep directory again: the study continues (resume / extend) with new draws, not a replay of the
    # first trials under the same seed; a trial left running by an interrupted sweep is marked failed
    study.ask()  # an interrupted trial: RUNNING forever in the stored study
    run_sweep(_sweep_cfg(1, **params), TOY, sweep_dir, _composer(tmp_path), seed=0)
    trials = optuna.load_study(study_name="segkit", storage=f"sqlite:///{sweep_dir / 'optuna.db'}").trials
    states = [t.state.name for t in trials]
    assert len(trials) == 4 and states == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"], states
    assert trials[3].params["task.optimizer.lr"] not in [t.params["task.optimizer.lr"] for t in trials[:2]]


def test_final_validation_of_a_trial_is_never_pruned(tmp_path):
    """train() validates the best checkpoint after fit: that is the trial's value, not a step for the pruner (a
    finished trial below the median would otherwise be thrown away)."""
    from segkit.pipeline import train
    from segkit.sweep import OptunaReport

    class Trial:  # prunes any report at or after the last epoch: only a post-fit report could reach it
        steps = []

        def report(self, value, step):
            self.steps.append(step)

        def should_prune(self):
            return self.steps[-1] >= 2

    trial = Trial()
    metrics = train(_composer(tmp_path)([*TOY, f"paths.output_dir={tmp_path / 'run'}"]),
                    extra_callbacks=[OptunaReport(trial)])
    assert trial.steps == [0, 1]
    assert metrics["mIoU"] == json.loads((tmp_path / "run" / "metrics.json").read_text())["mIoU"]


def test_sweep_refuses_several_devices():
    from segkit.sweep import check_single_process

    for trainer in [{"devices": 2}, {"devices": "0,1"}, {"devices": -1}, {"devices": [0, 1]},
                    {"devices": 1, "strategy": "ddp"}, {"devices": 1, "num_nodes": 2}]:
        with pytest.raises(ValueError, match="set trainer.devices=1"):
            check_single_process(OmegaConf.create({"trainer": trainer}))
    for trainer in [{"devices": 1}, {"devices": "1"}, {"devices": [0]}, {"devices": "auto", "accelerator": "cpu"}]:
        check_single_process(OmegaConf.create({"trainer": trainer}))


def test_sweep_refuses_bad_spaces_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"sweep.params.task.optimizer.lr: a float parameter needs low < high"):
        check_space({"task.optimizer.lr": {"type": "float", "low": 1e-2, "high": 1e-3}})
    with pytest.raises(ValueError, match=r"sweep.params.x: needs type: float, int or categorical"):
        check_space({"x": {"type": "uniform", "low": 0, "high": 1}})
    with pytest.raises(ValueError, match="log: true needs low > 0"):
        check_space({"x": {"type": "float", "low": 0, "high": 1, "log": True}})
    # a misspelt choice fails when composed, before any trial runs
    cfg = _sweep_cfg(2, **{"task/loss": {"type": "categorical", "choices": ["ce", "lovaz"]}})
    with pytest.raises(Exception, match="lovaz"):
        run_sweep(cfg, TOY, tmp_path / "s", _composer(tmp_path), seed=0)
    assert not (tmp_path / "s").exists()
    cfg = _sweep_cfg(2, **{"task.optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-2}})
    with pytest.raises(ValueError, match="task.optimizer.lr: set on the command line and swept"):
        run_sweep(cfg, [*TOY, "task.optimizer.lr=0.1"], tmp_path / "s", _composer(tmp_path), seed=0)


def test_command_line_params_replace_the_default_space():
    from segkit.sweep import search_space

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        default = compose("sweep", overrides=["paths.root_dir=.", "paths.output_dir=."]).sweep
        mine = compose("sweep", overrides=["paths.root_dir=.", "paths.output_dir=.",
                                           "sweep.params={task.optimizer.lr:{type:float,low:1e-4,high:1e-2}}"]).sweep
    assert set(search_space(default)) == {"task.optimizer.lr", "task.optimizer.weight_decay", "task/loss",
                                          "model/upsampler", "data.crop_size"}
    assert search_space(mine) == {"task.optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}


def test_suggest_builds_overrides_for_every_type():
    trial = optuna.trial.FixedTrial({"a": 0.5, "b": 3, "c": None, "d": True})
    params = {"a": {"type": "float", "low": 0.1, "high": 1.0}, "b": {"type": "int", "low": 1, "high": 4},
              "c": {"type": "categorical", "choices": [None, 1]}, "d": {"type": "categorical", "choices": [True, False]}}
    assert suggest(trial, params) == ["a=0.5", "b=3", "c=null", "d=true"]


@pytest.mark.slow
def test_sweep_script_from_the_command_line(tmp_path):
    """The README's worked example at toy size: scripts/sweep.py with the default search space."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, "scripts/sweep.py", *TOY, "data/augment=scale_crop", "sweep.n_trials=2",
           f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=Path(CONFIG_DIR).parent, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = json.loads((out / "best.json").read_text())
    assert set(best["params"]) == {"task.optimizer.lr", "task.optimizer.weight_decay", "task/loss", "model/upsampler",
                                   "data.crop_size"}
    assert "python scripts/train.py" in proc.stdout + proc.stderr


def test_a_failing_trial_does_not_stop_the_sweep(tmp_path, monkeypatch):
    """A trial that raises (out of memory at a large swept crop, say) is recorded as failed; the next ones run."""
    import segkit.pipeline

    calls = []

    def fake_train(cfg, extra_callbacks=()):
        calls.append(cfg.paths.output_dir)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return {"mIoU": 0.5 + 0.1 * len(calls)}

    monkeypatch.setattr(segkit.pipeline, "train", fake_train)
    params = {"task.optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}
    result = run_sweep(_sweep_cfg(3, **params), TOY, tmp_path / "s", _composer(tmp_path), seed=0)
    assert len(calls) == 3 and result["trials"] == {"complete": 2, "fail": 1}
    assert result["value"] == pytest.approx(0.8) and result["trial"] == 2


def test_a_diverging_trial_is_failed_with_its_reason_and_the_sweep_goes_on(tmp_path, caplog):
    """lr=1e6 makes the loss NaN in the second epoch: task.nan_policy=raise stops that trial with a
    FloatingPointError, which must fail the trial (reason logged and stored), not the sweep. On resume the failed
    trial stays failed, new trials run, and it never becomes best."""
    import logging

    params = {"task.optimizer.lr": {"type": "categorical", "choices": [0.001, 1000000.0]}}
    cfg = _sweep_cfg(2, **params)
    cfg.sampler, cfg.pruner = "random", "none"  # seed 0 draws lr 1e6, then 0.001
    sweep_dir = tmp_path / "sweep"
    with caplog.at_level(logging.WARNING, logger="segkit.sweep"):
        result = run_sweep(cfg, TOY, sweep_dir, _composer(tmp_path), seed=0)
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    trials = optuna.load_study(study_name="segkit", storage=storage).trials
    assert [(t.params["task.optimizer.lr"], t.state.name) for t in trials] == [(1e6, "FAIL"), (0.001, "COMPLETE")]
    assert "FloatingPointError" in trials[0].user_attrs["fail_reason"]
    assert "non-finite training loss" in trials[0].user_attrs["fail_reason"]
    assert any("trial 0 failed" in r.getMessage() and "non-finite" in r.getMessage() for r in caplog.records)
    assert result["trial"] == 1 and result["trials"] == {"complete": 1, "fail": 1}
    assert json.loads((sweep_dir / "best.json").read_text())["trial"] == 1

    # resume (the same command with hydra.run.dir=<sweep dir>): the failed trial is kept as it is, one new trial runs
    cfg = _sweep_cfg(1, **params)
    cfg.sampler, cfg.pruner = "random", "none"
    result = run_sweep(cfg, TOY, sweep_dir, _composer(tmp_path), seed=0)
    trials = optuna.load_study(study_name="segkit", storage=storage).trials
    assert len(trials) == 3 and trials[0].state.name == "FAIL" and trials[2].state.name in ("COMPLETE", "FAIL")
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert result["trial"] in [t.number for t in complete] and result["trial"] != 0
    assert result["value"] == max(t.value for t in complete)

"""Hyperparameter search with Optuna: python scripts/sweep.py [train overrides] [sweep.n_trials=N ...]."""
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from segkit.sweep import run_sweep


@hydra.main(version_base="1.3", config_path="../configs", config_name="sweep")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    base = [o for o in hc.overrides.task if not o.lstrip("+~").startswith("sweep.")]
    result = run_sweep(cfg.sweep, base, Path(hc.runtime.output_dir),
                       lambda overrides: hydra.compose("train", overrides=overrides), seed=cfg.seed)
    return result["value"]


if __name__ == "__main__":
    main()

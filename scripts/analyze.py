"""Explain a model: python scripts/analyze.py model=deeplabv3plus model.encoder=resnet18 [input_size=257]."""
import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from segkit.analysis.report import analyze_model, format_report
from segkit.config import check_targets


@hydra.main(version_base="1.3", config_path="../configs", config_name="analyze")
def main(cfg: DictConfig) -> None:
    check_targets(cfg, cfg.get("allowed_targets") or ())
    print(format_report(analyze_model(instantiate(cfg.model), int(cfg.input_size))))


if __name__ == "__main__":
    main()

"""Convert annotations to segkit's folder layout and check it:
python scripts/convert.py format=coco|labelme|cvat_mask input=PATH output=FOLDER [class_names=FILE] [split=NAME].
Exits 1 when the converted dataset has problems."""
import sys

import hydra
from omegaconf import DictConfig

from segkit.check_data import format_report
from segkit.data.convert import convert
from segkit.data.io import DataError


@hydra.main(version_base="1.3", config_path="../configs", config_name="convert")
def main(cfg: DictConfig) -> None:
    try:
        report = convert(cfg.format, cfg.input, cfg.output, cfg.images, cfg.class_names, cfg.ignore_index,
                         cfg.split)
    except DataError as exc:  # bad annotations: the message names the file and the fix
        sys.exit(f"error: {exc}")
    info = report["converted"]
    print(f"wrote {info['images']} images and masks to {info['output']} ({len(info['class_names'])} classes: "
          f"{', '.join(info['class_names'])})")
    print(format_report(report))
    if report["problems"]:
        sys.exit(1)


if __name__ == "__main__":
    main()

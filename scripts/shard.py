"""Write a dataset as streamed shards: python scripts/shard.py data=LAYOUT data.source.root=DIR out=FOLDER_OR_URL.
Train on them with data=streaming data.source.root=OUT (a folder or an s3:// URL)."""
import sys
import time

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segkit.data.io import DataError
from segkit.data.streaming import write_shards


@hydra.main(version_base="1.3", config_path="../configs", config_name="shard")
def main(cfg: DictConfig) -> None:
    start = time.perf_counter()
    try:
        source = instantiate(cfg.data.source)
        if hasattr(source, "stats"):
            raise DataError(f"data.source.root={cfg.data.source.root} is already streamed shards; pick the layout "
                            "the data is in (data=folder, voc, cityscapes)")
        splits = list(cfg.splits) if cfg.splits else None
        storage = OmegaConf.to_container(cfg.storage_options) or None
        names = cfg.data.get("class_names")  # a list the data config gives (an experiment's) is stored too
        names = list(names) if names is not None and not isinstance(names, str) else None
        palette = cfg.data.get("palette")
        palette = [list(c) for c in palette] if names is not None and palette is not None else None
        meta = write_shards(source, cfg.out, splits, str(cfg.chunk_bytes), cfg.num_workers, cfg.data.ignore_index,
                            bool(cfg.overwrite), storage, cfg.max_images, class_names=names, palette=palette)
    except DataError as exc:  # bad data or output: the message names it and the fix
        sys.exit(f"error: {exc}")
    except RuntimeError as exc:  # litdata re-raises a conversion worker's error as a RuntimeError holding its text
        sys.exit(f"error: the conversion failed ({str(exc).strip().splitlines()[-1]}); nothing was written as a "
                 f"finished dataset (no segkit.json in {cfg.out})")
    total = sum(meta["splits"].values())
    took = time.perf_counter() - start
    print(f"wrote {total} samples ({', '.join(f'{k} {v}' for k, v in meta['splits'].items())}) to {cfg.out} in "
          f"{took:.1f} s ({total / took:.0f} images/s); train on them with: "
          f"python scripts/train.py data=streaming data.source.root={cfg.out}")


if __name__ == "__main__":
    main()

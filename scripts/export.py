"""Export a checkpoint: python scripts/export.py ckpt_path=PATH format=onnx|torchscript|safetensors|pretrained.

``ckpt_path`` may also name several checkpoints (a list, a run or cross-validation directory): they are exported
as one ensemble (one graph, one pretrained folder) averaging their softmax outputs."""
from pathlib import Path

import hydra
from omegaconf import DictConfig

from segkit.export import export_onnx, export_torchscript, input_contract, save_safetensors, write_sidecar
from segkit.ensemble import load_task, resolve_checkpoints

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}


def default_output(ckpt_path) -> Path:
    """Beside the checkpoint and named after it; ``<cv dir>/ensemble`` for a cross-validation's folds; beside the
    first checkpoint, ``ensemble<N>``, for a list."""
    paths, cv_dir = resolve_checkpoints(ckpt_path)
    if cv_dir is not None:
        return cv_dir / "ensemble"
    if len(paths) > 1:
        return paths[0].with_name(f"ensemble{len(paths)}")
    return paths[0]


@hydra.main(version_base="1.3", config_path="../configs", config_name="export")
def main(cfg: DictConfig) -> None:
    if cfg.format == "pretrained":  # a folder: model.safetensors + config.json + README.md (segkit.from_pretrained)
        from segkit.hub import save_pretrained

        base = default_output(cfg.ckpt_path)
        folder = Path(cfg.output) if cfg.output else base.with_name(base.stem + "-pretrained")
        save_pretrained(cfg.ckpt_path, folder, cfg.get("allowed_targets") or (), cfg.get("postprocessing"))
        print(f"wrote {folder}/ (model.safetensors, config.json, README.md); load it with "
              f"segkit.from_pretrained({str(folder)!r})")
        if cfg.get("push_to_hub"):
            from segkit.hub import push_to_hub

            print(f"pushed to {push_to_hub(folder, cfg.push_to_hub, private=bool(cfg.get('private', False)))}")
        return
    if cfg.format not in SUFFIX:
        raise SystemExit(f"format={cfg.format!r}: choose one of {sorted(SUFFIX) + ['pretrained']}")
    task, _, _ = load_task(cfg.ckpt_path, cfg.get("allowed_targets") or (), cfg.get("postprocessing"))
    out = Path(cfg.output) if cfg.output else default_output(cfg.ckpt_path).with_suffix(SUFFIX[cfg.format])
    input_dtype = str(cfg.get("input_dtype") or "auto")
    if input_dtype == "auto":  # what the training images were read as: uint8 for 8-bit, float32 0-1 otherwise
        input_dtype = task.spec.image_dtype
    if cfg.format == "onnx":
        export_onnx(task, out, cfg.example_size, input_dtype=input_dtype)
    elif cfg.format == "torchscript":
        export_torchscript(task, out, cfg.example_size, input_dtype=input_dtype)
    else:
        save_safetensors(task.net, out, {"class_names": ",".join(task.class_names)})
    write_sidecar(out.with_suffix(".json"), task.class_names, task.spec.palette,
                  input_contract(task, input_dtype, baked_in=cfg.format != "safetensors"), task.postprocessing)
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()

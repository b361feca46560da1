"""Checkpoints that are never half written, on any file system the run directory is on."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, writing a local checkpoint next to its final name, flushing it to disk and
    renaming it into place (``os.replace``): a run killed while saving leaves the previous file whole.

    Lightning's own save goes through an fsspec transaction whose temporary file lies in the system's temp
    directory; moving it into a run directory on another file system (NFS, a Kubernetes volume, a SLURM scratch
    space) is a copy, which a kill can cut short. URLs (``s3://...``) keep Lightning's path."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        text = str(path)
        if storage_options is not None or ("://" in text and not text.startswith("file://")):
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        target = Path(text[len("file://"):] if text.startswith("file://") else text)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()

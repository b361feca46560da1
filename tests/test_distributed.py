"""DDP on 2 CPU processes (gloo) reports the same validation mIoU as one process, with an uneven validation set."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import compose_cfg
from segkit.pipeline import evaluate

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ddp_validation_matches_single_process(tmp_path, shared_data_dir):
    run = tmp_path / "ddp"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "trainer=ddp", "trainer.accelerator=cpu",
           "trainer.devices=2", "trainer.precision=32-true", "trainer.sync_batchnorm=false", "trainer.max_epochs=1",
           "data.num_workers=0", "data.pin_memory=false", "data.persistent_workers=false",
           "data.source.num_train=16", "data.source.num_val=7", "data.source.num_test=2", "data.source.size=32",
           "data.crop_size=32", "data.batch_size=4", "data.eval_batch_size=2", "logger=csv",
           "++model.encoder_kwargs={base_channels:4,depth:3}", f"hydra.run.dir={run}",
           f"paths.data_dir={shared_data_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((run / "metrics.json").read_text())
    assert ddp["num_images"] == 7  # 4 on rank 0, 3 on rank 1: nothing padded or duplicated
    single = evaluate(compose_cfg("eval", [f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
                                           f"output_dir={tmp_path / 'eval'}"], tmp_path, shared_data_dir))
    assert single["num_images"] == 7
    assert abs(ddp["mIoU"] - single["mIoU"]) <= 1e-6
    assert ddp["per_class_iou"] == pytest.approx(single["per_class_iou"], abs=1e-6)

"""A real 2-process CPU DDP launch with torchrun: every training and validation sample is seen exactly once per
epoch across the ranks, and the distributed validation mIoU equals a single-process evaluation."""
import json
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_VAL, EPOCHS = 16, 7, 2  # 7: an uneven validation set, where padding would duplicate samples


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1",
            "HYDRA_FULL_ERROR": "1"}


def _names(split):
    return [f"{split}_{i:05d}" for i in range({"train": NUM_TRAIN, "val": NUM_VAL}[split])]


@pytest.mark.slow
def test_torchrun_two_process_ddp_sees_each_sample_once(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the Python interpreter"
    run_dir, record_dir = tmp_path / "run", tmp_path / "record"
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", str(ROOT / "scripts" / "train.py"),
         "trainer.accelerator=cpu", "trainer.devices=2", "++trainer.strategy=ddp", f"trainer.max_epochs={EPOCHS}",
         "++trainer.enable_progress_bar=false", "~callbacks.progress_bar", "logger=csv",
         f"data.source.num_train={NUM_TRAIN}", f"data.source.num_val={NUM_VAL}", "data.source.num_test=0",
         "data.source.size=32", "data.crop_size=32", "data.batch_size=4", "data.eval_batch_size=2",
         f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run_dir}",
         "+callbacks.record._target_=ddp_helpers.RecordSamples", f"+callbacks.record.dir={record_dir}",
         "allowed_targets=[ddp_helpers.RecordSamples]"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    records = [json.loads(line) for path in sorted(record_dir.glob("rank*.jsonl")) for line in path.open()]
    assert {r["rank"] for r in records} == {0, 1}
    seen = defaultdict(Counter)  # (stage, epoch) -> name -> times seen, over both ranks
    per_rank = defaultdict(Counter)
    for r in records:
        seen[r["stage"], r["epoch"]].update(r["names"])
        per_rank[r["stage"], r["epoch"]][r["rank"]] += len(r["names"])
    counts = {f"{stage}@{epoch}": (sum(c.values()), len(c), dict(per_rank[stage, epoch]))
              for (stage, epoch), c in sorted(seen.items())}
    report = f"(samples seen, distinct, per rank) by stage@epoch: {counts}"
    for epoch in range(EPOCHS):
        assert seen["train", epoch] == Counter(_names("train")), report
        assert seen["val-fit", epoch] == Counter(_names("val")), report
    validate = [key for key in seen if key[0] == "val-validate"]  # trainer.validate of the best checkpoint
    assert len(validate) == 1 and seen[validate[0]] == Counter(_names("val")), report

    # the distributed validation of the best checkpoint == one process evaluating that checkpoint
    metrics = json.loads((run_dir / "metrics.json").read_text())
    best = Path(metrics["checkpoint"])
    assert best.is_file()
    single = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluate.py"), f"ckpt_path={best}", "device=cpu",
         f"output_dir={tmp_path / 'eval'}", f"paths.data_dir={tmp_path / 'data'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env())
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["num_images"] == NUM_VAL
    assert metrics["mIoU"] == pytest.approx(evaluated["mIoU"], abs=1e-6), (metrics, evaluated)

"""Cross-validation, ensembles, choosing a configuration, postprocessing: scripts/cv.py, scripts/find_best.py and
ensembles in evaluate/predict/export.

The unit tests check the parts against what they must be (folds against the pool, the ensemble against its members'
softmax computed here, postprocessing on constructed cases where it helps and where it hurts). The journey runs what
a user types, in one fresh process: a 3-fold CV, the same command again (nothing retrained), a fold whose results
were lost (resumed from its last.ckpt), the fold ensemble through evaluate, predict and export (ONNX in onnxruntime,
a pretrained folder through segkit.from_pretrained), a second configuration on the same folds, and find_best.
"""
from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from journey_helpers import Process, probe_batch, write_folder
from segkit.data.folds import FoldSource, check_folds_cover, make_folds, stratified_folds
from segkit.data.io import DataError
from segkit.data.sources import FolderSource
from segkit.models.ensemble import Ensemble
from segkit.postprocess import apply_rules, choose_rules


# ---- folds -------------------------------------------------------------------------------------------------------
def _presence(n=43, rare=(3, 11, 19, 27, 35), common_every=3, seed=1):
    """Images x classes: class 0 everywhere, class 1 in the ``rare`` images only, class 2 in every third image."""
    presence = np.zeros((n, 3), dtype=bool)
    presence[:, 0] = True
    presence[list(rare), 1] = True
    presence[::common_every, 2] = True
    return presence


@pytest.mark.parametrize("seed", range(6))
def test_folds_are_disjoint_cover_the_pool_and_keep_a_rare_class_in_every_fold(seed):
    presence = _presence()
    fold_of = stratified_folds(presence, 5, seed)
    assert sorted(np.bincount(fold_of, minlength=5)) == [8, 8, 9, 9, 9]  # sizes differ by one at most
    assert set(fold_of.tolist()) == set(range(5))  # every image in exactly one fold (one fold id each)
    for k in range(5):
        in_fold = presence[fold_of == k]
        assert in_fold[:, 1].sum() == 1  # 5 images of the rare class: one per fold
        assert abs(in_fold[:, 2].sum() - presence[:, 2].sum() / 5) <= 1


def test_an_unstratified_split_of_the_same_pool_loses_the_rare_class_somewhere():
    """The check above can fail: a seeded shuffle split in five (no stratification) leaves some fold without the rare
    class for most seeds."""
    presence = _presence()
    misses = 0
    for seed in range(6):
        order = np.random.default_rng(seed).permutation(len(presence))
        folds = np.array_split(order, 5)
        misses += any(presence[f, 1].sum() == 0 for f in folds)
    assert misses >= 3


def test_folds_json_names_the_pool_and_refuses_other_data(tmp_path):
    ds = write_folder(tmp_path / "data", ["rgb8"], np.random.default_rng(0), "class_names.txt", True, n_train=10)
    source = FolderSource(str(ds.root))
    pool = source.samples("train")
    presence = np.ones((len(pool), 2), dtype=bool)
    data = make_folds(pool, presence, 3, seed=0)
    names = [n for fold in data["assignment"] for n in fold]
    assert sorted(names) == sorted(p.stem for p, _ in pool) and len(names) == len(set(names))
    check_folds_cover(data, pool, "folds.json")
    with pytest.raises(DataError, match="1 training images in no fold"):
        check_folds_cover({"assignment": [data["assignment"][0][1:], *data["assignment"][1:]]}, pool, "folds.json")
    (tmp_path / "folds.json").write_text(json.dumps(data))
    for fold in range(3):
        fs = FoldSource(source, str(tmp_path / "folds.json"), fold)
        train, val = [p.stem for p, _ in fs.samples("train")], [p.stem for p, _ in fs.samples("val")]
        assert sorted(val) == data["assignment"][fold] and not set(train) & set(val)
        assert sorted(train + val) == sorted(p.stem for p, _ in pool)
        assert fs.samples("test") == source.samples("val")  # the layout's held-out split
        assert fs.root == source.root  # class_names.txt and the rest of the layout are found through it


# ---- ensembles ---------------------------------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self, seed: int, classes: int = 4, channels: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.num_classes, self.in_channels = classes, channels
        self.conv = nn.Conv2d(channels, classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x) * 8  # confident logits: probabilities near 0 and 1


def test_ensemble_logits_are_the_log_of_the_members_mean_softmax():
    means, stds = [[0.2, 0.3, 0.4], [0.5, 0.5, 0.5]], [[0.1, 0.2, 0.3], [0.25, 0.25, 0.25]]
    members = [_Net(0), _Net(1)]
    ensemble = Ensemble(members, means, stds).eval()
    x = torch.rand(2, 3, 20, 24)
    with torch.no_grad():
        out = ensemble(x)
        expected = sum(m((x - torch.tensor(mu).view(1, -1, 1, 1)) / torch.tensor(sd).view(1, -1, 1, 1)).softmax(1)
                       for m, mu, sd in zip(members, means, stds)) / 2
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.softmax(1), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2, 20, 24), atol=1e-5, rtol=0)  # log-probabilities


def test_ensemble_members_must_agree():
    with pytest.raises(ValueError, match="num_classes"):
        Ensemble([_Net(0, classes=4), _Net(1, classes=5)], [[0.0] * 3] * 2, [[1.0] * 3] * 2)


# ---- postprocessing ----------------------------------------------------------------------------------------------
def _scores(labels: np.ndarray, classes: int = 3) -> np.ndarray:
    """Scores whose argmax is ``labels`` and whose second choice is class 0 (class 1 where labels are 0)."""
    scores = np.zeros((classes, *labels.shape), dtype=np.float32)
    scores[0] = 0.5
    scores[1][labels == 0] = 0.4
    for c in range(classes):
        scores[c][labels == c] = 1.0
    return scores


def _blob(mask: np.ndarray, y: int, x: int, size: int, value: int) -> None:
    mask[y:y + size, x:x + size] = value


def _case(spurious: bool, n: int = 6):
    """One true object of class 1 per image. ``spurious``: the prediction adds small false class-1 blobs far away
    (removing them helps); else the truth holds several class-1 objects the prediction finds (keeping only the
    largest would delete true ones)."""
    items = []
    for i in range(n):
        truth = np.zeros((40, 40), dtype=np.uint8)
        _blob(truth, 5, 5, 12, 1)
        _blob(truth, 25, 5, 8, 2)
        pred = truth.copy()
        if spurious:
            _blob(pred, 30, 30, 3, 1)
            _blob(pred, 2, 32, 2, 1)
        else:
            _blob(truth, 28, 28, 6, 1)
            _blob(pred, 28, 28, 6, 1)
        truth[0, 0] = 255  # ignored
        items.append((_scores(pred), truth))
    return items


def test_postprocessing_is_kept_where_it_helps():
    items = _case(spurious=True)
    report = choose_rules(lambda: iter(items), 3, 255, ["background", "object", "other"])
    assert report["mIoU_after"] > report["mIoU_before"]
    assert [r["class"] for r in report["rules"]] == [1]
    fixed = apply_rules(items[0][0], report["rules"])
    assert (fixed[30:33, 30:33] == 0).all() and (fixed[5:17, 5:17] == 1).all()  # the blob went to the next class


def test_postprocessing_is_not_kept_where_it_hurts():
    items = _case(spurious=False)
    report = choose_rules(lambda: iter(items), 3, 255, ["background", "object", "other"])
    assert report["rules"] == [] and report["mIoU_after"] == report["mIoU_before"] == 1.0
    largest = [t for t in report["tried"] if t["class"] == 1 and t["keep"] == "largest"]
    assert largest and largest[0]["mIoU"] < 1.0  # it was tried, and it would have cost


def test_a_dropped_pixel_takes_the_next_most_likely_class():
    scores = np.zeros((3, 10, 10), dtype=np.float32)
    scores[1, :4, :4] = 1.0  # the large component of class 1
    scores[1, 8:, 8:] = 1.0  # a small one: its runner-up is class 2, not background
    scores[2, 8:, 8:] = 0.7
    out = apply_rules(scores, [{"class": 1, "keep": "largest"}])
    assert (out[:4, :4] == 1).all() and (out[8:, 8:] == 2).all()


def test_rules_apply_within_each_image_of_a_padded_batch():
    """In a batch padded to its largest image, a component in the padding is not the image's: the rule is applied
    inside each image's own size, and the padding keeps the plain argmax."""
    from segkit.postprocess import apply_to_logits

    logits = torch.zeros(2, 2, 12, 12)
    logits[:, 1, 1:4, 1:4] = 5.0  # a 9-px component of class 1 in each image
    logits[1, 1, 8:12, 8:12] = 5.0  # a 16-px one in image 1's padding (image 1 is 6x6)
    out = apply_to_logits(logits, [{"class": 1, "keep": "largest"}], sizes=[(12, 12), (6, 6)])
    assert (out[1, 1:4, 1:4] == 1).all()  # kept: the largest inside the image, not the padding's
    assert (out[1, 8:, 8:] == 1).all()  # the padding is left as it was
    whole = apply_to_logits(logits, [{"class": 1, "keep": "largest"}])
    assert (whole[1, 1:4, 1:4] == 0).all()  # without sizes, the padding's blob would have won


# ---- the journey -------------------------------------------------------------------------------------------------
TOY_TRAIN = ["model=unet_small", "++model.encoder_kwargs={base_channels:4,depth:2}", "trainer.max_epochs=1",
             "data.batch_size=4", "logger=csv", "~callbacks.progress_bar"]


@pytest.mark.slow
def test_cross_validation_journey(tmp_path):
    ds = write_folder(tmp_path / "data", ["rgb8"], np.random.default_rng(3), "class_names.txt", True, n_train=9,
                      n_val=3)
    cv, cv2 = tmp_path / "cv-a", tmp_path / "cv-b"
    command = ["data=folder", f"data.source.root={ds.root}", *TOY_TRAIN, "cv.folds=3", f"hydra.run.dir={cv}"]
    check = r"""
import json, sys
from pathlib import Path
import numpy as np, torch, onnxruntime as ort
import segkit
from segkit.ensemble import load_task
cv, probe = Path(sys.argv[1]), np.load(sys.argv[2])
task, _, _ = load_task(str(cv))
members = [load_task(str(p))[0] for p in task.members]
x = torch.from_numpy(probe)
with torch.no_grad():
    mine = task(x)
    mean = sum(m(x).softmax(1) for m in members) / len(members)
assert len(members) == 3, task.members
assert torch.allclose(mine.softmax(1), mean, atol=1e-6), (mine.softmax(1) - mean).abs().max()
onnx = ort.InferenceSession(str(cv / "ensemble.onnx")).run(None, {"images": probe})[0]
assert np.abs(onnx - mine.numpy()).max() < 1e-4, np.abs(onnx - mine.numpy()).max()
model = segkit.from_pretrained(str(cv / "ensemble-pretrained"))
with torch.no_grad():
    assert torch.allclose(model(x), mine, atol=1e-5)
    assert model.postprocessing == task.postprocessing == json.loads((cv / "postprocessing.json").read_text())["rules"]
    assert torch.equal(model.predict(x), task.predictions(mine))
print("checked")
"""
    probe = tmp_path / "probe.npy"
    np.save(probe, probe_batch(ds.probe, 3))
    p = Process(tmp_path, "cross-validation")
    p.script("cv", *command)
    p.script("cv", *command)  # again: every fold finished, nothing retrained
    p.run(timeout=900)
    log = (tmp_path / "step-logs").glob("*-cv.log")
    second = sorted(log)[-1].read_text()
    assert second.count("finished earlier") == 3, second[-3000:]

    folds = json.loads((cv / "folds.json").read_text())
    pool = sorted((ds.root / "splits/train.txt").read_text().split())
    assert sorted(n for f in folds["assignment"] for n in f) == pool and [len(f) for f in folds["assignment"]] == [3] * 3
    for k, names in enumerate(folds["assignment"]):
        fold = cv / f"fold_{k}"
        oof = json.loads((fold / "oof" / "metrics.json").read_text())
        assert oof["num_images"] == 3 and sorted(p.stem for p in (fold / "oof" / "probabilities").glob("*.npy")) == names
        assert json.loads((fold / "metrics_test.json").read_text())["num_images"] == 3  # the held-out val split
    result = json.loads((cv / "cv.json").read_text())
    assert result["pooled_oof"]["num_images"] == 9 and np.isfinite(result["oof_mIoU_mean"])
    assert np.isclose(result["oof_mIoU_mean"], np.mean([json.loads((cv / f"fold_{k}/oof/metrics.json").read_text())
                                                        ["mIoU"] for k in range(3)]))
    assert result["ensemble_holdout"]["num_images"] == 3 and (cv / "cv.md").is_file()
    assert (cv / "postprocessing.json").is_file()

    # a fold whose results were lost after training: resumed from its last.ckpt, the others kept
    kept = (cv / "fold_0" / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    for name in ("metrics.json", "metrics_test.json"):
        (cv / "fold_2" / name).unlink()
    shutil.rmtree(cv / "fold_2" / "oof")
    p = Process(tmp_path, "resume, use, a second configuration, find_best")
    p.script("cv", *command)
    p.script("evaluate", f"ckpt_path={cv}", "postprocessing=none", f"output_dir={tmp_path / 'eval'}")
    p.script("predict", f"ckpt_path={cv}", f"input={ds.predict_dir}", f"output={tmp_path / 'pred'}")
    p.script("predict", f"ckpt_path=[{cv / 'fold_0'},{cv / 'fold_1' / 'checkpoints' / 'best.ckpt'}]",
             f"input={ds.predict_dir}", f"output={tmp_path / 'pred2'}")  # a list: a run dir and a checkpoint
    p.script("export", f"ckpt_path={cv}", "format=onnx")
    p.script("export", f"ckpt_path={cv}", "format=pretrained")
    p.python(check, str(cv), str(probe), label="ensemble == mean softmax; onnx, from_pretrained")
    p.script("cv", "data=folder", f"data.source.root={ds.root}", *TOY_TRAIN, "task.optimizer.lr=0.01", "cv.folds=3",
             f"cv.folds_file={cv / 'folds.json'}", f"hydra.run.dir={cv2}")
    p.script("find_best", f"cv_dirs=[{cv},{cv2}]", f"output_dir={tmp_path / 'best'}")
    p.run(timeout=900)
    assert (cv / "fold_0" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == kept
    assert (cv / "fold_2" / "oof" / "metrics.json").is_file()
    resumed = sorted((tmp_path / "step-logs").glob("*-cv.log"))[2].read_text()
    assert resumed.count("finished earlier") == 2 and "Restoring states from the checkpoint" in resumed, resumed[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["ensemble_of"] and len(evaluated["ensemble_of"]) == 3
    assert np.isclose(evaluated["mIoU"], result["ensemble_holdout"]["mIoU"], atol=1e-9)
    assert len(list((tmp_path / "pred").glob("*.png"))) >= len(list(ds.predict_dir.iterdir()))
    assert json.loads((cv2 / "folds.json").read_text())["assignment"] == folds["assignment"]
    assert len(list((tmp_path / "pred2").glob("*.png"))) == len(list((tmp_path / "pred").glob("*.png")))
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert len(best["ranking"]) == 3 and best["command"].startswith("python scripts/predict.py ")
    assert best["ranking"][0]["mIoU"] >= max(r["mIoU"] for r in best["ranking"])
    # the command find_best prints runs as printed (IMAGES and MASKS filled in)
    args = shlex.split(best["command"].replace("IMAGES", str(ds.predict_dir)).replace("MASKS", str(tmp_path / "pb")))
    Process(tmp_path, "find_best's command").script("predict", *args[2:]).run(timeout=300)
    assert len(list((tmp_path / "pb").glob("*.png"))) == len(list((tmp_path / "pred").glob("*.png")))


def test_a_missing_holdout_split_and_a_changed_command_are_refused_before_training(tmp_path):
    from omegaconf import OmegaConf

    from segkit.cv import CV_FILE, check_holdout, check_same_command

    ds = write_folder(tmp_path / "data", ["rgb8"], np.random.default_rng(3), "class_names.txt", True, n_train=4,
                      n_val=2)
    planned = OmegaConf.create({"data": {"source": {"_target_": "segkit.data.sources.FolderSource",
                                                    "root": str(ds.root)}}})
    check_holdout(planned, "val")
    check_holdout(planned, None)
    with pytest.raises(ValueError, match=r"cv.holdout=test: (the layout has no such split|that split of the layout holds no images).*cv.holdout=null"):
        check_holdout(planned, "test")

    cv = tmp_path / "cv"
    check_same_command(cv, ["model=unet"])  # nothing there yet
    cv.mkdir()
    (cv / CV_FILE).write_text(json.dumps({"overrides": ["model=unet", "trainer.max_epochs=2"]}))
    check_same_command(cv, ["model=unet", "trainer.max_epochs=2"])  # the same command: a resume
    with pytest.raises(ValueError, match=r"holds a cross-validation of another command .*cv.folds_file="):
        check_same_command(cv, ["model=deeplabv3plus", "trainer.max_epochs=2"])

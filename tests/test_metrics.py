"""mIoU, per-class IoU and pixel accuracy: hand-computed cases and scikit-learn's confusion matrix."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

from segkit.metrics import segmentation_metrics, summarize

NAMES = ["a", "b", "c", "d"]


def run(preds, targets, num_classes=4, ignore_index=255):
    m = segmentation_metrics(num_classes, ignore_index)
    for p, t in zip(preds, targets):
        m.update(torch.as_tensor(p), torch.as_tensor(t))
    return summarize(m.compute(), NAMES[:num_classes])


def test_hand_computed_with_absent_class_and_ignore():
    pred = [[0, 0, 1, 1, 2, 0]]
    true = [[0, 255, 1, 0, 2, 2]]
    s = run([pred], [true])
    # class 0: tp=1 (pos 0), fp=1 (pos 5), fn=1 (pos 3) -> 1/3 ; ignored pos 1 excluded
    # class 1: tp=1, fp=1 (pos 3) -> 1/2 ; class 2: tp=1, fn=1 -> 1/2 ; class 3 absent -> None
    assert s["per_class_iou"] == pytest.approx({"a": 1 / 3, "b": 1 / 2, "c": 1 / 2, "d": None})
    assert s["mIoU"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert s["pixel_accuracy"] == pytest.approx(3 / 5)


def test_accumulates_over_dataset_not_mean_of_images():
    # image 1: class 0 perfect (IoU 1); image 2: class 0 IoU 1/3 on many more pixels
    s = run([[[0, 0]], [[0, 1, 1, 1, 1, 1]]], [[[0, 0]], [[0, 0, 0, 1, 1, 1]]], num_classes=2)
    # dataset-level: class 0 tp=3, fp=0, fn=2 -> 3/5; class 1 tp=3, fp=2 -> 3/5
    assert s["per_class_iou"]["a"] == pytest.approx(3 / 5)
    assert s["mIoU"] == pytest.approx(3 / 5)


def test_all_ignore_image_changes_nothing():
    base = run([[[0, 1]]], [[[0, 1]]], num_classes=2)
    with_ignored = run([[[0, 1]], [[1, 1]]], [[[0, 1]], [[255, 255]]], num_classes=2)
    assert base == with_ignored


@pytest.mark.parametrize("seed", range(3))
def test_against_sklearn_confusion_matrix(seed):
    rng = np.random.default_rng(seed)
    k = 4
    true = rng.integers(0, k, (3, 17, 23))
    pred = np.where(rng.random(true.shape) < 0.6, true, rng.integers(0, k, true.shape))
    true[rng.random(true.shape) < 0.1] = 255
    pred[0][pred[0] == 3] = 0  # make class 3 rarer
    s = run(list(pred), list(true), num_classes=k)
    valid = true != 255
    cm = confusion_matrix(true[valid], pred[valid], labels=list(range(k)))
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = tp / union
    assert s["mIoU"] == pytest.approx(iou.mean(), abs=1e-6)
    assert list(s["per_class_iou"].values()) == pytest.approx(list(iou), abs=1e-6)
    assert s["pixel_accuracy"] == pytest.approx(tp.sum() / cm.sum(), abs=1e-6)


@pytest.mark.parametrize("dtype, ignore_index", [(torch.uint8, 255), (torch.uint8, None), (torch.int32, 255),
                                                  (torch.int32, -1), (torch.int64, 255), (torch.int64, -1),
                                                  (torch.int64, None)])
def test_update_equals_torchmetrics_and_sklearn(dtype, ignore_index):
    """The faster update gives exactly torchmetrics' own matrix and scikit-learn's, for every label dtype."""
    from torchmetrics.classification import MulticlassConfusionMatrix

    k = 5
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, k, (2, 31, 29), generator=gen)
    logits = torch.randn(2, k, 31, 29, generator=gen)
    if ignore_index is not None:
        target[torch.rand(target.shape, generator=gen) < 0.2] = ignore_index
    ours = segmentation_metrics(k, ignore_index)
    reference = MulticlassConfusionMatrix(k, ignore_index=ignore_index)
    for batch in range(2):  # logits for one batch, labels for the other
        preds = logits if batch == 0 else logits.argmax(1)
        ours.update(preds, target.to(dtype))
        reference.update(preds, target)
    assert torch.equal(ours.compute(), reference.compute())
    t = target.flatten().numpy()
    keep = t != ignore_index if ignore_index is not None else np.ones_like(t, bool)
    expected = confusion_matrix(t[keep], logits.argmax(1).flatten().numpy()[keep], labels=list(range(k)))
    np.testing.assert_array_equal(ours.compute().numpy(), 2 * expected)
    assert target.dtype == torch.int64 and (target.flatten().numpy() == t).all()  # the input is left untouched


def test_update_under_deterministic_algorithms():
    """torchmetrics' deterministic fallback builds a pixels x classes² matrix; ours still uses bincount."""
    m = segmentation_metrics(3, 255)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        m.update(torch.tensor([[0, 1, 2, 2]]), torch.tensor([[0, 1, 255, 1]]))
    finally:
        torch.use_deterministic_algorithms(previous)
    assert m.compute().tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]


@pytest.mark.parametrize("bad", [7, -3, 4])  # 4 == num_classes: the row that holds ignored pixels
@pytest.mark.parametrize("ignore_index", [255, None])
def test_update_rejects_labels_outside_the_classes(bad, ignore_index):
    m = segmentation_metrics(4, ignore_index)
    target = torch.tensor([[0, bad, 255 if ignore_index is not None else 1]])
    with pytest.raises(ValueError, match=rf"target labels \[{bad}\] are neither classes 0..3 nor ignore_index "
                                         rf"{ignore_index}"):
        m.update(torch.tensor([[0, 1, 2]]), target)
    assert m.compute().sum() == 0  # nothing counted from the rejected batch
    with pytest.raises(ValueError, match="must have the same shape"):
        m.update(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))

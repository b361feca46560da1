"""Every loss against an independent computation (numpy loops over pixels, brute-force set functions) on small
cases with ignored pixels, so a change to the torch code cannot agree with itself."""
import numpy as np
import pytest
import torch

from segkit.losses import (CrossEntropyLoss, DiceLoss, FocalLoss, FocalTverskyLoss, LovaszSoftmaxLoss,
                           OhemCrossEntropyLoss, TverskyLoss)

IGNORE = 255


def _case(seed: int = 0, n: int = 2, c: int = 4, h: int = 5, w: int = 6, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * scale
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[torch.rand(n, h, w, generator=g) < 0.2] = IGNORE
    return logits.float(), target


def _np_pixels(logits: torch.Tensor, target: torch.Tensor):
    """(P, C) softmax probabilities and (P,) labels of the non-ignored pixels, by explicit numpy loops."""
    x = logits.double().numpy()
    t = target.numpy()
    probs, labels = [], []
    for i in range(x.shape[0]):
        for r in range(x.shape[2]):
            for s in range(x.shape[3]):
                if t[i, r, s] == IGNORE:
                    continue
                z = x[i, :, r, s]
                e = np.exp(z - z.max())
                probs.append(e / e.sum())
                labels.append(t[i, r, s])
    return np.array(probs), np.array(labels)


def _np_ce(probs, labels):
    return np.array([-np.log(p[y]) for p, y in zip(probs, labels)])


# ---------------------------------------------------------------------------------------------- Lovasz-softmax
def _jaccard_loss(fg: set, mistakes: set) -> float:
    """Berman et al.'s set function: Delta_J(M) = |M| / |fg ∪ M|."""
    union = fg | mistakes
    return len(mistakes) / len(union) if union else 0.0


def _np_lovasz_class(errors: np.ndarray, fg: set) -> float:
    """Lovasz extension of Delta_J at ``errors``, straight from its definition: sum_i e_(i) (D(S_i) - D(S_(i-1)))
    with S_i the i pixels of largest error."""
    order = sorted(range(len(errors)), key=lambda k: -errors[k])
    total, prev, chosen = 0.0, 0.0, set()
    for k in order:
        chosen.add(k)
        cur = _jaccard_loss(fg, chosen)
        total += errors[k] * (cur - prev)
        prev = cur
    return total


def _np_lovasz(probs, labels, num_classes, classes="present"):
    out = []
    for c in range(num_classes):
        fg = {k for k, y in enumerate(labels) if y == c}
        if classes == "present" and not fg:
            continue
        errors = np.array([abs((1.0 if y == c else 0.0) - p[c]) for p, y in zip(probs, labels)])
        out.append(_np_lovasz_class(errors, fg))
    return float(np.mean(out))


@pytest.mark.parametrize("classes", ["present", "all"])
def test_lovasz_matches_brute_force_extension(classes):
    logits, target = _case(c=5)
    target[target == 4] = 3  # class 4 absent: "present" and "all" differ
    probs, labels = _np_pixels(logits, target)
    got = LovaszSoftmaxLoss(IGNORE, classes=classes)(logits, target).item()
    assert got == pytest.approx(_np_lovasz(probs, labels, 5, classes), abs=1e-5)


def test_lovasz_per_image_is_mean_of_images():
    logits, target = _case(seed=1)
    expected = np.mean([_np_lovasz(*_np_pixels(logits[i:i + 1], target[i:i + 1]), 4) for i in range(2)])
    assert LovaszSoftmaxLoss(IGNORE, per_image=True)(logits, target).item() == pytest.approx(expected, abs=1e-5)


def test_lovasz_equals_one_minus_iou_on_hard_predictions():
    """At the vertices of the cube (one-hot predictions) the extension is the set function: 1 - IoU per class."""
    _, target = _case(seed=2)
    pred = torch.randint(0, 4, target.shape, generator=torch.Generator().manual_seed(3))
    logits = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float() * 100.0
    valid = target != IGNORE
    ious = [((pred == c) & (target == c) & valid).sum().item() / (((pred == c) | (target == c)) & valid).sum().item()
            for c in range(4) if ((target == c) & valid).any()]
    assert LovaszSoftmaxLoss(IGNORE)(logits, target).item() == pytest.approx(1 - np.mean(ious), abs=1e-5)


# ------------------------------------------------------------------------------------------------ Dice, Tversky
def _np_tversky(probs, labels, num_classes, alpha, beta, gamma, smooth):
    out = []
    for c in range(num_classes):
        tp = sum(p[c] for p, y in zip(probs, labels) if y == c)
        fp = sum(p[c] for p, y in zip(probs, labels) if y != c)
        fn = sum(1 - p[c] for p, y in zip(probs, labels) if y == c)
        out.append((1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)) ** gamma)
    return float(np.mean(out))


def _np_dice(probs, labels, num_classes, smooth):
    out = []
    for c in range(num_classes):
        inter = sum(p[c] for p, y in zip(probs, labels) if y == c)
        card = sum(p[c] for p in probs) + sum(1 for y in labels if y == c)
        out.append((2 * inter + smooth) / (card + smooth))
    return 1 - float(np.mean(out))


def test_dice_matches_per_pixel_formula():
    logits, target = _case()
    expected = _np_dice(*_np_pixels(logits, target), 4, smooth=1.0)
    assert DiceLoss(IGNORE, smooth=1.0)(logits, target).item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("cls,alpha,beta,gamma", [(TverskyLoss, 0.3, 0.7, 1.0), (FocalTverskyLoss, 0.3, 0.7, 0.75),
                                                  (TverskyLoss, 0.8, 0.2, 2.0)])
def test_tversky_matches_per_pixel_formula(cls, alpha, beta, gamma):
    logits, target = _case(seed=4)
    expected = _np_tversky(*_np_pixels(logits, target), 4, alpha, beta, gamma, smooth=1.0)
    got = cls(IGNORE, alpha=alpha, beta=beta, gamma=gamma, smooth=1.0)(logits, target).item()
    assert got == pytest.approx(expected, abs=1e-5)


def test_tversky_half_half_is_dice():
    """(TP + s/2) / (TP + (FP + FN)/2 + s/2) = (2TP + s) / (|P| + |T| + s): Dice with twice the smoothing."""
    logits, target = _case(seed=5)
    tversky = TverskyLoss(IGNORE, alpha=0.5, beta=0.5, smooth=0.5)(logits, target)
    assert tversky.item() == pytest.approx(DiceLoss(IGNORE, smooth=1.0)(logits, target).item(), abs=1e-6)


# --------------------------------------------------------------------------------------- CE, focal, OHEM
def test_weighted_cross_entropy_matches_per_pixel_formula():
    logits, target = _case(seed=6)
    probs, labels = _np_pixels(logits, target)
    weights = [0.5, 1.0, 2.0, 3.0]
    w = np.array([weights[y] for y in labels])
    expected = (w * _np_ce(probs, labels)).sum() / w.sum()
    assert CrossEntropyLoss(IGNORE, class_weights=weights)(logits, target).item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("weights", [None, [0.5, 1.0, 2.0, 3.0]])
def test_focal_matches_per_pixel_formula(weights):
    logits, target = _case(seed=7)
    probs, labels = _np_pixels(logits, target)
    pt = np.array([p[y] for p, y in zip(probs, labels)])
    per_pixel = -((1 - pt) ** 2) * np.log(pt)
    if weights is not None:
        per_pixel = per_pixel * np.array([weights[y] for y in labels])
    got = FocalLoss(IGNORE, gamma=2.0, class_weights=weights)(logits, target).item()
    assert got == pytest.approx(per_pixel.mean(), abs=1e-5)


@pytest.mark.parametrize("thresh,min_kept,weights", [(0.7, 0, None), (0.7, 40, None), (5.0, 10, None),
                                                     (0.0, 0, None), (0.7, 40, [0.5, 1.0, 2.0, 3.0])])
def test_ohem_matches_numpy_topk(thresh, min_kept, weights):
    logits, target = _case(seed=8)
    probs, labels = _np_pixels(logits, target)
    ce = _np_ce(probs, labels)
    order = np.argsort(-ce, kind="stable")
    k = max(min(min_kept, len(ce)), int((ce > thresh).sum()))
    kept = order[:k]
    w = np.ones(len(ce)) if weights is None else np.array([weights[y] for y in labels])
    expected = (w[kept] * ce[kept]).sum() / w[kept].sum()
    assert 0 < k < len(ce) or (thresh, min_kept) == (0.0, 0)
    got = OhemCrossEntropyLoss(IGNORE, thresh=thresh, min_kept=min_kept, class_weights=weights)(logits, target)
    assert got.item() == pytest.approx(expected, abs=1e-5)


def test_ohem_with_large_min_kept_is_cross_entropy():
    logits, target = _case(seed=9)
    ohem = OhemCrossEntropyLoss(IGNORE, thresh=100.0, min_kept=10**6)(logits, target)
    assert ohem.item() == pytest.approx(CrossEntropyLoss(IGNORE)(logits, target).item(), abs=1e-6)


# ------------------------------------------------------------------------------------------------ shared rules
ALL = [CrossEntropyLoss, DiceLoss, FocalLoss, LovaszSoftmaxLoss, TverskyLoss, FocalTverskyLoss, OhemCrossEntropyLoss]


@pytest.mark.parametrize("cls", ALL)
def test_ignored_pixels_change_nothing_and_all_ignored_is_zero(cls):
    logits, target = _case(seed=10)
    loss = cls(ignore_index=IGNORE)
    changed = logits.clone()
    changed[(target == IGNORE).unsqueeze(1).expand_as(logits)] = 50.0  # wild logits where the label is ignored
    assert loss(changed, target).item() == pytest.approx(loss(logits, target).item(), abs=1e-6)
    x = logits.clone().requires_grad_()
    zero = loss(x, torch.full_like(target, IGNORE))
    zero.backward()
    assert zero.item() == 0.0 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("cls", ALL)
def test_gradient_lowers_loss(cls):
    logits, target = _case(seed=11)
    x = logits.clone().requires_grad_()
    loss = cls(ignore_index=IGNORE)
    before = loss(x, target)
    before.backward()
    assert torch.isfinite(x.grad).all()
    assert loss(logits - 0.5 * x.grad / x.grad.norm(), target).item() < before.item()


@pytest.mark.parametrize("name", ["lovasz", "tversky", "focal_tversky", "ohem"])
def test_loss_configs_compose_and_build(name, tmp_path):
    from hydra.utils import instantiate

    from conftest import compose_cfg
    from segkit.config import check_targets

    cfg = compose_cfg("train", [f"task/loss={name}", "data=synthetic"], tmp_path)
    check_targets(cfg.task.loss)
    loss = instantiate(cfg.task.loss)
    assert loss.ignore_index == cfg.data.ignore_index
    logits, target = _case(c=int(cfg.data.num_classes) if "num_classes" in cfg.data else 4)
    assert torch.isfinite(loss(logits, target.clamp_max(logits.shape[1] - 1)))


# ------------------------------------------------------------------------------------- OHEM, by its definition
def _ohem_by_definition(logits, target, thresh, min_kept):
    """F.cross_entropy (mean) over exactly the pixels OHEM keeps: CE > thresh, at least the min_kept hardest; an empty
    selection is 0 by definition (no hard pixel, nothing to learn)."""
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    valid = target != IGNORE
    hard = valid & (ce > thresh)
    if int(hard.sum()) < min(min_kept, int(valid.sum())):
        order = torch.argsort(ce.masked_fill(~valid, -1.0).flatten(), descending=True)
        hard = torch.zeros_like(valid).flatten()
        hard[order[: min(min_kept, int(valid.sum()))]] = True
        hard = hard.view_as(valid)
    if not hard.any():
        return torch.tensor(0.0)
    kept_target = torch.where(hard, target, torch.full_like(target, IGNORE))
    return torch.nn.functional.cross_entropy(logits, kept_target, ignore_index=IGNORE)


@pytest.mark.parametrize("thresh,min_kept", [(0.7, 0), (0.7, 25), (0.0, 0), (100.0, 0), (100.0, 5)])
def test_ohem_is_cross_entropy_over_the_kept_pixels_and_zero_when_none_is_hard(thresh, min_kept):
    """thresh=100, min_kept=0: no pixel is hard. The mean of an empty selection was NaN, which poisons training; the
    loss is 0 then, still attached to the graph (backward works, zero gradients)."""
    logits, target = _case(seed=12)
    expected = _ohem_by_definition(logits, target, thresh, min_kept)
    x = logits.clone().requires_grad_()
    got = OhemCrossEntropyLoss(IGNORE, thresh=thresh, min_kept=min_kept)(x, target)
    assert torch.isfinite(got) and got.item() == pytest.approx(expected.item(), abs=1e-5)
    assert got.requires_grad
    got.backward()
    assert torch.isfinite(x.grad).all()
    if (thresh, min_kept) == (100.0, 0):
        assert got.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x.grad))

"""Connected-component postprocessing, chosen on out-of-fold predictions (nnU-Net's rule, per class).

A rule for class ``c`` is ``{"class": c, "name": ..., "keep": "largest"}`` (keep only the largest 8-connected
component of ``c`` in each image) or ``{"class": c, "name": ..., "keep": "min_size", "min_size": N}`` (drop the
components of ``c`` under ``N`` pixels). A dropped pixel takes its next most likely class (the argmax of the other
classes' scores), not a fixed background that a dataset may not have. :func:`choose_rules` keeps a rule only where
it raises the mIoU of the out-of-fold predictions it is chosen on; the rules travel with the model
(``postprocessing.json`` of a cross-validation, ``config.json`` of a pretrained folder) and ``scripts/predict.py``,
``scripts/evaluate.py`` and :func:`segkit.from_pretrained` apply them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

Rule = Dict[str, Any]
FORMAT = "segkit-postprocessing"


def _kept_components(labels: np.ndarray, cls: int, rule: Rule) -> Optional[np.ndarray]:
    """The pixels of class ``cls`` that ``rule`` removes (a boolean map), or None when it removes none."""
    binary = (labels == cls).astype(np.uint8)
    if not binary.any():
        return None
    count, components, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count <= 2:  # background and at most one component
        if rule["keep"] == "largest" or count < 2 or stats[1, cv2.CC_STAT_AREA] >= rule["min_size"]:
            return None
    areas = stats[1:, cv2.CC_STAT_AREA]
    if rule["keep"] == "largest":
        keep = np.zeros(count, dtype=bool)
        keep[1 + int(areas.argmax())] = True
    else:
        keep = np.concatenate([[True], areas >= int(rule["min_size"])])
    drop = ~keep[components]
    drop &= binary.astype(bool)
    return drop if drop.any() else None


def apply_rules(scores: np.ndarray, rules: Sequence[Rule], labels: Optional[np.ndarray] = None) -> np.ndarray:
    """Class indices ``(H, W)`` from ``scores`` ``(K, H, W)`` (logits or probabilities) with ``rules`` applied in
    class order; ``labels``: the argmax, when already known."""
    labels = scores.argmax(0) if labels is None else labels.copy()
    for rule in sorted(rules, key=lambda r: int(r["class"])):
        cls = int(rule["class"])
        drop = _kept_components(labels, cls, rule)
        if drop is None:
            continue
        others = np.asarray(scores[:, drop], dtype=np.float32)
        others[cls] = -np.inf
        labels[drop] = others.argmax(0)
    return labels


def apply_to_logits(logits: torch.Tensor, rules: Sequence[Rule],
                    sizes: Optional[Sequence[Tuple[int, int]]] = None) -> torch.Tensor:
    """:func:`apply_rules` over a batch of logits ``(N, K, H, W)``: class indices ``(N, H, W)`` on the logits'
    device. ``sizes``: each image's own height and width inside a padded batch (components in the padding are not
    the image's)."""
    preds = logits.argmax(1)
    if not rules:
        return preds
    out = preds.clone()
    scores, labels = logits.detach().float().cpu().numpy(), preds.cpu().numpy()
    for i in range(len(labels)):
        h, w = sizes[i] if sizes is not None else labels.shape[-2:]
        fixed = apply_rules(scores[i, :, :h, :w], rules, labels[i, :h, :w])
        out[i, :h, :w] = torch.from_numpy(fixed).to(out.device, out.dtype)
    return out


def confusion(pred: np.ndarray, truth: np.ndarray, num_classes: int, ignore_index: Optional[int]) -> np.ndarray:
    """``(K, K)`` counts, rows = ground truth, ``ignore_index`` pixels left out."""
    valid = truth != ignore_index if ignore_index is not None else np.ones(truth.shape, dtype=bool)
    index = truth[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def miou(confusion_matrix: np.ndarray) -> float:
    """The mean IoU of the classes present in the prediction or the truth (as :mod:`segkit.metrics`)."""
    from segkit.metrics import iou_per_class

    iou = iou_per_class(torch.from_numpy(confusion_matrix))
    return float(iou[~iou.isnan()].mean())


def _candidates(truth_areas: List[int]) -> List[Rule]:
    """Rules to try for a class: its largest component only, and dropping components smaller than half of small
    true components (the 1st, 5th and 10th percentile of the class's true component areas, at least 2 pixels)."""
    rules: List[Rule] = [{"keep": "largest"}]
    if truth_areas:
        sizes = sorted({max(2, int(np.percentile(truth_areas, q)) // 2) for q in (1, 5, 10)})
        rules += [{"keep": "min_size", "min_size": s} for s in sizes]
    return rules


def choose_rules(items: Callable[[], Iterable[Tuple[np.ndarray, np.ndarray]]], num_classes: int,
                 ignore_index: Optional[int], class_names: Sequence[str]) -> Dict[str, Any]:
    """The rules that raise the mIoU of out-of-fold predictions, chosen greedily class by class (each class's best
    candidate kept when it beats the mIoU so far).

    ``items()`` yields ``(scores (K, H, W), truth (H, W))`` pairs, the same ones each call (out-of-fold probabilities
    read from disk). Returns ``{"rules": [...], "mIoU_before": ..., "mIoU_after": ..., "tried": [...]}``."""
    labels, truths, areas = [], [], [[] for _ in range(num_classes)]
    for scores, truth in items():
        labels.append(scores.argmax(0).astype(np.int16))
        truths.append(truth)
        for cls in np.unique(truth):
            if 0 <= cls < num_classes:
                count, _, stats, _ = cv2.connectedComponentsWithStats((truth == cls).astype(np.uint8), connectivity=8)
                areas[int(cls)] += stats[1:, cv2.CC_STAT_AREA].tolist()

    def score(rules: List[Rule]) -> float:
        total = np.zeros((num_classes, num_classes), dtype=np.int64)
        for i, (scores, truth) in enumerate(items()):
            pred = apply_rules(scores, rules, labels[i]) if rules else labels[i]
            total += confusion(pred, truths[i], num_classes, ignore_index)
        return miou(total)

    before = best = score([])
    chosen: List[Rule] = []
    tried = []
    for cls in range(num_classes):
        if not any((lab == cls).any() for lab in labels):
            continue
        pick = None
        for candidate in _candidates(areas[cls]):
            rule = {"class": cls, "name": class_names[cls] if cls < len(class_names) else str(cls), **candidate}
            value = score(chosen + [rule])
            tried.append({**rule, "mIoU": value})
            if value > best + 1e-9:
                best, pick = value, rule
        if pick is not None:
            chosen.append(pick)
    return {"format": FORMAT, "rules": chosen, "mIoU_before": before, "mIoU_after": best, "tried": tried}


def read_rules(path: str | Path) -> List[Rule]:
    """The rules of a ``postprocessing.json`` (written by scripts/cv.py or scripts/find_best.py)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"postprocessing={path}: no such file; give a postprocessing.json written by "
                                "scripts/cv.py or scripts/find_best.py, or postprocessing=none")
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a segkit postprocessing file (format {data.get('format')!r})")
    return check_rules(data["rules"], where=str(path))


def check_rules(rules: Any, num_classes: Optional[int] = None, where: str = "postprocessing") -> List[Rule]:
    out = []
    for rule in rules or []:
        if not isinstance(rule, dict) or rule.get("keep") not in ("largest", "min_size") or "class" not in rule \
                or (rule["keep"] == "min_size" and int(rule.get("min_size", 0)) < 1):
            raise ValueError(f"{where}: not a postprocessing rule: {rule!r} (keep: largest, or keep: min_size with "
                             "min_size >= 1, and a class)")
        if num_classes is not None and not 0 <= int(rule["class"]) < num_classes:
            raise ValueError(f"{where}: rule for class {rule['class']}, but the model has {num_classes} classes")
        out.append(dict(rule))
    return out


def describe(rules: Sequence[Rule]) -> str:
    if not rules:
        return "none"
    return ", ".join(f"{r.get('name', r['class'])}: " + ("largest component only" if r["keep"] == "largest" else
                                                         f"drop components < {r['min_size']} px") for r in rules)


__all__ = ["apply_rules", "apply_to_logits", "check_rules", "choose_rules", "confusion", "describe", "miou",
           "read_rules"]

"""k-fold cross-validation splits: seeded, stratified by the classes each image holds, written to a file that any
number of configurations can share, and a layout that serves one fold of it.

``folds.json`` names the images of the pool (the layout's training split) and the fold each one is validated in.
:class:`FoldSource` wraps any layout (folder, voc, cityscapes, a converted dataset): its ``train`` split is the pool
without fold ``k``, its ``val`` split is fold ``k``, and its ``test`` split is the layout's own held-out split
(``holdout``, ``val`` by default), on which every fold and the fold ensemble are scored.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from segkit.data.io import DataError
from segkit.data.sources import MissingSplitError, Sample

FORMAT = "segkit-folds"


def sample_name(sample: Sample) -> str:
    """How a fold file names a sample: its image's file stem (unique in every segkit layout)."""
    return Path(sample[0]).stem


def stratified_folds(presence: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """The fold (0 .. ``folds``-1) of every image, from ``presence[i, c]`` (image ``i`` holds class ``c``).

    Folds differ in size by at most one image. Images are placed rarest class first (an image's rarity is that of
    the rarest class it holds; ties in a seeded random order), each into the open fold that holds the fewest images
    of its classes, compared rarest class first, then the fewest images: a class held by at least ``folds`` images
    lands in every fold (iterative stratification, Sechidis et al., ECML 2011, in its greedy form)."""
    presence = np.asarray(presence, dtype=bool)
    n = len(presence)
    if folds < 2:
        raise ValueError(f"cv.folds must be at least 2, got {folds}")
    if n < folds:
        raise ValueError(f"{folds} folds need at least {folds} training images, the pool has {n}; lower cv.folds")
    rng = np.random.default_rng(seed)
    counts = presence.sum(0)
    rarity = np.where(presence, counts[None, :], np.iinfo(np.int64).max).min(1)
    order = rng.permutation(n)
    order = order[np.argsort(rarity[order], kind="stable")]
    capacity = np.full(folds, n // folds) + (np.arange(folds) < n % folds)
    held = np.zeros((folds, presence.shape[1]), dtype=np.int64)
    size = np.zeros(folds, dtype=np.int64)
    fold_of = np.empty(n, dtype=np.int64)
    for i in order:
        classes = np.flatnonzero(presence[i])
        classes = classes[np.argsort(counts[classes], kind="stable")]  # rarest first
        candidates = [f for f in rng.permutation(folds) if size[f] < capacity[f]]
        best = min(candidates, key=lambda f: (*held[f, classes], size[f]))
        fold_of[i] = best
        held[best, classes] += 1
        size[best] += 1
    return fold_of


def make_folds(samples: Sequence[Sample], presence: np.ndarray, folds: int, seed: int = 0) -> Dict[str, Any]:
    """The content of ``folds.json`` for ``samples`` (the pool) and their class ``presence``."""
    names = [sample_name(s) for s in samples]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"cross-validation names images by file stem, and the training split holds several images "
                        f"named {duplicates[:5]}; give them distinct names")
    fold_of = stratified_folds(presence, folds, seed)
    return {"format": FORMAT, "folds": folds, "seed": seed, "num_images": len(names),
            "assignment": [sorted(n for n, f in zip(names, fold_of) if f == k) for k in range(folds)],
            "classes_per_fold": [presence[fold_of == k].sum(0).tolist() for k in range(folds)]}


def read_folds(path: str | Path) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fold file not found: {path}; scripts/cv.py writes <cv dir>/folds.json, and "
                                "cv.folds_file=<that file> reuses it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not a fold file ({exc}); delete it to draw new folds") from None
    if data.get("format") != FORMAT or not isinstance(data.get("assignment"), list):
        raise ValueError(f"{path} is not a segkit fold file (format {data.get('format')!r}); delete it to draw new "
                         "folds or point cv.folds_file at one written by scripts/cv.py")
    return data


def check_folds_cover(data: Dict[str, Any], samples: Sequence[Sample], path: str | Path) -> None:
    """The fold file must split exactly the pool it is used with: the same images, each in one fold."""
    listed = [n for fold in data["assignment"] for n in fold]
    pool = {sample_name(s) for s in samples}
    twice = sorted({n for n in listed if listed.count(n) > 1})
    missing, extra = sorted(pool - set(listed)), sorted(set(listed) - pool)
    if twice or missing or extra:
        parts = ([f"{len(missing)} training images in no fold ({missing[:3]})"] if missing else []) + \
                ([f"{len(extra)} listed images not in the training split ({extra[:3]})"] if extra else []) + \
                ([f"images in two folds ({twice[:3]})"] if twice else [])
        raise DataError(f"{path} does not split this training set: {'; '.join(parts)}. It was drawn for other "
                        "data: delete it (or drop cv.folds_file) to draw new folds")


class FoldSource:
    """One fold of a layout: ``train`` is the pool (``source``'s ``pool`` split) without fold ``fold`` of
    ``folds_file``, ``val`` is that fold, ``test`` is ``source``'s ``holdout`` split (none when ``holdout`` is
    null); any other split is ``source``'s. Class names, palette, label map and root are ``source``'s."""

    def __init__(self, source: Any, folds_file: str, fold: int, pool: str = "train",
                 holdout: Optional[str] = "val") -> None:
        self.source, self.folds_file, self.fold = source, Path(folds_file), int(fold)
        self.pool, self.holdout = pool, holdout
        self._folds: Optional[Dict[str, Any]] = None

    def __getattr__(self, name: str) -> Any:  # root, label_map, class_names, palette ... of the wrapped layout
        if name.startswith("__") or name in ("source", "_folds"):
            raise AttributeError(name)
        return getattr(self.source, name)

    def _validation_names(self) -> set:
        if self._folds is None:
            self._folds = read_folds(self.folds_file)
        assignment = self._folds["assignment"]
        if not 0 <= self.fold < len(assignment):
            raise ValueError(f"fold {self.fold} does not exist: {self.folds_file} has {len(assignment)} folds")
        return set(assignment[self.fold])

    def samples(self, split: str) -> List[Sample]:
        if split in ("train", "val"):
            pool = self.source.samples(self.pool)
            names = self._validation_names()
            check_folds_cover(self._folds, pool, self.folds_file)
            return [s for s in pool if (sample_name(s) in names) == (split == "val")]
        if split == "test":
            if not self.holdout:
                raise MissingSplitError("this cross-validation has no held-out split (cv.holdout=null)")
            return self.source.samples(self.holdout)
        return self.source.samples(split)


__all__ = ["FoldSource", "check_folds_cover", "make_folds", "read_folds", "sample_name", "stratified_folds"]

"""Stratified K-fold assignment for cross-validation over train + validation.

`medical-cnn train --folds K` pools the train and validation splits, gives
every image one fold, trains one model per fold on the other K - 1 folds and
predicts the held-out fold with it. Each image thus gets exactly one
out-of-fold prediction, from a model that never saw it; the threshold, the
calibration and the reported figures come from those predictions, over all
5,232 images instead of the 524 of the validation split alone.
"""

from __future__ import annotations

import numpy as np

from apps.common.errors import DataError
from apps.medical_cnn.data import ImageSplit


def stratified_folds(labels, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of every example: stratified, disjoint, seeded.

    The examples of each class are shuffled with a generator seeded by `seed`
    and dealt round-robin, continuing from where the previous class ended, so
    every fold holds each class's count divided by `folds` (rounded one way or
    the other) and the fold sizes differ by at most one.

    Raises:
        ValueError: `folds` is not an integer >= 2.
        DataError: a class has fewer examples than there are folds.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2. Received: folds={folds!r}")
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), dtype="int64")
    start = 0
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        if len(members) < folds:
            raise DataError(
                f"class {value} has {len(members)} example(s), fewer than the {folds} folds "
                f"asked for; use fewer folds (--folds) or more data."
            )
        members = rng.permutation(members)
        assignment[members] = (start + np.arange(len(members))) % folds
        start = (start + len(members)) % folds
    return assignment


def pool(*splits: ImageSplit) -> ImageSplit:
    """One split holding the images and labels of `splits`, in order."""
    return ImageSplit(
        np.concatenate([s.images for s in splits]), np.concatenate([s.labels for s in splits])
    )


def fold_splits(data: ImageSplit, assignment: np.ndarray, fold: int):
    """`(train, held_out)` of fold `fold`: every other fold, and the fold itself."""
    held = assignment == fold
    return (
        ImageSplit(data.images[~held], data.labels[~held]),
        ImageSplit(data.images[held], data.labels[held]),
    )

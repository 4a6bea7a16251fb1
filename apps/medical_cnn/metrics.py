"""Classification measures used in medical imaging, in NumPy.

ROC curve and AUC (ties handled exactly), the decision threshold that
maximises Youden's J (sensitivity + specificity - 1), and the confusion-matrix
measures: accuracy, sensitivity (recall of the positive class), specificity,
precision and F1. Measures whose denominator is zero are reported as `None`.
"""

from __future__ import annotations

import numpy as np


def _as_binary(y_true, y_score):
    y_true = np.asarray(y_true).reshape(-1)
    y_score = np.asarray(y_score, dtype="float64").reshape(-1)
    if y_true.shape != y_score.shape:
        raise ValueError(
            f"y_true and y_score differ in length: {y_true.shape[0]} vs {y_score.shape[0]}."
        )
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must hold 0/1 labels for a binary measure.")
    return y_true.astype("int64"), y_score


def roc_curve(y_true, y_score):
    """False- and true-positive rates at every distinct score, highest first.

    A sample is called positive when its score is `>= threshold`.

    Returns:
        `(fpr, tpr, thresholds)`; the first point is `(0, 0)` at threshold `+inf`.
    """
    y_true, y_score = _as_binary(y_true, y_score)
    n_pos = int(y_true.sum())
    n_neg = len(y_true) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC needs both classes in y_true; found only one.")
    order = np.argsort(-y_score, kind="mergesort")
    scores, labels = y_score[order], y_true[order]
    # Last index of each run of equal scores: ties move together along the curve.
    distinct = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(labels)[distinct]
    fps = (distinct + 1) - tps
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thresholds = np.r_[np.inf, scores[distinct]]
    return fpr, tpr, thresholds


def roc_auc(y_true, y_score) -> float:
    """Area under the ROC curve (trapezoids; equals the Mann-Whitney U statistic)."""
    fpr, tpr, _ = roc_curve(y_true, y_score)
    return float(np.trapezoid(tpr, fpr))


def youden_threshold(y_true, y_score) -> float:
    """The threshold maximising Youden's J = TPR - FPR on the given scores.

    Among the distinct scores `s_i` (positive when `score >= s_i`), take the one
    with the largest J (the highest such score on ties), and return the midpoint
    between it and the next lower distinct score, so that scores close to the
    cut fall on the side they fell on here. With no lower score, `s_i` itself.
    """
    fpr, tpr, thresholds = roc_curve(y_true, y_score)
    j = tpr - fpr
    best = int(np.argmax(j[1:])) + 1  # skip the (0, 0) point at +inf
    cut = thresholds[best]
    if best + 1 < len(thresholds):
        return float((cut + thresholds[best + 1]) / 2.0)
    return float(cut)


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """`cm[i, j]` = number of samples of true class `i` predicted as class `j`."""
    y_true = np.asarray(y_true).reshape(-1).astype("int64")
    y_pred = np.asarray(y_pred).reshape(-1).astype("int64")
    cm = np.zeros((num_classes, num_classes), dtype="int64")
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _ratio(num, den):
    return None if den == 0 else float(num / den)


def binary_measures(y_true, y_score, threshold: float) -> dict:
    """Accuracy, sensitivity, specificity, precision, F1 and the confusion matrix.

    A sample is predicted positive when `score >= threshold`.
    """
    y_true, y_score = _as_binary(y_true, y_score)
    y_pred = (y_score >= threshold).astype("int64")
    cm = confusion_matrix(y_true, y_pred, 2)
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, len(y_true)),
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "precision": precision,
        "f1": f1,
        "youden_j": None
        if sensitivity is None or _ratio(tn, tn + fp) is None
        else sensitivity + _ratio(tn, tn + fp) - 1.0,
        "confusion_matrix": cm.tolist(),
    }


def multiclass_measures(y_true, probabilities) -> dict:
    """Accuracy, macro one-vs-rest AUC, per-class recall/precision/F1, confusion matrix."""
    y_true = np.asarray(y_true).reshape(-1).astype("int64")
    probabilities = np.asarray(probabilities, dtype="float64")
    k = probabilities.shape[-1]
    y_pred = probabilities.argmax(-1)
    cm = confusion_matrix(y_true, y_pred, k)
    aucs = []
    per_class = []
    for c in range(k):
        positives = (y_true == c).astype("int64")
        if 0 < positives.sum() < len(positives):
            aucs.append(roc_auc(positives, probabilities[:, c]))
        tp = int(cm[c, c])
        per_class.append(
            {
                "class": c,
                "sensitivity": _ratio(tp, int(cm[c].sum())),
                "precision": _ratio(tp, int(cm[:, c].sum())),
                "f1": _ratio(2 * tp, int(cm[c].sum()) + int(cm[:, c].sum())),
            }
        )
    return {
        "auc": float(np.mean(aucs)) if aucs else None,
        "accuracy": _ratio(int(np.trace(cm)), len(y_true)),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def classification_report(y_true, probabilities, threshold: float | None = None) -> dict:
    """All measures for binary (`(N,)`/`(N, 1)` scores) or multi-class probabilities.

    Binary reports AUC and the measures at the stored `threshold` (if given)
    and at 0.5.
    """
    probabilities = np.asarray(probabilities, dtype="float64")
    y_true = np.asarray(y_true).reshape(-1)
    if probabilities.ndim == 1 or probabilities.shape[-1] == 1:
        scores = probabilities.reshape(-1)
        both = len(np.unique(y_true)) == 2
        report = {
            "num_examples": int(len(y_true)),
            "auc": roc_auc(y_true, scores) if both else None,
            "at_0.5": binary_measures(y_true, scores, 0.5),
        }
        if threshold is not None:
            report["at_threshold"] = binary_measures(y_true, scores, threshold)
        return report
    report = multiclass_measures(y_true, probabilities)
    report["num_examples"] = int(len(y_true))
    return report


def sensitivity_threshold(y_true, y_score, target: float) -> float:
    """The highest threshold whose sensitivity on these scores is at least `target`.

    Screening tools fix the share of sick patients they may miss; this picks
    the most specific cut that still finds `target` of the positives
    (midpoint to the next lower distinct score, as `youden_threshold` does).
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1]. Received: {target!r}")
    _, tpr, thresholds = roc_curve(y_true, y_score)
    best = int(np.flatnonzero(tpr >= target - 1e-12)[0])
    cut = thresholds[best]
    if best + 1 < len(thresholds):
        return float((cut + thresholds[best + 1]) / 2.0)
    return float(cut)


def choose_threshold(
    y_true, y_score, method: str = "youden", target_sensitivity: float = 0.95
) -> tuple[float, str]:
    """The decision threshold by `method` (`youden` or `sensitivity`), and its recorded name."""
    if method == "sensitivity":
        return (
            sensitivity_threshold(y_true, y_score, target_sensitivity),
            f"sensitivity>={target_sensitivity:g}",
        )
    if method != "youden":
        raise ValueError(f"method must be 'youden' or 'sensitivity'. Received: {method!r}")
    return youden_threshold(y_true, y_score), "youden_j"


def bootstrap_intervals(
    y_true, y_score, threshold: float, samples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict:
    """Percentile bootstrap intervals of AUC, accuracy, sensitivity and specificity.

    Resamples the examples with replacement, stratified by class (each
    resample keeps the class counts, so every one has both classes and the
    AUC is defined), `samples` times with a seeded generator; the threshold
    is held fixed (it was chosen before). Returns `{name: [low, high]}`.
    """
    y_true, y_score = _as_binary(y_true, y_score)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y_true == 1), np.flatnonzero(y_true == 0)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("bootstrap intervals need both classes in y_true.")
    values = {"auc": [], "accuracy": [], "sensitivity": [], "specificity": []}
    for _ in range(samples):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        t, s = y_true[idx], y_score[idx]
        values["auc"].append(roc_auc(t, s))
        m = binary_measures(t, s, threshold)
        for name in ("accuracy", "sensitivity", "specificity"):
            values[name].append(m[name])
    tail = (1.0 - level) / 2.0 * 100.0
    return {
        name: [float(np.percentile(v, tail)), float(np.percentile(v, 100.0 - tail))]
        for name, v in values.items()
    }

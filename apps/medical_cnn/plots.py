"""PNG plots of a run: training curves, ROC curve, confusion matrix (matplotlib, Agg)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence

import numpy as np

from apps.common.io import atomic_write_bytes


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _figure().close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_training_curves(history_csv: str | os.PathLike, path: str | os.PathLike) -> None:
    """Loss, AUC and accuracy per epoch (train and validation) from `history.csv`."""
    with open(history_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    plt = _figure()
    names = [m for m in ("loss", "auc", "accuracy") if rows and m in rows[0]]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            key = prefix + name
            if key in rows[0]:
                ax.plot(epochs, [float(r[key]) for r in rows], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def plot_roc(fpr, tpr, auc: float, path, threshold_point=None, title: str = "ROC") -> None:
    """ROC curve; `threshold_point` = (fpr, tpr) of the chosen threshold, marked."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot(fpr, tpr, label=f"AUC = {auc:.4f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    if threshold_point is not None:
        ax.plot(*threshold_point, "o", color="crimson", label="chosen threshold")
    ax.set_xlabel("1 - specificity (FPR)")
    ax.set_ylabel("sensitivity (TPR)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_confusion_matrix(cm, class_names: Sequence[str], path, title="Confusion matrix") -> None:
    """Counts per (true, predicted) class, annotated."""
    cm = np.asarray(cm)
    plt = _figure()
    size = 1.2 + 0.7 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            color = "white" if cm[i, j] > cm.max() / 2 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color)
    _save(fig, path)

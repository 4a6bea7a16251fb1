"""Evaluation of a trained model on one split: AUC, accuracy, sensitivity, specificity, ...

Binary models are measured at their stored threshold (Youden's J on the
validation split, from `threshold.json`) and at 0.5. The data file may hold
only the split asked for, e.g. just `test_images` and `test_labels`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from apps.common.errors import DataError, UserError
from apps.common.io import atomic_write_json
from apps.medical_cnn import data as data_lib
from apps.medical_cnn import metrics as metrics_lib
from apps.medical_cnn import plots
from apps.medical_cnn.artifacts import LoadedRun, load_run


def _load_split(run: LoadedRun, data_path, split: str) -> tuple[data_lib.ImageSplit, str]:
    cfg = run.config
    if data_path is not None:
        loaded = data_lib.load_npz(data_path, (split,))
        return loaded[split], str(data_path)
    if cfg is None:
        raise UserError(
            f"no usable config.json beside {run.model_path} to say which data it was trained "
            f"on; pass --data PATH."
        )
    data = data_lib.load_data(cfg.dataset, cfg.data_path, (split,), cfg.tfds_image_size)
    return data[split], data.source


def evaluate(
    model: str | os.PathLike,
    data_path: str | os.PathLike | None = None,
    split: str = "val",
    out: str | os.PathLike | None = None,
    batch_size: int = 256,
) -> dict:
    """Evaluates a run directory or `.keras` file on `split` and writes a JSON report.

    Args:
        model: run directory or `.keras` file.
        data_path: MedMNIST-style `.npz` holding `split`; default: the data
            recorded in the run's `config.json`.
        split: `train`, `val` or `test`.
        out: JSON file to write; default `<model folder>/evaluation_<split>.json`
            (ROC and confusion-matrix PNGs are written beside it).

    Returns:
        The report: AUC, and for binary models `at_threshold` / `at_0.5` with
        accuracy, sensitivity, specificity, precision, F1 and the confusion matrix.

    Raises:
        UserError: a bad `split`; `out` is a folder or lies under a file; no
            `data_path` and no usable `config.json` beside the model.
        DataError: the data is unreadable or does not match the model's input
            or classes.
        RunDirError, ModelLoadError: the model cannot be used (see `load_run`).
    """
    if split not in data_lib.SPLITS:
        raise UserError(f"split must be one of {', '.join(data_lib.SPLITS)}. Received: {split!r}")
    if out is not None:
        out = Path(out)
        if out.is_dir():
            raise UserError(
                f"--out {out} is a folder; pass a file name for the JSON report, e.g. "
                f"{out / f'evaluation_{split}.json'}."
            )
        for parent in out.parents:
            if parent.exists() and not parent.is_dir():
                raise UserError(
                    f"--out {out}: {parent} is a file, not a folder; pass a report path in a "
                    f"new or existing folder."
                )
    run = load_run(model)
    images, source = _load_split(run, data_path, split)
    if tuple(images.images.shape[1:]) != run.input_shape:
        raise DataError(
            f"{source}: '{split}' images have shape {images.images.shape[1:]} but the model "
            f"takes {run.input_shape}."
        )
    if int(images.labels.max()) >= run.num_classes:
        raise DataError(
            f"{source}: '{split}' has label {int(images.labels.max())} but the model knows "
            f"{run.num_classes} classes."
        )
    dataset = data_lib.make_dataset(images, run.num_classes, batch_size)
    probabilities = run.model.predict(dataset, verbose=0)
    binary = run.num_classes == 2
    report = metrics_lib.classification_report(
        images.labels, probabilities, run.threshold if binary else None
    )
    report = {
        "model": str(run.model_path),
        "data": source,
        "split": split,
        "class_names": list(run.class_names),
        **({"threshold_source": run.threshold_source} if binary else {}),
        **report,
    }
    out = Path(out) if out is not None else run.model_path.parent / f"evaluation_{split}.json"
    atomic_write_json(out, report)
    stem = out.with_suffix("")
    if binary and report["auc"] is not None:
        scores = probabilities.reshape(-1)
        fpr, tpr, _ = metrics_lib.roc_curve(images.labels, scores)
        at = report["at_threshold"]
        plots.plot_roc(
            fpr,
            tpr,
            report["auc"],
            f"{stem}_roc.png",
            threshold_point=(1.0 - at["specificity"], at["sensitivity"]),
            title=f"ROC ({split})",
        )
    cm = report["at_threshold"]["confusion_matrix"] if binary else report["confusion_matrix"]
    plots.plot_confusion_matrix(
        np.asarray(cm), run.class_names, f"{stem}_confusion_matrix.png", f"Confusion ({split})"
    )
    report["written_to"] = str(out)
    return report

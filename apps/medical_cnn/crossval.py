"""`medical-cnn train --folds K`: cross-validation, out-of-fold figures, one ensemble model.

The validation split alone (524 images, AUC ~0.998) cannot tell a good recipe
from a great one, and a threshold tuned on it is tuned on few normal images.
Here train and val are pooled (5,232 images), dealt into K stratified folds
(`folds.stratified_folds`, seeded by `config.seed`) and one model is trained
per fold on the other K - 1 folds. Each fold model keeps its last epoch (the
held-out fold only reports; it does not choose the epoch it is then measured
on) and predicts its held-out fold, so every image gets one out-of-fold (OOF)
prediction from a model that never saw it. From those predictions:

1. a temperature is fitted (`calibration.fit_temperature`) when
   `config.calibrate`, and the expected calibration error reported before and
   after;
2. the decision threshold is chosen on the calibrated OOF probabilities
   (Youden's J, or the most specific cut keeping `target_sensitivity`);
3. AUC, accuracy, sensitivity and specificity are reported with 95 %
   stratified bootstrap intervals.

The K fold models then become one model (`ensemble.build_ensemble`: mean
probability, optional test-time shifts, the temperature), saved as the run's
`model.keras` beside `threshold.json`, so `predict`, `evaluate`, Grad-CAM and
`export` use it like any run. The threshold and temperature were measured on
single fold models; an average of K models is a little less spread out, so
they are slightly conservative for the ensemble (it is not re-fitted: no
held-out data is left to fit it on).

```
RUN/
  config.json, model.keras (the ensemble), threshold.json, metrics.json
  oof_predictions.npz     label, fold, probability (raw and calibrated) of every image
  plots/                  roc_oof.png, confusion_matrix_oof.png, reliability_oof.png
  folds/fold_1 .. fold_K  one ordinary run directory per fold model
```

Rerunning the command after a crash skips finished folds and resumes the
unfinished one.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import keras
import numpy as np

from apps.common.config import save_config
from apps.common.errors import RunDirError, UserError
from apps.common.io import atomic_write_bytes, atomic_write_json
from apps.common.machine import machine_info
from apps.common.model_io import load_keras_model, save_model_atomically
from apps.common.rundir import (
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    check_run_app,
    check_run_dir_path,
    check_same_config,
)
from apps.medical_cnn import calibration, plots
from apps.medical_cnn import data as data_lib
from apps.medical_cnn import metrics as metrics_lib
from apps.medical_cnn.artifacts import APP_NAME, THRESHOLD_FILE
from apps.medical_cnn.config import MedicalCNNConfig
from apps.medical_cnn.ensemble import build_ensemble
from apps.medical_cnn.folds import fold_splits, pool, stratified_folds

FOLDS_DIR = "folds"
OOF_FILE = "oof_predictions.npz"
BOOTSTRAP_SAMPLES = 1000


def fold_dir(run_dir: Path, fold: int) -> Path:
    """The run directory of fold `fold` (0-based) of a cross-validated run."""
    return Path(run_dir) / FOLDS_DIR / f"fold_{fold + 1}"


def fold_seed(seed: int, fold: int) -> int:
    """The training seed of fold `fold`: distinct per fold and per run seed."""
    return (seed * 100 + fold) % 2**32


def train_folds(
    config: MedicalCNNConfig,
    run_dir: str | os.PathLike,
    callbacks: list | None = None,
    verbose: int | str = 2,
    tensorboard: bool = True,
    distribute: str = "none",
) -> dict:
    """Cross-validates `config` (`config.folds` >= 2) and writes the ensemble run directory.

    Returns the metrics written to `metrics.json` (out-of-fold figures).

    Raises:
        UserError: `config.folds` < 2.
        RunDirError: the run directory is a file, another app's run, a
            finished run, or one started with another config.
        DataError / TrainingDivergedError: as `train.train`, for any fold.
    """
    from apps.medical_cnn.train import load_training_data, resolve_config, train

    if config.folds < 2:
        raise UserError(f"cross-validation needs folds >= 2. Received: folds={config.folds}")
    run_dir = check_run_dir_path(run_dir)
    check_run_app(run_dir, APP_NAME, option="--run-dir")
    if (run_dir / METRICS_FILE).is_file():
        raise RunDirError(
            f"run directory {run_dir} already holds a finished run (metrics.json); "
            f"choose another --run-dir."
        )
    data = load_training_data(config)
    pooled = pool(data["train"], data["val"])
    assignment = stratified_folds(pooled.labels, config.folds, config.seed)
    pooled_data = data_lib.ImageData(
        {"train": pooled}, data.num_classes, data.class_names, data.source
    )
    resolved = dataclasses.replace(resolve_config(config, pooled_data), distribute=distribute)
    check_same_config(run_dir, resolved, APP_NAME, ignore=("distribute",))
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(resolved, run_dir / CONFIG_FILE, app=APP_NAME)

    fold_reports = []
    for fold in range(config.folds):
        folder = fold_dir(run_dir, fold)
        if (folder / METRICS_FILE).is_file():
            fold_reports.append(_read_json(folder / METRICS_FILE))
            continue
        print(f"fold {fold + 1}/{config.folds}: training in {folder}", flush=True)
        train_part, held_out = fold_splits(pooled, assignment, fold)
        fold_config = dataclasses.replace(
            config, folds=1, tta=False, seed=fold_seed(config.seed, fold)
        )
        fold_data = data_lib.ImageData(
            {"train": train_part, "val": held_out}, data.num_classes, data.class_names, data.source
        )
        fold_reports.append(
            train(
                fold_config,
                folder,
                callbacks=callbacks,
                verbose=verbose,
                tensorboard=tensorboard,
                distribute=distribute,
                data=fold_data,
                select_best=False,
            )
        )
    members = [load_keras_model(fold_dir(run_dir, f) / MODEL_FILE) for f in range(config.folds)]
    oof = _out_of_fold(members, pooled, assignment, resolved)
    report = summarize_out_of_fold(resolved, pooled.labels, oof, assignment, run_dir)
    ensemble = build_ensemble(
        members, tta=config.tta, tta_shift=config.tta_shift, temperature=report["temperature"]
    )
    save_model_atomically(ensemble, run_dir / MODEL_FILE)
    report.update(
        {
            "folds": config.folds,
            "fold_train_seconds": [r.get("train_seconds") for r in fold_reports],
            "train_seconds": round(sum(r.get("train_seconds") or 0.0 for r in fold_reports), 2),
            "num_examples": len(pooled),
            "ensemble": {"members": config.folds, "tta": config.tta, "tta_shift": config.tta_shift},
            "data_source": data.source,
            "backend": keras.backend.backend(),
            "machine": machine_info(),
        }
    )
    atomic_write_json(run_dir / METRICS_FILE, report)
    return report


def _out_of_fold(members, pooled, assignment, config) -> np.ndarray:
    """Each image's probabilities from the fold model that did not train on it."""
    units = 1 if config.num_classes == 2 else config.num_classes
    oof = np.full((len(pooled), units), np.nan, dtype="float64")
    for fold, member in enumerate(members):
        held = assignment == fold
        batches = data_lib.make_batches(
            data_lib.ImageSplit(pooled.images[held], pooled.labels[held]),
            config.num_classes,
            config.batch_size,
        )
        oof[held] = member.predict(batches, verbose=0)
    return oof


def summarize_out_of_fold(
    config: MedicalCNNConfig, labels, oof, assignment, run_dir: Path | None = None
) -> dict:
    """Calibration, threshold and figures (with bootstrap intervals) from OOF predictions.

    Writes `oof_predictions.npz`, `threshold.json` and the plots when `run_dir`
    is given. Returns the report (`metrics.json` without the timings).
    """
    labels = np.asarray(labels).reshape(-1)
    if not np.all(np.isfinite(oof)):
        raise UserError("out-of-fold predictions hold non-finite values (a fold diverged).")
    temperature = calibration.fit_temperature(labels, oof) if config.calibrate else 1.0
    calibrated = calibration.apply_temperature(oof, temperature)
    report = {
        "split": "out_of_fold",
        "temperature": temperature,
        "ece_before_calibration": calibration.expected_calibration_error(labels, oof),
        "ece": calibration.expected_calibration_error(labels, calibrated),
        "nll_before_calibration": calibration.negative_log_likelihood(labels, oof),
        "nll": calibration.negative_log_likelihood(labels, calibrated),
    }
    threshold = None
    if config.num_classes == 2:
        scores = calibrated.reshape(-1)
        threshold, method = metrics_lib.choose_threshold(
            labels, scores, config.threshold_method, config.target_sensitivity
        )
        report.update(metrics_lib.classification_report(labels, scores, threshold))
        report["threshold"] = threshold
        report["threshold_method"] = method
        report["intervals_95"] = metrics_lib.bootstrap_intervals(
            labels, scores, threshold, samples=BOOTSTRAP_SAMPLES, seed=config.seed
        )
        report["fold_auc"] = [
            metrics_lib.roc_auc(labels[assignment == f], scores[assignment == f])
            for f in range(int(assignment.max()) + 1)
        ]
    else:
        report.update(metrics_lib.classification_report(labels, calibrated))
    if run_dir is not None:
        _write_oof(run_dir / OOF_FILE, labels, assignment, oof, calibrated)
        if threshold is not None:
            atomic_write_json(
                run_dir / THRESHOLD_FILE,
                {
                    "threshold": threshold,
                    "method": report["threshold_method"],
                    "split": "out_of_fold",
                },
            )
        _plots(run_dir / "plots", config, labels, calibrated, report)
    return report


def _write_oof(path: Path, labels, assignment, oof, calibrated) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, label=labels, fold=assignment, probability_raw=oof, probability=calibrated)
    atomic_write_bytes(path, buffer.getvalue())


def _plots(folder: Path, config, labels, calibrated, report) -> None:
    if config.num_classes == 2:
        scores = calibrated.reshape(-1)
        fpr, tpr, _ = metrics_lib.roc_curve(labels, scores)
        at = report["at_threshold"]
        plots.plot_roc(
            fpr,
            tpr,
            report["auc"],
            folder / "roc_oof.png",
            threshold_point=(1.0 - at["specificity"], at["sensitivity"]),
            title="ROC (out-of-fold)",
        )
        cm = at["confusion_matrix"]
    else:
        cm = report["confusion_matrix"]
    plots.plot_confusion_matrix(
        cm,
        config.class_names,
        folder / "confusion_matrix_oof.png",
        "Confusion matrix (out-of-fold)",
    )


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())

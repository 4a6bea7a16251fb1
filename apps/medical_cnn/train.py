"""Training: `model.fit` on any Keras backend, writing one resumable run directory.

Training batches come from `data.ArrayBatches`, a NumPy `PyDataset` (so JAX
needs no TensorFlow at all) whose order is a pure function of (seed, epoch),
handed to TensorFlow as a `tf.data.Dataset`; validation batches from
`data.make_batches`. With
`distribute="mirrored"` / `"multiworker"` the model is built, compiled and fitted
inside the strategy of `apps.common.distribute`; the config's `batch_size` stays
the global batch.

A run directory holds:

```
config.json        resolved config (data-derived fields included)
model.keras        best model on validation AUC (written atomically while training)
history.csv        one row per epoch, with its epoch_seconds (continued when a run resumes)
threshold.json     decision threshold on the validation split (maximising Youden's J,
                   or keeping a target sensitivity: `threshold_method`)
metrics.json       validation measures at that threshold and at 0.5, the expected
                   calibration error (ece), timings
                   (train_seconds: the sum of epoch_seconds, every epoch of the run)
plots/             training_curves.png, roc_val.png, confusion_matrix_val.png
logs/              TensorBoard logs (when tensorboard and TensorFlow are installed)
backup/            the state of the last completed epoch, only while a run is unfinished
```

Running the same command (same `--run-dir`) after a crash resumes from the
last completed epoch and ends as an uninterrupted run would have ended (same
history, same weights; an interrupted epoch is redone from its start, see
`apps.common.callbacks`); running it on a finished run is refused.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import keras
import numpy as np

from apps.common.batches import FollowEpochs
from apps.common.callbacks import check_not_diverged, logged_seconds, standard_callbacks
from apps.common.config import save_config
from apps.common.distribute import get_distribution
from apps.common.errors import RunDirError, TrainingDivergedError
from apps.common.io import atomic_write_json
from apps.common.machine import machine_info
from apps.common.model_io import load_keras_model
from apps.common.rundir import (
    CONFIG_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_FILE,
    check_run_app,
    check_run_dir_path,
    check_same_config,
    run_state,
)
from apps.medical_cnn import calibration, plots
from apps.medical_cnn import data as data_lib
from apps.medical_cnn import metrics as metrics_lib
from apps.medical_cnn.artifacts import APP_NAME, THRESHOLD_FILE
from apps.medical_cnn.config import MedicalCNNConfig
from apps.medical_cnn.model import build_model, compile_model

MONITOR = "val_auc"


def resolve_config(config: MedicalCNNConfig, data: data_lib.ImageData) -> MedicalCNNConfig:
    """Fills the data-derived fields: input shape, classes, class weights, pixel statistics."""
    train = data["train"]
    mean, variance = data_lib.pixel_statistics(train.images)
    return dataclasses.replace(
        config,
        input_shape=tuple(int(d) for d in train.images.shape[1:]),
        num_classes=int(data.num_classes),
        class_names=tuple(data.class_names),
        class_weights=data_lib.balanced_class_weights(train.labels, data.num_classes),
        pixel_mean=mean,
        pixel_variance=variance,
    )


def cosine_schedule(config: MedicalCNNConfig):
    """Per-epoch learning rate: cosine decay from `learning_rate` to 5% of it."""
    base, total = config.learning_rate, max(config.epochs - 1, 1)

    def schedule(epoch, lr=None):
        if config.lr_schedule == "constant":
            return base
        progress = min(epoch / total, 1.0)
        return float(base * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))))

    return schedule


def finalize_run(run_dir: Path, config: MedicalCNNConfig, val: data_lib.ImageSplit) -> dict:
    """Picks the threshold on `val`, writes threshold.json, metrics.json and plots."""
    model = load_keras_model(run_dir / MODEL_FILE)
    # Outside any distribution: one device, so no padding is needed.
    batches = data_lib.make_batches(val, config.num_classes, config.batch_size)
    probabilities = model.predict(batches, verbose=0)
    if not np.all(np.isfinite(probabilities)):
        raise TrainingDivergedError(
            f"the model in {run_dir / 'model.keras'} gives non-finite outputs on the validation "
            f"split (training diverged), so the run is left unfinished. Lower the learning "
            f"rate (now {config.learning_rate:g}, e.g. --learning-rate {config.learning_rate / 10:g}) "
            f"and train into a new --run-dir."
        )
    plots_dir = run_dir / "plots"
    threshold = None
    if config.num_classes == 2:
        scores = probabilities.reshape(-1)
        method = "fixed_0.5"  # Without both classes in val there is nothing to choose on.
        if len(np.unique(val.labels)) == 2:
            threshold, method = metrics_lib.choose_threshold(
                val.labels, scores, config.threshold_method, config.target_sensitivity
            )
            fpr, tpr, _ = metrics_lib.roc_curve(val.labels, scores)
            report = metrics_lib.classification_report(val.labels, scores, threshold)
            at = report["at_threshold"]
            plots.plot_roc(
                fpr,
                tpr,
                report["auc"],
                plots_dir / "roc_val.png",
                threshold_point=(1.0 - at["specificity"], at["sensitivity"]),
                title="ROC (validation)",
            )
        else:
            threshold = 0.5
            report = metrics_lib.classification_report(val.labels, scores, threshold)
        atomic_write_json(
            run_dir / THRESHOLD_FILE,
            {"threshold": threshold, "method": method, "split": "val"},
        )
        cm = report["at_threshold"]["confusion_matrix"]
    else:
        report = metrics_lib.classification_report(val.labels, probabilities)
        cm = report["confusion_matrix"]
    plots.plot_confusion_matrix(
        cm, config.class_names, plots_dir / "confusion_matrix_val.png", "Confusion matrix (val)"
    )
    plots.plot_training_curves(run_dir / HISTORY_FILE, plots_dir / "training_curves.png")
    # How far the probabilities are from frequencies (uncalibrated: see crossval.py).
    ece = calibration.expected_calibration_error(val.labels, probabilities)
    return {"split": "val", "threshold": threshold, **report, "ece": ece}


def train(
    config: MedicalCNNConfig,
    run_dir: str | os.PathLike,
    callbacks: list | None = None,
    verbose: int | str = 2,
    tensorboard: bool = True,
    distribute: str = "none",
    data: data_lib.ImageData | None = None,
    select_best: bool = True,
) -> dict:
    """Trains `config` and writes the run directory; returns the metrics written.

    Args:
        config: the config (a preset with overrides).
        run_dir: the run directory; an unfinished run there is resumed.
        callbacks: extra Keras callbacks (appended to the standard ones).
        verbose: `model.fit` verbosity.
        tensorboard: write TensorBoard logs (needs the `tensorboard` and
            `tensorflow` packages; skipped with a warning otherwise).
        distribute: `"none"`, `"mirrored"` or `"multiworker"` (see
            `apps.common.distribute`); `config.batch_size` is the global batch.
            With several workers only the chief writes `run_dir` and
            finalises the run; the other workers return
            `{"worker": "worker:1", ...}` without metrics.
        data: the `train` and `val` splits to use instead of loading
            `config`'s data (cross-validation passes each fold's).
        select_best: keep the epoch with the best validation AUC (and stop
            early); `False` keeps the last epoch, so that `val` only reports.

    Raises:
        RunDirError: the run directory is a file (or under one), another
            app's run, a finished run, or a run started with a different config.
        DataError: the data cannot train this classifier (see
            `data.load_data` and `data.check_training_labels`).
        TrainingDivergedError: the loss became NaN or infinite and training
            stopped (`TerminateOnNaN`); the run is left unfinished, without
            `threshold.json` or `metrics.json`.
        UserError: a bad config value; a strategy the backend cannot run; a
            missing or invalid `TF_CONFIG` for `multiworker`.
    """
    # First: a multi-worker strategy must exist before TensorFlow runs anything.
    dist = get_distribution(distribute)
    dist.check_batch_size(config.batch_size)
    run_dir = check_run_dir_path(run_dir)
    check_run_app(run_dir, APP_NAME, option="--run-dir")
    work_dir = dist.work_dir(run_dir)
    state = run_state(work_dir)
    if state == "done":
        raise RunDirError(
            f"run directory {run_dir} already holds a finished run (metrics.json); "
            f"choose another --run-dir."
        )
    keras.utils.set_random_seed(config.seed)
    if data is None:
        data = load_training_data(config)
    config = dataclasses.replace(resolve_config(config, data), distribute=distribute)
    check_same_config(work_dir, config, APP_NAME, ignore=("distribute",))
    work_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, work_dir / CONFIG_FILE, app=APP_NAME)

    # A rerun of a run that diverged (its history shows it) neither trains nor finishes it.
    _check_diverged(work_dir, config, run_dir)
    epochs_run = 0
    if state != "finalize":
        if state == "resume":
            print(f"resuming the unfinished run in {work_dir}")
        history = _fit(config, data, work_dir, dist, callbacks, verbose, tensorboard, select_best)
        epochs_run = len(history.history.get("loss", []))
        _check_diverged(work_dir, config, run_dir)
        if not (work_dir / MODEL_FILE).is_file():
            raise RuntimeError(
                f"training produced no model in {work_dir} (the loss became NaN, or "
                f"{MONITOR} was never finite); try a lower learning rate."
            )
    if not dist.is_chief:
        dist.release_work_dir(work_dir)
        return {"worker": dist.describe()["task"], "epochs_run_this_call": epochs_run}
    report = finalize_run(run_dir, config, data["val"])
    report.update(
        {
            # Every epoch of the run, also those of the calls before a resume.
            "train_seconds": round(logged_seconds(work_dir / HISTORY_FILE), 2),
            "epochs_run_this_call": epochs_run,
            "num_train_examples": len(data["train"]),
            "data_source": data.source,
            "backend": keras.backend.backend(),
            "machine": machine_info(),
            "distribute": dist.describe(),
        }
    )
    atomic_write_json(run_dir / METRICS_FILE, report)
    return report


def _check_diverged(work_dir: Path, config: MedicalCNNConfig, run_dir: Path) -> None:
    """`check_not_diverged`, with the advice that fits this app's options."""
    check_not_diverged(
        work_dir,
        f"Lower the learning rate (now {config.learning_rate:g}, e.g. --learning-rate "
        f"{config.learning_rate / 10:g}) and train into a new --run-dir.",
        unwritten=(THRESHOLD_FILE, METRICS_FILE),
    )


def load_training_data(config: MedicalCNNConfig) -> data_lib.ImageData:
    """The train and val splits of `config`'s data, checked, train subsampled if asked."""
    data = data_lib.load_data(
        config.dataset, config.data_path, ("train", "val"), config.tfds_image_size
    )
    data_lib.check_training_labels(data)
    data.splits["train"] = data_lib.subsample(data["train"], config.max_train_examples, config.seed)
    return data


def _fit(config, data, work_dir, dist, callbacks, verbose, tensorboard, select_best=True):
    """Builds, compiles and fits the model inside the distribution's scope."""
    # Batches of the global batch size. On JAX every batch is split evenly over the
    # devices: training drops the few examples that do not fit, validation pads.
    multiple = dist.batch_multiple
    train_batches = data_lib.ArrayBatches(
        data["train"],
        config.num_classes,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        multiple_of=multiple,
        remainder="trim",
    )
    # Each epoch's order depends on (seed, epoch) only, also on resume.
    follow_epochs = FollowEpochs(train_batches)
    val_batches = data_lib.make_batches(
        data["val"], config.num_classes, config.batch_size, multiple_of=multiple, remainder="pad"
    )
    if keras.backend.backend() == "tensorflow":
        train_batches = dist.prepare_tf_dataset(train_batches.as_tf_dataset())
        val_batches = dist.prepare_tf_dataset(val_batches)
    class_weight = (
        dict(enumerate(config.class_weights)) if config.imbalance == "class_weight" else None
    )
    with dist.scope():
        model = compile_model(build_model(config, sync_batch_norm=dist.sync_batch_norm), config)
        dist.prepare_model(model)
        return model.fit(
            train_batches,
            validation_data=val_batches,
            epochs=config.epochs,
            class_weight=class_weight,
            shuffle=False,  # the batches are shuffled by the pipeline
            callbacks=standard_callbacks(
                work_dir,
                MONITOR,
                "max",
                config.patience,
                lr_schedule=cosine_schedule(config),
                tensorboard=tensorboard,
                select_best=select_best,
            )
            + [follow_epochs, *(callbacks or [])],
            verbose=verbose,
        )

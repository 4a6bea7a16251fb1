"""The callbacks every training run in this project uses.

`standard_callbacks` returns the list `model.fit` needs for a run directory that
can be inspected while training and resumed after a crash:

- `model.keras`: the best model so far on the monitored metric, written
  atomically (a crash while saving never leaves a broken `model.keras`);
- `history.csv`: one row per finished epoch, appended to when a run resumes;
- `logs/`: TensorBoard logs (optional; needs `tensorboard` and TensorFlow);
- `backup/`: `BackupAndRestore` state, saved every `backup_freq` batches, so the
  same command run again after a crash continues from the last backup instead
  of epoch 0 (the folder is removed when training ends normally);
- early stopping (restoring the best weights), `TerminateOnNaN`, and an
  optional learning-rate schedule.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import keras


def _check_mode(mode: str) -> None:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max'. Received: mode={mode!r}")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # e.g. an import hook that refuses the module
        return False


def tensorboard_available() -> bool:
    """Whether `keras.callbacks.TensorBoard` can write logs here.

    It needs the `tensorboard` package and TensorFlow (for `tf.summary`, on
    every Keras backend); a JAX-only machine has neither.
    """
    return _importable("tensorboard") and _importable("tensorflow")


def best_logged_value(history_csv: str | os.PathLike, monitor: str, mode: str) -> float | None:
    """Best value of `monitor` in a `CSVLogger` file, or None if there is none yet."""
    _check_mode(mode)
    path = Path(history_csv)
    if not path.is_file():
        return None
    values = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                value = float(row.get(monitor, "nan"))
            except (TypeError, ValueError):
                continue
            if not math.isnan(value):
                values.append(value)
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


class AtomicModelCheckpoint(keras.callbacks.Callback):
    """Saves the model to a `.keras` file when the monitored metric improves.

    Like `keras.callbacks.ModelCheckpoint(save_best_only=True)`, but the file is
    first written beside the target and then renamed over it, so readers (and a
    crash) never see a half-written model.

    Args:
        filepath: destination `.keras` file.
        monitor: name of the logged metric, e.g. `"val_auc"`.
        mode: `"max"` or `"min"`.
        initial_value_threshold: best value seen before this `fit` call (e.g.
            by the run that is being resumed); only better values are saved.
    """

    def __init__(self, filepath, monitor="val_loss", mode="min", initial_value_threshold=None):
        super().__init__()
        _check_mode(mode)
        self.filepath = Path(filepath)
        if self.filepath.suffix != ".keras":
            raise ValueError(f"filepath must end in '.keras'. Received: filepath={filepath}")
        self.monitor = monitor
        self.mode = mode
        if initial_value_threshold is None:
            initial_value_threshold = -math.inf if mode == "max" else math.inf
        self.best = float(initial_value_threshold)

    def _improved(self, value: float) -> bool:
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(
                f"AtomicModelCheckpoint monitors '{self.monitor}', which is not logged. "
                f"Logged: {', '.join(sorted(logs or {}))}."
            )
        value = float(value)
        if math.isnan(value) or not self._improved(value):
            return
        self.best = value
        self.filepath.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.filepath.with_name(f".{self.filepath.stem}.tmp.keras")
        try:
            self.model.save(tmp)
            os.replace(tmp, self.filepath)
        finally:
            if tmp.exists():
                tmp.unlink()


def standard_callbacks(
    run_dir: str | os.PathLike,
    monitor: str,
    mode: str,
    patience: int,
    lr_schedule: Callable[[int, float], float] | None = None,
    tensorboard: bool = True,
    backup_freq: int | str = 50,
) -> list[keras.callbacks.Callback]:
    """Returns the callbacks for a resumable training run writing into `run_dir`.

    Args:
        run_dir: the run directory (created if needed).
        monitor: the metric that selects the best model and stops training,
            e.g. `"val_auc"` (a validation metric: it must be logged every epoch).
        mode: `"max"` if larger is better, else `"min"`.
        patience: epochs without improvement before stopping early.
        lr_schedule: optional `fn(epoch, lr) -> lr` for
            `keras.callbacks.LearningRateScheduler` (epoch-indexed, so it stays
            right when a run resumes at a later epoch).
        tensorboard: also write TensorBoard logs to `run_dir/logs`. Needs the
            `tensorboard` package and TensorFlow; without them a warning is
            issued and the other callbacks still run.
        backup_freq: save the `BackupAndRestore` state every this many batches
            (an int), or `"epoch"`.

    Returns:
        A list to pass as `model.fit(..., callbacks=...)`. When `run_dir`
        already holds a `history.csv` (a resumed run), the checkpoint only
        replaces `model.keras` with a model better than the best logged so far.
    """
    _check_mode(mode)
    if not isinstance(patience, int) or patience < 1:
        raise ValueError(f"patience must be a positive integer. Received: patience={patience!r}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    history_csv = run_dir / "history.csv"
    callbacks = [
        # First, so that a resumed fit starts from the backed-up weights and epoch.
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), save_freq=backup_freq),
        keras.callbacks.TerminateOnNaN(),
        AtomicModelCheckpoint(
            run_dir / "model.keras",
            monitor=monitor,
            mode=mode,
            initial_value_threshold=best_logged_value(history_csv, monitor, mode),
        ),
        keras.callbacks.EarlyStopping(
            monitor=monitor, mode=mode, patience=patience, restore_best_weights=True
        ),
        keras.callbacks.CSVLogger(str(history_csv), append=True),
    ]
    if lr_schedule is not None:
        callbacks.append(keras.callbacks.LearningRateScheduler(lr_schedule))
    if tensorboard and not _importable("tensorboard"):
        warnings.warn(
            "the 'tensorboard' package is not installed: no TensorBoard logs will be written "
            "(pip install tensorboard).",
            stacklevel=2,
        )
    elif tensorboard and not _importable("tensorflow"):
        warnings.warn(
            "TensorBoard logs need TensorFlow, which cannot be imported here (a JAX-only "
            "machine?): no TensorBoard logs will be written; the other callbacks run as usual.",
            stacklevel=2,
        )
    elif tensorboard:
        callbacks.append(
            keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), write_graph=False)
        )
    return callbacks

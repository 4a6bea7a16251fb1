"""The callbacks every training run in this project uses.

`standard_callbacks` returns the list `model.fit` needs for a run directory that
can be inspected while training and resumed after a crash:

- `model.keras`: the best model so far on the monitored metric, written
  atomically (a crash while saving never leaves a broken `model.keras`);
- `history.csv`: one row per finished epoch, with its `epoch_seconds`;
- `logs/`: TensorBoard logs (optional; needs `tensorboard` and TensorFlow);
- `backup/`: the state of the last completed epoch (`EpochBackup`), so the
  same command run again after a crash continues from there instead of
  epoch 0 (the folder is removed when training ends normally);
- early stopping (restoring the best weights), `TerminateOnNaN`, and an
  optional learning-rate schedule.

A resumed run ends as the uninterrupted run would have ended: same history
rows, same weights, same stopping decision, with these rules:

- A backup holds what a completed epoch leaves behind: the weights, the
  optimizer's state, the dropout (and other random layers') seed states and
  the epoch number. An epoch interrupted half-way is redone from its start,
  so it sees the same batches in the same order as long as the data order is
  a function of (seed, epoch) (`apps.common.batches`) and nothing of the
  interrupted attempt survives. Backups are taken at epoch ends only: a
  mid-epoch backup would need the batches already seen skipped and the
  epoch's running metrics restored, which Keras's loop cannot do; the price
  is that a crash costs at most one epoch of work.
- The callbacks run in an order that keeps the files consistent whenever the
  process is killed: at the end of epoch `e` the history row and the best
  checkpoint are written before the backup that says epoch `e` is done. On
  resume from a backup at epoch `e`, rows of epochs `>= e` (written after
  the backup, by the attempt being redone) are dropped from `history.csv`,
  and early stopping's best value and patience count are replayed from the
  rows that remain.
- Each row's `epoch_seconds` times that epoch (training and validation), so
  the sum over `history.csv` is the training time of the whole run, however
  many processes it took (`logged_seconds`).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from apps.common.errors import RunDirError, TrainingDivergedError
from apps.common.io import atomic_write_json, atomic_write_text
from apps.common.model_io import load_keras_model
from apps.common.rundir import BACKUP_DIR, HISTORY_FILE, METRICS_FILE, MODEL_FILE

EPOCH_SECONDS = "epoch_seconds"


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


def read_history(history_csv: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a `CSVLogger` file as dicts of strings (none if there is no file)."""
    path = Path(history_csv)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def check_not_diverged(
    run_dir: str | os.PathLike, advice: str, unwritten: tuple[str, ...] = (METRICS_FILE,)
) -> None:
    """Raises `TrainingDivergedError` if an epoch in `run_dir/history.csv` logged a non-finite loss.

    `TerminateOnNaN` stops such a run, but `fit` returns normally; both apps call
    this after training, and before training again in the same run directory,
    so that a run that diverged ends with an error and is never finished later.
    The history (not the last `fit`) is read, so a rerun is refused too.

    Args:
        run_dir: the run directory.
        advice: what to do, appended to the message (e.g. "Lower the learning
            rate (now 0.002, e.g. --learning-rate 0.0002) and train into a new
            --run-dir.").
        unwritten: the files of a finished run that are not written, named in
            the message.
    """
    for i, row in enumerate(read_history(Path(run_dir) / HISTORY_FILE)):
        loss, logged_epoch = _logged_value(row, "loss"), _logged_value(row, "epoch")
        epoch = i if logged_epoch is None else int(logged_epoch)
        if loss is not None and not math.isfinite(loss):
            raise TrainingDivergedError(
                f"training diverged: the loss became {loss} in epoch {epoch + 1} and training "
                f"was stopped, so {run_dir} is left unfinished (no {', no '.join(unwritten)}). "
                f"{advice}"
            )


def _logged_value(row: dict[str, str], key: str) -> float | None:
    """`row[key]` as logged: a float (NaN included), or None where it is missing."""
    try:
        return float(row[key])
    except (KeyError, TypeError, ValueError):  # No such column, or CSVLogger's "NA".
        return None


def _logged_floats(rows: list[dict[str, str]], key: str) -> list[float]:
    """`key` of every row as a float; NaN where it is missing."""
    values = (_logged_value(row, key) for row in rows)
    return [math.nan if v is None else v for v in values]


def best_logged_value(history_csv: str | os.PathLike, monitor: str, mode: str) -> float | None:
    """Best value of `monitor` in a `CSVLogger` file, or None if there is none yet."""
    _check_mode(mode)
    values = [v for v in _logged_floats(read_history(history_csv), monitor) if not math.isnan(v)]
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


def logged_seconds(history_csv: str | os.PathLike) -> float:
    """The training time of a run: the sum of `epoch_seconds` over its `history.csv`.

    Every epoch of the run counts once, also when the run was resumed (rows of
    an interrupted attempt are dropped on resume); rows without the column
    (written by older versions) count as 0.
    """
    values = _logged_floats(read_history(history_csv), EPOCH_SECONDS)
    return float(sum(v for v in values if not math.isnan(v)))


def _truncate_history(history_csv: Path, epoch: int) -> None:
    """Keeps the rows of epochs before `epoch` (whole lines only); removes an empty file.

    Rows are compared by their first field (`CSVLogger` writes the epoch
    first) and kept byte for byte; the file is rewritten atomically.
    """
    if not history_csv.is_file():
        return
    with history_csv.open(newline="") as f:
        lines = f.read().splitlines(keepends=True)
    kept = []
    for line in lines[1:]:
        try:
            row_epoch = int(line.split(",", 1)[0])
        except ValueError:
            break
        if row_epoch >= epoch or not line.endswith("\n"):
            break
        kept.append(line)
    if not kept:
        history_csv.unlink()
    elif len(kept) < len(lines) - 1:
        atomic_write_text(history_csv, lines[0] + "".join(kept))


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

    With `monitor=None` the model of every epoch is saved (the file holds the
    last epoch whose loss was finite): no choice is made on validation data.
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
        if self.monitor is None:
            self._save(logs)
            return
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(
                f"AtomicModelCheckpoint monitors '{self.monitor}', which is not logged. "
                f"Logged: {', '.join(sorted(logs or {}))}."
            )
        value = float(value)
        if math.isnan(value) or not self._improved(value):
            return
        if self._save(logs):
            self.best = value

    def _save(self, logs) -> bool:
        """Writes the model atomically unless the epoch's loss is not finite."""
        # An epoch whose training loss is not finite (it diverged; TerminateOnNaN
        # stops it) has weights that are not a model, whatever its metric says.
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            return False
        from apps.common.model_io import save_model_atomically

        save_model_atomically(self.model, self.filepath)
        return True


class EpochSeconds(keras.callbacks.Callback):
    """Adds `epoch_seconds` (training and validation of the epoch) to the epoch's logs.

    Place it before `CSVLogger` (and anything else that records the logs),
    so they record it.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[EPOCH_SECONDS] = time.perf_counter() - self._start


class EpochBackup(keras.callbacks.Callback):
    """Backs up the state of each completed epoch; a new `fit` resumes from it.

    Like `keras.callbacks.BackupAndRestore(save_freq="epoch")`, with two
    differences that make a resumed run equal an uninterrupted one:

    - the seed states of dropout and other random layers (the variables in
      `model.variables` that are not in `model.weights`) are backed up too,
      so the resumed epochs draw the masks the uninterrupted run draws
      (Keras's callback restores the weights and the optimizer only, so a
      resumed run would replay the masks of its first epochs);
    - a backup is complete or absent: each is written into a folder of its
      own, `epoch-<e>/`, and only then does `state.json` (written
      atomically) name epoch `e`, so a process killed while saving leaves the
      previous backup in force (Keras writes the weights and then the epoch
      number, so a kill in between pairs new weights with an old epoch); the
      folder is renamed away before it is deleted at the end.

    On `on_train_begin` the folder is created (so that a run killed during
    its first epoch is still recognisably unfinished) and the last backup,
    if any, restored: weights, optimizer, seed states, and the epoch to
    start at. An epoch after which training stops (early stopping,
    `TerminateOnNaN`, a time budget) is not backed up: the run ends there and
    the folder is removed on `on_train_end`.

    Args:
        backup_dir: the folder; it must not be used for anything else.
    """

    STATE_FILE = "state.json"
    WEIGHTS_FILE = "model.weights.h5"
    SEEDS_FILE = "seeds.npz"

    def __init__(self, backup_dir: str | os.PathLike):
        super().__init__()
        self.backup_dir = Path(backup_dir)

    @classmethod
    def saved_epoch(cls, backup_dir: str | os.PathLike) -> int:
        """The epoch a run resumed from `backup_dir` starts at (0 without a backup).

        Raises:
            RunDirError: the folder holds a backup that `EpochBackup` did not
                write (Keras's `BackupAndRestore`, used before): it may be from
                the middle of an epoch, so it cannot be resumed exactly.
        """
        backup_dir = Path(backup_dir)
        state = backup_dir / cls.STATE_FILE
        if state.is_file():
            return int(json.loads(state.read_text())["epoch"])
        if (backup_dir / "training_metadata.json").is_file():
            raise RunDirError(
                f"{backup_dir} holds a backup written by an older version (Keras's "
                "BackupAndRestore, possibly from the middle of an epoch), which cannot be "
                "resumed exactly; start the run again in another run directory."
            )
        return 0

    def _folder(self, epoch: int) -> Path:
        return self.backup_dir / f"epoch-{epoch}"

    def _seed_variables(self) -> list:
        weights = {id(v) for v in self.model.weights}
        return [v for v in self.model.variables if id(v) not in weights]

    def on_train_begin(self, logs=None):
        epoch = self.saved_epoch(self.backup_dir)
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        if epoch == 0:
            return
        if not self.model.built:
            raise ValueError(
                "EpochBackup restores into a built model: build it before calling fit()."
            )
        folder = self._folder(epoch)
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(folder / self.WEIGHTS_FILE))
        variables = self._seed_variables()
        with np.load(folder / self.SEEDS_FILE) as seeds:
            if len(seeds.files) != len(variables):
                raise ValueError(
                    f"the backup in {folder} holds {len(seeds.files)} seed states, the model "
                    f"{len(variables)}: it was written for another model."
                )
            for i, variable in enumerate(variables):
                variable.assign(seeds[f"arr_{i}"])
        # How Keras's own BackupAndRestore sets where `fit` starts: `fit` reads
        # this model attribute after `on_train_begin`.
        self.model._initial_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training:
            return
        folder = self._folder(epoch + 1)
        if folder.exists():  # Left by a process killed while writing it.
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        self.model.save_weights(str(folder / self.WEIGHTS_FILE))
        np.savez(
            folder / self.SEEDS_FILE,
            *(keras.ops.convert_to_numpy(v.value) for v in self._seed_variables()),
        )
        for name in (self.WEIGHTS_FILE, self.SEEDS_FILE):
            _fsync(folder / name)
        # The backup is complete: from here on it is the one in force.
        atomic_write_json(self.backup_dir / self.STATE_FILE, {"epoch": epoch + 1})
        for old in self.backup_dir.glob("epoch-*"):
            if old != folder:
                shutil.rmtree(old)

    def on_train_end(self, logs=None):
        # Renamed away first (atomically), so that a process killed while deleting
        # never leaves a partial backup that a new run would try to resume.
        removed = self.backup_dir.with_name(f".{self.backup_dir.name}.removed")
        shutil.rmtree(removed, ignore_errors=True)
        if self.backup_dir.exists():
            os.replace(self.backup_dir, removed)
        shutil.rmtree(removed, ignore_errors=True)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """`EarlyStopping` that continues the count of a run it resumes.

    On `on_train_begin` it replays the monitored values of the epochs already
    logged (`logged`, one per epoch `0..e-1`, None where missing), so `best`,
    `best_epoch` and `wait` are what the uninterrupted run had after epoch
    `e-1`, and stopping happens at the same epoch. With
    `restore_best_weights`, the best weights so far are read from
    `best_model` (the checkpoint of the same monitored metric).

    Args:
        logged: the monitored value of each epoch already run (None where
            it was not logged; such epochs leave the state as they did then).
        best_model: the `.keras` file holding the best model so far.
        **kwargs: `keras.callbacks.EarlyStopping` arguments.
    """

    def __init__(self, logged=(), best_model: str | os.PathLike | None = None, **kwargs):
        super().__init__(**kwargs)
        self.logged = list(logged)
        self.best_model = None if best_model is None else Path(best_model)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if not self.logged:
            return
        restore, self.restore_best_weights = self.restore_best_weights, False
        stop_training = self.model.stop_training
        for epoch, value in enumerate(self.logged):
            # A NaN counts as it did then; a missing value changed nothing then either.
            if value is not None:
                super().on_epoch_end(epoch, {self.monitor: value})
        self.restore_best_weights = restore
        self.model.stop_training = stop_training
        self.stopped_epoch = 0
        if restore and self.best is not None and self.best_model and self.best_model.is_file():
            best = load_keras_model(self.best_model, compile=False)
            self.best_weights = best.get_weights()


def standard_callbacks(
    run_dir: str | os.PathLike,
    monitor: str,
    mode: str,
    patience: int,
    lr_schedule: Callable[[int, float], float] | None = None,
    tensorboard: bool = True,
    select_best: bool = True,
) -> list[keras.callbacks.Callback]:
    """Returns the callbacks for a resumable training run writing into `run_dir`.

    When `run_dir` holds a backup (an unfinished run), `fit` resumes at the
    backed-up epoch, `history.csv` is cut to the epochs before it, and the
    checkpoint and early stopping continue from the best value logged so far
    (see the module docs). The order of the list matters and is part of that
    design: `EpochSeconds` first, then the writers of the checkpoint and
    `history.csv`, the backup after them.

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
        select_best: keep the epoch with the best `monitor` and stop early
            after `patience` epochs without improvement. With `False` every
            epoch runs and `model.keras` holds the last one, so the validation
            data only reports (cross-validation folds, whose held-out part must
            not choose the model it then measures).

    Returns:
        A list to pass as `model.fit(..., callbacks=...)`; data whose order
        is a function of the epoch also needs its `FollowEpochs` callback.

    Raises:
        RunDirError: `run_dir` holds the history of a finished training (a
            `history.csv` but no backup to resume from), or an old-format backup.
    """
    _check_mode(mode)
    if not isinstance(patience, int) or patience < 1:
        raise ValueError(f"patience must be a positive integer. Received: patience={patience!r}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    history_csv = run_dir / HISTORY_FILE
    backup_dir = run_dir / BACKUP_DIR
    if read_history(history_csv) and not backup_dir.is_dir():
        raise RunDirError(
            f"{run_dir} holds the history of a finished training ({HISTORY_FILE}, and no "
            f"{BACKUP_DIR}/ to resume from); pass another run directory."
        )
    start_epoch = EpochBackup.saved_epoch(backup_dir)
    _truncate_history(history_csv, start_epoch)  # Rows of the attempt being redone.
    rows = read_history(history_csv)
    best_model = run_dir / MODEL_FILE
    callbacks = [
        # First: it times the epoch and adds epoch_seconds to the logs the others record.
        EpochSeconds(),
        keras.callbacks.TerminateOnNaN(),
    ]
    if select_best:
        callbacks += [
            AtomicModelCheckpoint(
                best_model,
                monitor=monitor,
                mode=mode,
                initial_value_threshold=best_logged_value(history_csv, monitor, mode),
            ),
            ResumableEarlyStopping(
                logged=[_logged_value(row, monitor) for row in rows],
                best_model=best_model,
                monitor=monitor,
                mode=mode,
                patience=patience,
                restore_best_weights=True,
            ),
        ]
    else:
        callbacks.append(AtomicModelCheckpoint(best_model, monitor=None))
    callbacks.append(keras.callbacks.CSVLogger(str(history_csv), append=True))
    if lr_schedule is not None:
        callbacks.append(keras.callbacks.LearningRateScheduler(lr_schedule))
    # After the row and the checkpoint of an epoch: a backup saying the epoch is done
    # never exists without them.
    callbacks.append(EpochBackup(backup_dir))
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

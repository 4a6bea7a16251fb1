import csv
import json

import keras
import numpy as np
import pytest

from apps.common.callbacks import (
    AtomicModelCheckpoint,
    EpochBackup,
    best_logged_value,
    logged_seconds,
    read_history,
    standard_callbacks,
    tensorboard_available,
)
from apps.common.errors import RunDirError
from tests.backend_utils import CrashAtBatch, read_history_rows


def _data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    return x, y


def _model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    return model


def _epochs(history_csv):
    return [int(row["epoch"]) for row in read_history(history_csv)]


def test_standard_callbacks_write_run_dir(tmp_path):
    x, y = _data()
    cbs = standard_callbacks(tmp_path, "val_loss", "min", patience=10, tensorboard=False)
    assert {"EpochBackup", "TerminateOnNaN", "AtomicModelCheckpoint", "EarlyStopping"} <= {
        cls.__name__ for c in cbs for cls in type(c).__mro__
    }
    _model().fit(x, y, validation_data=(x, y), epochs=3, batch_size=16, callbacks=cbs, verbose=0)
    assert (tmp_path / "model.keras").is_file()
    assert _epochs(tmp_path / "history.csv") == [0, 1, 2]
    assert not (tmp_path / "logs").exists()
    assert not (tmp_path / "backup").exists()  # removed after a normal end
    assert [p.name for p in tmp_path.glob(".*")] == []  # no temporary files left


def test_tensorboard_logs_or_warning(tmp_path):
    x, y = _data()
    if tensorboard_available():
        cbs = standard_callbacks(tmp_path, "val_loss", "min", 5, tensorboard=True)
        assert "TensorBoard" in {type(c).__name__ for c in cbs}
        _model().fit(x, y, validation_data=(x, y), epochs=1, callbacks=cbs, verbose=0)
        assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    else:
        with pytest.warns(UserWarning, match="'tensorboard' package is not installed"):
            cbs = standard_callbacks(tmp_path, "val_loss", "min", 5, tensorboard=True)
        assert "TensorBoard" not in {type(c).__name__ for c in cbs}


def test_lr_schedule_is_applied(tmp_path):
    x, y = _data()
    cbs = standard_callbacks(
        tmp_path,
        "val_loss",
        "min",
        5,
        lr_schedule=lambda epoch, lr: 0.1 / (epoch + 1),
        tensorboard=False,
    )
    model = _model()
    model.fit(x, y, validation_data=(x, y), epochs=2, batch_size=16, callbacks=cbs, verbose=0)
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 0.05, rtol=1e-6)


def test_resume_after_crash_mid_epoch(tmp_path):
    x, y = _data()

    def fit(extra):
        cbs = standard_callbacks(tmp_path, "val_loss", "min", 10, tensorboard=False)
        model = _model()
        return model.fit(
            x, y, validation_data=(x, y), epochs=4, batch_size=16, callbacks=cbs + extra, verbose=0
        )

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit([CrashAtBatch(epoch=2, batch=1)])
    assert _epochs(tmp_path / "history.csv") == [0, 1]
    assert (tmp_path / "backup").is_dir()
    history = fit([])
    # Only the remaining epochs ran, and the log continues without repeats.
    assert len(history.history["loss"]) == 2
    assert _epochs(tmp_path / "history.csv") == [0, 1, 2, 3]
    assert not (tmp_path / "backup").exists()


def test_best_logged_value(tmp_path):
    path = tmp_path / "history.csv"
    assert best_logged_value(path, "val_auc", "max") is None
    path.write_text("epoch,val_auc\n0,0.7\n1,0.9\n2,nan\n3,0.8\n")
    assert best_logged_value(path, "val_auc", "max") == 0.9
    assert best_logged_value(path, "val_auc", "min") == 0.7
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        best_logged_value(path, "val_auc", "up")


def test_checkpoint_respects_initial_threshold(tmp_path):
    x, y = _data()
    model = _model()
    target = tmp_path / "model.keras"
    # A resumed run whose best so far (loss 0.0) cannot be beaten: nothing is written.
    ckpt = AtomicModelCheckpoint(target, "val_loss", "min", initial_value_threshold=0.0)
    model.fit(x, y, validation_data=(x, y), epochs=1, callbacks=[ckpt], verbose=0)
    assert not target.exists()
    ckpt = AtomicModelCheckpoint(target, "val_loss", "min")
    model.fit(x, y, validation_data=(x, y), epochs=1, callbacks=[ckpt], verbose=0)
    reloaded = keras.saving.load_model(target)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_checkpoint_never_saves_an_epoch_whose_loss_is_not_finite(tmp_path):
    # A diverged epoch can still log a "better" metric (an AUC of 0.5 on NaN
    # outputs beats 0.4): its weights are not a model and are not saved.
    ckpt = AtomicModelCheckpoint(tmp_path / "m.keras", "val_auc", "max")
    ckpt.set_model(_model())
    ckpt.on_epoch_end(0, {"loss": float("nan"), "val_auc": 0.5})
    assert not (tmp_path / "m.keras").exists() and ckpt.best == -np.inf
    ckpt.on_epoch_end(1, {"loss": 0.3, "val_auc": 0.5})
    assert (tmp_path / "m.keras").is_file() and ckpt.best == 0.5


def test_checkpoint_missing_metric_and_bad_args(tmp_path):
    x, y = _data()
    ckpt = AtomicModelCheckpoint(tmp_path / "m.keras", "val_auc", "max")
    with pytest.raises(KeyError, match="'val_auc', which is not logged"):
        _model().fit(x, y, epochs=1, callbacks=[ckpt], verbose=0)
    with pytest.raises(ValueError, match="must end in '.keras'"):
        AtomicModelCheckpoint(tmp_path / "m.h5")
    with pytest.raises(ValueError, match="Received: patience=0"):
        standard_callbacks(tmp_path, "val_loss", "min", patience=0)


# --------------------------------------------------------------------------- resuming


class CrashAtEpochEnd(keras.callbacks.Callback):
    """Raises `RuntimeError("simulated crash")` at the end of epoch `epoch`."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")


def _dropout_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    return model


def _fit_run(run_dir, crash=None, before_backup=False):
    """4 epochs of 4 batches; `crash` goes last, or just before the backup."""
    x, y = _data()
    cbs = standard_callbacks(run_dir, "val_loss", "min", 10, tensorboard=False)
    if crash is not None:
        backup = next(i for i, c in enumerate(cbs) if isinstance(c, EpochBackup))
        cbs.insert(backup if before_backup else len(cbs), crash)
    model = _dropout_model()
    model.fit(
        x,
        y,
        validation_data=(x, y),
        epochs=4,
        batch_size=16,
        shuffle=False,
        callbacks=cbs,
        verbose=0,
    )
    return model


def _rows(run_dir):
    """The history's rows as floats, without the (timing) epoch_seconds column."""
    rows = read_history_rows(run_dir)
    return [{k: float(v) for k, v in row.items() if k != "epoch_seconds"} for row in rows]


@pytest.mark.parametrize(
    "where", ["mid_epoch", "after_history_row", "while_saving_backup", "after_last_backup"]
)
def test_resumed_fit_equals_uninterrupted_fit(tmp_path, monkeypatch, where):
    straight = _fit_run(tmp_path / "straight")
    run_dir = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        if where == "mid_epoch":
            _fit_run(run_dir, CrashAtBatch(epoch=2, batch=1))
        elif where == "after_history_row":
            # Killed after epoch 2's row and checkpoint, before its backup.
            _fit_run(run_dir, CrashAtEpochEnd(2), before_backup=True)
        elif where == "after_last_backup":
            # Killed after the backup of the last epoch, before it was removed.
            _fit_run(run_dir, CrashAtEpochEnd(3))
        else:
            # Killed while writing the backup of epoch 1: epoch 0's stays in force.
            saves, real_savez = [], np.savez

            def savez(*args, **kwargs):
                saves.append(args[0])
                if len(saves) == 2:
                    raise RuntimeError("simulated crash")
                return real_savez(*args, **kwargs)

            monkeypatch.setattr(np, "savez", savez)
            _fit_run(run_dir)
    monkeypatch.undo()
    saved = {"while_saving_backup": 1, "after_last_backup": 4}.get(where, 2)
    assert EpochBackup.saved_epoch(run_dir / "backup") == saved
    resumed = _fit_run(run_dir)
    assert _epochs(run_dir / "history.csv") == [0, 1, 2, 3]
    assert _rows(run_dir) == _rows(tmp_path / "straight")
    for a, b in zip(straight.variables, resumed.variables, strict=True):  # Dropout seeds too.
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)
    assert not (run_dir / "backup").exists()


def test_resumed_early_stopping_continues_its_count(tmp_path):
    model = _dropout_model()
    path = tmp_path / "model.keras"
    model.save(path)
    logged = [1.0, 0.5, 0.6, float("nan")]
    cbs = standard_callbacks(tmp_path, "val_loss", "min", patience=3, tensorboard=False)
    stopping = next(c for c in cbs if isinstance(c, keras.callbacks.EarlyStopping))
    stopping.logged = logged  # As read from history.csv for a run resumed at epoch 4.
    other = _dropout_model()
    stopping.set_model(other)
    other.stop_training = False
    stopping.on_train_begin()
    # The plain callback, fed the same values as they came: the same state.
    plain = keras.callbacks.EarlyStopping("val_loss", patience=3, mode="min")
    plain.set_model(_dropout_model())
    plain.on_train_begin()
    for epoch, value in enumerate(logged):
        plain.on_epoch_end(epoch, {"val_loss": value})
    assert (stopping.best, stopping.best_epoch, stopping.wait) == (0.5, 1, 2)
    assert (plain.best, plain.best_epoch, plain.wait) == (0.5, 1, 2)
    assert not other.stop_training
    # The best weights come from the checkpoint; the next epoch without progress stops.
    for a, b in zip(stopping.best_weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    stopping.on_epoch_end(4, {"val_loss": 0.7})
    assert other.stop_training and stopping.stopped_epoch == 4


def test_epoch_seconds_are_logged_and_summed(tmp_path):
    _fit_run(tmp_path)
    with open(tmp_path / "history.csv", newline="") as f:
        seconds = [float(row["epoch_seconds"]) for row in csv.DictReader(f)]
    assert len(seconds) == 4 and min(seconds) > 0
    assert logged_seconds(tmp_path / "history.csv") == pytest.approx(sum(seconds))
    assert logged_seconds(tmp_path / "none.csv") == 0.0


def test_finished_or_old_format_run_dirs_are_refused(tmp_path):
    (tmp_path / "history.csv").write_text("epoch,loss\n0,0.5\n")
    with pytest.raises(RunDirError, match="history of a finished training"):
        standard_callbacks(tmp_path, "val_loss", "min", 5, tensorboard=False)
    # Keras's BackupAndRestore files, possibly from the middle of an epoch.
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "training_metadata.json").write_text(json.dumps({"epoch": 1}))
    with pytest.raises(RunDirError, match="written by an older version"):
        standard_callbacks(tmp_path, "val_loss", "min", 5, tensorboard=False)

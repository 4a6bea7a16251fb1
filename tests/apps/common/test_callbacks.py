import csv

import keras
import numpy as np
import pytest

from apps.common.callbacks import (
    AtomicModelCheckpoint,
    best_logged_value,
    standard_callbacks,
    tensorboard_available,
)
from tests.backend_utils import CrashAtBatch


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
    with open(history_csv, newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_standard_callbacks_write_run_dir(tmp_path):
    x, y = _data()
    cbs = standard_callbacks(tmp_path, "val_loss", "min", patience=10, tensorboard=False)
    kinds = {type(c).__name__ for c in cbs}
    assert {"BackupAndRestore", "TerminateOnNaN", "AtomicModelCheckpoint", "EarlyStopping"} <= kinds
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
        cbs = standard_callbacks(tmp_path, "val_loss", "min", 10, tensorboard=False, backup_freq=1)
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


def test_checkpoint_missing_metric_and_bad_args(tmp_path):
    x, y = _data()
    ckpt = AtomicModelCheckpoint(tmp_path / "m.keras", "val_auc", "max")
    with pytest.raises(KeyError, match="'val_auc', which is not logged"):
        _model().fit(x, y, epochs=1, callbacks=[ckpt], verbose=0)
    with pytest.raises(ValueError, match="must end in '.keras'"):
        AtomicModelCheckpoint(tmp_path / "m.h5")
    with pytest.raises(ValueError, match="Received: patience=0"):
        standard_callbacks(tmp_path, "val_loss", "min", patience=0)

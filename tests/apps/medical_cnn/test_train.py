import csv
import json

import numpy as np
import pytest

from apps.common.model_io import load_keras_model
from apps.medical_cnn import data as data_lib
from apps.medical_cnn import metrics as metrics_lib
from apps.medical_cnn.config import MedicalCNNConfig
from apps.medical_cnn.train import cosine_schedule, train
from tests.apps.medical_cnn.conftest import tiny_config
from tests.backend_utils import CrashAtBatch

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _epochs(run_dir):
    with open(run_dir / "history.csv", newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_tiny_training_reaches_auc_on_real_val(tiny_run):
    run_dir, report = tiny_run
    assert report["auc"] >= 0.9
    assert report["num_train_examples"] == 4708


def test_run_directory_contents(tiny_run, pneumoniamnist_npz):
    run_dir, report = tiny_run
    names = {p.name for p in run_dir.iterdir()}
    assert {"model.keras", "config.json", "history.csv", "metrics.json", "threshold.json"} <= names
    assert "backup" not in names  # removed once training finished
    for png in ("training_curves.png", "roc_val.png", "confusion_matrix_val.png"):
        assert (run_dir / "plots" / png).read_bytes()[:8] == PNG_MAGIC
    config = json.loads((run_dir / "config.json").read_text())
    assert config["input_shape"] == [28, 28, 1] and config["num_classes"] == 2
    assert config["class_names"] == ["normal", "pneumonia"]
    np.testing.assert_allclose(config["class_weights"], [4708 / (2 * 1214), 4708 / (2 * 3494)])
    assert _epochs(run_dir) == list(range(len(_epochs(run_dir))))
    # The stored threshold and AUC are those of the saved model on the real val split.
    model = load_keras_model(run_dir)
    val = data_lib.load_npz(pneumoniamnist_npz, ("val",))["val"]
    scores = model.predict(val.images.astype("float32"), verbose=0).reshape(-1)
    threshold = json.loads((run_dir / "threshold.json").read_text())["threshold"]
    assert threshold == pytest.approx(metrics_lib.youden_threshold(val.labels, scores), abs=1e-6)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["auc"] == pytest.approx(metrics_lib.roc_auc(val.labels, scores), abs=1e-6)
    assert metrics["at_threshold"]["threshold"] == pytest.approx(threshold)
    assert metrics["at_threshold"]["accuracy"] == pytest.approx(
        np.mean((scores >= threshold) == val.labels), abs=1e-6
    )
    assert {"accuracy", "sensitivity", "specificity", "precision", "f1"} <= set(metrics["at_0.5"])


def test_finished_run_is_not_overwritten(tiny_run, pneumoniamnist_npz):
    run_dir, _ = tiny_run
    with pytest.raises(ValueError, match="already holds a finished run"):
        train(tiny_config(pneumoniamnist_npz), run_dir, verbose=0, tensorboard=False)


def test_resume_after_interruption(tmp_path, pneumoniamnist_npz):
    cfg = tiny_config(pneumoniamnist_npz, max_train_examples=640, epochs=4)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, run_dir, callbacks=[CrashAtBatch(2, 5)], verbose=0, tensorboard=False)
    assert _epochs(run_dir) == [0, 1]
    assert (run_dir / "backup").is_dir() and not (run_dir / "metrics.json").exists()
    # A different config cannot resume this run.
    with pytest.raises(ValueError, match="different config .*differs in: learning_rate"):
        train(cfg.__class__(**{**cfg.__dict__, "learning_rate": 0.1}), run_dir, verbose=0)
    report = train(cfg, run_dir, verbose=0, tensorboard=False)
    assert _epochs(run_dir) == [0, 1, 2, 3]  # continued, not restarted
    assert report["epochs_run_this_call"] == 2
    assert not (run_dir / "backup").exists()
    assert (run_dir / "metrics.json").is_file()


def test_cosine_schedule():
    schedule = cosine_schedule(MedicalCNNConfig(learning_rate=1e-3, epochs=11))
    assert schedule(0) == pytest.approx(1e-3)
    assert schedule(10) == pytest.approx(5e-5)
    assert schedule(5) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))
    constant = cosine_schedule(MedicalCNNConfig(lr_schedule="constant"))
    assert constant(7) == constant(0)

"""`medical-cnn train --distribute`: several devices and several workers give one-device results.

Each case runs `train` in fresh processes, because logical CPU devices, fake
JAX devices and multi-worker collectives must be set up before the framework
starts. A callback in each process saves the weights at the end of every epoch,
so runs are compared epoch by epoch (not through the best checkpoint, whose
choice could flip on a tie in validation AUC).

Why the compared configs are what they are (see docs/distributed.md):
- TensorFlow strategies draw dropout masks per replica, so the TensorFlow
  cases train `tiny` with `dropout=0`; batch norm stays on, its statistics
  all-reduced over the replicas (`Distribution.sync_batch_norm`), and its
  moving statistics are compared with the other weights. Under JAX the step
  is one program over the global batch, so `tiny` is compared as it is.
- The MirroredStrategy case trains on 64 examples (one batch of 64, split 32 +
  32) for 3 epochs = 3 steps. (Each epoch's order is a function of the seed
  and the epoch, `apps.common.batches`, so the batch Keras draws before
  training under a strategy, to build the model, changes no order.)
"""

import json
import os

import numpy as np
import pytest

from apps.common.model_io import load_keras_model
from tests.apps.medical_cnn.test_backends import write_slice
from tests.backend_utils import run_python_script, run_tensorflow_workers

# Shared by the scripts below: the tiny preset on a data slice, and a callback
# that saves every weight at the end of each epoch to OUT/<name>-epoch<k>.npz.
COMMON = r"""
import dataclasses, json, sys

import keras
import numpy as np

from apps.medical_cnn.config import get_config
from apps.medical_cnn.train import train


class SaveWeights(keras.callbacks.Callback):
    def __init__(self, out, name):
        super().__init__()
        self.out, self.name = out, name

    def on_epoch_end(self, epoch, logs=None):
        weights = {v.path: np.asarray(v) for v in self.model.weights}
        np.savez(f"{self.out}/{self.name}-epoch{epoch}.npz", **weights)


def config(data, **overrides):
    return dataclasses.replace(get_config("tiny"), dataset="npz", data_path=data, **overrides)
"""

MIRRORED_SCRIPT = (
    r"""
import tensorflow as tf

# Two logical CPU devices, configured before TensorFlow initialises.
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""
    + COMMON
    + r"""
data, runs, out = sys.argv[1:4]
cfg = config(data, epochs=3, dropout=0.0)  # batch norm on, synchronised
args = dict(verbose=0, tensorboard=False)
train(cfg, f"{runs}/one_device", callbacks=[SaveWeights(out, "one_device")], **args)
train(cfg, f"{runs}/mirrored", callbacks=[SaveWeights(out, "mirrored")], distribute="mirrored", **args)


class Crash(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("simulated crash")


# Interrupted after two epochs, then the same call again: it resumes from the backup.
try:
    train(cfg, f"{runs}/resumed", callbacks=[Crash()], distribute="mirrored", **args)
except RuntimeError as e:
    assert "simulated crash" in str(e)
train(cfg, f"{runs}/resumed", callbacks=[SaveWeights(out, "resumed")], distribute="mirrored", **args)
"""
)

JAX_SCRIPT = (
    COMMON
    + r"""
data, runs, out = sys.argv[1:4]
assert len(keras.distribution.list_devices()) == 2
cfg = config(data, epochs=1)  # tiny as it is: batch norm and dropout included
for name in ("none", "mirrored"):
    train(cfg, f"{runs}/{name}", callbacks=[SaveWeights(out, name)], distribute=name, verbose=0)
"""
)

WORKER_SCRIPT = (
    COMMON
    + r"""
import os

from apps.common.distribute import get_distribution

data, run_dir, out, name = sys.argv[1:5]
work_dir = get_distribution("multiworker").work_dir(run_dir)


class RecordWorkDir(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        files = sorted(os.listdir(work_dir)) if os.path.isdir(work_dir) else []
        with open(f"{out}/{name}-work-dir.json", "w") as f:
            json.dump({"work_dir": str(work_dir), "files": files}, f)


cfg = config(data, epochs=1)  # batch norm synchronised over the workers
report = train(
    cfg,
    run_dir,
    callbacks=[SaveWeights(out, name), RecordWorkDir()],
    distribute="multiworker",
    verbose=0,
    tensorboard=False,
)
with open(f"{out}/{name}-report.json", "w") as f:
    json.dump({"report_keys": sorted(report), "work_dir_left": os.path.exists(work_dir)}, f)
"""
)


def _weights(out, name, epoch):
    with np.load(out / f"{name}-epoch{epoch}.npz") as f:
        return {k: f[k] for k in f.files}


def _assert_same_weights(a, b, atol):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=0, err_msg=key)


def test_mirrored_two_cpu_devices_matches_one_device(pneumoniamnist_npz, tmp_path):
    data = write_slice(pneumoniamnist_npz, tmp_path / "slice.npz", 64, 64)
    runs, out = tmp_path / "runs", tmp_path / "out"
    out.mkdir()
    run_python_script(MIRRORED_SCRIPT, [data, runs, out], tmp_path, "tensorflow", timeout=240)
    for epoch in range(3):
        _assert_same_weights(
            _weights(out, "one_device", epoch), _weights(out, "mirrored", epoch), atol=1e-5
        )
    first, last = _weights(out, "one_device", 0), _weights(out, "one_device", 2)
    assert any("moving_mean" in k for k in first)  # batch norm statistics compared too
    assert max(np.abs(first[k] - last[k]).max() for k in first) > 1e-3  # it did train
    metrics = json.loads((runs / "mirrored" / "metrics.json").read_text())
    assert metrics["distribute"] == {
        "strategy": "mirrored",
        "backend": "tensorflow",
        "num_replicas": 2,
        "num_workers": 1,
    }
    # The checkpoint written under the strategy loads and predicts as a plain model.
    model = load_keras_model(runs / "mirrored")
    assert model.predict(np.zeros((2, 28, 28, 1), "float32"), verbose=0).shape == (2, 1)
    # Resumed from the end-of-epoch backup: epoch 2 ran once more and ends where the
    # uninterrupted run ended; the history continues without a repeated epoch.
    _assert_same_weights(_weights(out, "resumed", 2), _weights(out, "mirrored", 2), atol=1e-5)
    assert not (out / "resumed-epoch0.npz").exists()
    history = (runs / "resumed" / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["0", "1", "2"]
    assert not (runs / "resumed" / "backup").exists()


def test_jax_data_parallel_two_devices_matches_one_device(pneumoniamnist_npz, tmp_path):
    data = write_slice(pneumoniamnist_npz, tmp_path / "slice.npz", 512, 128)
    runs, out = tmp_path / "runs", tmp_path / "out"
    out.mkdir()
    flags = "--xla_force_host_platform_device_count=2"
    run_python_script(JAX_SCRIPT, [data, runs, out], tmp_path, "jax", timeout=240, XLA_FLAGS=flags)
    one, two = _weights(out, "none", 0), _weights(out, "mirrored", 0)
    assert any("moving_mean" in k for k in one)  # batch norm statistics compared too
    _assert_same_weights(one, two, atol=1e-5)
    metrics = json.loads((runs / "mirrored" / "metrics.json").read_text())
    assert metrics["distribute"]["num_replicas"] == 2 and metrics["backend"] == "jax"


def test_multiworker_two_processes_end_with_identical_weights(pneumoniamnist_npz, tmp_path):
    data = write_slice(pneumoniamnist_npz, tmp_path / "slice.npz", 512, 128)
    run_dir, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    worker_args = [[data, run_dir, out, f"worker{index}"] for index in range(2)]
    run_tensorflow_workers(WORKER_SCRIPT, worker_args, tmp_path, timeout=150)
    _assert_same_weights(_weights(out, "worker0", 0), _weights(out, "worker1", 0), atol=0)
    # The chief (worker 0) wrote the run directory; worker 1 wrote a scratch folder
    # of its own, removed at the end.
    chief = json.loads((out / "worker0-work-dir.json").read_text())
    worker = json.loads((out / "worker1-work-dir.json").read_text())
    assert chief["work_dir"] == str(run_dir)
    assert worker["work_dir"].startswith(str(tmp_path / "tmp1"))
    assert {"history.csv", "model.keras", "config.json"} <= set(worker["files"])
    assert not os.path.exists(worker["work_dir"])
    assert json.loads((out / "worker1-report.json").read_text())["report_keys"] == [
        "epochs_run_this_call",
        "worker",
    ]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["distribute"] == {
        "strategy": "multiworker",
        "backend": "tensorflow",
        "num_replicas": 2,
        "num_workers": 2,
        "task": "worker:0",
    }
    assert metrics["num_train_examples"] == 512
    # The chief's checkpoint holds the trained weights.
    model = load_keras_model(run_dir)
    final = _weights(out, "worker0", 0)
    for variable in model.weights:
        np.testing.assert_allclose(np.asarray(variable), final[variable.path], atol=1e-6)


def test_cli_refuses_multiworker_without_tf_config(
    pneumoniamnist_npz, tmp_path, monkeypatch, capsys
):
    from apps.medical_cnn.cli import main

    monkeypatch.delenv("TF_CONFIG", raising=False)
    run_dir = tmp_path / "run"
    argv = ["train", "--data", str(pneumoniamnist_npz), "--preset", "tiny", "--run-dir"]
    assert main([*argv, str(run_dir), "--distribute", "multiworker"]) == 2
    err = capsys.readouterr().err
    assert "error: --distribute multiworker reads the cluster from the TF_CONFIG" in err
    assert "Traceback" not in err and not run_dir.exists()
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, str(run_dir), "--distribute", "horovod"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'horovod'" in capsys.readouterr().err

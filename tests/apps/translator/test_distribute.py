"""`translator train --distribute`: two devices train like one device on the same global batches.

Each case runs `train` (from prepared arrays; the last batch filled up with
padding rows, so the replicas' shares hold different numbers of tokens) once
on one device and once over two
devices, in a fresh process, because logical CPU devices (TensorFlow) and fake
host devices (JAX) must be set up before the framework starts; the models are
compared weight by weight after one epoch (several steps).

Why the compared configs are what they are (see the translator README):
- `rmsprop` without clipping: every weight must agree.
- Adam as in the presets (epsilon 1e-9), with `clipnorm=0.05` so that
  clipping is active at every step (Keras alone would clip each TensorFlow
  replica's share of the gradient; `Distribution.prepare_optimizer` makes it
  clip the global one): every weight but the attention key biases. Their
  true gradient is zero (adding the same bias to every key shifts all scores
  of a query equally, which the softmax ignores), so what they receive is
  float rounding noise, which Adam divides by its own magnitude into
  full-size steps of either sign: no two summation orders agree there, not
  even two one-device runs with different batch layouts.
"""

import json
import re

import numpy as np
import pytest

from apps.common.model_io import load_keras_model
from apps.translator.cli import main
from apps.translator.config import tiny
from apps.translator.prepare import prepare
from tests.apps.translator.conftest import write_pairs_file
from tests.apps.translator.test_backends import short_pairs
from tests.backend_utils import run_python_script, run_tensorflow_workers

# Runs `train` for each case on one and on two devices; argv: prepared, out, cases JSON.
SCRIPT = r"""
import dataclasses, json, os, sys

if os.environ["KERAS_BACKEND"] == "tensorflow":
    import tensorflow as tf

    # Two logical CPU devices, configured before TensorFlow initialises.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras

from apps.translator.prepared import load_prepared
from apps.translator.train import train

prepared, out, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
prepared = load_prepared(prepared)
for name, overrides in cases.items():
    cfg = dataclasses.replace(prepared.config, epochs=1, eval_sentences=0, **overrides)
    for distribute in ("none", "mirrored"):
        run_dir = f"{out}/{name}-{distribute}"
        metrics = train(cfg, run_dir=run_dir, prepared=prepared, distribute=distribute, verbose=0)
        with open(f"{run_dir}/returned.json", "w") as f:
            json.dump(metrics, f)
"""

CASES = {
    "rmsprop": {"optimizer": "rmsprop", "clipnorm": None},
    "adam_clipped": {"clipnorm": 0.05},  # The presets' Adam, clipping at every step.
}


@pytest.fixture(scope="module")
def prepared_dir(spa_splits, tmp_path_factory):
    root = tmp_path_factory.mktemp("distribute")
    # Short pairs (one length bucket: few compilations on JAX): 150 training pairs
    # make 4 full batches of 32 and a last one filled up with padding rows.
    pairs = (
        short_pairs(spa_splits.train, 150)
        + short_pairs(spa_splits.val, 40)
        + short_pairs(spa_splits.test, 8)
    )
    corpus = write_pairs_file(root / "spa.txt", pairs)
    prepare(tiny(), root / "prepared", data=corpus, preset="tiny")
    return root / "prepared"


def _run(prepared_dir, out, backend, cases, **env):
    out.mkdir()
    args = [prepared_dir, out, json.dumps(cases)]
    return run_python_script(SCRIPT, args, out, backend, timeout=300, **env)


def _weights(run_dir):
    model = load_keras_model(run_dir / "model.keras", compile=False)
    return {v.path: np.asarray(v) for v in model.weights}


def _assert_same_weights(out, case, atol, skip=()):
    one, two = _weights(out / f"{case}-none"), _weights(out / f"{case}-mirrored")
    assert one.keys() == two.keys()
    compared = [k for k in one if not any(s in k for s in skip)]
    assert len(compared) > 20
    worst = max(compared, key=lambda k: np.abs(one[k] - two[k]).max())
    np.testing.assert_allclose(two[worst], one[worst], atol=atol, err_msg=worst)
    metrics = [
        json.loads((out / f"{case}-{d}" / "metrics.json").read_text()) for d in ("none", "mirrored")
    ]
    assert metrics[0]["steps_per_epoch"] == metrics[1]["steps_per_epoch"] >= 5
    assert metrics[1]["distribute"]["num_replicas"] == 2
    return metrics


def test_mirrored_strategy_on_two_cpus_matches_one_device(prepared_dir, tmp_path):
    out = tmp_path / "tf"
    _run(prepared_dir, out, "tensorflow", CASES)
    none, mirrored = _assert_same_weights(out, "rmsprop", atol=1e-5)
    assert mirrored["backend"] == "tensorflow"
    assert mirrored["best_val_loss"] == pytest.approx(none["best_val_loss"], rel=1e-5)
    _assert_same_weights(out, "adam_clipped", atol=1e-5, skip=("/key/bias",))


def test_jax_data_parallel_on_two_devices_matches_one_device(prepared_dir, tmp_path):
    out = tmp_path / "jax"
    flags = "--xla_force_host_platform_device_count=2"
    _run(prepared_dir, out, "jax", CASES, XLA_FLAGS=flags)
    none, mirrored = _assert_same_weights(out, "rmsprop", atol=1e-5)
    assert mirrored["backend"] == "jax"
    assert mirrored["best_val_loss"] == pytest.approx(none["best_val_loss"], rel=1e-5)
    _assert_same_weights(out, "adam_clipped", atol=1e-5, skip=("/key/bias",))


def test_cli_refuses_multiworker_without_tf_config(prepared_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    argv = ["train", "--prepared", str(prepared_dir), "--run-dir", str(tmp_path / "run")]
    assert main([*argv, "--distribute", "multiworker"]) == 2
    err = capsys.readouterr().err
    assert "error: --distribute multiworker reads the cluster from the TF_CONFIG" in err
    assert not (tmp_path / "run").exists()


WORKER_SCRIPT = r"""
import json, sys

from apps.translator.cli import main

prepared, run_dir, out, name = sys.argv[1:5]
argv = ["train", "--prepared", prepared, "--epochs", "1", "--run-dir", run_dir]
sys.exit(main([*argv, "--distribute", "multiworker"]))
"""


@pytest.mark.slow  # Two TensorFlow processes on 2 shared cores: about a minute.
def test_multiworker_two_processes_train_one_model(prepared_dir, tmp_path):
    run_dir = tmp_path / "run"
    worker_args = [[prepared_dir, run_dir, tmp_path, f"worker{index}"] for index in range(2)]
    logs = run_tensorflow_workers(WORKER_SCRIPT, worker_args, tmp_path, timeout=240)
    # The chief wrote the run directory; the other worker's scratch folder is gone.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["distribute"]["num_workers"] == 2 and metrics["distribute"]["task"] == "worker:0"
    assert {"config.json", "vocab_source.txt", "model.keras", "history.csv"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert not list((tmp_path / "tmp1").glob("keras-apps-worker-dirs/*"))
    printed = re.search(r'\{\s*"worker".*?\}', logs[1], re.DOTALL)
    assert json.loads(printed.group()) == {"worker": "worker:1", "epochs_run": 1}

"""The medical app on the JAX backend, in a process where TensorFlow cannot be imported.

One JAX process (`jax_process`, shared by the tests here) runs the real CLI on
a slice of the real PneumoniaMNIST data with an import blocker that refuses
`tensorflow` and `tensorflow_datasets`; it then predicts with the model it
trained and with a model trained under TensorFlow by this (TensorFlow) test
process. The tests compare both directions to 1e-5 and export the JAX-trained
model for TF Serving with the unchanged export path.
"""

import json

import numpy as np
import pytest

from apps.common.model_io import load_keras_model
from apps.medical_cnn import data as data_lib
from apps.medical_cnn.export import export
from apps.medical_cnn.train import train
from tests.apps.medical_cnn.conftest import tiny_config
from tests.backend_utils import (
    BLOCK_TENSORFLOW,
    REPORT_TENSORFLOW_ABSENCE,
    TENSORFLOW_SIDE_ONLY,
    run_python_script,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = TENSORFLOW_SIDE_ONLY

# Runs under KERAS_BACKEND=jax. A meta-path finder that raises for TensorFlow
# modules makes every `import tensorflow` fail, as on a machine without it.
JAX_SCRIPT = (
    BLOCK_TENSORFLOW
    + r"""

import numpy as np
import keras

from apps.common.model_io import load_keras_model
from apps.medical_cnn.cli import main

data, run_dir, tf_model, pixels, out = sys.argv[1:6]
rc = main(["train", "--data", data, "--preset", "tiny", "--epochs", "1", "--run-dir", run_dir])
x = np.load(pixels)
np.save(f"{out}/jax_model_on_jax.npy", load_keras_model(run_dir).predict(x, verbose=0))
np.save(f"{out}/tf_model_on_jax.npy", load_keras_model(tf_model).predict(x, verbose=0))
"""
    + REPORT_TENSORFLOW_ABSENCE
)


def write_slice(source, path, n_train, n_val):
    """A MedMNIST-style file with the first `n_train` / `n_val` real images."""
    with np.load(source) as d:
        np.savez(
            path,
            train_images=d["train_images"][:n_train],
            train_labels=d["train_labels"][:n_train],
            val_images=d["val_images"][:n_val],
            val_labels=d["val_labels"][:n_val],
        )
    return path


@pytest.fixture(scope="module")
def jax_process(pneumoniamnist_npz, tmp_path_factory):
    root = tmp_path_factory.mktemp("backends")
    data = write_slice(pneumoniamnist_npz, root / "slice.npz", 256, 128)
    # The TensorFlow side: a tiny model trained by this process.
    tf_run = root / "tf_run"
    train(tiny_config(data, epochs=1), tf_run, verbose=0, tensorboard=False)
    with np.load(data) as d:
        pixels = d["val_images"][:64, ..., None].astype("float32")
    np.save(root / "pixels.npy", pixels)
    jax_run, out = root / "jax_run", root / "out"
    out.mkdir()
    args = [data, jax_run, tf_run / "model.keras", root / "pixels.npy", out]
    proc = run_python_script(JAX_SCRIPT, args, root, "jax", timeout=240, name="jax_side.py")
    report = json.loads((out / "report.json").read_text())
    return {
        "jax_run": jax_run,
        "tf_run": tf_run,
        "pixels": pixels,
        "out": out,
        "report": report,
        "stderr": proc.stderr,
        "stdout": proc.stdout,
    }


def test_cli_trains_under_jax_without_tensorflow(jax_process):
    report, run_dir = jax_process["report"], jax_process["jax_run"]
    assert report["rc"] == 0 and report["backend"] == "jax"
    # TensorFlow was refused, and nothing loaded it.
    assert report["import_error"] and "blocked by the test" in report["import_error"]
    assert report["tensorflow_modules"] == []
    # The standard run directory, without TensorBoard logs (skipped with a note).
    names = {p.name for p in run_dir.iterdir()}
    assert {"model.keras", "config.json", "history.csv", "metrics.json", "threshold.json"} <= names
    assert "logs" not in names and "backup" not in names
    assert "TensorBoard logs need TensorFlow" in jax_process["stderr"]
    for png in ("training_curves.png", "roc_val.png", "confusion_matrix_val.png"):
        assert (run_dir / "plots" / png).read_bytes()[:8] == PNG_MAGIC
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 2 and "val_auc" in history[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["backend"] == "jax" and metrics["num_train_examples"] == 256
    assert metrics["distribute"]["strategy"] == "none"
    assert 0.0 <= json.loads((run_dir / "threshold.json").read_text())["threshold"] <= 1.0
    printed = json.loads(jax_process["stdout"].strip().splitlines()[-1])
    assert printed["run_dir"] == str(run_dir)


def test_jax_model_loads_under_tensorflow_and_exports(jax_process, tmp_path):
    import tensorflow as tf

    pixels = jax_process["pixels"]
    on_jax = np.load(jax_process["out"] / "jax_model_on_jax.npy")
    model = load_keras_model(jax_process["jax_run"])
    on_tf = model.predict(pixels, verbose=0)
    np.testing.assert_allclose(on_tf, on_jax, atol=1e-5)
    # The unchanged export path writes a SavedModel that gives the same probabilities.
    version_dir = export(jax_process["jax_run"], tmp_path / "saved")
    assert version_dir.name == "1"
    served = tf.saved_model.load(str(version_dir)).signatures["predict_pixels"](
        pixels=tf.constant(pixels)
    )
    np.testing.assert_allclose(served["probability"].numpy(), on_jax[:, 0], atol=1e-5)
    threshold = json.loads((jax_process["jax_run"] / "threshold.json").read_text())["threshold"]
    clear = np.abs(on_tf[:, 0] - threshold) > 1e-5  # Labels at the threshold may go either way.
    np.testing.assert_array_equal(
        served["label"].numpy()[clear], (on_tf[clear, 0] >= threshold).astype("int64")
    )


def test_tensorflow_model_loads_under_jax(jax_process):
    on_jax = np.load(jax_process["out"] / "tf_model_on_jax.npy")
    on_tf = load_keras_model(jax_process["tf_run"]).predict(jax_process["pixels"], verbose=0)
    assert on_tf.shape == (64, 1)
    np.testing.assert_allclose(on_jax, on_tf, atol=1e-5)


def _split(n, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 4, 4, 1)).astype("uint8")
    return data_lib.ImageSplit(images, rng.integers(0, 2, size=n).astype("int64"))


def test_array_batches_match_the_tf_data_pipeline():
    split = _split(10)
    weights = (2.0, 0.5)
    ours = data_lib.ArrayBatches(split, 2, batch_size=4, sample_weights=weights)
    theirs = list(data_lib.make_dataset(split, 2, batch_size=4, sample_weights=weights))
    assert len(ours) == len(theirs) == 3
    for (x, y, w), (tx, ty, tw) in zip((ours[i] for i in range(len(ours))), theirs, strict=True):
        assert x.dtype == np.float32 and x.shape[1:] == (4, 4, 1)
        np.testing.assert_array_equal(x, tx.numpy())
        np.testing.assert_array_equal(y, ty.numpy())
        np.testing.assert_array_equal(w, tw.numpy())
    with pytest.raises(IndexError):
        ours[3]


def test_array_batches_shuffle_each_epoch_reproducibly():
    split = _split(12)

    def orders(seed):
        batches = data_lib.ArrayBatches(split, 2, batch_size=5, shuffle=True, seed=seed)
        epochs = []
        for _ in range(2):
            epochs.append(np.concatenate([batches[i][0][:, 0, 0, 0] for i in range(len(batches))]))
            batches.on_epoch_end()
        return epochs

    first, again = orders(7), orders(7)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    for epoch in first:  # each epoch is a permutation of the whole split
        np.testing.assert_array_equal(np.sort(epoch), np.sort(split.images[:, 0, 0, 0]))
    assert not np.array_equal(first[0], first[1])


def test_array_batches_trim_or_pad_to_a_device_multiple():
    split = _split(11)  # batches of 4: 4, 4, 3
    trimmed = data_lib.ArrayBatches(split, 2, 4, multiple_of=2, remainder="trim")
    assert trimmed.num_examples == 10 and [len(trimmed[i][0]) for i in range(3)] == [4, 4, 2]
    padded = data_lib.ArrayBatches(split, 2, 4, multiple_of=2, remainder="pad")
    assert padded.pad_count == 1
    x, y, w = padded[2]
    assert len(x) == 4 and w.tolist() == [1.0, 1.0, 1.0, 0.0]
    np.testing.assert_array_equal(x[3], x[0])  # padding repeats a real example, weight 0
    np.testing.assert_array_equal(x[:3], split.images[8:].astype("float32"))
    assert len(padded[0]) == 3  # weights on every batch once padding is needed
    even = data_lib.ArrayBatches(_split(12), 2, 4, multiple_of=2)
    assert even.pad_count == 0 and len(even[2]) == 2  # (x, y): nothing to pad
    with pytest.raises(ValueError, match="batch_size=5 is not a multiple of multiple_of=2"):
        data_lib.ArrayBatches(split, 2, 5, multiple_of=2)
    with pytest.raises(ValueError, match="fewer than the 4 devices"):
        data_lib.ArrayBatches(_split(3), 2, 4, multiple_of=4, remainder="trim")
    with pytest.raises(ValueError, match="remainder must be 'trim' or 'pad'"):
        data_lib.ArrayBatches(split, 2, 4, remainder="drop")


def test_array_batches_multiclass_targets_are_one_hot():
    split = data_lib.ImageSplit(np.zeros((3, 2, 2, 3), "uint8"), np.array([0, 2, 1]))
    _, y = data_lib.ArrayBatches(split, 3, batch_size=3)[0]
    np.testing.assert_array_equal(y, np.eye(3, dtype="float32")[[0, 2, 1]])

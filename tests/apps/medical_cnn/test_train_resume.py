"""A run interrupted mid-epoch and run again ends exactly like a run that was never interrupted.

On TensorFlow here (training batches fed as `tf.data`), and on JAX in a child
process (fed as a `PyDataset`). Both check the history rows, the weights after
the last epoch (every variable, dropout seed states included), the best
checkpoint and the run's `train_seconds`.
"""

import json

import numpy as np
import pytest

from apps.common.model_io import load_keras_model
from apps.medical_cnn import data as data_lib
from apps.medical_cnn.train import train
from tests.apps.medical_cnn.conftest import tiny_config
from tests.apps.medical_cnn.test_backends import write_slice
from tests.backend_utils import (
    TENSORFLOW_SIDE_ONLY,
    CrashAtBatch,
    VariablesAtEpochEnd,
    read_history_rows,
    run_python_script,
)


def test_resumed_run_equals_uninterrupted_run(tmp_path, pneumoniamnist_npz):
    # 320 examples: 5 shuffled batches an epoch; tiny has batch norm and dropout.
    cfg = tiny_config(pneumoniamnist_npz, max_train_examples=320, epochs=3)
    args = dict(verbose=0, tensorboard=False)
    straight = VariablesAtEpochEnd()
    train(cfg, tmp_path / "straight", callbacks=[straight], **args)

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, tmp_path / "resumed", callbacks=[CrashAtBatch(epoch=1, batch=2)], **args)
    resumed = VariablesAtEpochEnd()
    report = train(cfg, tmp_path / "resumed", callbacks=[resumed], **args)

    # The interrupted epoch was redone from its start, and only the epochs after it ran.
    assert sorted(resumed.epochs) == [1, 2]
    expected, got = (
        read_history_rows(tmp_path / "straight"),
        read_history_rows(tmp_path / "resumed"),
    )
    assert [row["epoch"] for row in got] == ["0", "1", "2"]
    assert list(got[0]) == list(expected[0])
    for want, have in zip(expected, got, strict=True):
        for key in want:
            if key != "epoch_seconds":
                assert float(have[key]) == pytest.approx(float(want[key]), rel=1e-6, abs=1e-7), key
    for want, have in zip(straight.epochs[2], resumed.epochs[2], strict=True):
        np.testing.assert_allclose(have, want, rtol=0, atol=1e-6)
    best_a, best_b = (load_keras_model(tmp_path / name) for name in ("straight", "resumed"))
    for want, have in zip(best_a.weights, best_b.weights, strict=True):
        np.testing.assert_allclose(np.asarray(have), np.asarray(want), rtol=0, atol=1e-6)
    # The seconds of all three epochs, not only of the two this call ran.
    seconds = [float(row["epoch_seconds"]) for row in got]
    assert len(seconds) == 3 and min(seconds) > 0
    assert report["train_seconds"] == pytest.approx(sum(seconds), abs=0.01)
    assert (
        json.loads((tmp_path / "resumed" / "metrics.json").read_text())["train_seconds"]
        == (report["train_seconds"])
    )


def test_an_epochs_order_does_not_depend_on_the_epochs_before():
    rng = np.random.default_rng(0)
    split = data_lib.ImageSplit(
        rng.integers(0, 256, (23, 2, 2, 1)).astype("uint8"), rng.integers(0, 2, 23)
    )

    def order(batches):
        return np.concatenate([batches[i][0][:, 0, 0, 0] for i in range(len(batches))])

    walked = data_lib.ArrayBatches(split, 2, 5, shuffle=True, seed=7)
    for epoch in range(3):
        direct = data_lib.ArrayBatches(split, 2, 5, shuffle=True, seed=7)
        direct.set_epoch(epoch)  # As a run resumed at this epoch reaches it.
        np.testing.assert_array_equal(order(direct), order(walked))
        from_tf = np.concatenate([x[:, 0, 0, 0] for x, _ in direct.as_tf_dataset()])
        np.testing.assert_array_equal(from_tf, order(walked))
        walked.on_epoch_end()
    assert not np.array_equal(order(walked), order(direct))


# Under KERAS_BACKEND=jax: an uninterrupted run, then a run crashed in epoch 1 and resumed.
JAX_SCRIPT = r"""
import dataclasses, json, sys

import keras
import numpy as np

from apps.medical_cnn.config import get_config
from apps.medical_cnn.train import train
from tests.backend_utils import CrashAtBatch, VariablesAtEpochEnd

data, runs, out = sys.argv[1:4]
cfg = dataclasses.replace(get_config("tiny"), dataset="npz", data_path=data, epochs=3)
args = dict(verbose=0, tensorboard=False)
straight, resumed = VariablesAtEpochEnd(), VariablesAtEpochEnd()
train(cfg, f"{runs}/straight", callbacks=[straight], **args)
try:
    train(cfg, f"{runs}/resumed", callbacks=[CrashAtBatch(1, 2)], **args)
except RuntimeError as e:
    assert "simulated crash" in str(e)
else:
    sys.exit("the crash callback did not fire")
report = train(cfg, f"{runs}/resumed", callbacks=[resumed], **args)
diff = max(
    float(np.abs(a - b).max()) for a, b in zip(straight.epochs[2], resumed.epochs[2], strict=True)
)
with open(f"{out}/jax.json", "w") as f:
    json.dump({"resumed_epochs": sorted(resumed.epochs), "max_diff": diff, "report": report}, f)
"""


@TENSORFLOW_SIDE_ONLY
def test_resumed_run_equals_uninterrupted_run_on_jax(tmp_path, pneumoniamnist_npz):
    data = write_slice(pneumoniamnist_npz, tmp_path / "slice.npz", 320, 128)
    runs, out = tmp_path / "runs", tmp_path / "out"
    out.mkdir()
    run_python_script(JAX_SCRIPT, [data, runs, out], tmp_path, "jax", timeout=240)
    result = json.loads((out / "jax.json").read_text())
    assert result["resumed_epochs"] == [1, 2] and result["max_diff"] <= 1e-6
    expected, got = read_history_rows(runs / "straight"), read_history_rows(runs / "resumed")
    assert [row["epoch"] for row in got] == ["0", "1", "2"]
    for want, have in zip(expected, got, strict=True):
        for key in want.keys() - {"epoch_seconds"}:
            assert float(have[key]) == pytest.approx(float(want[key]), rel=1e-6, abs=1e-7), key
    seconds = sum(float(row["epoch_seconds"]) for row in got)
    assert result["report"]["train_seconds"] == pytest.approx(seconds, abs=0.01)
    assert result["report"]["backend"] == "jax"

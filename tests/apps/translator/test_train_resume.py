"""A translator run interrupted mid-epoch and run again ends exactly like an uninterrupted one."""

import dataclasses
import json

import numpy as np
import pytest

from apps.common.errors import RunDirError
from apps.common.model_io import load_keras_model
from apps.translator.config import tiny
from apps.translator.data import Splits
from apps.translator.train import train
from tests.backend_utils import CrashAtBatch, VariablesAtEpochEnd, read_history_rows


def test_resumed_text_run_equals_uninterrupted_run(tmp_path, spa_splits):
    # 400 pairs in several length buckets: about 14 shuffled batches of 32 an epoch.
    small = Splits(spa_splits.train[::40][:400], spa_splits.val[:64], spa_splits.test[:16])
    config = dataclasses.replace(tiny(), epochs=3, dropout=0.1, eval_sentences=0, patience=3)
    straight = VariablesAtEpochEnd()
    expected = train(
        config, run_dir=tmp_path / "straight", splits=small, verbose=0, callbacks=[straight]
    )

    run_dir = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, run_dir=run_dir, splits=small, verbose=0, callbacks=[CrashAtBatch(1, 3)])
    resumed = VariablesAtEpochEnd()
    metrics = train(config, run_dir=run_dir, splits=small, verbose=0, callbacks=[resumed])

    assert sorted(resumed.epochs) == [1, 2]  # The interrupted epoch again, from its start.
    want, got = read_history_rows(tmp_path / "straight"), read_history_rows(run_dir)
    assert [row["epoch"] for row in got] == ["0", "1", "2"]
    for a, b in zip(want, got, strict=True):
        assert a.keys() == b.keys()
        for key in a.keys() - {"epoch_seconds"}:
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-6, abs=1e-7), key
    for a, b in zip(straight.epochs[2], resumed.epochs[2], strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    best_a, best_b = (load_keras_model(d) for d in (tmp_path / "straight", run_dir))
    for a, b in zip(best_a.weights, best_b.weights, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)
    # The figures of the whole run, not of the last call.
    for key in ("best_epoch", "best_val_loss", "best_val_accuracy", "epochs_run"):
        assert metrics[key] == pytest.approx(expected[key], rel=1e-6), key
    assert metrics["epochs_run"] == 3
    seconds = sum(float(row["epoch_seconds"]) for row in got)
    assert metrics["train_seconds"] == pytest.approx(seconds, abs=0.1)
    assert (
        json.loads((run_dir / "metrics.json").read_text())["train_seconds"]
        == (metrics["train_seconds"])
    )
    # Training again in a finished run directory is refused, not appended to its history.
    with pytest.raises(RunDirError, match="holds the history of a finished training"):
        train(config, run_dir=run_dir, splits=small, verbose=0)
    assert len(read_history_rows(run_dir)) == 3

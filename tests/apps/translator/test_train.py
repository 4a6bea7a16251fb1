"""Training on a slice of the real corpus: loss falls, the run directory is complete, resume is safe."""

import csv
import dataclasses
import json
import shutil

import keras
import numpy as np
import pytest

from apps.common.config import load_config
from apps.common.errors import DataError, RunDirError, TrainingDivergedError
from apps.translator.config import TranslatorConfig, tiny
from apps.translator.data import Splits
from apps.translator.train import (
    TimeBudget,
    compile_model,
    learning_rate_schedule,
    train,
)
from apps.translator.vectorization import RESERVED_TOKENS, Vocabulary
from tests.backend_utils import NaNWeightsAtEpoch


def _history(run_dir):
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_run_on_real_pairs_lowers_the_loss(tiny_run):
    run_dir, metrics = tiny_run
    rows = _history(run_dir)
    assert len(rows) == 3
    losses = [float(r["loss"]) for r in rows]
    val_losses = [float(r["val_loss"]) for r in rows]
    assert losses[-1] < 0.8 * losses[0]
    assert val_losses[-1] < val_losses[0]
    assert float(rows[-1]["val_accuracy"]) > float(rows[0]["val_accuracy"])
    assert metrics["best_val_loss"] == pytest.approx(min(val_losses), rel=1e-6)


def test_run_directory_holds_everything_needed(tiny_run):
    run_dir, metrics = tiny_run
    for name in (
        "config.json",
        "vocab_source.txt",
        "vocab_target.txt",
        "model.keras",
        "history.csv",
        "metrics.json",
    ):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "backup").exists()  # The backup is removed after a full run.
    config = load_config(TranslatorConfig, run_dir / "config.json")
    assert config == dataclasses.replace(tiny(), epochs=3, eval_sentences=40)
    source_vocab = Vocabulary.load(run_dir / "vocab_source.txt")
    assert source_vocab.tokens[:4] == RESERVED_TOKENS and source_vocab.size == 300
    saved = json.loads((run_dir / "metrics.json").read_text())
    # train_pairs: the pairs trained on, those of the 4000 that fit sequence_length
    # (RUN/data/ holds them, tokenised once).
    counts = json.loads((run_dir / "data" / "manifest.json").read_text())["splits"]["train"]
    assert counts["pairs"] == 4000 and 3990 <= counts["kept_pairs"] <= 4000
    assert saved["epochs_run"] == 3 and saved["train_pairs"] == counts["kept_pairs"]
    assert saved["val_subset_sources"] == 40 and 0.0 <= saved["val_subset_bleu"] <= 100.0
    assert saved["ms_per_step"] > 0 and saved["pairs_per_second"] > 0
    assert len(saved["samples"]) == 5


def test_resuming_with_another_config_is_refused(tiny_run, spa_splits):
    run_dir, _ = tiny_run
    other = dataclasses.replace(tiny(), epochs=3, eval_sentences=40, embed_dim=16)
    with pytest.raises(ValueError, match=r"different config \(differs in: embed_dim\)"):
        train(other, run_dir=run_dir, splits=spa_splits)


def test_too_few_pairs_raise_before_the_run_directory_is_written(tmp_path, spa_splits):
    with pytest.raises(
        DataError,
        match=r"the corpus gives 10 training, 0 validation and 0 test pairs; training needs at "
        r"least 32 training pairs \(one batch, batch_size=32\) and 1 validation pair",
    ):
        train(tiny(), run_dir=tmp_path / "run", splits=Splits(spa_splits.train[:10], [], []))
    assert not (tmp_path / "run").exists()


def test_config_json_records_the_app(tiny_run):
    saved = json.loads((tiny_run[0] / "config.json").read_text(encoding="utf-8"))
    assert saved["app"] == "translator"
    with pytest.raises(RunDirError, match="written by the 'translator' app, not 'medical_cnn'"):
        load_config(TranslatorConfig, tiny_run[0] / "config.json", app="medical_cnn")


def test_padding_is_ignored_by_loss_and_accuracy():
    model = keras.Sequential([keras.Input((3, 5)), keras.layers.Identity()])
    compile_model(model, tiny(), total_steps=10)
    logits = np.log(np.full((1, 3, 5), 0.1, "float32"))
    logits[0, 0, 4] = np.log(0.6)  # Position 0 predicts 4 (right).
    labels = np.array([[4, 0, 0]])  # Positions 1 and 2 are padding.
    loss, accuracy = model.evaluate(logits, labels, verbose=0)
    np.testing.assert_allclose(loss, -np.log(0.6), rtol=1e-5)
    assert accuracy == 1.0


def test_label_smoothing_is_applied():
    config = dataclasses.replace(tiny(), label_smoothing=0.1)
    model = keras.Sequential([keras.Input((1, 4)), keras.layers.Identity()])
    compile_model(model, config, total_steps=10)
    probs = np.array([0.1, 0.7, 0.1, 0.1])
    loss, _ = model.evaluate(
        np.log(probs)[None, None].astype("float32"), np.array([[1]]), verbose=0
    )
    target = np.array([0.025, 0.9 + 0.025, 0.025, 0.025])  # y * (1 - 0.1) + 0.1 / 4
    np.testing.assert_allclose(loss, -(target * np.log(probs)).sum(), rtol=1e-5)


def test_learning_rate_warms_up_then_decays():
    config = dataclasses.replace(
        tiny(), learning_rate=1e-3, warmup_steps=100, final_learning_rate_fraction=0.1
    )
    schedule = learning_rate_schedule(config, total_steps=1100)
    values = [float(schedule(step)) for step in (0, 50, 100, 600, 1100)]
    np.testing.assert_allclose(values, [0.0, 5e-4, 1e-3, 5.5e-4, 1e-4], rtol=1e-4, atol=1e-9)
    constant = dataclasses.replace(config, warmup_steps=0, cosine_decay=False)
    assert learning_rate_schedule(constant, total_steps=1100) == 1e-3
    flat = dataclasses.replace(config, cosine_decay=False)
    assert float(learning_rate_schedule(flat, 1100)(900)) == pytest.approx(1e-3)


def test_time_budget_stops_training():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    budget = TimeBudget(minutes=0.0)
    history = model.fit(
        np.zeros((64, 2)), np.zeros((64, 1)), batch_size=8, epochs=5, callbacks=[budget], verbose=0
    )
    assert budget.stopped and len(history.history["loss"]) == 1


def test_a_run_directory_from_before_run_data_still_translates(tiny_run, tmp_path):
    # Written before training went through RUN/data/: no data/ folder and a
    # config.json without the recorded inputs (data_path, data_sha256, distribute).
    from apps.translator.translate import Translator

    run_dir, _ = tiny_run
    old = tmp_path / "old"
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("data", "logs"))
    saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    for key in ("data_path", "data_sha256", "distribute"):
        del saved[key]
    (old / "config.json").write_text(json.dumps(saved), encoding="utf-8")
    sentences = ["Where is Tom?", "I like cats.", ""]
    expected = Translator.from_run_dir(run_dir).translate(sentences)
    assert Translator.from_run_dir(old).translate(sentences) == expected
    assert expected[-1] == "" and all(expected[:2])


def test_a_diverged_run_fails_and_is_never_finished(tmp_path, spa_splits):
    # Epoch 1 trains (a sound model.keras is saved), epoch 2 diverges: the call
    # fails with a message, writes no metrics.json, and a rerun refuses too.
    small = Splits(spa_splits.train[::40][:200], spa_splits.val[:32], spa_splits.test[:8])
    config = dataclasses.replace(tiny(), epochs=3, eval_sentences=0)
    run_dir = tmp_path / "run"
    message = r"training diverged: the loss became nan in epoch 2 .*no metrics.json.*learning_rate"
    with pytest.raises(TrainingDivergedError, match=message):
        train(config, run_dir=run_dir, splits=small, verbose=0, callbacks=[NaNWeightsAtEpoch(1)])
    assert (run_dir / "model.keras").is_file() and not (run_dir / "metrics.json").exists()
    with pytest.raises(TrainingDivergedError, match=message):
        train(config, run_dir=run_dir, splits=small, verbose=0)
    assert not (run_dir / "metrics.json").exists()


def test_a_run_stopped_before_its_metrics_is_finished_without_training_again(
    tiny_run, spa_splits, tmp_path
):
    # Killed after the last epoch but before metrics.json: the same command again
    # writes the figures from the saved run and trains no further epoch.
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[0], run_dir)
    (run_dir / "metrics.json").unlink()
    history = (run_dir / "history.csv").read_text()
    small = Splits(spa_splits.train[:4000], spa_splits.val[:400], spa_splits.test[:200])
    config = load_config(TranslatorConfig, run_dir / "config.json", app="translator")
    metrics = train(config, run_dir=run_dir, splits=small, verbose=0)
    assert (run_dir / "history.csv").read_text() == history
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    for key in ("best_epoch", "best_val_loss", "epochs_run", "train_seconds", "val_subset_bleu"):
        assert metrics[key] == tiny_run[1][key], key

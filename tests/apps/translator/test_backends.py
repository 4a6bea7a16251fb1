"""The translator on the JAX backend, in a process where TensorFlow cannot be imported.

This (TensorFlow) test process prepares a slice of the real corpus with
`translator prepare` and trains a tiny model from it, once with word tokens
(`tiny`) and once with shared SentencePiece pieces (`tiny-subword`, whose ids
the JAX side detokenises in Python). One JAX process per tokenizer
(`jax_side`, shared by the tests here), whose import blocker refuses
`tensorflow` and `tensorflow_datasets`, then runs `translator train
--prepared` for three short epochs, and computes logits and cached greedy tokens for
fixed inputs with the model it trained and with the TensorFlow-trained one.
The tests compare both directions (logits to 1e-5, tokens exactly) and use
the JAX run directory with the TensorFlow-only commands (`translate`,
`export`).
"""

import csv
import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest

from apps.common.model_io import load_keras_model
from apps.translator.cli import main
from apps.translator.config import get_config, vocabulary_files
from apps.translator.data import read_pairs, split_pairs
from apps.translator.decoding import compile_decoder
from apps.translator.evaluate import evaluate_pairs
from apps.translator.model import DECODER_INPUT, SOURCE_INPUT, TranslatorLayers
from apps.translator.prepare import prepare
from apps.translator.prepared import load_prepared
from apps.translator.train import train
from apps.translator.translate import ExportedTranslator, Translator
from apps.translator.vectorization import count_words
from tests.apps.translator.conftest import write_pairs_file
from tests.backend_utils import (
    BLOCK_TENSORFLOW,
    REPORT_TENSORFLOW_ABSENCE,
    TENSORFLOW_SIDE_ONLY,
    run_python_script,
)

pytestmark = TENSORFLOW_SIDE_ONLY

# Runs under KERAS_BACKEND=jax. A meta-path finder that raises for TensorFlow
# modules makes every `import tensorflow` fail, as on a machine without it.
JAX_SCRIPT = (
    BLOCK_TENSORFLOW
    + r"""

import keras
import numpy as np

from apps.common.model_io import load_keras_model
from apps.translator.cli import main
from apps.translator.decoding import compile_decoder
from apps.translator.model import DECODER_INPUT, SOURCE_INPUT, TranslatorLayers

prepared, run_dir, tf_model, inputs, out = sys.argv[1:6]
rc = main(["train", "--prepared", prepared, "--epochs", "3", "--run-dir", run_dir])
x = np.load(inputs)
for name, path in (("jax_model", run_dir), ("tf_model", tf_model)):
    model = load_keras_model(path, compile=False)
    logits = model({SOURCE_INPUT: x["source"], DECODER_INPUT: x["decoder"]}, training=False)
    tokens = compile_decoder(TranslatorLayers(model))(x["sources"])
    np.savez(f"{out}/{name}_on_jax.npz", logits=np.asarray(logits), tokens=np.asarray(tokens))
"""
    + REPORT_TENSORFLOW_ABSENCE
)


def short_pairs(pairs, n):
    """The first `n` pairs with at most 4 source and 3 target tokens.

    They all fall in the shortest length bucket (width 4), so the JAX side
    compiles one train step, one validation step and one decoding loop.
    """
    english = count_words([p.english for p in pairs]).numpy()
    spanish = count_words([p.spanish for p in pairs]).numpy()
    keep = [p for p, e, s in zip(pairs, english, spanish, strict=True) if e <= 4 and s <= 3]
    return keep[:n]


@pytest.fixture(scope="module", params=["tiny", "tiny-subword"])
def jax_side(request, spa_splits, tmp_path_factory):
    """Both tokenizers: word ids, and SentencePiece pieces (detokenised in Python on JAX)."""
    preset = request.param
    config = get_config(preset)
    root = tmp_path_factory.mktemp(f"backends-{preset}")
    corpus = write_pairs_file(
        root / "spa.txt",
        short_pairs(spa_splits.train, 3000)
        + short_pairs(spa_splits.val, 300)
        + short_pairs(spa_splits.test, 50),
    )
    prepared_dir = root / "prepared"
    prepare(config, prepared_dir, data=corpus, preset=preset)
    # The TensorFlow side: a tiny model trained by this process on the same arrays.
    tf_run = root / "tf_run"
    train(dataclasses.replace(config, epochs=3), run_dir=tf_run, prepared=prepared_dir, verbose=0)
    val = load_prepared(prepared_dir).split("val")
    inputs = {
        "source": val.source_tokens[:16],
        "decoder": val.decoder_tokens[:16],
        "sources": val.sources[:16],
    }
    np.savez(root / "inputs.npz", **inputs)
    jax_run, out = root / "jax_run", root / "out"
    out.mkdir()
    args = [prepared_dir, jax_run, tf_run / "model.keras", root / "inputs.npz", out]
    proc = run_python_script(JAX_SCRIPT, args, root, "jax", timeout=300, name="jax_side.py")
    return {
        "config": config,
        "corpus": corpus,
        "prepared": prepared_dir,
        "jax_run": jax_run,
        "tf_run": tf_run,
        "inputs": inputs,
        "out": out,
        "report": json.loads((out / "report.json").read_text()),
        "stdout": proc.stdout,
        "stderr": proc.stderr,
    }


def _on_tensorflow(model_path, inputs):
    model = load_keras_model(model_path, compile=False)
    logits = model(
        {SOURCE_INPUT: inputs["source"], DECODER_INPUT: inputs["decoder"]}, training=False
    )
    tokens = compile_decoder(TranslatorLayers(model))(inputs["sources"])
    return np.asarray(logits), np.asarray(tokens)


def test_cli_trains_from_prepared_arrays_under_jax_without_tensorflow(jax_side):
    report, run_dir = jax_side["report"], jax_side["jax_run"]
    assert report["rc"] == 0 and report["backend"] == "jax"
    # TensorFlow was refused, and nothing loaded it.
    assert report["import_error"] and "blocked by the test" in report["import_error"]
    assert report["tensorflow_modules"] == []
    names = {p.name for p in run_dir.iterdir()}
    expected = {"model.keras", "config.json", "history.csv", "metrics.json"}
    vocabularies = vocabulary_files(jax_side["config"])
    assert expected | set(vocabularies) <= names
    assert "logs" not in names and "backup" not in names
    for name in vocabularies:
        assert (run_dir / name).read_bytes() == (jax_side["prepared"] / name).read_bytes()
    # Without --preset, the preparation's config, with the --epochs override.
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved == {
        "app": "translator",  # Which app wrote the run directory.
        **json.loads((jax_side["prepared"] / "manifest.json").read_text())["config"],
        "epochs": 3,
        # The inputs, so that the config says how to reproduce the run.
        "data_path": str(jax_side["prepared"]),
        "data_sha256": hashlib.sha256(
            (jax_side["prepared"] / "manifest.json").read_bytes()
        ).hexdigest(),
        "distribute": "none",
    }
    with open(run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows]
    assert len(rows) == 3 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] and math.isfinite(float(rows[-1]["val_loss"]))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["backend"] == "jax" and metrics["data"] == "prepared"
    assert metrics["epochs_run"] == 3 and metrics["distribute"]["strategy"] == "none"
    assert metrics["val_subset_sources"] == 50  # BLEU computed without TensorFlow.
    printed = json.loads(
        jax_side["stdout"][jax_side["stdout"].index("{") :].rsplit("}", 1)[0] + "}"
    )
    assert printed["best_val_loss"] == metrics["best_val_loss"]


def test_jax_trained_model_gives_the_same_logits_and_tokens_under_tensorflow(jax_side):
    on_jax = np.load(jax_side["out"] / "jax_model_on_jax.npz")
    logits, tokens = _on_tensorflow(jax_side["jax_run"], jax_side["inputs"])
    width = jax_side["config"].sequence_length
    assert logits.shape == (16, width, len(load_prepared(jax_side["prepared"]).target_tokens))
    np.testing.assert_allclose(logits, on_jax["logits"], atol=1e-5)
    assert len(np.unique(tokens)) >= 5  # Real words, not one repeated token.
    np.testing.assert_array_equal(tokens, on_jax["tokens"])


def test_tensorflow_trained_model_gives_the_same_logits_and_tokens_under_jax(jax_side):
    on_jax = np.load(jax_side["out"] / "tf_model_on_jax.npz")
    logits, tokens = _on_tensorflow(jax_side["tf_run"], jax_side["inputs"])
    np.testing.assert_allclose(on_jax["logits"], logits, atol=1e-5)
    assert len(np.unique(tokens)) >= 5
    np.testing.assert_array_equal(on_jax["tokens"], tokens)


def test_jax_run_scores_like_its_tensorflow_translator(jax_side):
    # The JAX side decoded prepared ids and detokenised in Python; the
    # TensorFlow Translator tokenises text and decodes in one graph.
    metrics = json.loads((jax_side["jax_run"] / "metrics.json").read_text())
    translator = Translator.from_run_dir(jax_side["jax_run"])
    val = split_pairs(read_pairs(jax_side["corpus"])).val
    scores = evaluate_pairs(translator, val, limit=50, num_samples=5)
    assert metrics["val_subset_bleu"] == scores["bleu"]
    assert metrics["val_subset_chrf"] == scores["chrf"]
    assert metrics["samples"] == scores["samples"]


def test_jax_run_translates_and_exports_with_the_tensorflow_commands(jax_side, tmp_path, capsys):
    sentences = ["Go.", "I'm hungry.", "Where is Tom?"]
    run_dir = jax_side["jax_run"]
    assert main(["translate", "--model", str(run_dir), *sentences]) == 0
    translated = capsys.readouterr().out.splitlines()
    assert translated == Translator.from_run_dir(run_dir).translate(sentences)
    base = tmp_path / "saved_models" / "translator"
    assert main(["export", "--model", str(run_dir), "--base", str(base)]) == 0
    assert capsys.readouterr().out.strip() == str(base / "1")
    assert ExportedTranslator(base / "1").translate(sentences) == translated

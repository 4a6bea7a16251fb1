"""`translator prepare` and training from its arrays (on TensorFlow; JAX: test_backends.py)."""

import dataclasses
import hashlib
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from apps.common.config import config_to_dict, load_config
from apps.common.errors import DataError, RunDirError
from apps.common.model_io import load_keras_model
from apps.translator.batches import ArrayBatches, make_dataset
from apps.translator.cli import main
from apps.translator.config import TranslatorConfig, tiny
from apps.translator.data import (
    encode_pairs,
    group_references,
    read_pairs,
    split_pairs,
)
from apps.translator.evaluate import evaluate_pairs
from apps.translator.model import DECODER_INPUT, SOURCE_INPUT, build_model
from apps.translator.prepare import prepare
from apps.translator.prepared import PreparedSplit, load_prepared
from apps.translator.train import compile_model, train
from apps.translator.translate import Translator
from apps.translator.vectorization import (
    END_ID,
    PAD_ID,
    RESERVED_TOKENS,
    START_ID,
    Vocabulary,
    build_vocabularies,
)
from tests.apps.translator.conftest import corpus_slice, write_pairs_file
from tests.backend_utils import CrashAtBatch

CONFIG = dataclasses.replace(tiny(), epochs=1, eval_sentences=40)


@pytest.fixture(scope="module")
def corpus(spa_splits, tmp_path_factory):
    """A spa.txt-style slice of the real corpus: 1500 / 150 / 100 pairs of all lengths."""
    path = tmp_path_factory.mktemp("corpus") / "spa.txt"
    return write_pairs_file(path, corpus_slice(spa_splits, 1500, 150, 100, step=40))


@pytest.fixture(scope="module")
def prepared_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "tiny"
    prepare(CONFIG, out, data=corpus, preset="tiny")
    return out


def split_pairs_of(corpus):
    return split_pairs(read_pairs(corpus))


def _rows(*arrays):
    return [tuple(np.concatenate(row).tolist()) for row in zip(*arrays, strict=True)]


def test_prepare_writes_arrays_vocabularies_references_and_manifest(corpus, prepared_dir):
    splits = split_pairs_of(corpus)
    manifest = json.loads((prepared_dir / "manifest.json").read_text())
    assert manifest["format"] == "translator-prepared" and manifest["preset"] == "tiny"
    assert manifest["config"] == config_to_dict(CONFIG)
    assert manifest["data"]["sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((prepared_dir / name).read_bytes()).hexdigest() == digest
    assert not [p.name for p in prepared_dir.iterdir() if p.name.startswith(".")]  # no temp files

    # The vocabularies are the ones a text-trained run builds from the same pairs.
    source_vocab, target_vocab = build_vocabularies(splits.train, CONFIG)
    assert Vocabulary.load(prepared_dir / "vocab_source.txt").tokens == source_vocab.tokens
    assert Vocabulary.load(prepared_dir / "vocab_target.txt").tokens == target_vocab.tokens
    assert manifest["vocab_sizes"] == {"source": source_vocab.size, "target": target_vocab.size}

    prepared = load_prepared(prepared_dir)
    for name in ("train", "val", "test"):
        pairs = getattr(splits, name)
        split = prepared.split(name)
        # The same ids as the tf.data pipeline's, padded to sequence_length.
        source, decoder, labels = (
            x.to_tensor(shape=[None, 10]).numpy()
            for x in encode_pairs(pairs, source_vocab, target_vocab, 10)
        )
        np.testing.assert_array_equal(split.source_tokens, source)
        np.testing.assert_array_equal(split.decoder_tokens, decoder)
        np.testing.assert_array_equal(split.labels, labels)
        assert (split.decoder_tokens[:, 0] == START_ID).all()
        # Teacher forcing: the decoder input is the labels shifted right by one.
        shifted = np.where(split.labels[:, :-1] == END_ID, PAD_ID, split.labels[:, :-1])
        np.testing.assert_array_equal(split.decoder_tokens[:, 1:], shifted)
        real = split.labels != PAD_ID
        ends = real.sum(axis=1) - 1
        assert (split.labels[np.arange(len(split)), ends] == END_ID).all()
        counts = manifest["splits"][name]
        assert counts["pairs"] == len(pairs) and counts["kept_pairs"] == len(split)
        assert counts["label_tokens"] == int(real.sum())
        if name != "train":
            grouped = group_references(pairs)
            assert prepared.references(name) == grouped
            expected = source_vocab.encode([english for english, _ in grouped])
            np.testing.assert_array_equal(
                split.sources, expected[:, :10].to_tensor(shape=[None, 10]).numpy()
            )


def test_array_batches_are_the_tf_data_batches(corpus, prepared_dir):
    splits = split_pairs_of(corpus)
    vocabs = build_vocabularies(splits.train, CONFIG)
    ds, num_batches = make_dataset(splits.train, *vocabs, sequence_length=10, batch_size=32)
    expected = sorted(
        (x[SOURCE_INPUT].shape[1], tuple(sorted(_rows(x[SOURCE_INPUT], x[DECODER_INPUT], y))))
        for x, y in ds.as_numpy_iterator()
    )
    batches = ArrayBatches(load_prepared(prepared_dir).split("train"), 32, 10)
    assert len(batches) == num_batches
    got = []
    for i in range(len(batches)):
        x, y = batches[i]
        assert x[SOURCE_INPUT].shape == x[DECODER_INPUT].shape == y.shape
        assert y.shape[0] == 32  # Short batches are filled up with all-[PAD] rows.
        keep = (y != PAD_ID).any(axis=1)
        got.append(
            (
                y.shape[1],
                tuple(sorted(_rows(x[SOURCE_INPUT][keep], x[DECODER_INPUT][keep], y[keep]))),
            )
        )
    assert len({width for width, _ in got}) > 1  # Several length buckets.
    assert sorted(got) == expected


def test_array_batches_shuffle_reproducibly_and_differently_each_epoch(prepared_dir):
    split = load_prepared(prepared_dir).split("train")

    def epoch_rows(batches):
        return [
            batches[i][1][:, 0].tolist() + batches[i][1].sum(axis=1).tolist()
            for i in range(len(batches))
        ]

    a = ArrayBatches(split, 32, 10, shuffle=True, seed=3)
    b = ArrayBatches(split, 32, 10, shuffle=True, seed=3)
    first = epoch_rows(a)
    assert first == epoch_rows(b)
    a.on_epoch_end()
    second = epoch_rows(a)
    assert second != first and len(second) == len(first)
    # Every pair is seen once per epoch.
    labels = np.concatenate(
        [np.pad(a[i][1], [(0, 0), (0, 10 - a[i][1].shape[1])]) for i in range(len(a))]
    )
    labels = labels[(labels != PAD_ID).any(axis=1)]
    assert sorted(map(tuple, labels.tolist())) == sorted(map(tuple, split.labels.tolist()))
    # The order is a function of (seed, epoch) alone, and the tf.data form yields it too.
    b.set_epoch(1)
    assert epoch_rows(b) == second
    from_tf = [(x[SOURCE_INPUT], y) for x, y in b.as_tf_dataset().as_numpy_iterator()]
    assert len(from_tf) == len(b)
    for (source, labels), i in zip(from_tf, range(len(b)), strict=True):
        np.testing.assert_array_equal(source, b[i][0][SOURCE_INPUT])
        np.testing.assert_array_equal(labels, b[i][1])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        ArrayBatches(split, 0, 10)


def test_padding_rows_change_neither_loss_nor_gradients():
    keras.utils.set_random_seed(0)
    model = build_model(CONFIG)
    compile_model(model, CONFIG, total_steps=10)
    rng = np.random.default_rng(0)
    source = rng.integers(4, 300, (3, 6)).astype("int32")
    decoder = rng.integers(4, 300, (3, 6)).astype("int32")
    labels = rng.integers(4, 300, (3, 6)).astype("int32")
    source[1, 3:] = decoder[1, 4:] = labels[1, 4:] = PAD_ID

    def loss_and_gradients(n_fill):
        fill = np.zeros((n_fill, 6), "int32")
        x = {
            SOURCE_INPUT: np.concatenate([source, fill]),
            DECODER_INPUT: np.concatenate([decoder, fill]),
        }
        with tf.GradientTape() as tape:
            loss = model.loss(np.concatenate([labels, fill]), model(x, training=True))
        grads = tape.gradient(loss, model.trainable_weights)
        return float(loss), [tf.convert_to_tensor(g).numpy() for g in grads]

    loss, grads = loss_and_gradients(0)
    filled_loss, filled_grads = loss_and_gradients(5)
    assert filled_loss == pytest.approx(loss, rel=1e-6)
    for g, f in zip(grads, filled_grads, strict=True):
        np.testing.assert_allclose(f, g, atol=1e-6)


def test_training_from_prepared_arrays_on_tensorflow(corpus, prepared_dir, tmp_path):
    run_dir = tmp_path / "run"
    metrics = train(CONFIG, run_dir=run_dir, prepared=prepared_dir, verbose=0)
    assert metrics["data"] == "prepared" and metrics["backend"] == "tensorflow"
    assert metrics["train_pairs"] == len(load_prepared(prepared_dir).split("train"))
    assert metrics["label_tokens_per_second"] > 0
    for name in ("vocab_source.txt", "vocab_target.txt"):
        assert (run_dir / name).read_bytes() == (prepared_dir / name).read_bytes()
    # The BLEU computed from prepared ids (no text tokenising) is the one that the
    # run directory's Translator gets on the same validation sentences.
    translator = Translator.from_run_dir(run_dir)
    scores = evaluate_pairs(translator, split_pairs_of(corpus).val, limit=40, num_samples=5)
    assert metrics["val_subset_sources"] == scores["num_sources"] == 40
    assert metrics["val_subset_bleu"] == scores["bleu"]
    assert metrics["val_subset_chrf"] == scores["chrf"]
    assert metrics["samples"] == scores["samples"]


def test_training_config_must_match_the_preparation(prepared_dir, tmp_path):
    other = dataclasses.replace(CONFIG, sequence_length=12, target_vocab_size=200)
    with pytest.raises(ValueError, match=r"sequence_length=12 \(prepared with 10\)"):
        train(other, run_dir=tmp_path / "run", prepared=prepared_dir)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="either prepared data or a corpus"):
        train(CONFIG, run_dir=tmp_path / "run", prepared=prepared_dir, data="spa.txt")


def test_damaged_or_foreign_folders_are_refused(prepared_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="prepared data folder not found"):
        load_prepared(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no manifest.json"):
        load_prepared(tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in prepared_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / "train.npz").write_bytes((copy / "train.npz").read_bytes()[:-100])  # truncated
    with pytest.raises(ValueError, match="train.npz does not match its sha256"):
        load_prepared(copy).split("train")
    manifest = json.loads((copy / "manifest.json").read_text())
    edited = {k: v for k, v in manifest.items() if k != "splits"}
    (copy / "manifest.json").write_text(json.dumps(edited))
    with pytest.raises(DataError, match=r"lacks or has malformed 'splits' .*re-run translator"):
        load_prepared(copy)
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="version 1"):
        load_prepared(copy)
    with pytest.raises(ValueError, match="No prepared pairs"):
        ArrayBatches(PreparedSplit(*(np.zeros((0, 10), "int32"),) * 3), 8, 10)


def test_cli_prepare_and_train_errors(corpus, tmp_path, capsys):
    out = tmp_path / "prepared"
    argv = ["prepare", "--data", str(corpus), "--out", str(out), "--preset", "tiny"]
    assert main([*argv, "--max-train-pairs", "300"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["splits"]["train"]["pairs"] == 300 and printed["preset"] == "tiny"
    assert load_prepared(out).config.max_train_pairs == 300
    both = [
        "train",
        "--prepared",
        str(out),
        "--data",
        str(corpus),
        "--run-dir",
        str(tmp_path / "r"),
    ]
    assert main(both) == 2
    assert "error: pass --data CORPUS or --prepared DIR, not both" in capsys.readouterr().err
    assert main(["train", "--prepared", str(tmp_path / "nope")]) == 2
    assert "error: prepared data folder not found" in capsys.readouterr().err
    # --preset tiny without --max-train-pairs 300 does not tokenise like this folder.
    assert (
        main(
            ["train", "--prepared", str(out), "--preset", "tiny", "--run-dir", str(tmp_path / "r")]
        )
        == 2
    )
    assert "max_train_pairs=None (prepared with 300)" in capsys.readouterr().err


def _weights(run_dir):
    return load_keras_model(run_dir / "model.keras", compile=False).get_weights()


def test_text_run_tokenises_into_run_data_and_trains_as_a_prepared_run(
    corpus, prepared_dir, tmp_path
):
    config = dataclasses.replace(CONFIG, eval_sentences=0)
    text_run, prepared_run = tmp_path / "text", tmp_path / "prepared"
    metrics = train(config, data=corpus, run_dir=text_run, verbose=0)
    # RUN/data/ is the folder `translator prepare` writes for the same corpus and config.
    data_dir = text_run / "data"
    manifest = json.loads((data_dir / "manifest.json").read_text())
    expected = json.loads((prepared_dir / "manifest.json").read_text())
    assert manifest["files"] == expected["files"] and manifest["splits"] == expected["splits"]
    assert manifest["data"] == expected["data"]
    for name in ("vocab_source.txt", "vocab_target.txt"):
        assert (text_run / name).read_bytes() == (data_dir / name).read_bytes()
    # config.json records the inputs (corpus path and sha256, strategy).
    saved = json.loads((text_run / "config.json").read_text())
    assert saved["data_path"] == str(corpus) and saved["distribute"] == "none"
    assert saved["data_sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert metrics["data"] == "text"
    # Same seed, same arrays: the same weights as training from the prepared folder.
    train(config, prepared=prepared_dir, run_dir=prepared_run, verbose=0)
    for a, b in zip(_weights(text_run), _weights(prepared_run), strict=True):
        np.testing.assert_array_equal(a, b)
    prepared_saved = json.loads((prepared_run / "config.json").read_text())
    assert prepared_saved["data_path"] == str(prepared_dir)
    digest = hashlib.sha256((prepared_dir / "manifest.json").read_bytes()).hexdigest()
    assert prepared_saved["data_sha256"] == digest


def test_resumed_text_run_reuses_run_data(corpus, tmp_path, monkeypatch):
    import apps.translator.prepare as prepare_module

    config = dataclasses.replace(CONFIG, epochs=2, eval_sentences=0)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, data=corpus, run_dir=run_dir, verbose=0, callbacks=[CrashAtBatch(1, 1)])
    manifest = (run_dir / "data" / "manifest.json").read_bytes()

    def refuse(*args, **kwargs):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(prepare_module, "prepare", refuse)
    # Another corpus or other tokenisation settings do not match RUN/data/.
    other = write_pairs_file(tmp_path / "other.txt", read_pairs(corpus)[::2])
    with pytest.raises(RunDirError, match=r"the corpus \(sha256 of .*other.txt\)"):
        train(config, data=other, run_dir=run_dir, verbose=0)
    with pytest.raises(RunDirError, match=r"different config \(differs in: min_count\)"):
        train(dataclasses.replace(config, min_count=2), data=corpus, run_dir=run_dir)
    # Also without config.json (a run stopped between tokenising and writing it).
    saved = (run_dir / "config.json").read_bytes()
    (run_dir / "config.json").unlink()
    with pytest.raises(RunDirError, match=r"tokenised from other data or settings \(min_count"):
        train(dataclasses.replace(config, min_count=2), data=corpus, run_dir=run_dir)
    (run_dir / "config.json").write_bytes(saved)
    metrics = train(config, data=corpus, run_dir=run_dir, verbose=0)
    assert metrics["epochs_run"] == 2
    assert (run_dir / "data" / "manifest.json").read_bytes() == manifest


def test_old_run_directories_and_configs_still_load(corpus, tmp_path):
    # A config.json from before the inputs were recorded loads with defaults.
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    old = {k: v for k, v in config_to_dict(CONFIG).items()}
    for key in ("data_path", "data_sha256", "distribute"):
        old.pop(key)
    (run_dir / "config.json").write_text(json.dumps({"app": "translator", **old}))
    loaded = load_config(TranslatorConfig, run_dir / "config.json", app="translator")
    assert loaded == CONFIG and loaded.distribute == "none" and loaded.data_path is None
    # Resuming a text run written before RUN/data/ existed tokenises into it; the
    # vocabularies it holds must be the ones the run has (else: a new --run-dir).
    Vocabulary([*RESERVED_TOKENS, "other"]).save(run_dir / "vocab_source.txt")
    with pytest.raises(RunDirError, match="trained on other data; pass a new --run-dir"):
        train(CONFIG, data=corpus, run_dir=run_dir, verbose=0)

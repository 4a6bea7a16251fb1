"""Shared, session-scoped fixtures: a trained synthetic model and the tiny runs.

Training happens once per session and is reused by every test that needs a
trained model (decoding equality, export, CLI). The real corpus split
(`spa_splits`) and the tiny runs are trained in `tests/apps/conftest.py`,
which the demo page's tests share.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pytest

from apps.translator.config import tiny
from apps.translator.data import Splits
from apps.translator.decoding import compile_decoder
from apps.translator.model import DECODER_INPUT, SOURCE_INPUT, TranslatorLayers, build_model
from apps.translator.train import compile_model
from apps.translator.vectorization import END_ID, START_ID

REVERSE_VOCAB = 16
REVERSE_LENGTH = 8


def make_reverse_task(n: int, seed: int):
    """Random id sequences (length 2-6, ids 4..15) and their reversal, as model inputs.

    Returns (source, decoder_input, labels), each `(n, REVERSE_LENGTH)` int32,
    0-padded; labels end with `END_ID`, decoder inputs start with `START_ID`.
    """
    rng = np.random.default_rng(seed)
    source = np.zeros((n, REVERSE_LENGTH), "int32")
    decoder_input = np.zeros_like(source)
    labels = np.zeros_like(source)
    for i, k in enumerate(rng.integers(2, 7, n)):
        tokens = rng.integers(4, REVERSE_VOCAB, k)
        source[i, :k] = tokens
        decoder_input[i, 0] = START_ID
        decoder_input[i, 1 : k + 1] = tokens[::-1]
        labels[i, :k] = tokens[::-1]
        labels[i, k] = END_ID
    return source, decoder_input, labels


@pytest.fixture(scope="session")
def reverse_model():
    """A `tiny`-sized model trained to reverse sequences until greedy decoding is exact.

    Returns (model, held-out source, expected output ids, rounds trained).
    """
    keras.utils.set_random_seed(7)
    config = dataclasses.replace(
        tiny(),
        sequence_length=REVERSE_LENGTH,
        source_vocab_size=REVERSE_VOCAB,
        target_vocab_size=REVERSE_VOCAB,
        learning_rate=3e-3,
        warmup_steps=50,
        cosine_decay=False,
    )
    source, decoder_input, labels = make_reverse_task(4000, seed=0)
    test_source, _, test_labels = make_reverse_task(200, seed=1)
    model = compile_model(build_model(config), config, total_steps=1)
    decode = compile_decoder(TranslatorLayers(model))
    for rounds in range(1, 7):  # noqa: B007 (returned below)
        model.fit(
            {SOURCE_INPUT: source, DECODER_INPUT: decoder_input},
            labels,
            batch_size=64,
            epochs=3,
            verbose=0,
        )
        if np.array_equal(np.asarray(decode(test_source)), test_labels):
            break
    return model, test_source, test_labels, rounds


@pytest.fixture(scope="session")
def tiny_run(translator_tiny_run):
    """A `tiny` model trained 3 epochs on 4000 real pairs (`tests/apps/conftest.py`: shared
    with the demo page's tests); returns (run_dir, metrics)."""
    return translator_tiny_run


@pytest.fixture(scope="session")
def tiny_subword_run(translator_tiny_subword_run):
    """A `tiny-subword` model (shared vocabulary, tied embeddings) trained 3 epochs on 4000
    real pairs; returns (run_dir, metrics)."""
    return translator_tiny_subword_run


def write_pairs_file(path: Path, pairs) -> Path:
    """Writes pairs as a `spa.txt`-style file (`English<TAB>Spanish` lines); returns the path."""
    path.write_text("".join(f"{p.english}\t{p.spanish}\n" for p in pairs), encoding="utf-8")
    return path


def corpus_slice(splits: Splits, train: int, val: int, test: int, step: int = 1) -> list:
    """Every `step`-th pair of each split, up to the counts given (the corpus is sorted by length)."""
    return splits.train[::step][:train] + splits.val[::step][:val] + splits.test[::step][:test]

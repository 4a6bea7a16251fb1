"""The tiny trained runs, shared by the tests of every app: trained once per session.

`tests/apps/medical_cnn` and `tests/apps/translator` know them as `tiny_run`
(and `tiny_subword_run`); the demo page's tests (`tests/apps/demo`) use a run
of each app, the same ones.
"""

from __future__ import annotations

import dataclasses

import pytest


@pytest.fixture(scope="session")
def medical_tiny_run(pneumoniamnist_npz, tmp_path_factory):
    """A finished medical-cnn `tiny` run directory trained on the real PneumoniaMNIST train/val;
    returns (run_dir, report)."""
    from apps.medical_cnn.train import train
    from tests.apps.medical_cnn.conftest import tiny_config

    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    report = train(tiny_config(pneumoniamnist_npz), run_dir, verbose=0, tensorboard=False)
    return run_dir, report


@pytest.fixture(scope="session")
def spa_splits(spa_eng_zip):
    """The real English-Spanish corpus, split as training splits it."""
    from apps.translator.data import load_splits

    return load_splits(spa_eng_zip)


def _small_translator_run(tmp_path_factory, spa_splits, config, name):
    from apps.translator.data import Splits
    from apps.translator.train import train

    run_dir = tmp_path_factory.mktemp(name) / "run"
    small = Splits(spa_splits.train[:4000], spa_splits.val[:400], spa_splits.test[:200])
    config = dataclasses.replace(config, epochs=3, eval_sentences=40)
    metrics = train(config, run_dir=run_dir, splits=small, verbose=0)
    return run_dir, metrics


@pytest.fixture(scope="session")
def translator_tiny_run(tmp_path_factory, spa_splits):
    """A translator `tiny` model trained 3 epochs on 4000 real pairs; returns (run_dir, metrics)."""
    from apps.translator.config import tiny

    return _small_translator_run(tmp_path_factory, spa_splits, tiny(), "translator")


@pytest.fixture(scope="session")
def translator_tiny_subword_run(tmp_path_factory, spa_splits):
    """A translator `tiny-subword` model (shared vocabulary, tied embeddings) trained 3 epochs
    on 4000 real pairs; returns (run_dir, metrics)."""
    from apps.translator.config import tiny_subword

    return _small_translator_run(tmp_path_factory, spa_splits, tiny_subword(), "translator_subword")

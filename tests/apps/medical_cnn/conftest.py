"""Fixtures for the medical_cnn tests: one tiny model trained on the real data, shared."""

import dataclasses

import pytest

from apps.medical_cnn.config import get_config


def tiny_config(npz_path, **overrides):
    cfg = get_config("tiny")
    return dataclasses.replace(cfg, dataset="pneumoniamnist", data_path=str(npz_path), **overrides)


@pytest.fixture(scope="session")
def tiny_run(pneumoniamnist_npz, tmp_path_factory):
    """A finished `tiny` run directory trained on the real PneumoniaMNIST train/val."""
    from apps.medical_cnn.train import train

    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    report = train(tiny_config(pneumoniamnist_npz), run_dir, verbose=0, tensorboard=False)
    return run_dir, report

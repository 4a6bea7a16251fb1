"""Fixtures for the medical_cnn tests: one tiny model trained on the real data, shared."""

import dataclasses

import pytest

from apps.medical_cnn.config import get_config


def tiny_config(npz_path, **overrides):
    cfg = get_config("tiny")
    return dataclasses.replace(cfg, dataset="pneumoniamnist", data_path=str(npz_path), **overrides)


@pytest.fixture(scope="session")
def tiny_run(medical_tiny_run):
    """A finished `tiny` run directory trained on the real PneumoniaMNIST train/val
    (`tests/apps/conftest.py`: shared with the demo page's tests); returns (run_dir, report)."""
    return medical_tiny_run

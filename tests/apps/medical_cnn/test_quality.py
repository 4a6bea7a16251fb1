"""Training the presets to quality (slow: minutes; run with `-m slow`).

Times are measured by `benchmarks/medical_cnn.py`, not asserted here.
"""

import dataclasses

import pytest

from apps.medical_cnn.config import get_config
from apps.medical_cnn.crossval import train_folds
from apps.medical_cnn.train import train


@pytest.mark.slow
def test_default_preset_quality(tmp_path, pneumoniamnist_npz):
    cfg = dataclasses.replace(get_config("default"), data_path=str(pneumoniamnist_npz))
    report = train(cfg, tmp_path / "run", verbose=0, tensorboard=False)
    assert report["auc"] >= 0.985
    assert report["at_threshold"]["accuracy"] >= 0.94


@pytest.mark.slow
def test_best_preset_out_of_fold_quality_and_calibration(tmp_path, pneumoniamnist_npz):
    cfg = dataclasses.replace(get_config("best"), data_path=str(pneumoniamnist_npz), seed=0)
    report = train_folds(cfg, tmp_path / "run", verbose=0, tensorboard=False)
    assert report["split"] == "out_of_fold" and report["num_examples"] == 5232
    assert report["auc"] >= 0.99
    assert report["at_threshold"]["accuracy"] >= 0.94
    assert report["ece"] <= 0.03

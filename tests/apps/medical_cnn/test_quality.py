"""Training the `default` preset to quality (slow: minutes; run with `-m slow`)."""

import dataclasses
import time

import pytest

from apps.medical_cnn.config import get_config
from apps.medical_cnn.train import train


@pytest.mark.slow
def test_default_preset_quality_and_time(tmp_path, pneumoniamnist_npz):
    cfg = dataclasses.replace(get_config("default"), data_path=str(pneumoniamnist_npz))
    start = time.perf_counter()
    report = train(cfg, tmp_path / "run", verbose=0, tensorboard=False)
    minutes = (time.perf_counter() - start) / 60
    assert minutes <= 5.0, f"default preset took {minutes:.1f} min (budget: 5 on 2 CPU cores)"
    assert report["auc"] >= 0.985
    assert report["at_threshold"]["accuracy"] >= 0.94

"""Shared pytest fixtures: quiet TensorFlow, seeded runs and the real data sets."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The real data sets live beside the checkout (../shared/data); SHARED_DATA_DIR overrides.
SHARED_DATA_DIR = Path(os.environ.get("SHARED_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))


def _require(relative: str) -> Path:
    path = SHARED_DATA_DIR / relative
    if not path.is_file():
        # Fail, never skip: CI must not go green without the data-dependent tests.
        pytest.fail(
            f"real data file not found: looked for {path}. Put the shared data beside the "
            f"checkout (../shared/data) or set SHARED_DATA_DIR to the folder that holds "
            f"'{relative}'."
        )
    return path


@pytest.fixture(scope="session")
def pneumoniamnist_npz() -> Path:
    """Path to the real PneumoniaMNIST file (train and val splits)."""
    return _require("pneumoniamnist/pneumoniamnist.npz")


@pytest.fixture(scope="session")
def spa_eng_zip() -> Path:
    """Path to the real Tatoeba/Anki English-Spanish archive."""
    return _require("spa-eng/spa-eng.zip")


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state."""
    keras.utils.set_random_seed(1234)
    yield

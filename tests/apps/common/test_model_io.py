import keras
import numpy as np
import pytest

from apps.common.model_io import ModelLoadError, load_keras_model, resolve_model_path


@pytest.fixture
def saved_model(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = tmp_path / "run" / "model.keras"
    path.parent.mkdir()
    model.save(path)
    return model, path


def test_loads_file_and_run_dir(saved_model):
    model, path = saved_model
    x = np.ones((2, 3), "float32")
    for where in (path, path.parent):
        loaded = load_keras_model(where)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_resolve_errors(tmp_path):
    assert issubclass(ModelLoadError, ValueError)
    with pytest.raises(ModelLoadError, match="model not found: .*missing.keras"):
        resolve_model_path(tmp_path / "missing.keras")
    with pytest.raises(ModelLoadError, match="holds no model.keras"):
        resolve_model_path(tmp_path)


def test_truncated_and_corrupt_files(saved_model, tmp_path):
    _, path = saved_model
    data = path.read_bytes()
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated.keras is not a valid .keras file"):
        load_keras_model(truncated)
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"this is not a model")
    with pytest.raises(ModelLoadError, match="not a valid .keras file"):
        load_keras_model(garbage)
    # Flip bytes inside a member: the archive is intact but its CRC fails.
    flipped = bytearray(data)
    mid = data.find(b"config.json") + 200
    flipped[mid : mid + 8] = b"XXXXXXXX"
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_keras_model(corrupt)
    wrong_suffix = tmp_path / "model.h5"
    wrong_suffix.write_bytes(data)
    with pytest.raises(ModelLoadError, match="not a .keras file"):
        load_keras_model(wrong_suffix)


def test_lambda_model_is_refused(tmp_path):
    inputs = keras.Input((3,))
    outputs = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(
        ModelLoadError, match="refused to load .*lambda.keras: it carries Python code"
    ):
        load_keras_model(path)

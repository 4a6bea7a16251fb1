"""Tests for `custom_layers.activations`: values and gradients against NumPy and Keras."""

import keras
import numpy as np
import pytest
from keras import ops

from custom_layers import activations
from tests.backend_utils import value_and_grad

BACKEND = keras.backend.backend()


def _np_sigmoid(x):
    x = np.asarray(x, "float64")
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


# name -> (ours, Keras built-in, NumPy value, NumPy derivative); 0 uses the left derivative.
CASES = {
    "relu": (
        activations.relu,
        keras.activations.relu,
        lambda x: np.maximum(x, 0.0),
        lambda x: (x > 0).astype("float64"),
    ),
    "leaky_relu": (
        activations.leaky_relu,
        keras.activations.leaky_relu,
        lambda x: np.where(x > 0, x, 0.2 * x),
        lambda x: np.where(x > 0, 1.0, 0.2),
    ),
    "leaky_relu_0.05": (
        lambda x: activations.leaky_relu(x, negative_slope=0.05),
        lambda x: keras.activations.leaky_relu(x, negative_slope=0.05),
        lambda x: np.where(x > 0, x, 0.05 * x),
        lambda x: np.where(x > 0, 1.0, 0.05),
    ),
    "elu": (
        activations.elu,
        keras.activations.elu,
        lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
        lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0.0))),
    ),
    "elu_alpha_2": (
        lambda x: activations.elu(x, alpha=2.0),
        lambda x: keras.activations.elu(x, alpha=2.0),
        lambda x: np.where(x > 0, x, 2.0 * np.expm1(np.minimum(x, 0.0))),
        lambda x: np.where(x > 0, 1.0, 2.0 * np.exp(np.minimum(x, 0.0))),
    ),
    "tanh": (
        activations.tanh,
        keras.activations.tanh,
        np.tanh,
        lambda x: 1.0 - np.tanh(x) ** 2,
    ),
    "sigmoid": (
        activations.sigmoid,
        keras.activations.sigmoid,
        _np_sigmoid,
        lambda x: _np_sigmoid(x) * (1.0 - _np_sigmoid(x)),
    ),
}

GRID = np.array(
    [-30.0, -5.0, -1.5, -1.0, -0.3, -1e-3, -1e-6, 0.0, 1e-6, 1e-3, 0.3, 1.0, 1.5, 5.0, 30.0],
    dtype="float32",
)


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_and_gradients_match_numpy_formulas(name):
    ours, _, np_value, np_grad = CASES[name]
    x = np.concatenate([GRID, np.random.default_rng(0).normal(0, 3, 64).astype("float32")])
    value, grad = value_and_grad(ours, x)
    x64 = x.astype("float64")
    np.testing.assert_allclose(value, np_value(x64), rtol=1e-6, atol=1e-7)
    # atol of a few float32 ulps of 1: JAX differentiates expm1(v) as expm1(v) + 1.
    np.testing.assert_allclose(grad, np_grad(x64), rtol=1e-6, atol=3e-7)


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_and_gradients_match_keras_builtins(name):
    ours, builtin, _, _ = CASES[name]
    x = np.concatenate([GRID, np.random.default_rng(1).normal(0, 3, 64).astype("float32")])
    value, grad = value_and_grad(ours, x)
    keras_value, keras_grad = value_and_grad(builtin, x)
    np.testing.assert_allclose(value, keras_value, rtol=1e-6, atol=1e-7)
    if name.startswith("leaky_relu") and BACKEND == "jax":
        # Keras's JAX leaky_relu takes the right derivative (1) at exactly 0; ours (and
        # Keras's TensorFlow backend) take the left one, `negative_slope`.
        away_from_zero = x != 0
        np.testing.assert_allclose(grad[away_from_zero], keras_grad[away_from_zero], rtol=1e-6)
    else:
        # atol: Keras differentiates tanh as `1 - y**2` from a float32 `y`, which is off by up to
        # a few 1e-7 where `y` is near ±1; the NumPy test holds ours to float64 values.
        np.testing.assert_allclose(grad, keras_grad, rtol=1e-6, atol=1e-6)


def test_derivatives_at_exactly_zero():
    zero = np.zeros((1,), "float32")
    expected = {
        "relu": 0.0,  # like keras.activations.relu
        "leaky_relu": 0.2,
        "leaky_relu_0.05": 0.05,
        "elu": 1.0,  # continuous: both one-sided derivatives are 1
        "elu_alpha_2": 2.0,
        "tanh": 1.0,
        "sigmoid": 0.25,
    }
    for name, slope in expected.items():
        value, grad = value_and_grad(CASES[name][0], zero)
        assert value[0] == (0.5 if name == "sigmoid" else 0.0), name
        assert grad[0] == pytest.approx(slope, rel=1e-6), name


def test_elu_gradient_is_continuous_at_zero():
    x = np.array([-1e-4, 0.0, 1e-4], "float32")
    _, grad = value_and_grad(activations.elu, x)
    np.testing.assert_allclose(grad, [1.0, 1.0, 1.0], atol=2e-4)


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_saturating_functions_are_finite_at_large_inputs(name):
    fn = CASES[name][0]
    x = np.array([-1e4, -100.0, -89.0, 89.0, 100.0, 1e4], "float32")
    value, grad = value_and_grad(fn, x)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    low = 0.0 if name == "sigmoid" else -1.0
    np.testing.assert_array_equal(value, [low, low, low, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(grad[[0, -1]], [0.0, 0.0])


def test_tanh_keeps_relative_precision_near_zero():
    x = np.array([1e-8, -3e-7, 1e-20], "float32")
    value = ops.convert_to_numpy(activations.tanh(x))
    np.testing.assert_allclose(value, np.tanh(x.astype("float64")), rtol=1e-6)


def test_elu_is_finite_for_large_positive_inputs():
    value, grad = value_and_grad(activations.elu, np.array([1e4, 1e30], "float32"))
    np.testing.assert_array_equal(value, [1e4, np.float32(1e30)])
    np.testing.assert_array_equal(grad, [1.0, 1.0])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["relu", "leaky_relu", "elu", "tanh", "sigmoid"])
def test_dtype_is_preserved(name, dtype):
    x = ops.cast(np.linspace(-3, 3, 7), dtype)
    out = CASES[name][0](x)
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    np.testing.assert_allclose(
        ops.convert_to_numpy(ops.cast(out, "float32")),
        CASES[name][2](np.linspace(-3, 3, 7)),
        atol=1e-2,
    )


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "elu", "tanh", "sigmoid"])
def test_serialization_by_registered_name(name):
    fn = getattr(activations, name)
    config = keras.activations.serialize(fn)
    assert config["config"] == f"custom_layers>{name}"
    assert keras.activations.deserialize(config) is fn
    assert keras.activations.deserialize(f"custom_layers>{name}") is fn
    assert keras.activations.get(config) is fn
    assert activations.get(f"custom_layers>{name}") is fn


def test_get_falls_back_to_keras_and_rejects_unknown_names():
    assert activations.get("relu") is keras.activations.relu
    assert activations.get(None) is keras.activations.linear
    assert activations.get(activations.elu) is activations.elu
    with pytest.raises(ValueError, match="custom_layers>nope"):
        activations.get("custom_layers>nope")


def test_dense_with_custom_activation_reloads_from_keras_file(tmp_path):
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, activation=activations.elu, name="hidden")(inputs)
    outputs = keras.layers.Dense(2, activation=activations.sigmoid, name="out")(hidden)
    model = keras.Model(inputs, outputs)
    assert model.get_layer("hidden").get_config()["activation"]["config"] == "custom_layers>elu"

    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)  # no custom_objects: found by registered name
    assert reloaded.get_layer("hidden").activation is activations.elu
    assert reloaded.get_layer("out").activation is activations.sigmoid
    x = np.random.default_rng(2).normal(size=(5, 3)).astype("float32")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x: activations.leaky_relu(x, negative_slope=-0.1), "negative_slope=-0.1"),
        (lambda x: activations.leaky_relu(x, negative_slope="0.2"), "negative_slope='0.2'"),
        (lambda x: activations.elu(x, alpha=-1.0), "alpha=-1.0"),
        (lambda x: activations.elu(x, alpha=float("inf")), "alpha=inf"),
    ],
)
def test_bad_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call(np.zeros((2,), "float32"))

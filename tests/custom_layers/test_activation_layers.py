"""Tests of `custom_layers.layers.PReLU` against NumPy and `keras.layers.PReLU`."""

import keras
import numpy as np
import pytest
from keras import ops

from custom_layers.layers.activation_layers import PReLU
from tests.backend_utils import gradients
from tests.layer_testing import run_layer_test


def prelu_reference(x, alpha):
    return np.where(x > 0, x, alpha * x)


@pytest.fixture
def x():
    return np.random.default_rng(0).normal(size=(2, 4, 5, 3)).astype("float32")


def test_layer_contract_one_slope_per_element(x, tmp_path):
    run_layer_test(
        PReLU,
        {},
        x,
        expected_output_shape=(2, 4, 5, 3),
        expected_num_trainable_weights=1,
        expected_num_non_trainable_weights=0,
        supports_masking=True,
        tmp_path=tmp_path,
    )


def test_layer_contract_shared_axes_and_options(x, tmp_path):
    run_layer_test(
        PReLU,
        {
            "alpha_initializer": keras.initializers.Constant(0.25),
            "alpha_regularizer": keras.regularizers.L2(1e-3),
            "alpha_constraint": keras.constraints.NonNeg(),
            "shared_axes": [1, 2],
        },
        x,
        expected_output_shape=(2, 4, 5, 3),
        expected_num_trainable_weights=1,
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize(
    "shared_axes, alpha_shape",
    [
        (None, (4, 5, 3)),
        (1, (1, 5, 3)),
        ([1, 2], (1, 1, 3)),
        ([-3, -2], (1, 1, 3)),
        ([3], (4, 5, 1)),
    ],
)
def test_alpha_shape_and_values_match_numpy(x, shared_axes, alpha_shape):
    layer = PReLU(shared_axes=shared_axes)
    layer.build(x.shape)
    assert tuple(layer.alpha.shape) == alpha_shape
    alpha = np.random.default_rng(1).uniform(-0.5, 0.5, size=alpha_shape).astype("float32")
    layer.alpha.assign(alpha)
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer(x)), prelu_reference(x, alpha), rtol=1e-6, atol=1e-7
    )


def test_default_initializer_starts_as_relu(x):
    np.testing.assert_array_equal(ops.convert_to_numpy(PReLU()(x)), np.maximum(x, 0))


def test_values_and_gradients_match_keras_prelu(x):
    x = x.copy()
    x[0, 0, 0, :] = 0.0  # the kink: both layers must agree there too
    alpha = np.random.default_rng(2).uniform(0.0, 0.5, size=(1, 1, 3)).astype("float32")
    upstream = np.random.default_rng(3).normal(size=x.shape).astype("float32")
    ours, theirs = PReLU(shared_axes=[1, 2]), keras.layers.PReLU(shared_axes=[1, 2])
    for layer in (ours, theirs):
        layer.build(x.shape)
        layer.alpha.assign(alpha)
    np.testing.assert_allclose(
        ops.convert_to_numpy(ours(x)), ops.convert_to_numpy(theirs(x)), atol=1e-7
    )

    def grads(layer):
        return gradients(lambda a, v: layer.stateless_call([a], [], v)[0] * upstream, alpha, x)

    (our_dalpha, our_dx), (their_dalpha, their_dx) = grads(ours), grads(theirs)
    np.testing.assert_allclose(our_dalpha, their_dalpha, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(our_dx, their_dx, rtol=1e-6, atol=1e-7)
    # And by hand: d/d alpha = sum over the shared axes of upstream * min(x, 0).
    expected_dalpha = (upstream * np.minimum(x, 0)).sum(axis=(0, 1, 2)).reshape(1, 1, 3)
    np.testing.assert_allclose(our_dalpha, expected_dalpha, rtol=1e-5, atol=1e-5)
    expected_dx = upstream * np.where(x > 0, 1.0, np.where(x < 0, alpha, 0.0))
    np.testing.assert_allclose(our_dx, expected_dx, rtol=1e-6, atol=1e-7)


def test_alpha_learns_in_fit():
    # A target of -0.3 * x for negative x: the per-channel slope should move from 0 toward 0.3.
    rng = np.random.default_rng(4)
    x = -np.abs(rng.normal(size=(64, 3, 3, 2))).astype("float32")
    model = keras.Sequential([keras.Input((3, 3, 2)), PReLU(shared_axes=[1, 2])])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    model.fit(x, 0.3 * x, epochs=20, batch_size=64, verbose=0)
    np.testing.assert_allclose(
        ops.convert_to_numpy(model.layers[0].alpha).ravel(), [0.3, 0.3], atol=0.02
    )


def test_invalid_shared_axes_type():
    with pytest.raises(ValueError, match=r"Received: shared_axes='spatial'"):
        PReLU(shared_axes="spatial")


@pytest.mark.parametrize("axes", [0, 4, -4])
def test_shared_axes_out_of_range(axes):
    with pytest.raises(ValueError, match=r"Received: shared_axes=\[-?\d\]"):
        PReLU(shared_axes=axes).build((None, 4, 5, 3))


def test_unknown_unshared_axis_is_rejected():
    with pytest.raises(ValueError, match=r"add it to `shared_axes`.*input_shape=\(None, None, 3\)"):
        PReLU()(keras.Input((None, 3)))
    # Sharing the unknown axis makes it fine.
    assert tuple(PReLU(shared_axes=1)(keras.Input((None, 3))).shape) == (None, None, 3)

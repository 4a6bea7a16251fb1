"""Tests of `L2Pooling2D` and `DistanceWeightedPooling2D` against hand-computed windows."""

import keras
import numpy as np
import pytest
from keras import ops

from custom_layers.layers.pooling import DistanceWeightedPooling2D, L2Pooling2D, gaussian_window
from tests.backend_utils import gradients
from tests.layer_testing import run_layer_test


def windows(size, pool, stride, padding):
    """(start, stop) of every window along one axis, in input coordinates, possibly out of range.

    Keras's "same": `ceil(size / stride)` outputs, `total // 2` padding before.
    """
    if padding == "valid":
        count, before = (size - pool) // stride + 1, 0
    else:
        count = -(-size // stride)
        before = max((count - 1) * stride + pool - size, 0) // 2
    return [(i * stride - before, i * stride - before + pool) for i in range(count)]


def reference_pool(x, pool, stride, padding, reduce):
    """Loop over windows of a channels-last batch; `reduce(values, rows, cols)` gets in-range
    values of one window for one channel, with their row and column offsets inside the window."""
    batch, height, width, channels = x.shape
    row_windows = windows(height, pool[0], stride[0], padding)
    col_windows = windows(width, pool[1], stride[1], padding)
    out = np.zeros((batch, len(row_windows), len(col_windows), channels))
    for i, (r0, r1) in enumerate(row_windows):
        for j, (c0, c1) in enumerate(col_windows):
            rows = np.arange(max(r0, 0), min(r1, height))
            cols = np.arange(max(c0, 0), min(c1, width))
            for b in range(batch):
                for c in range(channels):
                    values = x[b][np.ix_(rows, cols)][..., c]
                    out[b, i, j, c] = reduce(values, rows - r0, cols - c0)
    return out


def l2_reduce(values, rows, cols):
    return np.sqrt(np.sum(values.astype("float64") ** 2))


def gaussian_reduce(pool, sigma):
    """Weights straight from the definition, renormalized over the in-range positions."""

    def reduce(values, rows, cols):
        centre_r, centre_c = (pool[0] - 1) / 2, (pool[1] - 1) / 2
        d2 = (rows[:, None] - centre_r) ** 2 + (cols[None, :] - centre_c) ** 2
        w = np.exp(-d2 / (2 * sigma**2))
        return np.sum(w * values) / np.sum(w)

    return reduce


# (input height, input width, pool_size, strides, padding)
POOL_CASES = [
    (6, 6, (2, 2), (2, 2), "valid"),
    (7, 5, (2, 2), (2, 2), "valid"),
    (7, 7, (3, 3), (1, 1), "valid"),
    (8, 6, (3, 2), (2, 1), "valid"),
    (5, 5, (2, 2), (2, 2), "same"),
    (7, 6, (3, 3), (2, 2), "same"),
    (6, 6, (3, 3), (1, 1), "same"),
    (5, 7, (4, 3), (3, 2), "same"),
    (3, 3, (5, 5), (1, 1), "same"),
]


@pytest.fixture
def image():
    return np.random.default_rng(0).normal(size=(2, 7, 6, 3)).astype("float32")


@pytest.mark.parametrize(
    "layer_class, init_kwargs, output_shape",
    [
        (L2Pooling2D, {}, (2, 3, 3, 3)),
        (L2Pooling2D, {"pool_size": 3, "strides": 2, "padding": "same"}, (2, 4, 3, 3)),
        (L2Pooling2D, {"pool_size": (2, 3), "data_format": "channels_first"}, (2, 3, 3, 2)),
        (DistanceWeightedPooling2D, {}, (2, 2, 2, 3)),
        (
            DistanceWeightedPooling2D,
            {"pool_size": 2, "strides": 1, "padding": "same", "sigma": 0.5},
            (2, 7, 6, 3),
        ),
        (
            DistanceWeightedPooling2D,
            {"pool_size": 3, "data_format": "channels_first"},
            (2, 3, 2, 2),
        ),
    ],
)
def test_layer_contract(image, tmp_path, layer_class, init_kwargs, output_shape):
    if init_kwargs.get("data_format") == "channels_first":
        image = image.transpose(0, 3, 1, 2)
    run_layer_test(
        layer_class,
        init_kwargs,
        image,
        expected_output_shape=output_shape,
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=0,
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize("height, width, pool, strides, padding", POOL_CASES)
def test_l2_pooling_matches_hand_computed_windows(height, width, pool, strides, padding):
    x = np.random.default_rng(1).normal(size=(2, height, width, 3)).astype("float32")
    layer = L2Pooling2D(pool, strides, padding)
    expected = reference_pool(x, pool, strides, padding, l2_reduce)
    got = ops.convert_to_numpy(layer(x))
    assert got.shape == expected.shape == layer.compute_output_shape(x.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_l2_pooling_small_worked_example():
    x = np.array([[3, 4, 1, 0], [0, 0, 2, 2], [0, 0, 5, 0], [0, 0, 0, 12]], "float32")
    got = ops.convert_to_numpy(L2Pooling2D(2)(x.reshape(1, 4, 4, 1)))
    np.testing.assert_allclose(got.reshape(2, 2), [[5.0, 3.0], [0.0, 13.0]], rtol=1e-6)


def test_l2_pooling_gradient_is_finite_and_zero_on_all_zero_windows():
    x = np.zeros((1, 4, 4, 1), "float32")
    x[0, 0, 0, 0], x[0, 0, 1, 0] = 3.0, -4.0  # only the top-left window is non-zero
    layer = L2Pooling2D(2)
    out = ops.convert_to_numpy(layer(x)).reshape(2, 2)
    np.testing.assert_allclose(out, [[5.0, 0.0], [0.0, 0.0]], atol=1e-6)
    (grad,) = gradients(layer, x)
    assert np.all(np.isfinite(grad))
    # d/dx sqrt(sum x^2) = x / norm in the non-zero window; 0 (not NaN) in the all-zero ones.
    expected = np.zeros_like(x)
    expected[0, 0, 0, 0], expected[0, 0, 1, 0] = 3.0 / 5.0, -4.0 / 5.0
    np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_l2_pooling_gradient_matches_numpy_on_random_input(image):
    (grad,) = gradients(L2Pooling2D(2, strides=1), image)
    norms = reference_pool(image, (2, 2), (1, 1), "valid", l2_reduce)
    # Each input collects x / norm from every window that contains it.
    expected = np.zeros_like(image, dtype="float64")
    for i in range(norms.shape[1]):
        for j in range(norms.shape[2]):
            expected[:, i : i + 2, j : j + 2, :] += (
                image[:, i : i + 2, j : j + 2, :] / norms[:, i : i + 1, j : j + 1, :]
            )
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)


def test_l2_pooling_is_max_pooling_of_abs_for_one_hot_windows():
    x = np.zeros((1, 4, 4, 2), "float32")
    x[0, 1, 0, 0], x[0, 2, 3, 1] = -7.0, 2.5
    got = ops.convert_to_numpy(L2Pooling2D(2)(x))
    want = ops.convert_to_numpy(keras.layers.MaxPooling2D(2)(np.abs(x)))
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("height, width, pool, strides, padding", POOL_CASES)
@pytest.mark.parametrize("sigma", [0.7, 1.5])
def test_distance_weighted_matches_hand_computed_windows(
    height, width, pool, strides, padding, sigma
):
    x = np.random.default_rng(2).normal(size=(2, height, width, 3)).astype("float32")
    layer = DistanceWeightedPooling2D(pool, strides, padding, sigma=sigma)
    expected = reference_pool(x, pool, strides, padding, gaussian_reduce(pool, sigma))
    got = ops.convert_to_numpy(layer(x))
    assert got.shape == expected.shape == layer.compute_output_shape(x.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool", [(3, 3), (2, 2), (4, 3), (5, 1)])
@pytest.mark.parametrize("sigma", [0.01, 1.0, 1e4])
def test_gaussian_window_sums_to_one_and_follows_the_formula(pool, sigma):
    w = gaussian_window(pool, sigma)
    assert w.shape == pool
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-12)
    rows, cols = np.meshgrid(np.arange(pool[0]), np.arange(pool[1]), indexing="ij")
    d2 = (rows - (pool[0] - 1) / 2) ** 2 + (cols - (pool[1] - 1) / 2) ** 2
    if sigma >= 1.0:  # the plain formula does not underflow: compare with it directly
        plain = np.exp(-d2 / (2 * sigma**2))
        np.testing.assert_allclose(w, plain / plain.sum(), rtol=1e-12)
    # Weights decrease with the distance from the centre.
    order = np.argsort(d2, axis=None)
    assert np.all(np.diff(w.ravel()[order]) <= 1e-15)


@pytest.mark.parametrize(
    "pool, strides, padding", [(3, 3, "valid"), (3, 2, "same"), (4, 3, "same")]
)
def test_distance_weighted_keeps_constant_input_constant(pool, strides, padding):
    x = np.full((1, 7, 8, 2), 2.5, "float32")
    got = ops.convert_to_numpy(DistanceWeightedPooling2D(pool, strides, padding, sigma=0.8)(x))
    np.testing.assert_allclose(got, 2.5, rtol=1e-6)


@pytest.mark.parametrize(
    "pool, strides, padding", [(3, 3, "valid"), (2, 2, "same"), (3, 2, "same")]
)
def test_distance_weighted_with_large_sigma_is_average_pooling(image, pool, strides, padding):
    got = DistanceWeightedPooling2D(pool, strides, padding, sigma=1e4)(image)
    want = keras.layers.AveragePooling2D(pool, strides, padding)(image)
    np.testing.assert_allclose(ops.convert_to_numpy(got), ops.convert_to_numpy(want), atol=1e-6)


def test_distance_weighted_with_small_sigma_picks_the_centre(image):
    got = ops.convert_to_numpy(DistanceWeightedPooling2D(3, sigma=0.05)(image))
    np.testing.assert_allclose(got, image[:, 1:6:3, 1:6:3, :], atol=1e-7)
    # Even windows have four positions nearest the centre: their mean.
    x = np.random.default_rng(3).normal(size=(1, 8, 8, 2)).astype("float32")
    got = ops.convert_to_numpy(DistanceWeightedPooling2D(4, sigma=1e-3)(x))
    centres = x.reshape(1, 2, 4, 2, 4, 2)[:, :, 1:3, :, 1:3, :].mean(axis=(2, 4))
    np.testing.assert_allclose(got, centres, atol=1e-6)


@pytest.mark.parametrize(
    "layer_cls, kwargs",
    [
        (L2Pooling2D, {"pool_size": 3, "strides": 2, "padding": "same"}),
        (
            DistanceWeightedPooling2D,
            {"pool_size": 3, "strides": 2, "padding": "same", "sigma": 1.2},
        ),
    ],
)
def test_channels_first_equals_channels_last(image, layer_cls, kwargs):
    last = ops.convert_to_numpy(layer_cls(**kwargs)(image))
    first = layer_cls(data_format="channels_first", **kwargs)(image.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(
        ops.convert_to_numpy(first).transpose(0, 2, 3, 1), last, rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("layer_cls", [L2Pooling2D, DistanceWeightedPooling2D])
def test_unknown_spatial_size_in_a_functional_model(layer_cls, image):
    inputs = keras.Input((None, None, 3))
    outputs = layer_cls(pool_size=2, padding="same")(inputs)
    assert tuple(outputs.shape) == (None, None, None, 3)
    model = keras.Model(inputs, outputs)
    assert tuple(model(image).shape) == (2, 4, 3, 3)


def test_weights_are_a_constant_not_a_saved_weight(image):
    layer = DistanceWeightedPooling2D(3, sigma=2.0)
    layer(image)
    assert layer.weights == []
    np.testing.assert_allclose(layer.window, gaussian_window((3, 3), 2.0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sigma": 0.0}, r"Received: sigma=0\.0"),
        ({"sigma": -1}, r"Received: sigma=-1"),
        ({"sigma": float("nan")}, r"Received: sigma=nan"),
        ({"sigma": "wide"}, r"Received: sigma='wide'"),
        ({"pool_size": 0}, r"Received: pool_size=0"),
        ({"pool_size": (2, 2, 2)}, r"Received: pool_size=\(2, 2, 2\)"),
        ({"strides": -1}, r"Received: strides=-1"),
        ({"padding": "full"}, r"Received: padding='full'"),
        ({"data_format": "NHWC"}, r"Received: data_format='NHWC'"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistanceWeightedPooling2D(**kwargs)
    if "sigma" not in kwargs:
        with pytest.raises(ValueError, match=message):
            L2Pooling2D(**kwargs)


@pytest.mark.parametrize("layer_cls", [L2Pooling2D, DistanceWeightedPooling2D])
def test_unknown_channels_raise(layer_cls):
    with pytest.raises(
        ValueError, match=r"known number of channels.*input_shape=\(None, 8, 8, None\)"
    ):
        layer_cls().build((None, 8, 8, None))

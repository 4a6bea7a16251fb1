"""Tests of `conv_output_size` (against real Keras layers) and `ConvBlock`."""

import itertools

import keras
import numpy as np
import pytest
from keras import ops

import custom_layers.activations
from custom_layers.layers.activation_layers import PReLU
from custom_layers.layers.conv import ConvBlock, conv_output_size
from custom_layers.layers.pooling import DistanceWeightedPooling2D, L2Pooling2D
from tests.layer_testing import run_layer_test

SIZES = [1, 2, 5, 8, 13, 28]
KERNELS = [1, 2, 3, 5]
STRIDES = [1, 2, 3]


@keras.saving.register_keras_serializable(package="custom_layers_tests")
def half_relu(x):
    """A registered custom activation, to check that callables serialize."""
    return 0.5 * ops.relu(x)


def _in_pairs(cases):
    """Pair up cases so that one layer call checks two: one along the height, one along the width."""
    cases = list(cases)
    if len(cases) % 2:
        cases.append(cases[-1])
    return [(cases[i], cases[i + 1]) for i in range(0, len(cases), 2)]


def _real_output_size(make_layer, first, second):
    """Output height and width of `make_layer(kernel, strides, padding)` on a zeros image.

    `first` and `second` are `(size, kernel, stride, padding)` cases for the two spatial axes.
    """
    (h, kh, sh, ph), (w, kw, sw, pw) = first, second
    layer = make_layer((kh, kw), (sh, sw), ((ph, ph), (pw, pw)))
    return tuple(layer(np.zeros((1, h, w, 1), "float32")).shape[1:3])


# conv_output_size against the shapes real layers produce.


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("layer_type", ["conv", "max_pool"])
def test_conv_output_size_matches_real_layers(padding, layer_type):
    def make_layer(kernel, strides, _):
        if layer_type == "conv":
            return keras.layers.Conv2D(1, kernel, strides=strides, padding=padding)
        return keras.layers.MaxPooling2D(kernel, strides=strides, padding=padding)

    cases = [
        (size, kernel, stride, 0)
        for size, kernel, stride in itertools.product(SIZES, KERNELS, STRIDES)
        # No output: covered by test_conv_output_size_raises_when_there_is_no_output.
        if padding == "same" or size >= kernel
    ]
    assert len(cases) >= 50
    for first, second in _in_pairs(cases):
        expected = tuple(conv_output_size(n, k, padding, s) for n, k, s, _ in (first, second))
        assert _real_output_size(make_layer, first, second) == expected, (first, second)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_conv_output_size_with_dilation_matches_conv2d(padding):
    cases = [
        (size, kernel, dilation, 0)
        for size, kernel, dilation in itertools.product([5, 9, 16], [2, 3], [1, 2, 3])
        if padding == "same" or size >= dilation * (kernel - 1) + 1
    ]

    def make_layer(kernel, dilation, _):
        return keras.layers.Conv2D(1, kernel, dilation_rate=dilation, padding=padding)

    for first, second in _in_pairs(cases):
        expected = tuple(conv_output_size(n, k, padding, 1, d) for n, k, d, _ in (first, second))
        assert _real_output_size(make_layer, first, second) == expected, (first, second)


def test_integer_padding_matches_zero_padding_then_valid_conv():
    def make_layer(kernel, strides, padding):
        return keras.Sequential(
            [
                keras.layers.ZeroPadding2D(padding),
                keras.layers.Conv2D(1, kernel, strides=strides, padding="valid"),
            ]
        )

    cases = [
        (size, kernel, stride, pad)
        for size, kernel, stride, pad in itertools.product([1, 2, 5, 13], KERNELS, STRIDES, [1, 2])
        if size + 2 * pad >= kernel
    ]
    for first, second in _in_pairs(cases):
        expected = tuple(conv_output_size(n, k, p, s) for n, k, s, p in (first, second))
        assert _real_output_size(make_layer, first, second) == expected, (first, second)


def test_conv_output_size_formula_examples():
    assert conv_output_size(28, 3) == 26
    assert conv_output_size(28, 5, padding=2, stride=2) == 14  # floor((28 - 5 + 4) / 2) + 1
    assert conv_output_size(227, 11, padding=0, stride=4) == 55  # AlexNet's first layer
    assert conv_output_size(7, 3, padding="SAME", stride=2) == 4
    assert conv_output_size(7, 3, padding="valid", stride=2) == 3
    assert conv_output_size(10, 3, dilation=2) == 6
    assert conv_output_size(np.int64(8), np.int32(2), stride=2) == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_size": 0}, r"Received: input_size=0"),
        ({"input_size": -3}, r"Received: input_size=-3"),
        ({"input_size": 2.5}, r"Received: input_size=2\.5"),
        ({"input_size": True}, r"Received: input_size=True"),
        ({"kernel_size": 0}, r"Received: kernel_size=0"),
        ({"stride": 0}, r"Received: stride=0"),
        ({"dilation": -1}, r"Received: dilation=-1"),
        ({"padding": -1}, r"Received: padding=-1"),
        ({"padding": 1.5}, r"Received: padding=1\.5"),
        ({"padding": "full"}, r"Received: padding='full'"),
    ],
)
def test_conv_output_size_rejects_bad_arguments(kwargs, message):
    arguments = {"input_size": 8, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        conv_output_size(**arguments)


def test_conv_output_size_raises_when_there_is_no_output():
    with pytest.raises(ValueError, match=r"no output.*input_size=2, kernel_size=5, padding=0"):
        conv_output_size(2, 5)
    with pytest.raises(ValueError, match=r"no output.*input_size=4, kernel_size=3, padding=0"):
        conv_output_size(4, 3, dilation=2)  # dilated kernel covers 5
    assert conv_output_size(2, 5, padding=2) == 2  # enough padding makes it fine
    assert conv_output_size(2, 5, padding="same") == 2


# ConvBlock: the layer contract.


@pytest.fixture
def image():
    return np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")


@pytest.mark.parametrize(
    "init_kwargs, output_shape, num_trainable, num_non_trainable",
    [
        # conv kernel + BN gamma, beta; BN moving mean, variance.
        ({"filters": 5}, (4, 8, 8, 5), 3, 2),
        (
            {
                "filters": 4,
                "kernel_size": (3, 2),
                "padding": "valid",
                "use_batch_norm": False,
                "activation": "prelu",
                "pooling": "l2",
                "dropout": 0.25,
                "kernel_regularizer": keras.regularizers.L2(1e-4),
            },
            (4, 3, 3, 4),  # conv 8x8 -> 6x7, pool 2 -> 3x3; kernel, bias, alpha
            3,
            0,
        ),
        (
            {
                "filters": 2,
                "strides": 2,
                "pooling": "distance_weighted",
                "pool_size": 3,
                "pool_strides": 1,
                "pool_padding": "same",
                "pool_sigma": 0.8,
                "activation": half_relu,  # a registered custom function, saved by name
                "kernel_initializer": keras.initializers.GlorotUniform(seed=1),
            },
            (4, 4, 4, 2),
            3,
            2,
        ),
    ],
)
def test_layer_contract(
    image, tmp_path, init_kwargs, output_shape, num_trainable, num_non_trainable
):
    run_layer_test(
        ConvBlock,
        init_kwargs,
        image,
        expected_output_shape=output_shape,
        expected_num_trainable_weights=num_trainable,
        expected_num_non_trainable_weights=num_non_trainable,
        tmp_path=tmp_path,
        atol=1e-5,
    )


def test_layer_contract_channels_first(image, tmp_path):
    run_layer_test(
        ConvBlock,
        {
            "filters": 4,
            "activation": "prelu",
            "pooling": "average",
            "data_format": "channels_first",
        },
        image.transpose(0, 3, 1, 2),
        expected_output_shape=(4, 4, 4, 4),
        expected_num_trainable_weights=4,  # kernel, gamma, beta, alpha
        expected_num_non_trainable_weights=2,
        tmp_path=tmp_path,
        atol=1e-5,
    )


@pytest.mark.parametrize("pooling", [None, "max", "average", "l2", "distance_weighted"])
def test_channels_first_equals_channels_last_with_the_same_weights(image, pooling):
    # channels_first runs on every CPU (the block computes in channels_last and
    # transposes), and gives the channels_last result transposed, weights shared.
    kwargs = dict(
        filters=5,
        strides=(1, 2),
        activation="prelu",
        pooling=pooling,
        pool_size=(2, 3),
        pool_strides=(1, 2),
        pool_padding="same",
    )
    last = ConvBlock(data_format="channels_last", **kwargs)
    first = ConvBlock(data_format="channels_first", **kwargs)
    last.build(image.shape)
    first.build(image.transpose(0, 3, 1, 2).shape)
    assert [w.shape for w in first.weights] == [w.shape for w in last.weights]
    first.set_weights(last.get_weights())
    # Training updates the batch-norm statistics of both alike, then inference.
    for training in (True, False):
        got = first(image.transpose(0, 3, 1, 2), training=training)
        want = last(image, training=training)
        assert tuple(got.shape) == first.compute_output_shape(image.transpose(0, 3, 1, 2).shape)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got),
            keras.ops.convert_to_numpy(want).transpose(0, 3, 1, 2),
            rtol=1e-5,
            atol=1e-5,
        )


# ConvBlock: values.


def _conv_same(x, kernel):
    """Stride-1 'same' 2D convolution (cross-correlation) in NumPy, channels last."""
    kh, kw = kernel.shape[:2]
    top, left = (kh - 1) // 2, (kw - 1) // 2
    padded = np.pad(x, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))
    patches = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))
    # patches: (batch, height, width, in_channels, kh, kw)
    return np.einsum("bhwcij,ijcf->bhwf", patches, kernel)


def test_inference_output_equals_numpy_conv_bn_relu_maxpool(image):
    block = ConvBlock(6, pooling="max")
    block.build(image.shape)
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 3, 3, 6)).astype("float32")
    gamma, beta = rng.uniform(0.5, 2, 6), rng.normal(size=6)
    mean, var = rng.normal(size=6), rng.uniform(0.5, 2, 6)
    block.conv.kernel.assign(kernel)
    block.batch_norm.gamma.assign(gamma.astype("float32"))
    block.batch_norm.beta.assign(beta.astype("float32"))
    block.batch_norm.moving_mean.assign(mean.astype("float32"))
    block.batch_norm.moving_variance.assign(var.astype("float32"))

    z = _conv_same(image.astype("float64"), kernel.astype("float64"))
    z = gamma * (z - mean) / np.sqrt(var + 1e-3) + beta
    z = np.maximum(z, 0)
    expected = z.reshape(4, 4, 2, 4, 2, 6).max(axis=(2, 4))
    got = ops.convert_to_numpy(block(image, training=False))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_conv_has_a_bias_only_without_batch_norm(image):
    with_bn, without_bn = ConvBlock(2, name="block"), ConvBlock(2, use_batch_norm=False)
    with_bn(image), without_bn(image)
    assert with_bn.conv.bias is None and with_bn.batch_norm is not None
    assert without_bn.conv.bias is not None and without_bn.batch_norm is None
    assert [w.path for w in with_bn.weights] == [
        "block/conv/kernel",
        "block/batch_norm/gamma",
        "block/batch_norm/beta",
        "block/batch_norm/moving_mean",
        "block/batch_norm/moving_variance",
    ]


def test_training_is_passed_to_batch_norm(image):
    block = ConvBlock(3, activation=None)
    block.build(image.shape)
    linear = ops.convert_to_numpy(block.conv(image)).astype("float64")
    # Inference uses the moving statistics (fresh: mean 0, variance 1).
    inferred = ops.convert_to_numpy(block(image, training=False))
    np.testing.assert_allclose(inferred, linear / np.sqrt(1 + 1e-3), rtol=1e-5, atol=1e-6)
    # Training uses the batch statistics: per channel, mean 0 and variance var / (var + eps).
    trained = ops.convert_to_numpy(block(image, training=True))
    variance = linear.var(axis=(0, 1, 2))
    np.testing.assert_allclose(trained.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(trained.var(axis=(0, 1, 2)), variance / (variance + 1e-3), rtol=1e-4)


def test_synchronized_batch_norm_is_for_tensorflow_and_equal_on_one_device(image):
    init = keras.initializers.GlorotUniform(seed=3)
    synced = ConvBlock(3, batch_norm_synchronized=True, kernel_initializer=init)
    plain = ConvBlock(3, kernel_initializer=init)
    synced.build(image.shape)
    plain.build(image.shape)
    # Only TensorFlow's BatchNormalization takes `synchronized`; elsewhere the
    # flag is kept in the config (so a model saved with it loads) and unused.
    assert synced.batch_norm.synchronized is (keras.backend.backend() == "tensorflow")
    assert not plain.batch_norm.synchronized
    reloaded = ConvBlock.from_config(synced.get_config())
    assert reloaded.batch_norm_synchronized and not plain.get_config()["batch_norm_synchronized"]
    # Without a distribution strategy the global batch is the local batch.
    for training in (True, False):
        np.testing.assert_allclose(
            ops.convert_to_numpy(synced(image, training=training)),
            ops.convert_to_numpy(plain(image, training=training)),
            rtol=1e-5,
            atol=1e-5,
        )


def test_training_is_passed_to_dropout(image):
    block = ConvBlock(
        8, use_batch_norm=False, activation=None, dropout=0.5, kernel_initializer="ones"
    )
    block.build(image.shape)
    linear = ops.convert_to_numpy(block.conv(image))
    np.testing.assert_allclose(
        ops.convert_to_numpy(block(image, training=False)), linear, atol=1e-6
    )
    dropped = ops.convert_to_numpy(block(image, training=True))
    zeroed = dropped == 0
    assert 0.4 < zeroed.mean() < 0.6
    np.testing.assert_allclose(dropped[~zeroed], 2.0 * linear[~zeroed], rtol=1e-5)


def test_prelu_activation_has_one_slope_per_channel(image):
    block = ConvBlock(5, activation="prelu")
    block(image)
    assert isinstance(block.prelu, PReLU)
    assert tuple(block.prelu.alpha.shape) == (1, 1, 5)
    block.prelu.alpha.assign(np.full((1, 1, 5), 0.2, "float32"))
    block_relu = ConvBlock(5, activation=None)
    block_relu.build(image.shape)
    block_relu.set_weights(block.get_weights()[:5])
    linear = ops.convert_to_numpy(block_relu(image))
    got = ops.convert_to_numpy(block(image))
    np.testing.assert_allclose(got, np.where(linear > 0, linear, 0.2 * linear), atol=1e-6)


@pytest.mark.parametrize(
    "activation, reference",
    [
        ("relu", lambda z: np.maximum(z, 0)),
        ("tanh", np.tanh),
        (keras.activations.sigmoid, lambda z: 1 / (1 + np.exp(-z))),
        (half_relu, lambda z: 0.5 * np.maximum(z, 0)),
        ("custom_layers_tests>half_relu", lambda z: 0.5 * np.maximum(z, 0)),
    ],
)
def test_activation_is_applied_and_serializes(image, activation, reference):
    block = ConvBlock(3, activation=activation, use_batch_norm=False, bias_initializer="ones")
    linear_block = ConvBlock.from_config({**block.get_config(), "activation": None})
    block.build(image.shape)
    linear_block.build(image.shape)
    linear_block.set_weights(block.get_weights())
    linear = ops.convert_to_numpy(linear_block(image)).astype("float64")
    np.testing.assert_allclose(
        ops.convert_to_numpy(block(image)), reference(linear), rtol=1e-5, atol=1e-6
    )
    revived = ConvBlock.from_config(block.get_config())
    assert revived.activation is block.activation


def test_library_activations_are_accepted(image):
    relu = getattr(custom_layers.activations, "relu", None)
    if not callable(relu):
        pytest.skip("custom_layers.activations.relu is not written yet")
    block = ConvBlock(2, activation=relu)
    assert ConvBlock.from_config(block.get_config()).activation is relu
    assert ConvBlock(2, activation="custom_layers>relu").activation is relu


@pytest.mark.parametrize(
    "kwargs, spatial",
    [
        ({}, (13, 9)),
        ({"padding": "valid", "kernel_size": 5}, (9, 5)),
        ({"strides": 2, "pooling": "max"}, (3, 2)),
        (
            {
                "kernel_size": 3,
                "dilation_rate": 2,
                "padding": "valid",
                "pooling": "l2",
                "pool_size": 3,
                "pool_padding": "same",
                "pool_strides": 2,
            },
            (5, 3),
        ),
    ],
)
def test_compute_output_shape(kwargs, spatial):
    block = ConvBlock(4, **kwargs)
    x = np.zeros((1, 13, 9, 2), "float32")
    assert block.compute_output_shape(x.shape) == (1, *spatial, 4)
    assert tuple(block(x).shape) == (1, *spatial, 4)
    assert block.compute_output_shape((None, None, 9, 2)) == (None, None, spatial[1], 4)


def test_kernel_regularizer_adds_a_loss(image):
    block = ConvBlock(2, kernel_regularizer=keras.regularizers.L2(0.1))
    block(image)
    kernel = ops.convert_to_numpy(block.conv.kernel)
    assert len(block.losses) == 1
    np.testing.assert_allclose(
        ops.convert_to_numpy(block.losses[0]), 0.1 * np.sum(kernel**2), rtol=1e-5
    )
    assert block.get_config()["kernel_regularizer"]["class_name"] == "L2"


def test_pooling_sublayers():
    kinds = {
        "max": keras.layers.MaxPooling2D,
        "average": keras.layers.AveragePooling2D,
        "l2": L2Pooling2D,
        "distance_weighted": DistanceWeightedPooling2D,
    }
    for pooling, layer_cls in kinds.items():
        block = ConvBlock(2, pooling=pooling, pool_size=3, pool_sigma=0.5)
        block.build((None, 9, 9, 1))
        assert type(block.pool) is layer_cls and block.pool.name == "pool"
        assert tuple(block.pool.pool_size) == (3, 3)
    assert block.pool.sigma == 0.5  # the last block built is the distance-weighted one


def test_small_cnn_learns_a_separable_task():
    # Bright-centre vs dark-centre 12x12 images: two blocks, pooling, a linear head.
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, size=128)
    x = rng.normal(scale=0.3, size=(128, 12, 12, 1)).astype("float32")
    x[:, 4:8, 4:8, 0] += np.where(labels, 1.0, -1.0)[:, None, None]
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            ConvBlock(8, pooling="max"),
            ConvBlock(8, activation="prelu", pooling="l2"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", metrics=["accuracy"]
    )
    history = model.fit(x, labels, epochs=8, batch_size=32, verbose=0)
    assert history.history["accuracy"][-1] > 0.9


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"filters": 0}, r"Received: filters=0"),
        ({"filters": 2.0}, r"Received: filters=2\.0"),
        ({"kernel_size": 0}, r"Received: kernel_size=0"),
        ({"strides": (1, 2, 3)}, r"Received: strides=\(1, 2, 3\)"),
        ({"padding": "full"}, r"Received: padding='full'"),
        ({"pooling": "min"}, r"Received: pooling='min'"),
        ({"pool_size": -2}, r"Received: pool_size=-2"),
        ({"pool_padding": "causal"}, r"Received: pool_padding='causal'"),
        ({"pool_sigma": 0}, r"Received: pool_sigma=0"),
        ({"dropout": 1.0}, r"Received: dropout=1\.0"),
        ({"dropout": -0.1}, r"Received: dropout=-0\.1"),
        ({"activation": "no_such_activation"}, r"Received: activation='no_such_activation'"),
        ({"activation": keras.layers.ReLU()}, r"not a layer.*Received: activation=<ReLU"),
        ({"data_format": "NCHW"}, r"Received: data_format='NCHW'"),
        ({"strides": 2, "dilation_rate": 2}, r"Received: strides=2, dilation_rate=2"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConvBlock(**{"filters": 4, **kwargs})

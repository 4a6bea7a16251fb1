"""Convolution building blocks: `ConvBlock` (and `conv_output_size`, re-exported)."""

from __future__ import annotations

import numbers

import keras
from keras import ops

from custom_layers._validation import (
    is_int,
    normalize_data_format,
    normalize_padding,
    normalize_pair,
)
from custom_layers.layers.activation_layers import PReLU
from custom_layers.layers.conv_arithmetic import conv_output_size
from custom_layers.layers.pooling import DistanceWeightedPooling2D, L2Pooling2D

POOLING_TYPES = ("max", "average", "l2", "distance_weighted")


def _resolve_activation(identifier):
    """Return `"prelu"` or an activation function for `identifier`."""
    if isinstance(identifier, str) and identifier.lower() == "prelu":
        return "prelu"
    if isinstance(identifier, keras.layers.Layer):
        raise ValueError(
            "`activation` must be a string, a function or None, not a layer; use "
            "activation='prelu' for a learned slope. "
            f"Received: activation={identifier!r}"
        )
    if isinstance(identifier, str) and ">" in identifier:
        # A registered name such as "custom_layers>relu".
        fn = keras.saving.get_registered_object(identifier)
        if callable(fn):
            return fn
    try:
        return keras.activations.get(identifier)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "`activation` must be None, 'prelu', a Keras activation name, a registered "
            f"name ('package>name') or a callable. Received: activation={identifier!r}"
        ) from error


@keras.saving.register_keras_serializable(package="custom_layers")
class ConvBlock(keras.layers.Layer):
    """2D convolution -> batch norm -> activation -> pooling -> dropout.

    The standard stage of a small image CNN in one configurable layer:

    1. `Conv2D(filters, kernel_size, strides, padding)`, without a bias when
       batch normalization follows (the norm's `beta` plays that role);
    2. `BatchNormalization` if `use_batch_norm`;
    3. the activation: a function (`"relu"`, `keras.activations.gelu`,
       `custom_layers.activations.relu`, `"custom_layers>relu"`, ...) or
       `"prelu"` for a `PReLU` layer with one learned slope per channel;
    4. pooling if `pooling` is set: `"max"`, `"average"`, `"l2"`
       (`L2Pooling2D`) or `"distance_weighted"` (`DistanceWeightedPooling2D`,
       Gaussian width `pool_sigma`);
    5. `Dropout(dropout)` if `dropout > 0`.

    The sublayers are created in `build()` and named `conv`, `batch_norm`,
    `prelu`, `pool` and `dropout`. `training` is passed to batch norm and
    dropout.

    Args:
        filters: positive int, number of output channels of the convolution.
        kernel_size: int or pair of ints, the convolution window.
        strides: int or pair of ints, the convolution strides.
        padding: `"same"` or `"valid"`, the convolution padding.
        dilation_rate: int or pair of ints, the convolution dilation.
        use_batch_norm: whether to normalize the convolution output.
        activation: None (linear), `"prelu"`, a Keras activation name, a
            registered name (`"package>name"`) or a callable.
        pooling: None, `"max"`, `"average"`, `"l2"` or `"distance_weighted"`.
        pool_size: int or pair of ints, the pooling window.
        pool_strides: int, pair of ints or None (= `pool_size`).
        pool_padding: `"valid"` or `"same"`, the pooling padding.
        pool_sigma: Gaussian width in pixels, for `pooling="distance_weighted"`.
        dropout: float in [0, 1), dropout rate after the pooling.
        data_format: `"channels_last"`, `"channels_first"` or None (Keras's
            global `image_data_format`). The block always computes in
            `channels_last` layout: `channels_first` inputs are transposed in
            and the output transposed back, because TensorFlow's CPU kernels
            have no `NCHW` convolution unless oneDNN is on (AMD CPUs without
            AVX-512, `TF_ENABLE_ONEDNN_OPTS=0`). The weights are the same in
            both layouts.
        kernel_initializer: initializer of the convolution kernel. The default,
            `"he_normal"`, suits ReLU-family activations (He et al. 2015).
        bias_initializer: initializer of the convolution bias (only used
            without batch norm).
        kernel_regularizer: optional regularizer of the convolution kernel.
        bias_regularizer: optional regularizer of the convolution bias.
        batch_norm_momentum: momentum of the moving statistics.
        batch_norm_epsilon: epsilon of the batch normalization.
        batch_norm_synchronized: on the TensorFlow backend, normalise with the
            statistics of the global batch, all-reduced over the replicas of a
            `tf.distribute` strategy at every training step, instead of each
            replica's share (`BatchNormalization(synchronized=True)`). On other
            backends it has no effect: `keras.distribution` data parallelism
            already computes the statistics over the global batch (and their
            `BatchNormalization` refuses `synchronized=True`), so a model saved
            with it loads everywhere.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a 4D float tensor, `(batch, height, width, channels)` for
            `channels_last` or `(batch, channels, height, width)`.
        training: bool, whether batch norm uses batch statistics and dropout
            is active. Keras sets it in `fit` / `predict`.

    Returns:
        A 4D tensor with `filters` channels. Each spatial size is given by
        `conv_output_size` applied to the convolution and then to the pooling.

    Example:

    >>> block = ConvBlock(32, pooling="max", dropout=0.1)
    >>> block(np.zeros((2, 28, 28, 1), "float32")).shape
    (2, 14, 14, 32)
    >>> block.compute_output_shape((None, 28, 28, 1))
    (None, 14, 14, 32)

    Reference:
        Ioffe & Szegedy, "Batch Normalization", 2015
        (https://arxiv.org/abs/1502.03167); He et al., "Delving Deep into
        Rectifiers", 2015 (https://arxiv.org/abs/1502.01852).
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        padding="same",
        dilation_rate=1,
        use_batch_norm=True,
        activation="relu",
        pooling=None,
        pool_size=2,
        pool_strides=None,
        pool_padding="valid",
        pool_sigma=1.0,
        dropout=0.0,
        data_format=None,
        kernel_initializer="he_normal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        batch_norm_momentum=0.99,
        batch_norm_epsilon=1e-3,
        batch_norm_synchronized=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not is_int(filters) or filters <= 0:
            raise ValueError(f"`filters` must be a positive integer. Received: filters={filters!r}")
        if pooling is not None and pooling not in POOLING_TYPES:
            raise ValueError(
                f"`pooling` must be None or one of {POOLING_TYPES}. Received: pooling={pooling!r}"
            )
        if not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be a float in [0, 1). Received: dropout={dropout!r}")
        if not isinstance(pool_sigma, numbers.Real) or not pool_sigma > 0:
            raise ValueError(
                f"`pool_sigma` must be a positive number. Received: pool_sigma={pool_sigma!r}"
            )
        self.filters = int(filters)
        self.kernel_size = normalize_pair(kernel_size, "kernel_size")
        self.strides = normalize_pair(strides, "strides")
        self.padding = normalize_padding(padding)
        self.dilation_rate = normalize_pair(dilation_rate, "dilation_rate")
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(
                "`strides` > 1 cannot be combined with `dilation_rate` > 1. "
                f"Received: strides={strides!r}, dilation_rate={dilation_rate!r}"
            )
        self.use_batch_norm = bool(use_batch_norm)
        self.activation = _resolve_activation(activation)
        self.pooling = pooling
        self.pool_size = normalize_pair(pool_size, "pool_size")
        self.pool_strides = normalize_pair(
            self.pool_size if pool_strides is None else pool_strides, "pool_strides"
        )
        self.pool_padding = normalize_padding(pool_padding, "pool_padding")
        self.pool_sigma = float(pool_sigma)
        self.dropout = float(dropout)
        self.data_format = normalize_data_format(data_format)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.batch_norm_momentum = float(batch_norm_momentum)
        self.batch_norm_epsilon = float(batch_norm_epsilon)
        self.batch_norm_synchronized = bool(batch_norm_synchronized)
        self.input_spec = keras.InputSpec(ndim=4)

    @property
    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    @property
    def _transposes(self):
        # The sublayers always compute in channels_last (see `data_format`).
        return self.data_format == "channels_first"

    def _make_pooling(self):
        common = dict(
            pool_size=self.pool_size,
            strides=self.pool_strides,
            padding=self.pool_padding,
            data_format="channels_last",
            dtype=self.dtype_policy,
            name="pool",
        )
        if self.pooling == "max":
            return keras.layers.MaxPooling2D(**common)
        if self.pooling == "average":
            return keras.layers.AveragePooling2D(**common)
        if self.pooling == "l2":
            return L2Pooling2D(**common)
        return DistanceWeightedPooling2D(sigma=self.pool_sigma, **common)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if self._transposes:
            input_shape = (input_shape[0], *input_shape[2:], input_shape[1])
        self.conv = keras.layers.Conv2D(
            self.filters,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format="channels_last",
            use_bias=not self.use_batch_norm,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            dtype=self.dtype_policy,
            name="conv",
        )
        self.conv.build(input_shape)
        shape = self.conv.compute_output_shape(input_shape)

        self.batch_norm = None
        if self.use_batch_norm:
            self.batch_norm = keras.layers.BatchNormalization(
                axis=-1,
                momentum=self.batch_norm_momentum,
                epsilon=self.batch_norm_epsilon,
                synchronized=(
                    self.batch_norm_synchronized and keras.backend.backend() == "tensorflow"
                ),
                dtype=self.dtype_policy,
                name="batch_norm",
            )
            self.batch_norm.build(shape)

        self.prelu = None
        if self.activation == "prelu":
            # One slope per channel: share it over the two spatial axes.
            self.prelu = PReLU(shared_axes=[1, 2], dtype=self.dtype_policy, name="prelu")
            self.prelu.build(shape)

        self.pool = None
        if self.pooling is not None:
            self.pool = self._make_pooling()
            self.pool.build(shape)
            shape = self.pool.compute_output_shape(shape)

        self.dropout_layer = None
        if self.dropout > 0:
            self.dropout_layer = keras.layers.Dropout(
                self.dropout, dtype=self.dtype_policy, name="dropout"
            )
            self.dropout_layer.build(shape)

    def call(self, inputs, training=None):
        if self._transposes:
            inputs = ops.transpose(inputs, (0, 2, 3, 1))
        x = self.conv(inputs)
        if self.batch_norm is not None:
            x = self.batch_norm(x, training=training)
        x = self.prelu(x) if self.prelu is not None else self.activation(x)
        if self.pool is not None:
            x = self.pool(x)
        if self.dropout_layer is not None:
            x = self.dropout_layer(x, training=training)
        if self._transposes:
            x = ops.transpose(x, (0, 3, 1, 2))
        return x

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        spatial = [1, 2] if self.data_format == "channels_last" else [2, 3]
        output_shape = list(input_shape)
        for i, axis in enumerate(spatial):
            size = input_shape[axis]
            if size is not None:
                size = conv_output_size(
                    size,
                    self.kernel_size[i],
                    self.padding,
                    self.strides[i],
                    self.dilation_rate[i],
                )
                if self.pooling is not None:
                    size = conv_output_size(
                        size, self.pool_size[i], self.pool_padding, self.pool_strides[i]
                    )
            output_shape[axis] = size
        output_shape[self._channel_axis] = self.filters
        return tuple(output_shape)

    def get_config(self):
        config = super().get_config()
        activation = self.activation
        if activation != "prelu":
            activation = keras.activations.serialize(activation)
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "dilation_rate": self.dilation_rate,
                "use_batch_norm": self.use_batch_norm,
                "activation": activation,
                "pooling": self.pooling,
                "pool_size": self.pool_size,
                "pool_strides": self.pool_strides,
                "pool_padding": self.pool_padding,
                "pool_sigma": self.pool_sigma,
                "dropout": self.dropout,
                "data_format": self.data_format,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
                "batch_norm_momentum": self.batch_norm_momentum,
                "batch_norm_epsilon": self.batch_norm_epsilon,
                "batch_norm_synchronized": self.batch_norm_synchronized,
            }
        )
        return config

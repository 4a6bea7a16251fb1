"""Pooling layers beyond max and average: L2 pooling and Gaussian distance-weighted pooling.

Both apply one fixed kernel (a constant, not a weight) to every channel alike,
so they are computed as a single-channel convolution over `batch * channels`
images: the channels are folded into the batch, convolved with a
`(h, w, 1, 1)` kernel, and unfolded. That uses only the plain `Conv2D` op in
`NHWC` layout, which every TensorFlow CPU build has for any strides (TensorFlow's
`DepthwiseConv2dNative` rejects unequal strides without oneDNN), and it runs on
every Keras backend. `channels_first` inputs fold without a transpose.

`padding="same"` follows Keras's convention: the output has `ceil(size / stride)`
positions and the input is padded by `total // 2` before and the rest after,
where `total = max((out - 1) * stride + pool - size, 0)`.
"""

from __future__ import annotations

import math
import numbers

import keras
import numpy as np
from keras import ops

from custom_layers._validation import normalize_data_format, normalize_padding, normalize_pair
from custom_layers.layers.conv_arithmetic import conv_output_size


class _FixedKernelPooling2D(keras.layers.Layer):
    """Shared arguments, checks and shape logic of the pooling layers below."""

    def __init__(self, pool_size, strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = normalize_pair(pool_size, "pool_size")
        self.strides = normalize_pair(self.pool_size if strides is None else strides, "strides")
        self.padding = normalize_padding(padding)
        self.data_format = normalize_data_format(data_format)
        self.input_spec = keras.InputSpec(ndim=4)

    def build(self, input_shape):
        channel_axis = -1 if self.data_format == "channels_last" else 1
        if input_shape[channel_axis] is None:
            raise ValueError(
                f"{type(self).__name__} needs a known number of channels (axis "
                f"{channel_axis} of the input). Received: input_shape={tuple(input_shape)}"
            )
        self.input_spec = keras.InputSpec(ndim=4, axes={channel_axis: input_shape[channel_axis]})

    def _convolve(self, images, kernel):
        """Convolves single-channel `(n, h, w, 1)` images with a fixed `(h, w)` NumPy kernel."""
        kernel = ops.convert_to_tensor(kernel[:, :, None, None], dtype=images.dtype)
        return ops.conv(
            images,
            kernel,
            strides=self.strides,
            padding=self.padding,
            data_format="channels_last",
        )

    def call(self, inputs):
        # Fold the channels into the batch: (n, c, h, w) -> (n * c, h, w, 1).
        if self.data_format == "channels_last":
            inputs = ops.transpose(inputs, (0, 3, 1, 2))
        shape = ops.shape(inputs)
        images = ops.reshape(inputs, (-1, shape[2], shape[3], 1))
        pooled = self._pool_images(images)
        out_shape = ops.shape(pooled)
        outputs = ops.reshape(pooled, (-1, shape[1], out_shape[1], out_shape[2]))
        if self.data_format == "channels_last":
            outputs = ops.transpose(outputs, (0, 2, 3, 1))
        return outputs

    def compute_output_shape(self, input_shape):
        output_shape = list(input_shape)
        spatial = (1, 2) if self.data_format == "channels_last" else (2, 3)
        for i, axis in enumerate(spatial):
            if output_shape[axis] is not None:
                output_shape[axis] = conv_output_size(
                    output_shape[axis], self.pool_size[i], self.padding, self.strides[i]
                )
        return tuple(output_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "pool_size": self.pool_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="custom_layers")
class L2Pooling2D(_FixedKernelPooling2D):
    """L2 pooling: the Euclidean norm of each window, channel by channel.

    Each output is `sqrt(sum of x**2 over the window)`, the "L2 norm of the
    rectangular neighbourhood". It sits between average pooling (of `|x|`) and
    max pooling: every value in the window counts, large ones most.

    With `padding="same"`, the border windows sum over the input positions they
    cover (the padding contributes nothing).

    The gradient of `sqrt` is infinite at 0; where a window is all zeros the
    layer outputs exactly 0 and passes back a zero gradient instead of NaN.

    Args:
        pool_size: int or pair of ints, the window size.
        strides: int, pair of ints or None (= `pool_size`).
        padding: `"valid"` or `"same"`.
        data_format: `"channels_last"`, `"channels_first"` or None (Keras's
            global `image_data_format`).
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a 4D float tensor.

    Returns:
        A 4D tensor with the same channels; each spatial size is
        `conv_output_size(size, pool_size, padding, strides)`.

    Example:

    >>> x = np.array([3.0, 4.0, 0.0, 0.0], "float32").reshape(1, 2, 2, 1)
    >>> keras.ops.convert_to_numpy(L2Pooling2D(2)(x)).ravel()
    array([5.], dtype=float32)

    Reference:
        Sermanet, Chintala & LeCun, "Convolutional Neural Networks Applied to
        House Numbers Digit Classification", ICPR 2012
        (https://arxiv.org/abs/1204.3968).
    """

    def __init__(self, pool_size=2, strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(pool_size, strides, padding, data_format, **kwargs)

    def _pool_images(self, images):
        sum_of_squares = self._convolve(ops.square(images), np.ones(self.pool_size))
        # Safe square root: sqrt is only evaluated (and differentiated) where the
        # sum is positive, so an all-zero window gives 0 and a zero gradient.
        positive = sum_of_squares > 0
        safe = ops.where(positive, sum_of_squares, ops.ones_like(sum_of_squares))
        return ops.where(positive, ops.sqrt(safe), ops.zeros_like(sum_of_squares))


def gaussian_window(pool_size, sigma):
    """Weights of `DistanceWeightedPooling2D`: a `(h, w)` float64 array summing to 1.

    The weight of a position is `exp(-d**2 / (2 * sigma**2))`, `d` its distance
    in pixels from the window's centre `((h - 1) / 2, (w - 1) / 2)`. The
    smallest `d**2` is subtracted before the exponential so that the weights
    nearest the centre never underflow, however small `sigma` is.
    """
    rows = np.arange(pool_size[0]) - (pool_size[0] - 1) / 2
    cols = np.arange(pool_size[1]) - (pool_size[1] - 1) / 2
    squared_distance = rows[:, None] ** 2 + cols[None, :] ** 2
    weights = np.exp(-(squared_distance - squared_distance.min()) / (2.0 * sigma**2))
    return weights / weights.sum()


@keras.saving.register_keras_serializable(package="custom_layers")
class DistanceWeightedPooling2D(_FixedKernelPooling2D):
    """Average pooling weighted by a Gaussian of the distance from the window's centre.

    Each output is `sum_i w_i x_i` over the window, with
    `w_i proportional to exp(-d_i**2 / (2 sigma**2))`, `d_i` the Euclidean
    distance in pixels of position `i` from the window's centre, and the
    weights summing to 1 (see `gaussian_window`). A large `sigma` tends to
    average pooling; a small one to picking the centre (for odd windows; for
    even windows, the mean of the positions nearest the centre).

    With `padding="same"`, border windows are renormalized over the positions
    inside the input: the output is `sum_valid w_i x_i / sum_valid w_i`, so a
    constant input stays constant everywhere (as with Keras's average pooling).

    The weights are a constant (the NumPy array `layer.window`), not a
    trainable or saved weight: they follow from `pool_size` and `sigma`.

    Args:
        pool_size: int or pair of ints, the window size.
        strides: int, pair of ints or None (= `pool_size`).
        padding: `"valid"` or `"same"`.
        sigma: positive float, the Gaussian's standard deviation in pixels.
        data_format: `"channels_last"`, `"channels_first"` or None (Keras's
            global `image_data_format`).
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a 4D float tensor.

    Returns:
        A 4D tensor with the same channels; each spatial size is
        `conv_output_size(size, pool_size, padding, strides)`.

    Example:

    >>> x = np.arange(9, dtype="float32").reshape(1, 3, 3, 1)
    >>> keras.ops.convert_to_numpy(DistanceWeightedPooling2D(3, sigma=0.1)(x)).ravel()
    array([4.], dtype=float32)
    """

    def __init__(
        self, pool_size=3, strides=None, padding="valid", sigma=1.0, data_format=None, **kwargs
    ):
        super().__init__(pool_size, strides, padding, data_format, **kwargs)
        if (
            not isinstance(sigma, numbers.Real)
            or isinstance(sigma, bool)
            or not math.isfinite(sigma)
            or sigma <= 0
        ):
            raise ValueError(
                f"`sigma` must be a positive, finite number (pixels). Received: sigma={sigma!r}"
            )
        self.sigma = float(sigma)
        self.window = gaussian_window(self.pool_size, self.sigma)

    def _pool_images(self, images):
        outputs = self._convolve(images, self.window)
        if self.padding == "same":
            # Weight of the in-bounds positions of each window (1 inside the
            # input, less at the borders): renormalize by it.
            coverage = self._convolve(ops.ones_like(images[:1]), self.window)
            outputs = outputs / coverage
        return outputs

    def get_config(self):
        config = super().get_config()
        config["sigma"] = self.sigma
        return config

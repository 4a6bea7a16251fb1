"""Activation layers with learned parameters."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="custom_layers")
class PReLU(keras.layers.Layer):
    """Parametric Rectified Linear Unit with a learned negative slope.

    Computes `f(x) = x` for `x > 0` and `f(x) = alpha * x` otherwise, where
    `alpha` is a weight learned with the rest of the model. By default there is
    one slope per input element (`alpha` has the shape of one sample); list the
    axes along which the slope should be shared in `shared_axes`. For the output
    of a 2D convolution in `channels_last` layout, `shared_axes=[1, 2]` gives one
    slope per channel, as in the paper.

    With `alpha_initializer="zeros"` (the default) the layer starts as a ReLU;
    `keras.initializers.Constant(0.25)` is the paper's initial value.

    Args:
        alpha_initializer: initializer of the slopes.
        alpha_regularizer: optional regularizer of the slopes.
        alpha_constraint: optional constraint on the slopes.
        shared_axes: `None`, an int or a list of ints: the axes (counted with
            the batch axis as 0, negative values counted from the end) along
            which one slope is shared. Axes whose size is unknown at build time
            must be shared.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a float tensor of any rank >= 2.

    Returns:
        A tensor of the same shape and dtype as `inputs`.

    Example:

    >>> layer = PReLU(alpha_initializer=keras.initializers.Constant(0.1), shared_axes=[1, 2])
    >>> y = layer(np.array([[[[-2.0, 3.0]]]], dtype="float32"))
    >>> keras.ops.convert_to_numpy(y)
    array([[[[-0.2,  3. ]]]], dtype=float32)

    Reference:
        He et al., "Delving Deep into Rectifiers: Surpassing Human-Level
        Performance on ImageNet Classification", ICCV 2015
        (https://arxiv.org/abs/1502.01852).
    """

    def __init__(
        self,
        alpha_initializer="zeros",
        alpha_regularizer=None,
        alpha_constraint=None,
        shared_axes=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.alpha_initializer = keras.initializers.get(alpha_initializer)
        self.alpha_regularizer = keras.regularizers.get(alpha_regularizer)
        self.alpha_constraint = keras.constraints.get(alpha_constraint)
        if shared_axes is None:
            self.shared_axes = None
        else:
            axes = [shared_axes] if isinstance(shared_axes, int) else shared_axes
            if not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
                raise ValueError(
                    "`shared_axes` must be None, an int or a list of ints. "
                    f"Received: shared_axes={shared_axes!r}"
                )
            self.shared_axes = list(axes)
        self.supports_masking = True

    def build(self, input_shape):
        rank = len(input_shape)
        shared = set()
        for axis in self.shared_axes or ():
            if not -rank < axis < rank or axis % rank == 0:
                raise ValueError(
                    f"`shared_axes` must name non-batch axes of the rank-{rank} input "
                    f"(1 to {rank - 1}, or -{rank - 1} to -1). "
                    f"Received: shared_axes={self.shared_axes}"
                )
            shared.add(axis % rank)
        param_shape = []
        for axis in range(1, rank):
            if axis in shared:
                param_shape.append(1)
            elif input_shape[axis] is None:
                raise ValueError(
                    f"Axis {axis} of the input has unknown size, so PReLU cannot learn one "
                    f"slope per position along it; add it to `shared_axes`. "
                    f"Received: input_shape={tuple(input_shape)}, "
                    f"shared_axes={self.shared_axes}"
                )
            else:
                param_shape.append(input_shape[axis])
        self.alpha = self.add_weight(
            shape=tuple(param_shape),
            name="alpha",
            initializer=self.alpha_initializer,
            regularizer=self.alpha_regularizer,
            constraint=self.alpha_constraint,
        )
        self.input_spec = keras.InputSpec(
            ndim=rank,
            axes={a: input_shape[a] for a in range(1, rank) if a not in shared},
        )

    def call(self, inputs):
        # relu(x) - alpha * relu(-x): the same expression (and so the same
        # gradient at 0) as `keras.layers.PReLU`.
        return ops.relu(inputs) - self.alpha * ops.relu(-inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "alpha_initializer": keras.initializers.serialize(self.alpha_initializer),
                "alpha_regularizer": keras.regularizers.serialize(self.alpha_regularizer),
                "alpha_constraint": keras.constraints.serialize(self.alpha_constraint),
                "shared_axes": self.shared_axes,
            }
        )
        return config

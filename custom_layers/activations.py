"""Activation functions written with `keras.ops`.

Each function is the formula itself, written so that it stays finite for any
finite input, and registered under the `custom_layers` package. Pass the
function object to a layer (`keras.layers.Dense(4, activation=relu)`): the
layer's config then names it `"custom_layers>relu"` and a saved model reloads
it without `custom_objects`, as long as `custom_layers` has been imported.

`keras.activations.get` only resolves Keras's own names from a string, so a
layer that accepts activation strings should resolve them with
`custom_layers.activations.get`, which also knows `"custom_layers>relu"`.

Derivatives at the kinks follow Keras's TensorFlow backend: the left-hand
derivative is used at exactly 0, so `relu'(0) = 0`, `leaky_relu'(0) =
negative_slope` and `elu'(0) = alpha`. (Keras's JAX backend gives
`leaky_relu'(0) = 1`; these functions give the same value on every backend.)
"""

import keras
from keras import ops

from custom_layers._validation import check_non_negative

__all__ = ["elu", "get", "leaky_relu", "relu", "sigmoid", "tanh"]


def _negative_abs(x):
    """`-|x|`, written with `where` so that its derivative at 0 is -1 (`abs` would give 0)."""
    return ops.where(x >= 0, -x, x)


@keras.saving.register_keras_serializable(package="custom_layers")
def relu(x):
    """Rectified linear unit: `max(x, 0)`.

    Args:
        x: Input tensor.

    Returns:
        A tensor of the same shape and dtype as `x`. The gradient is 1 where
        `x > 0` and 0 elsewhere (0 at exactly `x = 0`, like `keras.activations.relu`).

    Example:

    >>> relu(np.array([-1.0, 0.0, 2.0]))
    array([0., 0., 2.])

    Reference:
        - [Nair and Hinton, 2010](https://www.cs.toronto.edu/~hinton/absps/reluICML.pdf)
    """
    x = ops.convert_to_tensor(x)
    return ops.where(x > 0, x, ops.zeros_like(x))


@keras.saving.register_keras_serializable(package="custom_layers")
def leaky_relu(x, negative_slope=0.2):
    """Leaky rectified linear unit: `x` if `x > 0`, else `negative_slope * x`.

    Args:
        x: Input tensor.
        negative_slope: Slope for `x <= 0`, a number >= 0. Defaults to `0.2`,
            the default of `keras.activations.leaky_relu`.

    Returns:
        A tensor of the same shape and dtype as `x`. The gradient at exactly 0
        is `negative_slope`.

    Example:

    >>> leaky_relu(np.array([-1.0, 0.0, 2.0]))
    array([-0.2, 0. , 2. ])

    Reference:
        - [Maas et al., 2013](https://ai.stanford.edu/~amaas/papers/relu_hybrid_icml2013_final.pdf)
    """
    check_non_negative("negative_slope", negative_slope)
    x = ops.convert_to_tensor(x)
    return ops.where(x > 0, x, negative_slope * x)


@keras.saving.register_keras_serializable(package="custom_layers")
def elu(x, alpha=1.0):
    """Exponential linear unit: `x` if `x > 0`, else `alpha * (exp(x) - 1)`.

    The exponential is only ever evaluated at `min(x, 0)`, so large positive
    inputs neither overflow nor poison the gradient with `inf * 0`.

    Args:
        x: Input tensor.
        alpha: Scale of the negative part, a number >= 0 (the value that
            `elu(x)` tends to is `-alpha`). Defaults to `1.0`.

    Returns:
        A tensor of the same shape and dtype as `x`. The gradient at exactly 0
        is `alpha` (continuous for `alpha = 1`).

    Example:

    >>> elu(np.array([-1.0, 0.0, 2.0]))
    array([-0.6321206, 0. , 2. ])

    Reference:
        - [Clevert et al., 2016](https://arxiv.org/abs/1511.07289)
    """
    check_non_negative("alpha", alpha)
    x = ops.convert_to_tensor(x)
    negative_part = ops.where(x > 0, ops.zeros_like(x), x)
    return ops.where(x > 0, x, alpha * ops.expm1(negative_part))


@keras.saving.register_keras_serializable(package="custom_layers")
def sigmoid(x):
    """Logistic sigmoid: `1 / (1 + exp(-x))`.

    Computed from `z = exp(-|x|)`, which never overflows: `1 / (1 + z)` for
    `x >= 0` and `z / (1 + z)` for `x < 0`. Finite (0 or 1) at `x = ±1e4`, with
    finite gradients.

    Args:
        x: Input tensor.

    Returns:
        A tensor of the same shape and dtype as `x`, in `[0, 1]`.

    Example:

    >>> sigmoid(np.array([-1e4, 0.0, 1e4]))
    array([0. , 0.5, 1. ])
    """
    x = ops.convert_to_tensor(x)
    z = ops.exp(_negative_abs(x))
    return ops.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


@keras.saving.register_keras_serializable(package="custom_layers")
def tanh(x):
    """Hyperbolic tangent: `(exp(x) - exp(-x)) / (exp(x) + exp(-x))`.

    Computed as `sign(x) * (-u) / (2 + u)` with `u = expm1(-2|x|)`: nothing
    overflows at large `|x|`, and `expm1` keeps full relative precision near 0
    (where `1 - exp(-2|x|)` would cancel).

    Args:
        x: Input tensor.

    Returns:
        A tensor of the same shape and dtype as `x`, in `[-1, 1]`.

    Example:

    >>> tanh(np.array([-1e4, 0.0, 1.0]))
    array([-1. , 0. , 0.7615942])
    """
    x = ops.convert_to_tensor(x)
    u = ops.expm1(2.0 * _negative_abs(x))
    magnitude = -u / (2.0 + u)
    return ops.where(x >= 0, magnitude, -magnitude)


def get(identifier):
    """Resolves an activation identifier, including `"custom_layers>name"` strings.

    `keras.activations.get` looks plain strings up among Keras's own
    activations only. This function first resolves registered names
    (`"package>name"`) through `keras.activations.deserialize`, then defers to
    `keras.activations.get` for everything else (Keras names, dict configs,
    callables and `None`, which means linear).

    Args:
        identifier: A string, a serialized config dict, a callable or `None`.

    Returns:
        The activation function.

    Example:

    >>> get("custom_layers>relu") is relu
    True
    >>> get("relu") is keras.activations.relu
    True
    """
    if isinstance(identifier, str) and ">" in identifier:
        # An unknown name deserializes to the string itself (or raises).
        try:
            fn = keras.activations.deserialize(identifier)
        except (TypeError, ValueError):
            fn = None
        if not callable(fn):
            raise ValueError(
                f"No activation function is registered under the name `{identifier}`. "
                "Import the package that registers it (e.g. `import custom_layers`) or "
                f"check the spelling. Received: identifier={identifier!r}"
            )
        return fn
    return keras.activations.get(identifier)

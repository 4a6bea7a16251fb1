"""Losses written with `keras.ops`: a plain function per loss, wrapped by a `Loss` class.

Each function `fn(y_true, y_pred, **options)` returns one value per sample: it
reduces the last axis (the features or classes), like `keras.losses.*`
functions. Each class is a thin `keras.losses.Loss` subclass that calls the
function, so reduction, `sample_weight` and Keras masks behave exactly as for
the built-in losses. `MaskedSparseCategoricalCrossentropy` is the one
exception: it returns a value per token and reduces over the real tokens
itself (see its docstring).

Conventions shared by the cross-entropies, matching Keras:

- Probabilities are clipped to `[epsilon, 1 - epsilon]`
  (`keras.config.epsilon()`, 1e-7 by default) before the logarithm, so
  probabilities of exactly 0 or 1 give a finite loss and finite gradients;
  categorical probabilities are first renormalised to sum to 1.
- With `from_logits=True` the logarithms come from `log_sigmoid` /
  `log_softmax`, which are exact and finite for any finite logit.
- Label smoothing replaces `y` by `y * (1 - label_smoothing) +
  label_smoothing / K` over `K` classes (`K = 2` for the binary losses, i.e.
  `y * (1 - label_smoothing) + 0.5 * label_smoothing`).
"""

import keras
import numpy as np
from keras import ops

from custom_layers._validation import (
    check_bool,
    check_int,
    check_non_negative,
    check_range,
    sparse_token_ids,
)

__all__ = [
    "BinaryCrossentropy",
    "BinaryFocalCrossentropy",
    "CategoricalCrossentropy",
    "CategoricalFocalCrossentropy",
    "GeneralizedCrossentropy",
    "MaskedSparseCategoricalCrossentropy",
    "MeanAbsoluteError",
    "MeanSquaredError",
    "WeightedBinaryCrossentropy",
    "WeightedCategoricalCrossentropy",
    "binary_crossentropy",
    "binary_focal_crossentropy",
    "categorical_crossentropy",
    "categorical_focal_crossentropy",
    "generalized_crossentropy",
    "masked_sparse_categorical_crossentropy",
    "mean_absolute_error",
    "mean_squared_error",
    "weighted_binary_crossentropy",
    "weighted_categorical_crossentropy",
]

_register = keras.saving.register_keras_serializable(package="custom_layers")


# ----------------------------------------------------------------------------
# Argument checks (shared by the functions and the classes).
# ----------------------------------------------------------------------------


def _check_class_weights(class_weights, num_classes=None):
    """Returns `class_weights` as a list of floats after checking it."""
    try:
        weights = np.asarray(class_weights, dtype="float64")
    except (TypeError, ValueError) as error:
        raise ValueError(
            "Argument `class_weights` must be a 1-D list of numbers, one per class. "
            f"Received: class_weights={class_weights!r}"
        ) from error
    if weights.ndim != 1 or weights.size == 0:
        raise ValueError(
            "Argument `class_weights` must be a non-empty 1-D list of numbers, one per "
            f"class. Received: class_weights={class_weights!r} (shape {weights.shape})"
        )
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(
            "Argument `class_weights` must hold finite numbers >= 0. "
            f"Received: class_weights={class_weights!r}"
        )
    if num_classes is not None and weights.size != num_classes:
        raise ValueError(
            f"Argument `class_weights` must have {num_classes} entries. "
            f"Received: class_weights={class_weights!r}"
        )
    return [float(w) for w in weights]


# ----------------------------------------------------------------------------
# Shared pieces of the cross-entropies.
# ----------------------------------------------------------------------------


def _crossentropy_options(from_logits, label_smoothing, **checked):
    """The checked `from_logits` and `label_smoothing` after `checked` (already checked) options."""
    return {
        **checked,
        "from_logits": check_bool("from_logits", from_logits),
        "label_smoothing": check_range("label_smoothing", label_smoothing, 0.0, 1.0),
    }


def _prepare(y_true, y_pred):
    """Converts both to tensors of `y_pred`'s float dtype and aligns their ranks.

    A `y_true` of shape `(batch,)` against a `y_pred` of shape `(batch, 1)`
    gains a last axis; otherwise a trailing axis of size 1 on the higher-rank
    side is dropped (what `keras.losses` does).
    """
    y_pred = ops.convert_to_tensor(y_pred)
    if not keras.backend.is_float_dtype(y_pred.dtype):
        y_pred = ops.cast(y_pred, keras.config.floatx())
    y_true = ops.cast(y_true, y_pred.dtype)
    true_rank, pred_rank = len(y_true.shape), len(y_pred.shape)
    if pred_rank == true_rank + 1 and y_pred.shape[-1] == 1:
        if true_rank == 1:
            y_true = ops.expand_dims(y_true, -1)
        else:
            y_pred = ops.squeeze(y_pred, -1)
    elif true_rank == pred_rank + 1 and y_true.shape[-1] == 1:
        if pred_rank == 1:
            y_pred = ops.expand_dims(y_pred, -1)
        else:
            y_true = ops.squeeze(y_true, -1)
    return y_true, y_pred


def _smooth(y_true, label_smoothing, num_classes):
    if not label_smoothing:
        return y_true
    return y_true * (1.0 - label_smoothing) + label_smoothing / num_classes


def _binary_log_probs(y_pred, from_logits):
    """Returns `(log p, log(1 - p))` for the positive class."""
    if from_logits:
        return ops.log_sigmoid(y_pred), ops.log_sigmoid(-y_pred)
    epsilon = keras.config.epsilon()
    p = ops.clip(y_pred, epsilon, 1.0 - epsilon)
    return ops.log(p), ops.log(1.0 - p)


def _categorical_log_probs(y_pred, from_logits):
    """Returns `log p` over the last axis (renormalised and clipped for probabilities)."""
    if from_logits:
        return ops.log_softmax(y_pred, axis=-1)
    epsilon = keras.config.epsilon()
    p = y_pred / ops.sum(y_pred, axis=-1, keepdims=True)
    return ops.log(ops.clip(p, epsilon, 1.0 - epsilon))


def _num_classes(y_pred):
    """The size of the last axis, as a Python int when known, else as a float tensor."""
    num_classes = y_pred.shape[-1]
    if num_classes is not None:
        return num_classes
    return ops.cast(ops.shape(y_pred)[-1], y_pred.dtype)


# ----------------------------------------------------------------------------
# Functions: one value per sample.
# ----------------------------------------------------------------------------


@_register
def mean_squared_error(y_true, y_pred):
    """Mean of the squared errors over the last axis: `mean((y_true - y_pred)**2, axis=-1)`.

    Args:
        y_true: Ground truth values, shape `(batch, ..., d)`.
        y_pred: Predicted values, same shape (a `(batch,)` / `(batch, 1)`
            mismatch is aligned).

    Returns:
        Tensor of shape `(batch, ...)`.
    """
    y_true, y_pred = _prepare(y_true, y_pred)
    return ops.mean(ops.square(y_true - y_pred), axis=-1)


@_register
def mean_absolute_error(y_true, y_pred):
    """Mean of the absolute errors over the last axis: `mean(|y_true - y_pred|, axis=-1)`.

    Args:
        y_true: Ground truth values, shape `(batch, ..., d)`.
        y_pred: Predicted values, same shape.

    Returns:
        Tensor of shape `(batch, ...)`.
    """
    y_true, y_pred = _prepare(y_true, y_pred)
    return ops.mean(ops.abs(y_true - y_pred), axis=-1)


@_register
def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0):
    """Binary cross-entropy, averaged over the last axis.

    `-(y log p + (1 - y) log(1 - p))` per element, with `y` label-smoothed
    towards 0.5.

    Args:
        y_true: Targets in `[0, 1]`, shape `(batch, ..., d)` (or `(batch,)`
            against `y_pred` of shape `(batch, 1)`).
        y_pred: Probabilities, or logits if `from_logits=True`.
        from_logits: Whether `y_pred` holds logits.
        label_smoothing: Float in `[0, 1]`.

    Returns:
        Tensor of shape `(batch, ...)`.
    """
    from_logits = check_bool("from_logits", from_logits)
    label_smoothing = check_range("label_smoothing", label_smoothing, 0.0, 1.0)
    y_true, y_pred = _prepare(y_true, y_pred)
    y_true = _smooth(y_true, label_smoothing, 2.0)
    log_p, log_not_p = _binary_log_probs(y_pred, from_logits)
    return ops.mean(-(y_true * log_p + (1.0 - y_true) * log_not_p), axis=-1)


@_register
def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0):
    """Categorical cross-entropy `-sum_k y_k log p_k` over the last axis.

    Args:
        y_true: One-hot (or soft) targets, shape `(batch, ..., K)`.
        y_pred: Probabilities over `K` classes, or logits if `from_logits=True`.
        from_logits: Whether `y_pred` holds logits.
        label_smoothing: Float in `[0, 1]`; targets become
            `y * (1 - label_smoothing) + label_smoothing / K`.

    Returns:
        Tensor of shape `(batch, ...)`.
    """
    from_logits = check_bool("from_logits", from_logits)
    label_smoothing = check_range("label_smoothing", label_smoothing, 0.0, 1.0)
    y_true, y_pred = _prepare(y_true, y_pred)
    y_true = _smooth(y_true, label_smoothing, _num_classes(y_pred))
    log_p = _categorical_log_probs(y_pred, from_logits)
    return -ops.sum(y_true * log_p, axis=-1)


@_register
def weighted_categorical_crossentropy(
    y_true, y_pred, class_weights, from_logits=False, label_smoothing=0.0
):
    """Class-weighted categorical cross-entropy `-sum_k w_k y_k log p_k`.

    For a one-hot target of class `c` this is `-w_c log p_c`: the loss of each
    sample is scaled by the weight of its true class. Soft (or smoothed)
    targets weight each class's term by its own `w_k`.

    Args:
        y_true: One-hot (or soft) targets, shape `(batch, ..., K)`.
        y_pred: Probabilities over `K` classes, or logits if `from_logits=True`.
        class_weights: `K` non-negative numbers, one per class.
        from_logits: Whether `y_pred` holds logits.
        label_smoothing: Float in `[0, 1]`, applied before weighting.

    Returns:
        Tensor of shape `(batch, ...)`.
    """
    from_logits = check_bool("from_logits", from_logits)
    label_smoothing = check_range("label_smoothing", label_smoothing, 0.0, 1.0)
    y_true, y_pred = _prepare(y_true, y_pred)
    class_weights = _check_class_weights(class_weights, y_pred.shape[-1])
    weights = ops.convert_to_tensor(class_weights, dtype=y_pred.dtype)
    y_true = _smooth(y_true, label_smoothing, _num_classes(y_pred))
    log_p = _categorical_log_probs(y_pred, from_logits)
    return -ops.sum(weights * y_true * log_p, axis=-1)


@_register
def weighted_binary_crossentropy(
    y_true, y_pred, class_weights, from_logits=False, label_smoothing=0.0
):
    """Class-weighted binary cross-entropy, averaged over the last axis.

    `-(w_1 y log p + w_0 (1 - y) log(1 - p))` per element: `w_1` scales the
    positive (label 1) term and `w_0` the negative one. With `w_0 = w_1 = 1`
    this is `binary_crossentropy`.

    Args:
        y_true: Targets in `[0, 1]`, shape `(batch, ..., d)`.
        y_pred: Probabilities of the positive class, or logits if `from_logits=True`.
        class_weights: Two non-negative numbers `[w_0, w_1]`: the weight of
            label 0 and of label 1 (the same order as Keras's
            `fit(class_weight={0: w_0, 1: w_1})`).
        from_logits: Whether `y_pred` holds logits.
        label_smoothing: Float in `[0, 1]`.

    Returns:
        Tensor of shape `(batch, ...)`.
    """
    from_logits = check_bool("from_logits", from_logits)
    label_smoothing = check_range("label_smoothing", label_smoothing, 0.0, 1.0)
    negative_weight, positive_weight = _check_class_weights(class_weights, 2)
    y_true, y_pred = _prepare(y_true, y_pred)
    y_true = _smooth(y_true, label_smoothing, 2.0)
    log_p, log_not_p = _binary_log_probs(y_pred, from_logits)
    terms = positive_weight * y_true * log_p + negative_weight * (1.0 - y_true) * log_not_p
    return ops.mean(-terms, axis=-1)


@_register
def binary_focal_crossentropy(
    y_true, y_pred, alpha=0.25, gamma=2.0, from_logits=False, label_smoothing=0.0
):
    """Alpha-balanced binary focal loss, averaged over the last axis.

    Per element `-alpha_t (1 - p_t)**gamma log p_t`, with `p_t = y p + (1 - y)
    (1 - p)` and `alpha_t = y alpha + (1 - y)(1 - alpha)` (for soft `y`, the
    cross-entropy `-(y log p + (1 - y) log(1 - p))` takes the place of
    `-log p_t`). Equal to `keras.losses.binary_focal_crossentropy` with
    `apply_class_balancing=True`.

    Args:
        y_true: Targets in `[0, 1]`, shape `(batch, ..., d)`.
        y_pred: Probabilities, or logits if `from_logits=True`.
        alpha: Weight of the positive class, in `[0, 1]`; the negative class
            gets `1 - alpha`.
        gamma: Focusing parameter >= 0; `gamma = 0` gives alpha-weighted
            cross-entropy.
        from_logits: Whether `y_pred` holds logits.
        label_smoothing: Float in `[0, 1]`.

    Returns:
        Tensor of shape `(batch, ...)`.

    Reference:
        - [Lin et al., 2017](https://arxiv.org/abs/1708.02002)
    """
    alpha = check_range("alpha", alpha, 0.0, 1.0)
    gamma = check_non_negative("gamma", gamma)
    from_logits = check_bool("from_logits", from_logits)
    label_smoothing = check_range("label_smoothing", label_smoothing, 0.0, 1.0)
    y_true, y_pred = _prepare(y_true, y_pred)
    y_true = _smooth(y_true, label_smoothing, 2.0)
    log_p, log_not_p = _binary_log_probs(y_pred, from_logits)
    cross_entropy = -(y_true * log_p + (1.0 - y_true) * log_not_p)
    # 1 - p_t, from exp(log ...) so that logits never round p to exactly 1.
    one_minus_p_t = y_true * ops.exp(log_not_p) + (1.0 - y_true) * ops.exp(log_p)
    focal = cross_entropy if gamma == 0 else ops.power(one_minus_p_t, gamma) * cross_entropy
    alpha_t = y_true * alpha + (1.0 - y_true) * (1.0 - alpha)
    return ops.mean(alpha_t * focal, axis=-1)


@_register
def categorical_focal_crossentropy(
    y_true, y_pred, alpha=0.25, gamma=2.0, from_logits=False, label_smoothing=0.0
):
    """Categorical focal loss `-sum_k alpha (1 - p_k)**gamma y_k log p_k`.

    Equal to `keras.losses.categorical_focal_crossentropy` (which also uses a
    single `alpha` for every class).

    Args:
        y_true: One-hot (or soft) targets, shape `(batch, ..., K)`.
        y_pred: Probabilities over `K` classes, or logits if `from_logits=True`.
        alpha: Weighting factor in `[0, 1]`.
        gamma: Focusing parameter >= 0.
        from_logits: Whether `y_pred` holds logits.
        label_smoothing: Float in `[0, 1]`.

    Returns:
        Tensor of shape `(batch, ...)`.

    Reference:
        - [Lin et al., 2017](https://arxiv.org/abs/1708.02002)
    """
    alpha = check_range("alpha", alpha, 0.0, 1.0)
    gamma = check_non_negative("gamma", gamma)
    from_logits = check_bool("from_logits", from_logits)
    label_smoothing = check_range("label_smoothing", label_smoothing, 0.0, 1.0)
    y_true, y_pred = _prepare(y_true, y_pred)
    y_true = _smooth(y_true, label_smoothing, _num_classes(y_pred))
    log_p = _categorical_log_probs(y_pred, from_logits)
    cross_entropy = -y_true * log_p
    if gamma != 0:
        # 1 - p = -expm1(log p): exact even when p rounds to 1.
        cross_entropy = ops.power(-ops.expm1(log_p), gamma) * cross_entropy
    return ops.sum(alpha * cross_entropy, axis=-1)


@_register
def generalized_crossentropy(y_true, y_pred, q=0.7, from_logits=False):
    """Generalized cross-entropy (L_q loss) `(1 - p_y**q) / q`.

    Interpolates between cross-entropy (`q -> 0`) and the mean absolute error
    `1 - p_y` (`q = 1`), which is robust to noisy labels. For soft targets the
    loss is `sum_k y_k (1 - p_k**q) / q`. Computed as `-expm1(q log p) / q`,
    which keeps full precision for small `q`.

    Two layouts of `y_pred` are accepted:

    - `(batch, ..., K)` with `K > 1`: a distribution over `K` classes (or
      logits), with one-hot `y_true` of the same shape;
    - `(batch, ..., 1)`: one sigmoid unit, read as the two classes
      `[1 - p, p]`, with `y_true` of 0/1 labels of shape `(batch, ..., 1)` or
      `(batch, ...)`.

    Args:
        y_true: Targets, see above.
        y_pred: Probabilities, or logits if `from_logits=True`.
        q: Exponent in `(0, 1]`.
        from_logits: Whether `y_pred` holds logits.

    Returns:
        Tensor of shape `(batch, ...)`.

    Reference:
        - [Zhang and Sabuncu, 2018](https://arxiv.org/abs/1805.07836)
    """
    q = check_range("q", q, 0.0, 1.0, low_open=True)
    from_logits = check_bool("from_logits", from_logits)
    y_pred = ops.convert_to_tensor(y_pred)
    binary = y_pred.shape[-1] == 1
    y_true, y_pred = _prepare(y_true, y_pred)

    def l_q(log_p):
        return -ops.expm1(q * log_p) / q

    if binary:
        log_p, log_not_p = _binary_log_probs(y_pred, from_logits)
        losses = y_true * l_q(log_p) + (1.0 - y_true) * l_q(log_not_p)
        return ops.mean(losses, axis=-1)
    log_p = _categorical_log_probs(y_pred, from_logits)
    return ops.sum(y_true * l_q(log_p), axis=-1)


@_register
def masked_sparse_categorical_crossentropy(
    y_true, y_pred, pad_id=0, from_logits=False, label_smoothing=0.0
):
    """Sparse categorical cross-entropy per token, 0 at padding positions.

    Args:
        y_true: Integer token ids, shape `(batch, T)` (any `(batch, ...)`).
            Positions equal to `pad_id` are padding.
        y_pred: Probabilities over the vocabulary, or logits if
            `from_logits=True`, shape `(batch, T, V)`.
        pad_id: The padding id. It need not be a valid class (e.g. `-100`).
        from_logits: Whether `y_pred` holds logits.
        label_smoothing: Float in `[0, 1]`; the one-hot target becomes
            `y * (1 - label_smoothing) + label_smoothing / V`.

    Returns:
        Tensor of shape `(batch, T)`: the loss of each token, 0 where
        `y_true == pad_id`. Average it over the real tokens with
        `MaskedSparseCategoricalCrossentropy`.
    """
    pad_id = check_int("pad_id", pad_id)
    from_logits = check_bool("from_logits", from_logits)
    label_smoothing = check_range("label_smoothing", label_smoothing, 0.0, 1.0)
    y_pred = ops.convert_to_tensor(y_pred)
    if not keras.backend.is_float_dtype(y_pred.dtype):
        y_pred = ops.cast(y_pred, keras.config.floatx())
    y_true = sparse_token_ids(y_true, y_pred)
    is_token = ops.not_equal(y_true, pad_id)
    # Padding positions read class 0, so that any pad_id (even -100) is safe to gather.
    safe_ids = ops.where(is_token, y_true, ops.zeros_like(y_true))
    log_p = _categorical_log_probs(y_pred, from_logits)
    nll = -ops.squeeze(ops.take_along_axis(log_p, safe_ids[..., None], axis=-1), -1)
    if label_smoothing:
        # sum_k (y_k (1 - eps) + eps / V)(-log p_k) = (1 - eps) nll + eps mean_k(-log p_k)
        nll = (1.0 - label_smoothing) * nll - label_smoothing * ops.mean(log_p, axis=-1)
    return ops.where(is_token, nll, ops.zeros_like(nll))


# ----------------------------------------------------------------------------
# Loss classes.
# ----------------------------------------------------------------------------


class _FunctionLoss(keras.losses.Loss):
    """Base of the classes below: `call` applies `fn` with the stored options.

    Subclasses pass their loss function and its options (the `__init__`
    arguments other than `name`, `reduction` and `dtype`); `get_config` lists
    them, so `from_config(get_config())` rebuilds an equal loss.
    """

    def __init__(self, fn, options, name, reduction, dtype):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._fn = fn
        self._options = dict(options)

    def call(self, y_true, y_pred):
        return self._fn(y_true, y_pred, **self._options)

    def get_config(self):
        config = super().get_config()
        config.update({"dtype": self.dtype, **self._options})
        return config


@_register
class MeanSquaredError(_FunctionLoss):
    """Mean of the squared errors: `mean((y_true - y_pred)**2)`.

    Args:
        reduction: Reduction over the batch: `"sum_over_batch_size"`
            (default), `"sum"`, `"mean"`, `"mean_with_sample_weight"`,
            `"none"` or `None`.
        name: Name of the loss instance.
        dtype: Dtype of the loss computation (defaults to `keras.config.floatx()`).

    Call arguments:
        y_true: Ground truth values, shape `(batch, ..., d)`.
        y_pred: Predicted values, same shape.
        sample_weight: Optional weights, broadcastable to `(batch, ...)`.

    Returns:
        The reduced loss.

    Example:

    >>> actual = [67, 50, 36, 74, 84, 84, 64, 34, 23, 72, 62, 42]
    >>> forecast = [70, 49, 38, 76, 83, 80, 67, 30, 20, 75, 60, 38]
    >>> float(MeanSquaredError()(actual, forecast))  # 98 / 12
    8.166667
    """

    def __init__(self, reduction="sum_over_batch_size", name="mean_squared_error", dtype=None):
        super().__init__(mean_squared_error, {}, name, reduction, dtype)


@_register
class MeanAbsoluteError(_FunctionLoss):
    """Mean of the absolute errors: `mean(|y_true - y_pred|)`.

    Args:
        reduction: Reduction over the batch (see `MeanSquaredError`).
        name: Name of the loss instance.
        dtype: Dtype of the loss computation.

    Call arguments:
        y_true: Ground truth values, shape `(batch, ..., d)`.
        y_pred: Predicted values, same shape.
        sample_weight: Optional weights, broadcastable to `(batch, ...)`.

    Returns:
        The reduced loss.

    Example:

    >>> float(MeanAbsoluteError()([0.0, 1.0], [1.0, 3.0]))
    1.5
    """

    def __init__(self, reduction="sum_over_batch_size", name="mean_absolute_error", dtype=None):
        super().__init__(mean_absolute_error, {}, name, reduction, dtype)


@_register
class BinaryCrossentropy(_FunctionLoss):
    """Binary cross-entropy between 0/1 labels and predicted probabilities.

    See `binary_crossentropy` for the formula; equal to
    `keras.losses.BinaryCrossentropy` with the same arguments.

    Args:
        from_logits: Whether `y_pred` holds logits rather than probabilities.
        label_smoothing: Float in `[0, 1]`; labels become
            `y * (1 - label_smoothing) + 0.5 * label_smoothing`.
        reduction: Reduction over the batch (see `MeanSquaredError`).
        name: Name of the loss instance.
        dtype: Dtype of the loss computation.

    Call arguments:
        y_true: Labels in `[0, 1]`, shape `(batch, d)` or `(batch,)`.
        y_pred: Probabilities or logits, shape `(batch, d)`.
        sample_weight: Optional weights, shape `(batch,)`.

    Returns:
        The reduced loss.

    Example:

    >>> loss = BinaryCrossentropy(from_logits=True)
    >>> float(loss([[1.0], [0.0]], [[0.0], [0.0]]))  # log(2)
    0.6931472
    """

    def __init__(
        self,
        from_logits=False,
        label_smoothing=0.0,
        reduction="sum_over_batch_size",
        name="binary_crossentropy",
        dtype=None,
    ):
        options = _crossentropy_options(from_logits, label_smoothing)
        super().__init__(binary_crossentropy, options, name, reduction, dtype)


@_register
class CategoricalCrossentropy(_FunctionLoss):
    """Categorical cross-entropy between one-hot labels and a predicted distribution.

    See `categorical_crossentropy`; equal to `keras.losses.CategoricalCrossentropy`.

    Args:
        from_logits: Whether `y_pred` holds logits rather than probabilities.
        label_smoothing: Float in `[0, 1]`; labels become
            `y * (1 - label_smoothing) + label_smoothing / K`.
        reduction: Reduction over the batch (see `MeanSquaredError`).
        name: Name of the loss instance.
        dtype: Dtype of the loss computation.

    Call arguments:
        y_true: One-hot labels, shape `(batch, K)`.
        y_pred: Probabilities or logits, shape `(batch, K)`.
        sample_weight: Optional weights, shape `(batch,)`.

    Returns:
        The reduced loss.

    Example:

    >>> float(CategoricalCrossentropy()([[0, 1, 0]], [[0.25, 0.5, 0.25]]))  # log(2)
    0.6931472
    """

    def __init__(
        self,
        from_logits=False,
        label_smoothing=0.0,
        reduction="sum_over_batch_size",
        name="categorical_crossentropy",
        dtype=None,
    ):
        options = _crossentropy_options(from_logits, label_smoothing)
        super().__init__(categorical_crossentropy, options, name, reduction, dtype)


@_register
class WeightedCategoricalCrossentropy(_FunctionLoss):
    """Categorical cross-entropy with one weight per class: `-w_y log p_y`.

    Useful for imbalanced classes: the weights play the role of Keras's
    `fit(class_weight=...)`, but live in the loss, so they are saved with the
    model and apply in `evaluate` as well.

    Args:
        class_weights: List of `K` non-negative numbers, one per class.
        from_logits: Whether `y_pred` holds logits rather than probabilities.
        label_smoothing: Float in `[0, 1]`, applied before weighting.
        reduction: Reduction over the batch (see `MeanSquaredError`).
        name: Name of the loss instance.
        dtype: Dtype of the loss computation.

    Call arguments:
        y_true: One-hot labels, shape `(batch, K)`.
        y_pred: Probabilities or logits, shape `(batch, K)`.
        sample_weight: Optional weights, shape `(batch,)`.

    Returns:
        The reduced loss.

    Example:

    >>> loss = WeightedCategoricalCrossentropy(class_weights=[1.0, 3.0])
    >>> float(loss([[0, 1]], [[0.5, 0.5]]))  # 3 log(2)
    2.0794415
    """

    def __init__(
        self,
        class_weights,
        from_logits=False,
        label_smoothing=0.0,
        reduction="sum_over_batch_size",
        name="weighted_categorical_crossentropy",
        dtype=None,
    ):
        options = _crossentropy_options(
            from_logits, label_smoothing, class_weights=_check_class_weights(class_weights)
        )
        super().__init__(weighted_categorical_crossentropy, options, name, reduction, dtype)


@_register
class WeightedBinaryCrossentropy(_FunctionLoss):
    """Binary cross-entropy with a weight per label: `-(w_1 y log p + w_0 (1 - y) log(1 - p))`.

    Args:
        class_weights: `[w_0, w_1]`, the non-negative weights of label 0 and
            label 1. For balanced training use `n / (2 n_c)` for a class with
            `n_c` of the `n` examples.
        from_logits: Whether `y_pred` holds logits rather than probabilities.
        label_smoothing: Float in `[0, 1]`.
        reduction: Reduction over the batch (see `MeanSquaredError`).
        name: Name of the loss instance.
        dtype: Dtype of the loss computation.

    Call arguments:
        y_true: Labels in `[0, 1]`, shape `(batch, 1)` or `(batch,)`.
        y_pred: Probabilities or logits of label 1, shape `(batch, 1)`.
        sample_weight: Optional weights, shape `(batch,)`.

    Returns:
        The reduced loss.

    Example:

    >>> loss = WeightedBinaryCrossentropy(class_weights=[1.0, 3.0], from_logits=True)
    >>> float(loss([[1.0]], [[0.0]]))  # 3 log(2)
    2.0794415
    """

    def __init__(
        self,
        class_weights,
        from_logits=False,
        label_smoothing=0.0,
        reduction="sum_over_batch_size",
        name="weighted_binary_crossentropy",
        dtype=None,
    ):
        options = _crossentropy_options(
            from_logits, label_smoothing, class_weights=_check_class_weights(class_weights, 2)
        )
        super().__init__(weighted_binary_crossentropy, options, name, reduction, dtype)


@_register
class BinaryFocalCrossentropy(_FunctionLoss):
    """Alpha-balanced binary focal loss (Lin et al. 2017).

    `-alpha_t (1 - p_t)**gamma log p_t`: down-weights examples the model
    already gets right, so training concentrates on the hard ones. Equal to
    `keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, ...)`.

    Args:
        alpha: Weight of the positive class in `[0, 1]` (negatives get `1 - alpha`).
        gamma: Focusing parameter >= 0.
        from_logits: Whether `y_pred` holds logits rather than probabilities.
        label_smoothing: Float in `[0, 1]`.
        reduction: Reduction over the batch (see `MeanSquaredError`).
        name: Name of the loss instance.
        dtype: Dtype of the loss computation.

    Call arguments:
        y_true: Labels in `[0, 1]`, shape `(batch, d)` or `(batch,)`.
        y_pred: Probabilities or logits, shape `(batch, d)`.
        sample_weight: Optional weights, shape `(batch,)`.

    Returns:
        The reduced loss.

    Example:

    >>> loss = BinaryFocalCrossentropy(alpha=0.25, gamma=2.0, from_logits=True)
    >>> float(loss([[1.0]], [[0.0]]))  # 0.25 * 0.5**2 * log(2)
    0.043321

    Reference:
        - [Lin et al., 2017](https://arxiv.org/abs/1708.02002)
    """

    def __init__(
        self,
        alpha=0.25,
        gamma=2.0,
        from_logits=False,
        label_smoothing=0.0,
        reduction="sum_over_batch_size",
        name="binary_focal_crossentropy",
        dtype=None,
    ):
        options = _crossentropy_options(
            from_logits,
            label_smoothing,
            alpha=check_range("alpha", alpha, 0.0, 1.0),
            gamma=check_non_negative("gamma", gamma),
        )
        super().__init__(binary_focal_crossentropy, options, name, reduction, dtype)


@_register
class CategoricalFocalCrossentropy(_FunctionLoss):
    """Categorical focal loss (Lin et al. 2017): `-sum_k alpha (1 - p_k)**gamma y_k log p_k`.

    Equal to `keras.losses.CategoricalFocalCrossentropy` with the same arguments.

    Args:
        alpha: Weighting factor in `[0, 1]`.
        gamma: Focusing parameter >= 0.
        from_logits: Whether `y_pred` holds logits rather than probabilities.
        label_smoothing: Float in `[0, 1]`.
        reduction: Reduction over the batch (see `MeanSquaredError`).
        name: Name of the loss instance.
        dtype: Dtype of the loss computation.

    Call arguments:
        y_true: One-hot labels, shape `(batch, K)`.
        y_pred: Probabilities or logits, shape `(batch, K)`.
        sample_weight: Optional weights, shape `(batch,)`.

    Returns:
        The reduced loss.

    Example:

    >>> loss = CategoricalFocalCrossentropy()
    >>> float(loss([[0, 1]], [[0.5, 0.5]]))  # 0.25 * 0.5**2 * log(2)
    0.043321

    Reference:
        - [Lin et al., 2017](https://arxiv.org/abs/1708.02002)
    """

    def __init__(
        self,
        alpha=0.25,
        gamma=2.0,
        from_logits=False,
        label_smoothing=0.0,
        reduction="sum_over_batch_size",
        name="categorical_focal_crossentropy",
        dtype=None,
    ):
        options = _crossentropy_options(
            from_logits,
            label_smoothing,
            alpha=check_range("alpha", alpha, 0.0, 1.0),
            gamma=check_non_negative("gamma", gamma),
        )
        super().__init__(categorical_focal_crossentropy, options, name, reduction, dtype)


@_register
class GeneralizedCrossentropy(_FunctionLoss):
    """Generalized cross-entropy `(1 - p_y**q) / q`, robust to noisy labels.

    Tends to cross-entropy as `q -> 0` and equals `1 - p_y` (MAE on the
    probabilities) at `q = 1`. Accepts a softmax output of shape `(batch, K)`
    with one-hot labels, or a single sigmoid unit of shape `(batch, 1)` with
    0/1 labels (read as the two classes `[1 - p, p]`), as in a binary
    classifier.

    Args:
        q: Exponent in `(0, 1]`; the paper recommends `0.7`.
        from_logits: Whether `y_pred` holds logits rather than probabilities.
        reduction: Reduction over the batch (see `MeanSquaredError`).
        name: Name of the loss instance.
        dtype: Dtype of the loss computation.

    Call arguments:
        y_true: One-hot labels `(batch, K)`, or 0/1 labels `(batch,)` /
            `(batch, 1)` for a sigmoid output.
        y_pred: Probabilities or logits, shape `(batch, K)` or `(batch, 1)`.
        sample_weight: Optional weights, shape `(batch,)`.

    Returns:
        The reduced loss.

    Example:

    >>> loss = GeneralizedCrossentropy(q=1.0)
    >>> float(loss([[1.0]], [[0.8]]))  # 1 - 0.8
    0.2

    Reference:
        - [Zhang and Sabuncu, 2018](https://arxiv.org/abs/1805.07836)
    """

    def __init__(
        self,
        q=0.7,
        from_logits=False,
        reduction="sum_over_batch_size",
        name="generalized_crossentropy",
        dtype=None,
    ):
        options = {
            "q": check_range("q", q, 0.0, 1.0, low_open=True),
            "from_logits": check_bool("from_logits", from_logits),
        }
        super().__init__(generalized_crossentropy, options, name, reduction, dtype)


@_register
class MaskedSparseCategoricalCrossentropy(_FunctionLoss):
    """Token-level cross-entropy averaged over the real (non-pad) tokens only.

    With the default reduction the result is `sum of the losses of the
    non-pad tokens / number of non-pad tokens in the batch`: each real token
    counts once, whatever the padding of its row, and padding never dilutes
    the mean. An all-pad batch gives 0.

    The padding mask comes from `y_true == pad_id`; a Keras mask carried by
    `y_pred` is not used (the targets already say which positions are real).
    Because of this the class reduces its per-token values itself:

    - `"sum_over_batch_size"` / `"mean"`: `sum(w * loss) / number of real tokens`,
      as Keras reduces a masked loss;
    - `"mean_with_sample_weight"`: `sum(w * loss) / sum(w)` over real tokens;
    - `"sum"`: `sum(w * loss)`;
    - `"none"` / `None`: the `(batch, T)` tensor `w * loss` (0 at padding),

    where `w` is `sample_weight` (1 if not given), of shape `(batch,)` or
    `(batch, T)`.

    Args:
        pad_id: Integer id of the padding token in `y_true`.
        from_logits: Whether `y_pred` holds logits rather than probabilities.
        label_smoothing: Float in `[0, 1]`, spread over the `V` classes.
        reduction: See above.
        name: Name of the loss instance.
        dtype: Dtype of the loss computation.

    Call arguments:
        y_true: Integer token ids, shape `(batch, T)`.
        y_pred: Probabilities or logits, shape `(batch, T, V)`.
        sample_weight: Optional weights, shape `(batch,)` or `(batch, T)`.

    Returns:
        The reduced loss.

    Example:

    >>> loss = MaskedSparseCategoricalCrossentropy(pad_id=0, from_logits=True)
    >>> y_true = [[5, 3, 0, 0], [2, 0, 0, 0]]  # 3 real tokens
    >>> float(loss(y_true, np.zeros((2, 4, 8))))  # uniform over 8: log(8)
    2.0794415
    """

    def __init__(
        self,
        pad_id=0,
        from_logits=False,
        label_smoothing=0.0,
        reduction="sum_over_batch_size",
        name="masked_sparse_categorical_crossentropy",
        dtype=None,
    ):
        options = _crossentropy_options(
            from_logits, label_smoothing, pad_id=check_int("pad_id", pad_id)
        )
        super().__init__(masked_sparse_categorical_crossentropy, options, name, reduction, dtype)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras's `Loss.__call__` would cast the ids to float and average over
        # every position; this keeps the ids as integers and averages over
        # the real tokens.
        with keras.name_scope(self.name):
            y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
            y_true = ops.convert_to_tensor(y_true)
            losses = self.call(y_true, y_pred)
            y_true = ops.reshape(y_true, ops.shape(losses))
            is_token = ops.cast(ops.not_equal(y_true, self._options["pad_id"]), losses.dtype)
            num_tokens = ops.sum(is_token)
            weights = is_token
            if sample_weight is not None:
                sample_weight = ops.convert_to_tensor(sample_weight, dtype=losses.dtype)
                while len(sample_weight.shape) < len(losses.shape):
                    sample_weight = ops.expand_dims(sample_weight, -1)
                weights = weights * sample_weight
            losses = losses * weights
            if self.reduction in (None, "none"):
                return losses
            total = ops.sum(losses)
            if self.reduction == "sum":
                return total
            if self.reduction == "mean_with_sample_weight":
                return ops.divide_no_nan(total, self.global_count(ops.sum(weights)))
            return ops.divide_no_nan(total, self.global_count(num_tokens))

    def global_count(self, count):
        """The number of real tokens (or their weight) in the whole global batch.

        The mean divides by it. Where one program sees the whole batch (one
        device, or JAX's data parallelism) that is `count` itself, which this
        returns. Under a `tf.distribute` strategy each replica sees a share of
        the batch and the replicas' gradients are summed, so the mean must
        divide by the count summed over the replicas: the training code adapts
        this loss object for that (`apps.common.distribute.Distribution.prepare_model`
        replaces this method on the instance by an all-reduce), which keeps
        this library free of TensorFlow-only code.
        """
        return count

"""Tests for `custom_layers.losses`: values and gradients against NumPy and Keras built-ins."""

import inspect

import keras
import numpy as np
import pytest
from keras import ops

from custom_layers import losses
from tests.backend_utils import value_and_grad

BACKEND = keras.backend.backend()
EPS = 1e-7  # keras.config.epsilon()
REDUCTIONS = ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none"]


def to_numpy(x):
    return ops.convert_to_numpy(x)


# ----------------------------------------------------------------------------
# Data and NumPy references.
# ----------------------------------------------------------------------------


def binary_data(seed, from_logits, shape=(8, 3)):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, size=shape).astype("float32")
    if from_logits:
        y_pred = rng.normal(0.0, 3.0, size=shape)
    else:
        y_pred = rng.uniform(0.02, 0.98, size=shape)
    return y_true, y_pred.astype("float32")


def categorical_data(seed, from_logits, batch=8, num_classes=5):
    rng = np.random.default_rng(seed)
    y_true = np.eye(num_classes, dtype="float32")[rng.integers(0, num_classes, size=batch)]
    logits = rng.normal(0.0, 2.0, size=(batch, num_classes)).astype("float32")
    return y_true, (logits if from_logits else np_softmax(logits).astype("float32"))


def np_softmax(x):
    x = np.asarray(x, "float64")
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_binary_log_probs(y_pred, from_logits):
    y_pred = np.asarray(y_pred, "float64")
    if from_logits:  # log sigmoid(x) = -log(1 + exp(-x))
        return -np.logaddexp(0.0, -y_pred), -np.logaddexp(0.0, y_pred)
    p = np.clip(y_pred, EPS, 1 - EPS)
    return np.log(p), np.log(1 - p)


def np_categorical_log_probs(y_pred, from_logits):
    y_pred = np.asarray(y_pred, "float64")
    if from_logits:
        return np.log(np_softmax(y_pred))
    p = y_pred / y_pred.sum(-1, keepdims=True)
    return np.log(np.clip(p, EPS, 1 - EPS))


def np_bce(y_true, y_pred, from_logits=False, label_smoothing=0.0, weights=(1.0, 1.0)):
    y = y_true * (1 - label_smoothing) + 0.5 * label_smoothing
    log_p, log_not_p = np_binary_log_probs(y_pred, from_logits)
    return -(weights[1] * y * log_p + weights[0] * (1 - y) * log_not_p).mean(-1)


def np_cce(y_true, y_pred, from_logits=False, label_smoothing=0.0, weights=None):
    num_classes = y_pred.shape[-1]
    y = y_true * (1 - label_smoothing) + label_smoothing / num_classes
    w = np.ones(num_classes) if weights is None else np.asarray(weights)
    return -(w * y * np_categorical_log_probs(y_pred, from_logits)).sum(-1)


def np_masked_loss(y_true, y_pred, pad_id=0, from_logits=False, label_smoothing=0.0, sw=None):
    """Mean over the non-pad tokens of the batch of the (smoothed) token cross-entropy."""
    num_classes = y_pred.shape[-1]
    is_token = y_true != pad_id
    one_hot = np.eye(num_classes)[np.where(is_token, y_true, 0)]
    target = one_hot * (1 - label_smoothing) + label_smoothing / num_classes
    per_token = -(target * np_categorical_log_probs(y_pred, from_logits)).sum(-1)
    weights = is_token * (1.0 if sw is None else sw)
    return (per_token * weights).sum() / max(is_token.sum(), 1), per_token * is_token


# ----------------------------------------------------------------------------
# Mean squared / absolute error.
# ----------------------------------------------------------------------------

ACTUAL = [67, 50, 36, 74, 84, 84, 64, 34, 23, 72, 62, 42]
FORECAST = [70, 49, 38, 76, 83, 80, 67, 30, 20, 75, 60, 38]


def test_mean_squared_error_worked_example():
    # Errors -3, 1, -2, -2, 1, 4, -3, 4, 3, -3, 2, 4: squares sum to 98.
    expected = np.float32(98) / np.float32(12)
    assert to_numpy(losses.MeanSquaredError()(ACTUAL, FORECAST)) == expected
    assert to_numpy(losses.mean_squared_error(ACTUAL, FORECAST)) == expected
    assert float(expected) == pytest.approx(98 / 12, rel=1e-7)


def test_mean_absolute_error_worked_example():
    absolute_errors = [3, 1, 2, 2, 1, 4, 3, 4, 3, 3, 2, 4]  # by hand from the table
    assert np.abs(np.subtract(ACTUAL, FORECAST)).tolist() == absolute_errors
    expected = np.float32(32) / np.float32(12)
    assert to_numpy(losses.MeanAbsoluteError()(ACTUAL, FORECAST)) == expected


@pytest.mark.parametrize(
    "fn, np_fn",
    [
        (losses.mean_squared_error, lambda t, p: ((t - p) ** 2).mean(-1)),
        (losses.mean_absolute_error, lambda t, p: np.abs(t - p).mean(-1)),
    ],
)
def test_regression_functions_return_one_value_per_sample(fn, np_fn):
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.normal(size=(2, 6, 4)).astype("float32")
    out = to_numpy(fn(y_true, y_pred))
    assert out.shape == (6,)
    np.testing.assert_allclose(out, np_fn(y_true, y_pred), rtol=1e-6)
    # (batch,) labels against a (batch, 1) prediction are aligned, not broadcast.
    column = to_numpy(fn(y_true[:, 0], y_pred[:, :1]))
    np.testing.assert_allclose(column, np_fn(y_true[:, :1], y_pred[:, :1]), rtol=1e-6)


# ----------------------------------------------------------------------------
# Every loss against its Keras built-in: values, reductions, sample weights, gradients.
# ----------------------------------------------------------------------------

# id -> (our class, our kwargs, Keras class, Keras kwargs, data function, from_logits)
KERAS_PAIRS = {}
for _logits in (False, True):
    for _smoothing in (0.0, 0.2):
        _common = {"from_logits": _logits, "label_smoothing": _smoothing}
        _tag = f"logits={_logits}-ls={_smoothing}"
        KERAS_PAIRS[f"bce-{_tag}"] = (
            losses.BinaryCrossentropy, _common,
            keras.losses.BinaryCrossentropy, _common, binary_data, _logits,
        )  # fmt: skip
        KERAS_PAIRS[f"cce-{_tag}"] = (
            losses.CategoricalCrossentropy, _common,
            keras.losses.CategoricalCrossentropy, _common, categorical_data, _logits,
        )  # fmt: skip
        KERAS_PAIRS[f"weighted_bce_ones-{_tag}"] = (
            losses.WeightedBinaryCrossentropy, {"class_weights": [1.0, 1.0], **_common},
            keras.losses.BinaryCrossentropy, _common, binary_data, _logits,
        )  # fmt: skip
        KERAS_PAIRS[f"weighted_cce_ones-{_tag}"] = (
            losses.WeightedCategoricalCrossentropy, {"class_weights": [1.0] * 5, **_common},
            keras.losses.CategoricalCrossentropy, _common, categorical_data, _logits,
        )  # fmt: skip
        # The defaults without smoothing, other alpha / gamma with it.
        _alpha, _gamma = (0.25, 2.0) if _smoothing == 0.0 else (0.7, 0.5)
        _focal = {"alpha": _alpha, "gamma": _gamma, **_common}
        KERAS_PAIRS[f"binary_focal-a={_alpha}-g={_gamma}-{_tag}"] = (
            losses.BinaryFocalCrossentropy, _focal,
            keras.losses.BinaryFocalCrossentropy, {"apply_class_balancing": True, **_focal},
            binary_data, _logits,
        )  # fmt: skip
        KERAS_PAIRS[f"categorical_focal-a={_alpha}-g={_gamma}-{_tag}"] = (
            losses.CategoricalFocalCrossentropy, _focal,
            keras.losses.CategoricalFocalCrossentropy, _focal, categorical_data, _logits,
        )  # fmt: skip
KERAS_PAIRS["mse"] = (
    losses.MeanSquaredError, {}, keras.losses.MeanSquaredError, {}, binary_data, True,
)  # fmt: skip
KERAS_PAIRS["mae"] = (
    losses.MeanAbsoluteError, {}, keras.losses.MeanAbsoluteError, {}, binary_data, True,
)  # fmt: skip


@pytest.mark.parametrize("case", sorted(KERAS_PAIRS))
def test_matches_keras_builtin_values_and_gradients(case):
    ours_cls, ours_kwargs, keras_cls, keras_kwargs, data, from_logits = KERAS_PAIRS[case]
    y_true, y_pred = data(seed=len(case), from_logits=from_logits)
    ours = ours_cls(reduction="none", **ours_kwargs)
    builtin = keras_cls(reduction="none", **keras_kwargs)

    value, grad = value_and_grad(lambda p: ours(y_true, p), y_pred)
    keras_value, keras_grad = value_and_grad(lambda p: builtin(y_true, p), y_pred)
    assert value.shape == (y_true.shape[0],)
    rtol = 1e-6
    if BACKEND == "jax" and case.startswith("binary_focal") and from_logits:
        # Keras's JAX path takes log(1 - sigmoid(x)) of float32 probabilities, which is off by
        # ~5e-6 relative at |x| ~ 6 (ours: log_sigmoid(-x)). The float64 test below holds ours
        # to 1e-6 on the same kind of data.
        rtol = 2e-5
    np.testing.assert_allclose(value, keras_value, rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(grad, keras_grad, rtol=10 * rtol, atol=1e-6)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_binary_focal_from_logits_matches_float64_reference(label_smoothing):
    y_true, logits = binary_data(19, from_logits=True, shape=(64, 3))
    y = y_true * (1 - label_smoothing) + 0.5 * label_smoothing
    log_p, log_not_p = np_binary_log_probs(logits, from_logits=True)
    p_t = y * np.exp(log_p) + (1 - y) * np.exp(log_not_p)
    alpha_t = y * 0.25 + (1 - y) * 0.75
    expected = (alpha_t * (1 - p_t) ** 2 * -(y * log_p + (1 - y) * log_not_p)).mean(-1)
    value = losses.binary_focal_crossentropy(
        y_true, logits, from_logits=True, label_smoothing=label_smoothing
    )
    np.testing.assert_allclose(to_numpy(value), expected, rtol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", ["bce-logits=True-ls=0.2", "cce-logits=False-ls=0.0", "mse"])
def test_reduction_and_sample_weight_match_keras_builtin(case, reduction):
    ours_cls, ours_kwargs, keras_cls, keras_kwargs, data, from_logits = KERAS_PAIRS[case]
    y_true, y_pred = data(seed=3, from_logits=from_logits)
    sample_weight = np.random.default_rng(4).uniform(0, 2, size=len(y_true)).astype("float32")
    ours = ours_cls(reduction=reduction, **ours_kwargs)
    builtin = keras_cls(reduction=reduction, **keras_kwargs)
    for weight in (None, sample_weight):
        np.testing.assert_allclose(
            to_numpy(ours(y_true, y_pred, sample_weight=weight)),
            to_numpy(builtin(y_true, y_pred, sample_weight=weight)),
            rtol=1e-6,
        )


# ----------------------------------------------------------------------------
# Cross-entropies against NumPy formulas, label smoothing, stability.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
def test_binary_and_categorical_crossentropy_match_numpy(from_logits, label_smoothing):
    kwargs = {"from_logits": from_logits, "label_smoothing": label_smoothing}
    y_true, y_pred = binary_data(0, from_logits)
    np.testing.assert_allclose(
        to_numpy(losses.binary_crossentropy(y_true, y_pred, **kwargs)),
        np_bce(y_true, y_pred, **kwargs),
        rtol=1e-6,
    )
    y_true, y_pred = categorical_data(1, from_logits)
    np.testing.assert_allclose(
        to_numpy(losses.categorical_crossentropy(y_true, y_pred, **kwargs)),
        np_cce(y_true, y_pred, **kwargs),
        rtol=1e-6,
    )


def test_label_smoothing_moves_targets_towards_uniform():
    # Smoothing 0.3 over K=4 turns the one-hot [0, 1, 0, 0] into [0.075, 0.775, 0.075, 0.075].
    y_pred = np.array([[0.1, 0.6, 0.2, 0.1]], "float32")
    target = np.array([[0.075, 0.775, 0.075, 0.075]])
    smoothed = losses.categorical_crossentropy([[0, 1, 0, 0]], y_pred, label_smoothing=0.3)
    soft = losses.categorical_crossentropy(target, y_pred)
    np.testing.assert_allclose(to_numpy(smoothed), to_numpy(soft), rtol=1e-6)
    # Binary: y = 1 with smoothing 0.2 becomes 0.9.
    smoothed = losses.binary_crossentropy([[1.0]], [[0.7]], label_smoothing=0.2)
    np.testing.assert_allclose(to_numpy(smoothed), -(0.9 * np.log(0.7) + 0.1 * np.log(0.3)))


PROBABILITY_LOSSES = {
    "bce": lambda t, p: losses.binary_crossentropy(t, p),
    "weighted_bce": lambda t, p: losses.weighted_binary_crossentropy(t, p, [2.0, 0.5]),
    "binary_focal": lambda t, p: losses.binary_focal_crossentropy(t, p, gamma=0.5),
    "gce_binary": lambda t, p: losses.generalized_crossentropy(
        t.reshape(-1, 1), ops.reshape(p, (-1, 1)), q=0.3
    ),
}


@pytest.mark.parametrize("name", sorted(PROBABILITY_LOSSES))
def test_binary_losses_finite_at_probabilities_zero_and_one(name):
    fn = PROBABILITY_LOSSES[name]
    y_true = np.array([[1.0, 0.0, 1.0, 0.0]] * 2, "float32")
    y_pred = np.array([[0.0, 1.0, 1.0, 0.0]] * 2, "float32")
    value, grad = value_and_grad(lambda p: fn(y_true, p), y_pred)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    if name == "bce":  # probabilities are clipped to [epsilon, 1 - epsilon] (in float32)
        p = np.clip(y_pred, np.float32(EPS), np.float32(1 - EPS)).astype("float64")
        expected = -(y_true * np.log(p) + (1 - y_true) * np.log(1 - p)).mean(-1)
        np.testing.assert_allclose(value, expected, rtol=1e-5)
        assert value[0] > 8.0  # two certain mistakes out of four, about -log(1e-7) / 2 each
        keras_value = to_numpy(keras.losses.binary_crossentropy(y_true, y_pred))
        np.testing.assert_allclose(value, keras_value, rtol=1e-6)


@pytest.mark.parametrize(
    "fn",
    [
        lambda t, p: losses.categorical_crossentropy(t, p, label_smoothing=0.1),
        lambda t, p: losses.weighted_categorical_crossentropy(t, p, [1.0, 2.0, 3.0]),
        lambda t, p: losses.categorical_focal_crossentropy(t, p, gamma=0.5),
        lambda t, p: losses.generalized_crossentropy(t, p, q=0.5),
    ],
    ids=["cce", "weighted_cce", "categorical_focal", "gce"],
)
def test_categorical_losses_finite_at_probabilities_zero_and_one(fn):
    y_true = np.array([[1, 0, 0], [0, 1, 0]], "float32")
    y_pred = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]], "float32")
    value, grad = value_and_grad(lambda p: fn(y_true, p), y_pred)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    assert value[0] > value[1] >= 0.0  # certain and wrong costs more than certain and right


@pytest.mark.parametrize(
    "fn",
    [
        lambda t, p: losses.binary_crossentropy(t, p, from_logits=True),
        lambda t, p: losses.weighted_binary_crossentropy(t, p, [1.0, 1.0], from_logits=True),
        lambda t, p: (
            losses.binary_focal_crossentropy(t, p, alpha=0.5, gamma=0.0, from_logits=True) * 2.0
        ),
    ],
    ids=["bce", "weighted_bce", "binary_focal_gamma0"],
)
def test_binary_losses_exact_at_large_logits(fn):
    y_true = np.array([[0.0], [1.0], [1.0], [0.0]], "float32")
    y_pred = np.array([[1e4], [-1e4], [1e4], [-1e4]], "float32")
    value, grad = value_and_grad(lambda p: fn(y_true, p), y_pred)
    np.testing.assert_allclose(value, [1e4, 1e4, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(grad[:, 0], [1.0, -1.0, 0.0, 0.0], atol=1e-6)


def test_categorical_losses_finite_at_large_logits():
    y_true = np.array([[1, 0, 0], [0, 0, 1]], "float32")
    y_pred = np.array([[-1e4, 1e4, 0.0], [0.0, 0.0, 1e4]], "float32")
    for fn in (
        lambda p: losses.categorical_crossentropy(y_true, p, from_logits=True),
        lambda p: losses.categorical_focal_crossentropy(y_true, p, from_logits=True),
        lambda p: losses.generalized_crossentropy(y_true, p, from_logits=True),
        lambda p: losses.masked_sparse_categorical_crossentropy(
            [[0, 2]], p[None], pad_id=-1, from_logits=True, label_smoothing=0.1
        ),
    ):
        value, grad = value_and_grad(fn, y_pred)
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    value = to_numpy(losses.categorical_crossentropy(y_true, y_pred, from_logits=True))
    np.testing.assert_allclose(value, [2e4, 0.0], rtol=1e-6)


# ----------------------------------------------------------------------------
# Weighted cross-entropies.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("from_logits", [False, True])
def test_weighted_categorical_crossentropy_scales_by_true_class_weight(from_logits):
    weights = [0.5, 1.0, 4.0, 2.0, 0.0]
    y_true, y_pred = categorical_data(5, from_logits)
    value = to_numpy(losses.weighted_categorical_crossentropy(y_true, y_pred, weights, from_logits))
    true_class = y_true.argmax(-1)
    log_p_true = np_categorical_log_probs(y_pred, from_logits)[np.arange(len(y_true)), true_class]
    np.testing.assert_allclose(value, -np.take(weights, true_class) * log_p_true, rtol=1e-6)


def test_weighted_categorical_crossentropy_soft_labels_and_smoothing():
    weights = [1.0, 3.0, 0.5]
    rng = np.random.default_rng(6)
    y_true = np_softmax(rng.normal(size=(4, 3))).astype("float32")
    y_pred = np_softmax(rng.normal(size=(4, 3))).astype("float32")
    value = losses.weighted_categorical_crossentropy(y_true, y_pred, weights, label_smoothing=0.3)
    expected = np_cce(y_true, y_pred, label_smoothing=0.3, weights=weights)
    np.testing.assert_allclose(to_numpy(value), expected, rtol=1e-6)


@pytest.mark.parametrize("from_logits", [False, True])
def test_weighted_binary_crossentropy_matches_numpy(from_logits):
    y_true, y_pred = binary_data(7, from_logits, shape=(10, 1))
    loss = losses.WeightedBinaryCrossentropy([0.3, 2.5], from_logits, reduction="none")
    expected = np_bce(y_true, y_pred, from_logits, weights=(0.3, 2.5))
    np.testing.assert_allclose(to_numpy(loss(y_true[:, 0], y_pred)), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "class_weights, match",
    [
        ([1.0, -0.5, 1.0], r"class_weights=\[1.0, -0.5, 1.0\]"),
        ([[1.0, 2.0]], r"class_weights=\[\[1.0, 2.0\]\]"),
        ([], r"class_weights=\[\]"),
        ([1.0, float("nan"), 1.0], r"class_weights=\[1.0, nan, 1.0\]"),
        ("heavy", "class_weights='heavy'"),
    ],
)
def test_bad_class_weights_raise(class_weights, match):
    with pytest.raises(ValueError, match=match):
        losses.WeightedCategoricalCrossentropy(class_weights)


def test_class_weights_length_must_match():
    with pytest.raises(ValueError, match=r"2 entries. Received: class_weights=\[1.0, 2.0, 3.0\]"):
        losses.WeightedBinaryCrossentropy([1.0, 2.0, 3.0])
    y_true, y_pred = categorical_data(0, False, num_classes=5)
    loss = losses.WeightedCategoricalCrossentropy([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"5 entries. Received: class_weights=\[1.0, 2.0, 3.0\]"):
        loss(y_true, y_pred)


# ----------------------------------------------------------------------------
# Focal losses.
# ----------------------------------------------------------------------------


def test_focal_with_gamma_zero_is_alpha_weighted_crossentropy():
    y_true, y_pred = binary_data(8, False)
    focal = losses.binary_focal_crossentropy(y_true, y_pred, alpha=0.5, gamma=0.0)
    np.testing.assert_allclose(to_numpy(focal), 0.5 * np_bce(y_true, y_pred), rtol=1e-6)
    y_true, y_pred = categorical_data(9, True)
    focal = losses.categorical_focal_crossentropy(
        y_true, y_pred, alpha=0.4, gamma=0.0, from_logits=True
    )
    np.testing.assert_allclose(to_numpy(focal), 0.4 * np_cce(y_true, y_pred, True), rtol=1e-6)


def test_binary_focal_matches_lin_et_al_formula():
    # -alpha_t (1 - p_t)^gamma log(p_t), for hard labels.
    y_true = np.array([[1.0], [0.0], [1.0], [0.0]], "float32")
    y_pred = np.array([[0.9], [0.9], [0.2], [0.05]], "float32")
    p_t = np.where(y_true == 1, y_pred, 1 - y_pred).astype("float64")
    alpha_t = np.where(y_true == 1, 0.25, 0.75)
    expected = (-alpha_t * (1 - p_t) ** 2 * np.log(p_t))[:, 0]
    value = losses.binary_focal_crossentropy(y_true, y_pred, alpha=0.25, gamma=2.0)
    np.testing.assert_allclose(to_numpy(value), expected, rtol=1e-6)


# ----------------------------------------------------------------------------
# Generalized cross-entropy.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("from_logits", [False, True])
def test_generalized_crossentropy_matches_formula(from_logits):
    y_true, y_pred = categorical_data(10, from_logits)
    p_true = np.exp(np_categorical_log_probs(y_pred, from_logits))[y_true.astype(bool)]
    for q in (0.3, 0.7):
        value = losses.generalized_crossentropy(y_true, y_pred, q=q, from_logits=from_logits)
        np.testing.assert_allclose(to_numpy(value), (1 - p_true**q) / q, rtol=1e-5)


def test_generalized_crossentropy_limits():
    y_true, y_pred = categorical_data(11, False)
    cross_entropy = np_cce(y_true, y_pred)
    near_zero = to_numpy(losses.generalized_crossentropy(y_true, y_pred, q=1e-4))
    np.testing.assert_allclose(near_zero, cross_entropy, rtol=1e-3)
    at_one = to_numpy(losses.generalized_crossentropy(y_true, y_pred, q=1.0))
    np.testing.assert_allclose(at_one, 1.0 - (y_true * y_pred).sum(-1), rtol=1e-6)


@pytest.mark.parametrize("from_logits", [False, True])
def test_generalized_crossentropy_single_sigmoid_unit_is_two_classes(from_logits):
    y_true, y_pred = binary_data(12, from_logits, shape=(9, 1))
    p = 1 / (1 + np.exp(-y_pred)) if from_logits else y_pred
    two_class_true = np.concatenate([1 - y_true, y_true], -1)
    two_class_pred = np.concatenate([1 - p, p], -1).astype("float32")
    expected = to_numpy(losses.generalized_crossentropy(two_class_true, two_class_pred, q=0.7))
    loss = losses.GeneralizedCrossentropy(q=0.7, from_logits=from_logits, reduction="none")
    for labels in (y_true, y_true[:, 0]):  # (batch, 1) and (batch,) labels
        np.testing.assert_allclose(to_numpy(loss(labels, y_pred)), expected, rtol=1e-5)


@pytest.mark.parametrize("q", [0.0, -0.5, 1.5, float("nan"), "0.7"])
def test_generalized_crossentropy_rejects_q_outside_range(q):
    with pytest.raises(ValueError, match=rf"\(0.0, 1.0\]. Received: q={q!r}"):
        losses.GeneralizedCrossentropy(q=q)
    with pytest.raises(ValueError, match="Received: q="):
        losses.generalized_crossentropy([[1.0]], [[0.5]], q=q)


# ----------------------------------------------------------------------------
# Masked sparse categorical cross-entropy.
# ----------------------------------------------------------------------------

# Varied padding: 4 real tokens, 1, 6 (none padded), 0 (all padded).
MASKED_TRUE = np.array(
    [[5, 2, 7, 1, 0, 0], [3, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0]], "int32"
)


def masked_data(from_logits, seed=13, vocab_size=8):
    logits = np.random.default_rng(seed).normal(0, 2, size=(*MASKED_TRUE.shape, vocab_size))
    return (logits if from_logits else np_softmax(logits)).astype("float32")


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("from_logits", [False, True])
def test_masked_loss_is_mean_over_real_tokens(from_logits, label_smoothing):
    y_pred = masked_data(from_logits)
    kwargs = {"from_logits": from_logits, "label_smoothing": label_smoothing}
    expected, per_token = np_masked_loss(MASKED_TRUE, y_pred, **kwargs)
    value = losses.MaskedSparseCategoricalCrossentropy(**kwargs)(MASKED_TRUE, y_pred)
    np.testing.assert_allclose(to_numpy(value), expected, rtol=1e-6)
    np.testing.assert_allclose(
        to_numpy(losses.masked_sparse_categorical_crossentropy(MASKED_TRUE, y_pred, **kwargs)),
        per_token,
        rtol=1e-5,
        atol=1e-7,
    )
    # Not the mean over all positions, nor the mean of per-row means.
    assert abs(expected - per_token.mean()) > 0.1


@pytest.mark.parametrize("from_logits", [False, True])
def test_masked_loss_matches_keras_ignore_class(from_logits):
    y_pred = masked_data(from_logits, seed=14)
    sample_weight = np.random.default_rng(15).uniform(0, 2, size=MASKED_TRUE.shape)
    ours = losses.MaskedSparseCategoricalCrossentropy(pad_id=0, from_logits=from_logits)
    builtin = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits, ignore_class=0)
    for weight in (None, sample_weight.astype("float32")):
        value, grad = value_and_grad(lambda p, w=weight: ours(MASKED_TRUE, p, w), y_pred)
        keras_value, keras_grad = value_and_grad(
            lambda p, w=weight: builtin(MASKED_TRUE, p, w), y_pred
        )
        np.testing.assert_allclose(value, keras_value, rtol=1e-6)
        np.testing.assert_allclose(grad, keras_grad, rtol=1e-5, atol=1e-7)


def test_masked_loss_sample_weight_and_reductions():
    y_pred = masked_data(True, seed=16)
    row_weight = np.array([1.0, 3.0, 0.5, 2.0], "float32")
    kwargs = {"from_logits": True, "label_smoothing": 0.1}
    _, per_token = np_masked_loss(MASKED_TRUE, y_pred, **kwargs)
    weighted = per_token * row_weight[:, None]
    is_token = MASKED_TRUE != 0
    expected = {
        "sum_over_batch_size": weighted.sum() / is_token.sum(),
        "mean": weighted.sum() / is_token.sum(),
        "sum": weighted.sum(),
        "mean_with_sample_weight": weighted.sum() / (is_token * row_weight[:, None]).sum(),
        "none": weighted,
    }
    for reduction, target in expected.items():
        loss = losses.MaskedSparseCategoricalCrossentropy(reduction=reduction, **kwargs)
        for weight in (row_weight, np.broadcast_to(row_weight[:, None], MASKED_TRUE.shape)):
            value = to_numpy(loss(MASKED_TRUE, y_pred, sample_weight=weight))
            np.testing.assert_allclose(value, target, rtol=1e-5, atol=1e-7, err_msg=reduction)


def test_masked_loss_all_padding_gives_zero_without_nan():
    y_true = np.zeros((2, 3), "int32")
    y_pred = masked_data(False)[:2, :3]
    value, grad = value_and_grad(
        lambda p: losses.MaskedSparseCategoricalCrossentropy()(y_true, p), y_pred
    )
    assert value == 0.0
    np.testing.assert_array_equal(grad, np.zeros_like(grad))


def test_masked_loss_ignores_predictions_at_padding_and_other_pad_ids():
    y_pred = masked_data(True, seed=17)
    loss = losses.MaskedSparseCategoricalCrossentropy(pad_id=-100, from_logits=True)
    y_true = np.where(MASKED_TRUE == 0, -100, MASKED_TRUE)  # pad id outside the vocabulary
    value, grad = value_and_grad(lambda p: loss(y_true, p), y_pred)
    np.testing.assert_allclose(
        value, np_masked_loss(MASKED_TRUE, y_pred, from_logits=True)[0], rtol=1e-6
    )
    np.testing.assert_array_equal(grad[MASKED_TRUE == 0], 0.0)
    changed = y_pred.copy()
    changed[MASKED_TRUE == 0] = 50.0
    np.testing.assert_allclose(to_numpy(loss(y_true, changed)), value, rtol=1e-6)


def test_masked_loss_rejects_mismatched_ranks():
    loss = losses.MaskedSparseCategoricalCrossentropy()
    with pytest.raises(ValueError, match=r"y_true.shape=\(2, 3, 4\)"):
        loss(np.zeros((2, 3, 4), "int32"), np.zeros((2, 3, 4), "float32"))


# ----------------------------------------------------------------------------
# Config, serialization and saving.
# ----------------------------------------------------------------------------

# Each class with non-default arguments, plus a model output and targets it fits.
CONFIGURED = {
    "MeanSquaredError": (losses.MeanSquaredError(reduction="sum"), "binary"),
    "MeanAbsoluteError": (losses.MeanAbsoluteError(name="mae"), "binary"),
    "BinaryCrossentropy": (losses.BinaryCrossentropy(True, 0.1), "binary"),
    "CategoricalCrossentropy": (losses.CategoricalCrossentropy(True, 0.2), "categorical"),
    "WeightedCategoricalCrossentropy": (
        losses.WeightedCategoricalCrossentropy([1.0, 2.0, 0.5], True, 0.1),
        "categorical",
    ),
    "WeightedBinaryCrossentropy": (
        losses.WeightedBinaryCrossentropy([0.4, 1.6], from_logits=True),
        "binary",
    ),
    "BinaryFocalCrossentropy": (
        losses.BinaryFocalCrossentropy(0.6, 1.5, True, 0.05),
        "binary",
    ),
    "CategoricalFocalCrossentropy": (
        losses.CategoricalFocalCrossentropy(0.3, 3.0, True, 0.1),
        "categorical",
    ),
    "GeneralizedCrossentropy": (losses.GeneralizedCrossentropy(0.5, from_logits=True), "binary"),
    "MaskedSparseCategoricalCrossentropy": (
        losses.MaskedSparseCategoricalCrossentropy(pad_id=0, from_logits=True, label_smoothing=0.1),
        "sequence",
    ),
}


def test_every_class_is_configured_above():
    classes = {name for name in losses.__all__ if name[0].isupper()}
    assert classes == set(CONFIGURED)


@pytest.mark.parametrize("name", sorted(CONFIGURED))
def test_config_round_trip_and_registered_name(name):
    loss, _ = CONFIGURED[name]
    config = loss.get_config()
    init_args = set(inspect.signature(type(loss).__init__).parameters) - {"self"}
    assert init_args <= set(config), init_args - set(config)
    assert type(loss).from_config(config).get_config() == config

    serialized = keras.losses.serialize(loss)
    assert serialized["registered_name"] == f"custom_layers>{name}"
    restored = keras.losses.deserialize(serialized)
    assert type(restored) is type(loss) and restored.get_config() == config


def test_functions_are_registered():
    for name in losses.__all__:
        if name[0].islower():
            fn = getattr(losses, name)
            assert keras.saving.get_registered_name(fn) == f"custom_layers>{name}"
            assert keras.losses.deserialize(f"custom_layers>{name}") is fn


def _tiny_model_and_data(kind):
    rng = np.random.default_rng(18)
    if kind == "sequence":
        y = MASKED_TRUE[:, :5]
        x = np.where(y == 0, 0, rng.integers(1, 8, size=y.shape)).astype("int32")
        inputs = keras.Input((5,), dtype="int32")
        # mask_zero: the output carries a Keras mask (equal to the targets' padding here).
        hidden = keras.layers.Embedding(8, 4, mask_zero=True)(inputs)
        outputs = keras.layers.Dense(8)(hidden)
    else:
        x = rng.normal(size=(6, 4)).astype("float32")
        units = 3 if kind == "categorical" else 1
        y = np.eye(3, dtype="float32")[rng.integers(0, 3, 6)] if units == 3 else (x[:, :1] > 0)
        inputs = keras.Input((4,))
        outputs = keras.layers.Dense(units)(inputs)
    return (
        keras.Model(inputs, outputs),
        x,
        np.asarray(y, "float32" if kind != "sequence" else "int32"),
    )


@pytest.mark.parametrize("name", sorted(CONFIGURED))
def test_compiled_model_reloads_with_its_loss(name, tmp_path):
    loss, kind = CONFIGURED[name]
    model, x, y = _tiny_model_and_data(kind)
    model.compile(optimizer="sgd", loss=loss)
    path = tmp_path / "model.keras"
    model.save(path)

    reloaded = keras.saving.load_model(path)  # no custom_objects: registered names
    assert type(reloaded.loss) is type(loss)
    assert reloaded.loss.get_config() == loss.get_config()
    # The compiled (graph / jit) loss equals the eager loss on the same predictions.
    expected = to_numpy(loss(y, model(x)))
    evaluated = reloaded.evaluate(x, y, batch_size=len(x), verbose=0)
    np.testing.assert_allclose(evaluated, expected, rtol=1e-5)


# ----------------------------------------------------------------------------
# Bad arguments.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: losses.BinaryCrossentropy(label_smoothing=1.5), "label_smoothing=1.5"),
        (lambda: losses.CategoricalCrossentropy(label_smoothing=-0.1), "label_smoothing=-0.1"),
        (lambda: losses.CategoricalCrossentropy(from_logits="yes"), "from_logits='yes'"),
        (lambda: losses.BinaryFocalCrossentropy(alpha=1.2), "alpha=1.2"),
        (lambda: losses.CategoricalFocalCrossentropy(gamma=-1.0), "gamma=-1.0"),
        (lambda: losses.MaskedSparseCategoricalCrossentropy(pad_id=0.5), "pad_id=0.5"),
        (lambda: losses.MaskedSparseCategoricalCrossentropy(pad_id=True), "pad_id=True"),
        (lambda: losses.MeanSquaredError(reduction="average"), "reduction=average"),
        (lambda: losses.binary_crossentropy([1.0], [0.5], label_smoothing=2), "label_smoothing=2"),
    ],
)
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()

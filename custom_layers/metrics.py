"""Metrics written with `keras.ops`."""

import keras
from keras import ops

from custom_layers._validation import check_int, sparse_token_ids

__all__ = ["MaskedAccuracy"]


@keras.saving.register_keras_serializable(package="custom_layers")
class MaskedAccuracy(keras.metrics.Metric):
    """Token accuracy over the real (non-pad) positions of padded sequences.

    The predicted token is the arg-max of `y_pred` over its last axis; a
    position counts when `y_true != pad_id`. The metric keeps two running
    sums, the (weighted) number of correct real tokens and the (weighted)
    number of real tokens, so the result after several batches is the
    accuracy over all their tokens, not the mean of per-batch accuracies.

    Args:
        pad_id: Integer id of the padding token in `y_true`.
        name: Name of the metric instance.
        dtype: Dtype of the metric's state and result.

    Call arguments (`update_state`):
        y_true: Integer token ids, shape `(batch, T)`.
        y_pred: Probabilities or logits, shape `(batch, T, V)`.
        sample_weight: Optional weights, shape `(batch,)` or `(batch, T)`.

    Returns:
        `result()` returns the accuracy, 0 when no real token has been seen.

    Example:

    >>> metric = MaskedAccuracy(pad_id=0)
    >>> y_true = [[3, 1, 0]]  # 2 real tokens
    >>> y_pred = np.eye(4)[[[3, 2, 0]]]  # predicts 3, 2, 0
    >>> metric.update_state(y_true, y_pred)
    >>> float(metric.result())
    0.5
    """

    def __init__(self, pad_id=0, name="masked_accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.pad_id = check_int("pad_id", pad_id)
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = sparse_token_ids(y_true, y_pred)
        predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        weights = ops.cast(ops.not_equal(y_true, self.pad_id), self.dtype)
        if sample_weight is not None:
            sample_weight = ops.cast(sample_weight, self.dtype)
            while len(sample_weight.shape) < len(weights.shape):
                sample_weight = ops.expand_dims(sample_weight, -1)
            weights = weights * sample_weight
        hits = ops.cast(ops.equal(predicted, y_true), self.dtype)
        self.correct.assign_add(ops.sum(hits * weights))
        self.count.assign_add(ops.sum(weights))

    def result(self):
        return ops.divide_no_nan(self.correct, self.count)

    def get_config(self):
        config = super().get_config()
        config.update({"pad_id": self.pad_id})
        return config

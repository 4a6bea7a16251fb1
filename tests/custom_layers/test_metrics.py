"""Tests for `custom_layers.metrics.MaskedAccuracy`."""

import keras
import numpy as np
import pytest
from keras import ops

from custom_layers.metrics import MaskedAccuracy

VOCAB = 6


def batch(seed, rows=3, length=5):
    """Token ids padded with 0 at the end of each row (lengths vary), and logits."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, length + 1, size=rows)
    y_true = rng.integers(1, VOCAB, size=(rows, length))
    y_true[np.arange(length)[None, :] >= lengths[:, None]] = 0
    y_pred = rng.normal(size=(rows, length, VOCAB)).astype("float32")
    # Make about half of the real tokens correct.
    hit = rng.random((rows, length)) < 0.5
    y_pred[hit, y_true[hit]] += 10.0
    return y_true.astype("int32"), y_pred


def np_counts(y_true, y_pred, pad_id=0, sample_weight=None):
    weights = (y_true != pad_id) * (1.0 if sample_weight is None else sample_weight)
    correct = (y_pred.argmax(-1) == y_true) * weights
    return correct.sum(), weights.sum()


def test_accuracy_counts_only_real_tokens():
    y_true = np.array([[3, 1, 0, 0], [2, 2, 2, 0]], "int32")
    predicted = np.array([[3, 2, 0, 0], [2, 0, 2, 1]])  # pads predicted 0 (or anything)
    y_pred = np.eye(VOCAB, dtype="float32")[predicted]
    metric = MaskedAccuracy()
    metric.update_state(y_true, y_pred)
    # Real tokens: 3, 1 | 2, 2, 2 -> correct: 3 | 2, 2 = 3 of 5 (all positions would say 5 of 8).
    assert float(metric.result()) == pytest.approx(3 / 5)


def test_accumulates_over_batches_as_one_pool():
    metric = MaskedAccuracy()
    totals = np.zeros(2)
    for seed in range(4):
        y_true, y_pred = batch(seed)
        metric.update_state(y_true, y_pred)
        totals += np_counts(y_true, y_pred)
    assert float(metric.result()) == pytest.approx(totals[0] / totals[1], rel=1e-6)
    np.testing.assert_allclose([float(metric.correct), float(metric.count)], totals, rtol=1e-6)


def test_pooled_accuracy_differs_from_mean_of_batch_accuracies():
    metric = MaskedAccuracy()
    # Batch 1: 1 real token, correct. Batch 2: 4 real tokens, 1 correct.
    metric.update_state([[4, 0, 0, 0]], np.eye(VOCAB)[[[4, 0, 0, 0]]])
    metric.update_state([[1, 2, 3, 4]], np.eye(VOCAB)[[[1, 0, 0, 0]]])
    assert float(metric.result()) == pytest.approx(2 / 5)  # not (1 + 1/4) / 2


def test_reset_state_starts_over():
    metric = MaskedAccuracy()
    y_true, y_pred = batch(5)
    metric.update_state(y_true, y_pred)
    metric.reset_state()
    assert float(metric.result()) == 0.0
    assert float(metric.count) == 0.0
    y_true, y_pred = batch(6)
    metric.update_state(y_true, y_pred)
    correct, count = np_counts(y_true, y_pred)
    assert float(metric.result()) == pytest.approx(correct / count, rel=1e-6)


def test_all_padding_gives_zero_not_nan():
    metric = MaskedAccuracy()
    metric.update_state(np.zeros((2, 3), "int32"), np.ones((2, 3, VOCAB), "float32"))
    assert float(metric.result()) == 0.0


def test_other_pad_id_and_sample_weight():
    y_true, y_pred = batch(7, rows=4)
    y_true = np.where(y_true == 0, 5, y_true)  # 5 is the pad id here; 0 a real token
    y_true[0, 0] = 0
    row_weight = np.array([1.0, 0.0, 2.0, 0.5], "float32")
    metric = MaskedAccuracy(pad_id=5)
    metric.update_state(y_true, y_pred, sample_weight=row_weight)
    correct, count = np_counts(y_true, y_pred, pad_id=5, sample_weight=row_weight[:, None])
    assert float(metric.result()) == pytest.approx(correct / count, rel=1e-6)

    token_weight = np.random.default_rng(8).uniform(size=y_true.shape).astype("float32")
    metric.reset_state()
    metric.update_state(y_true, y_pred, sample_weight=token_weight)
    correct, count = np_counts(y_true, y_pred, pad_id=5, sample_weight=token_weight)
    assert float(metric.result()) == pytest.approx(correct / count, rel=1e-6)


def test_accepts_labels_with_trailing_unit_axis():
    y_true, y_pred = batch(9)
    metric = MaskedAccuracy()
    metric.update_state(y_true[..., None], y_pred)
    correct, count = np_counts(y_true, y_pred)
    assert float(metric.result()) == pytest.approx(correct / count, rel=1e-6)


def test_config_round_trip_and_registered_name():
    metric = MaskedAccuracy(pad_id=3, name="token_acc")
    config = metric.get_config()
    assert config == {"name": "token_acc", "dtype": "float32", "pad_id": 3}
    assert MaskedAccuracy.from_config(config).get_config() == config
    serialized = keras.metrics.serialize(metric)
    assert serialized["registered_name"] == "custom_layers>MaskedAccuracy"
    restored = keras.metrics.deserialize(serialized)
    assert isinstance(restored, MaskedAccuracy) and restored.get_config() == config


def test_in_compiled_model_and_after_reload(tmp_path):
    inputs = keras.Input((5,), dtype="int32")
    hidden = keras.layers.Embedding(VOCAB, 4)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(VOCAB)(hidden))
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[MaskedAccuracy(name="masked_accuracy")],
    )
    y_true = np.concatenate([batch(seed)[0] for seed in range(4)])  # 12 rows
    x = np.random.default_rng(10).integers(0, VOCAB, size=y_true.shape).astype("int32")
    correct, count = np_counts(y_true, ops.convert_to_numpy(model(x)))

    # Three batches of four: the compiled metric pools them.
    result = model.evaluate(x, y_true, batch_size=4, return_dict=True, verbose=0)
    assert result["masked_accuracy"] == pytest.approx(correct / count, rel=1e-5)

    path = tmp_path / "model.keras"
    # Never trained: build the optimizer's slots so that the saved state is complete.
    model.optimizer.build(model.trainable_variables)
    model.save(path)
    reloaded = keras.saving.load_model(path)
    result = reloaded.evaluate(x, y_true, batch_size=4, return_dict=True, verbose=0)
    assert result["masked_accuracy"] == pytest.approx(correct / count, rel=1e-5)


@pytest.mark.parametrize("pad_id", [0.5, "0", True, None])
def test_bad_pad_id_raises(pad_id):
    with pytest.raises(ValueError, match=f"Received: pad_id={pad_id!r}"):
        MaskedAccuracy(pad_id=pad_id)


def test_mismatched_ranks_raise():
    metric = MaskedAccuracy()
    with pytest.raises(ValueError, match=r"y_pred.shape=\(2, 3\)"):
        metric.update_state(np.zeros((2, 3), "int32"), np.zeros((2, 3), "float32"))

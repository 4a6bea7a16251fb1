"""`EpochBatches`: each epoch's batches are a function of (seed, epoch), also as Keras feeds them."""

import keras
import numpy as np
import pytest

from apps.common.batches import EpochBatches, FollowEpochs


class RowBatches(EpochBatches):
    """Batches of 4 row numbers out of `n`, as `(x (B, 1), y (B, 1))` float32."""

    def __init__(self, n=20, **kwargs):
        super().__init__(**kwargs)
        self.n = n

    def make_plan(self, rng):
        order = rng.permutation(self.n) if rng is not None else np.arange(self.n)
        return [order[i : i + 4] for i in range(0, self.n, 4)]

    def load_batch(self, rows):
        x = rows[:, None].astype("float32")
        return x, np.zeros_like(x)

    def tf_output_signature(self):
        import tensorflow as tf

        spec = tf.TensorSpec((None, 1), tf.float32)
        return spec, spec


def _epoch(batches):
    return np.concatenate([batches[i][0][:, 0] for i in range(len(batches))]).astype(int)


def test_epoch_order_is_a_function_of_seed_and_epoch():
    walked = RowBatches(shuffle=True, seed=3)
    orders = []
    for _ in range(3):
        orders.append(_epoch(walked))
        walked.on_epoch_end()
    for epoch, order in enumerate(orders):
        direct = RowBatches(shuffle=True, seed=3)
        direct.set_epoch(epoch)  # Reached directly, as a resumed run reaches it.
        np.testing.assert_array_equal(_epoch(direct), order)
        np.testing.assert_array_equal(np.sort(order), np.arange(20))
    assert not np.array_equal(orders[0], orders[1])
    other_seed = RowBatches(shuffle=True, seed=4)
    assert not np.array_equal(_epoch(other_seed), orders[0])
    in_order = RowBatches()
    in_order.set_epoch(5)
    np.testing.assert_array_equal(_epoch(in_order), np.arange(20))
    with pytest.raises(IndexError, match="out of range for 5 batches"):
        in_order[5]
    with pytest.raises(ValueError, match="Received: epoch=-1"):
        in_order.set_epoch(-1)
    with pytest.raises(ValueError, match="need a seed"):
        RowBatches(shuffle=True, seed=None)


class Record(keras.layers.Layer):
    """Passes its input through; in training, notes the rows of each batch it sees."""

    def __init__(self, note, **kwargs):
        super().__init__(**kwargs)
        self.note = note  # A function: a list attribute would be copied into a tracked list.

    def call(self, x, training=None):
        if training:
            self.note(keras.ops.convert_to_numpy(x)[:, 0].astype(int))
        return x


def _batches_seen_per_epoch(feed, epochs, initial_epoch):
    seen, per_epoch = [], {}

    class Split(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            per_epoch[epoch] = np.concatenate(seen)
            seen.clear()

    batches = RowBatches(shuffle=True, seed=3)
    model = keras.Sequential([keras.Input((1,)), Record(seen.append), keras.layers.Dense(1)])
    model.compile("sgd", "mse", run_eagerly=True)  # Eager: `Record` sees real batches.
    data = batches.as_tf_dataset() if feed == "tf.data" else batches
    model.fit(
        data,
        epochs=epochs,
        initial_epoch=initial_epoch,
        callbacks=[FollowEpochs(batches), Split()],
        shuffle=False,
        verbose=0,
    )
    return per_epoch


@pytest.mark.parametrize("feed", ["PyDataset", "tf.data"])
def test_fit_sees_the_same_epoch_when_it_starts_there(feed):
    if feed == "tf.data" and keras.backend.backend() != "tensorflow":
        pytest.skip("tf.data feeds the TensorFlow backend")
    straight = _batches_seen_per_epoch(feed, epochs=3, initial_epoch=0)
    resumed = _batches_seen_per_epoch(feed, epochs=3, initial_epoch=2)  # As after a resume.
    assert sorted(resumed) == [2]
    np.testing.assert_array_equal(resumed[2], straight[2])
    assert not np.array_equal(straight[2], straight[0])
    expected = RowBatches(shuffle=True, seed=3)
    for epoch in range(3):
        expected.set_epoch(epoch)
        np.testing.assert_array_equal(straight[epoch], _epoch(expected))

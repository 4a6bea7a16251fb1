"""Epoch-seeded batches: epoch `e`'s batches depend only on `(seed, e)`.

`EpochBatches` is a `keras.utils.PyDataset` whose order for an epoch is drawn
from `numpy.random.default_rng([seed, epoch])`, not from a generator that
advances as epochs go by. Reaching epoch `e` directly (a run resumed from its
backup at epoch `e`) therefore gives the very batches that epochs `0..e-1`
followed by `e` give, which a `tf.data` pipeline with
`shuffle(reshuffle_each_iteration=True)` cannot: its order restarts at epoch
0's whenever a new process builds it.

Keras tells a `PyDataset` when an epoch ends but not which epoch starts (and
also calls `on_epoch_end` once before training, after peeking at a batch to
build the model), so the epoch number comes from Keras through the
`FollowEpochs` callback:

```python
batches = MyBatches(..., shuffle=True, seed=cfg.seed)  # an EpochBatches subclass
data = batches if backend != "tensorflow" else batches.as_tf_dataset()
model.fit(data, epochs=..., callbacks=[FollowEpochs(batches), ...])
```

On TensorFlow, `as_tf_dataset` hands Keras a `tf.data.Dataset` (which
`tf.distribute` strategies can shard) that reads the current epoch's plan each
time Keras starts iterating it, that is after `on_epoch_begin`.

A subclass says what an epoch is with two methods: `make_plan(rng)` lists
the epoch's batches as cheap descriptions (e.g. row indices), `load_batch(item)`
turns one description into arrays; `tf_output_signature()` describes a batch
for `as_tf_dataset`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np


class EpochBatches(keras.utils.PyDataset):
    """Base class for batches whose order is a pure function of `(seed, epoch)`.

    Args:
        shuffle: whether epochs are shuffled; without it every epoch's plan is
            `make_plan(None)`.
        seed: the shuffling seed; epoch `e` draws from
            `numpy.random.default_rng([seed, e])`.
        **kwargs: `keras.utils.PyDataset` arguments (`workers`, ...).

    Subclasses implement `make_plan`, `load_batch` and, for `as_tf_dataset`,
    `tf_output_signature`. The plan is made on first use, so a subclass may
    set the attributes `make_plan` needs after calling `super().__init__`.
    """

    def __init__(self, shuffle: bool = False, seed: int | None = 0, **kwargs):
        super().__init__(**kwargs)
        if shuffle and seed is None:
            raise ValueError("shuffled batches need a seed. Received: seed=None")
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self._plan = None

    # ----------------------------------------------------------------- subclass API

    def make_plan(self, rng: np.random.Generator | None) -> Sequence[Any]:
        """One epoch's batches, as descriptions `load_batch` understands.

        Args:
            rng: the epoch's generator (`default_rng([seed, epoch])`), or None
                when not shuffling.
        """
        raise NotImplementedError

    def load_batch(self, item: Any):
        """The arrays of the batch that `item` (an element of the plan) describes."""
        raise NotImplementedError

    def tf_output_signature(self):
        """The `tf.TensorSpec` structure of one batch (for `as_tf_dataset`)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- epochs

    @property
    def plan(self) -> Sequence[Any]:
        """The current epoch's batch descriptions."""
        if self._plan is None:
            rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
            self._plan = self.make_plan(rng)
        return self._plan

    def set_epoch(self, epoch: int) -> None:
        """Switches to epoch `epoch`'s order (a pure function of `seed` and `epoch`)."""
        if not isinstance(epoch, int | np.integer) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer. Received: epoch={epoch!r}")
        if epoch != self.epoch:
            self.epoch = int(epoch)
            if self.shuffle:  # Unshuffled, every epoch has the same plan: keep it.
                self._plan = None

    def on_epoch_end(self):
        # Without `FollowEpochs` the epochs simply count up; with it, Keras's
        # epoch number overrides this at the start of every epoch.
        self.set_epoch(self.epoch + 1)

    # ----------------------------------------------------------------- batches

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index):
        plan = self.plan
        if not 0 <= index < len(plan):
            raise IndexError(f"batch index {index} out of range for {len(plan)} batches")
        return self.load_batch(plan[index])

    def as_tf_dataset(self):
        """The same batches as a `tf.data.Dataset`, for TensorFlow (and its strategies).

        Each pass yields the plan of the epoch current when the pass starts;
        keep `epoch` on Keras's with `FollowEpochs`. The cardinality is set to
        `len(self)` (the same for every epoch), so Keras knows the epoch's length.
        """
        import tensorflow as tf

        def one_epoch():
            for item in self.plan:
                yield self.load_batch(item)

        ds = tf.data.Dataset.from_generator(one_epoch, output_signature=self.tf_output_signature())
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(self)))
        return ds.prefetch(tf.data.AUTOTUNE)


class FollowEpochs(keras.callbacks.Callback):
    """Sets `EpochBatches` to Keras's epoch number at the start of every epoch.

    So each epoch's order depends only on the seed and the epoch: also when a
    run resumes at a later epoch, when the batches were handed to Keras as a
    `tf.data.Dataset` (`EpochBatches.as_tf_dataset`), and when Keras draws a
    batch before training to build the model.
    """

    def __init__(self, *batches: EpochBatches):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        for batches in self.batches:
            batches.set_epoch(epoch)

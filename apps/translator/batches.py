"""Batching token-id arrays by length: the one bucketing rule and `ArrayBatches`.

Every place that groups token ids by length (training and validation batches,
`make_dataset`, batched decoding in `evaluate.translate_ids`) calls
`length_buckets`, so they all cut rows to the same widths. (The string API,
`translate.translate_in_batches`, only orders sentences by their length in
characters: it hands strings to the in-graph tokeniser, before any ids exist.) NumPy only: a
process without TensorFlow (e.g. `KERAS_BACKEND=jax`) trains and evaluates
with it.

`ArrayBatches` is shuffled per epoch as a pure function of the seed and the
epoch (`apps.common.batches.EpochBatches`), so a resumed run sees the batches
of an uninterrupted one; it groups pairs by length and cuts each batch to its
bucket width, and (by default) fills each short batch up to `batch_size` with
all-`[PAD]` rows, which the masked loss and accuracy ignore: every batch then
has the same number of rows, so JAX compiles one program per bucket width and
`keras.distribution.DataParallel` can split every batch evenly.
"""

from __future__ import annotations

import numpy as np

from apps.common.batches import EpochBatches
from apps.translator.model import DECODER_INPUT, SOURCE_INPUT
from apps.translator.prepared import ARRAY_KEYS, PreparedSplit


def bucket_boundaries(sequence_length: int) -> list[int]:
    """Length-bucket upper bounds (exclusive); the last is `sequence_length + 1`."""
    bounds = [b for b in (5, 7, 9, 11, 14, 18, 24, 32, 48, 64) if b <= sequence_length]
    return bounds + [sequence_length + 1]


def length_buckets(
    lengths: np.ndarray, sequence_length: int, bucket_by_length: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The bucket of each row and the width of each bucket.

    Args:
        lengths: tokens per row (for a pair, the longer of its two sides).
        sequence_length: the widest row.
        bucket_by_length: if False, one bucket of width `sequence_length`.

    Returns:
        `(bucket, widths)`: `bucket[i]` indexes `widths`, the width that row
        `i` is cut (or padded) to: its bucket's bound minus one.
    """
    lengths = np.asarray(lengths)
    if not bucket_by_length:
        return np.zeros(lengths.shape, "int64"), np.asarray([sequence_length])
    bounds = np.asarray(bucket_boundaries(sequence_length))
    return np.searchsorted(bounds, lengths, side="right"), np.minimum(bounds - 1, sequence_length)


class ArrayBatches(EpochBatches):
    """Batches of token-id arrays for `model.fit`, bucketed by length, NumPy only.

    Yields `({"source_tokens": (B, W), "decoder_tokens": (B, W)}, labels (B, W))`,
    int32, where `B = batch_size` (short batches are filled up with all-`[PAD]`
    rows unless `fill_up=False`) and `W` is the width of the batch's length
    bucket (`length_buckets`), or `sequence_length` without bucketing.

    Shuffled, epoch `e`'s batches are a pure function of `seed` and `e`
    (`apps.common.batches.EpochBatches`), so a resumed run sees the batches an
    uninterrupted run sees: keep it on Keras's epoch with
    `apps.common.batches.FollowEpochs`; on TensorFlow, `as_tf_dataset()` gives
    the same batches as a `tf.data.Dataset`.

    Args:
        split: a `prepared.PreparedSplit`.
        batch_size: rows per batch.
        sequence_length: the arrays' width.
        shuffle: reshuffle the pairs (and the order of the batches) every epoch.
        seed: seeds the shuffling; epoch `e` uses `default_rng([seed, e])`.
        bucket_by_length: group pairs of similar length; else pad to `sequence_length`.
        fill_up: fill short batches up to `batch_size` rows with `[PAD]` rows.
    """

    def __init__(
        self,
        split: PreparedSplit,
        batch_size: int,
        sequence_length: int,
        shuffle: bool = False,
        seed: int = 0,
        bucket_by_length: bool = True,
        fill_up: bool = True,
    ):
        super().__init__(shuffle=shuffle, seed=seed)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"batch_size must be a positive integer. Received: batch_size={batch_size!r}"
            )
        if len(split) == 0:
            raise ValueError("No prepared pairs to batch (the split is empty).")
        self.arrays = tuple(getattr(split, key) for key in ARRAY_KEYS)
        self.batch_size = batch_size
        self.fill_up = fill_up
        lengths = np.maximum(
            np.count_nonzero(split.source_tokens, axis=1), np.count_nonzero(split.labels, axis=1)
        )
        self._bucket, self._widths = length_buckets(lengths, sequence_length, bucket_by_length)
        self.label_tokens = int(np.count_nonzero(split.labels))

    def make_plan(self, rng) -> list[tuple[int, np.ndarray]]:
        """The epoch's batches: (bucket, row indices) each."""
        order = (
            rng.permutation(len(self._bucket)) if rng is not None else np.arange(len(self._bucket))
        )
        plan = []
        for bucket in np.unique(self._bucket):
            rows = order[self._bucket[order] == bucket]
            plan += [
                (int(bucket), rows[i : i + self.batch_size])
                for i in range(0, len(rows), self.batch_size)
            ]
        if rng is not None:
            plan = [plan[i] for i in rng.permutation(len(plan))]
        return plan

    def load_batch(self, item):
        bucket, rows = item
        width = int(self._widths[bucket])
        batch = []
        for array in self.arrays:
            x = np.zeros((self.batch_size if self.fill_up else len(rows), width), "int32")
            x[: len(rows)] = array[rows, :width]
            batch.append(x)
        source, decoder, labels = batch
        return {SOURCE_INPUT: source, DECODER_INPUT: decoder}, labels

    def tf_output_signature(self):
        # Widths vary by bucket: given here, where Keras would guess them from
        # the first few batches if it converted this PyDataset itself.
        import tensorflow as tf

        spec = tf.TensorSpec((self.batch_size if self.fill_up else None, None), tf.int32)
        return {SOURCE_INPUT: spec, DECODER_INPUT: spec}, spec


def make_dataset(
    pairs,
    source_vocab,
    target_vocab,
    sequence_length: int,
    batch_size: int,
    shuffle: bool = False,
    seed: int | None = None,
    bucket_by_length: bool = True,
    pad_batches: bool = False,
):
    """A `tf.data.Dataset` of text pairs for `model.fit` and its number of batches per pass.

    Tokenises with `data.encode_pairs` (TensorFlow) and batches with
    `ArrayBatches` (epoch 0's order): the batches training sees for the same
    pairs. Elements are `({"source_tokens": (B, T), "decoder_tokens": (B, T)},
    labels (B, T))`, int32, padded with `PAD_ID`; with `pad_batches`, short
    batches are filled up to `batch_size` with all-`[PAD]` rows.

    Raises:
        ValueError: `batch_size` is not positive.
        DataError: no pair fits `sequence_length`.
    """
    from apps.common.errors import DataError
    from apps.translator.data import encode_pairs
    from apps.translator.prepare import split_from_encoded

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive integer. Received: batch_size={batch_size!r}"
        )
    encoded = encode_pairs(pairs, source_vocab, target_vocab, sequence_length)
    if int(encoded[0].nrows()) == 0:
        raise DataError(f"None of the {len(pairs)} pairs fits sequence_length={sequence_length}.")
    batches = ArrayBatches(
        split_from_encoded(encoded, sequence_length),
        batch_size,
        sequence_length,
        shuffle=shuffle,
        seed=0 if seed is None else seed,
        bucket_by_length=bucket_by_length,
        fill_up=pad_batches,
    )
    return batches.as_tf_dataset(), len(batches)

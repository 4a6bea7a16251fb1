"""Greedy decoding: a cached graph loop, and the classic re-feeding reference.

`greedy_decode` encodes the source once, then runs one decoder step per
output position with the self-attention keys/values of earlier positions kept
in a cache (and the cross-attention keys/values computed once). It is a
`keras.ops.while_loop`, so it traces into a `tf.function` (and the exported
SavedModel) or a `jax.jit`; a batch stops as soon as every sentence has
produced `[END]`, and each sentence emits `[PAD]` after its own `[END]`.

`reference_greedy_decode` is the textbook description of inference: at every
step it runs the whole model again on the source and on everything decoded so
far, and takes the last position's arg-max. It is slow (quadratic work, the
encoder re-run each step) and exists to prove that the fast loop computes the
same tokens.

Both pick the arg-max of the logits after ruling out `[PAD]`, `[UNK]` and
`[START]`, which are never valid outputs (an `[UNK]` reads worse than the
model's next-best word).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from apps.translator.model import DECODER_INPUT, SOURCE_INPUT, TranslatorLayers
from apps.translator.tokens import END_ID, PAD_ID, START_ID, UNK_ID

BANNED_IDS = (PAD_ID, UNK_ID, START_ID)


def _banned_bias(vocab_size: int) -> np.ndarray:
    """`(1, V)` float32: `-1e9` at the banned ids, 0 elsewhere."""
    bias = np.zeros((1, vocab_size), dtype="float32")
    bias[0, list(BANNED_IDS)] = -1e9
    return bias


def _check_max_length(max_length: int, layers: TranslatorLayers) -> int:
    if max_length is None:
        return layers.sequence_length
    if not isinstance(max_length, int) or max_length < 1 or max_length > layers.sequence_length:
        raise ValueError(
            f"max_length must be an integer in [1, {layers.sequence_length}] (the model's "
            f"sequence_length). Received: max_length={max_length!r}"
        )
    return max_length


def greedy_decode(layers: TranslatorLayers, source_tokens, max_length: int | None = None):
    """Cached greedy decoding of a batch, as a graph loop.

    Args:
        layers: `TranslatorLayers` of a trained model.
        source_tokens: int ids `(B, S)`, 0-padded.
        max_length: most output tokens (`[END]` included); defaults to the
            model's `sequence_length`.

    Returns:
        int32 ids `(B, max_length)`: each row's tokens up to and including its
        `[END]`, then `[PAD]` (a row that never ends fills all positions).
    """
    max_length = _check_max_length(max_length, layers)
    source_tokens = ops.convert_to_tensor(source_tokens, dtype="int32")
    batch_size = ops.shape(source_tokens)[0]
    encoded, source_mask = layers.encode(source_tokens)
    self_cache, cross_cache = layers.start_caches(encoded, max_length)
    bias = _banned_bias(layers.target_vocab_size)
    positions = ops.expand_dims(ops.arange(max_length, dtype="int32"), 0)

    def cond(index, tokens, output, done, self_cache):
        return ops.logical_and(index < max_length, ops.logical_not(ops.all(done)))

    def body(index, tokens, output, done, self_cache):
        logits, self_cache = layers.decode_step(tokens, index, source_mask, self_cache, cross_cache)
        next_tokens = ops.cast(ops.argmax(logits + bias, axis=-1), "int32")
        next_tokens = ops.where(done, PAD_ID, next_tokens)
        output = ops.where(positions == index, ops.expand_dims(next_tokens, 1), output)
        done = ops.logical_or(done, ops.equal(next_tokens, END_ID))
        return index + 1, ops.expand_dims(next_tokens, 1), output, done, self_cache

    start = ops.full((batch_size, 1), START_ID, dtype="int32")
    output = ops.zeros((batch_size, max_length), dtype="int32")
    done = ops.zeros((batch_size,), dtype="bool")
    index = ops.convert_to_tensor(0, dtype="int32")
    _, _, output, _, _ = ops.while_loop(cond, body, (index, start, output, done, self_cache))
    return output


def reference_greedy_decode(model, source_tokens, max_length: int | None = None) -> np.ndarray:
    """Greedy decoding that re-runs the full model on the whole prefix every step.

    Same arguments and result as `greedy_decode` (`model` is the training
    model); returns a NumPy array. A Python loop with no cache: the reference
    the cached loop is tested against, and the baseline of the benchmarks.
    """
    layers = TranslatorLayers(model)
    max_length = _check_max_length(max_length, layers)
    source_tokens = np.asarray(source_tokens, dtype="int32")
    batch_size = source_tokens.shape[0]
    bias = _banned_bias(layers.target_vocab_size)
    decoder_input = np.zeros((batch_size, max_length), dtype="int32")
    decoder_input[:, 0] = START_ID
    output = np.zeros((batch_size, max_length), dtype="int32")
    done = np.zeros((batch_size,), dtype=bool)
    for index in range(max_length):
        logits = model({SOURCE_INPUT: source_tokens, DECODER_INPUT: decoder_input}, training=False)
        step_logits = ops.convert_to_numpy(logits[:, index, :]) + bias
        next_tokens = np.where(done, PAD_ID, step_logits.argmax(axis=-1)).astype("int32")
        output[:, index] = next_tokens
        done |= next_tokens == END_ID
        if done.all():
            break
        if index + 1 < max_length:
            decoder_input[:, index + 1] = next_tokens
    return output


def compile_decoder(
    layers: TranslatorLayers, max_length: int | None = None, jit_compile: bool = False
):
    """`greedy_decode` compiled for the current backend: `fn(source_tokens) -> ids`.

    TensorFlow: a `tf.function` (traced once per source length; batch size
    may vary), with XLA if `jit_compile` (about 2x faster at batch 1 on a CPU,
    compiled once per input shape; the export does not use it, so that TF
    Serving needs no XLA). JAX: `jax.jit`. Other backends: the eager function.
    """
    max_length = _check_max_length(max_length, layers)
    backend = keras.backend.backend()

    def decode(source_tokens):
        return greedy_decode(layers, source_tokens, max_length)

    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(decode, reduce_retracing=True, jit_compile=jit_compile)
    if backend == "jax":
        import jax

        return jax.jit(decode)
    return decode

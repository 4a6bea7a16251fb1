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
model's next-best word). Given the target vocabulary's tokens, both also keep
SentencePiece's byte-fallback pieces (`<0xC5>`) to valid UTF-8: a lead byte is
followed by exactly as many continuation bytes as it announces (no `[END]`
or other piece in between), a continuation byte comes only after one, a lead
byte is chosen only when the sequence still has room for its continuations,
and bytes that start no character (`0xC0`, `0xC1`, `0xF5`-`0xFF`) never come
out. An unseen character such as "Ł" is spelled by its bytes; unconstrained,
one missing byte would make the text show U+FFFD (`�`).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from apps.translator.model import DECODER_INPUT, SOURCE_INPUT, TranslatorLayers
from apps.translator.tokens import END_ID, PAD_ID, START_ID, UNK_ID, byte_piece_value

BANNED_IDS = (PAD_ID, UNK_ID, START_ID)
_NEVER = -1e9


class _OutputRules:
    """Which ids may come next: never the banned ids, and UTF-8 over byte-fallback pieces.

    A row's state between steps is `(pending, expect)`: the continuation bytes
    its current character still owes, and which of them may come next
    (`table` rows: 0 outside a character, no continuation byte; 1 any
    continuation `80`-`BF`; 2-5 the narrower second bytes after `E0`, `ED`,
    `F0`, `F4`, which keep out overlong forms, surrogates and code points
    past U+10FFFF). NumPy tables over the target vocabulary, shared by the
    graph loop and the reference. Without `target_tokens` (or with no byte
    pieces in them) the state never leaves 0 and only the banned ids are
    ruled out.
    """

    _SECOND_BYTES = ((0x80, 0xBF), (0xA0, 0xBF), (0x80, 0x9F), (0x90, 0xBF), (0x80, 0x8F))

    def __init__(self, vocab_size: int, target_tokens=None):
        if target_tokens is not None and len(target_tokens) != vocab_size:
            raise ValueError(
                f"target_tokens must hold one token per output id ({vocab_size}). "
                f"Received: {len(target_tokens)} tokens"
            )
        values = np.full((vocab_size,), -1)
        for i, token in enumerate(() if target_tokens is None else target_tokens):
            value = byte_piece_value(token)
            if value is not None:
                values[i] = value
        never = np.zeros((vocab_size,), "float32")
        never[list(BANNED_IDS)] = _NEVER
        never[(values == 0xC0) | (values == 0xC1) | (values >= 0xF5)] = _NEVER
        continuation = (values >= 0x80) & (values <= 0xBF)
        rows = [np.where(continuation, _NEVER, never)]
        for low, high in self._SECOND_BYTES:  # inside a character: its next byte only
            rows.append(np.where((values >= low) & (values <= high), never, _NEVER))
        self.table = np.stack(rows).astype("float32")
        lead_2, lead_3, lead_4 = (
            (values >= 0xC2) & (values <= 0xDF),
            (values >= 0xE0) & (values <= 0xEF),
            (values >= 0xF0) & (values <= 0xF4),
        )
        self.opens = np.select([lead_2, lead_3, lead_4], [1, 2, 3], 0).astype("int32")
        self.expect = np.select(
            [values == 0xE0, values == 0xED, values == 0xF0, values == 0xF4, self.opens > 0],
            [2, 3, 4, 5, 1],
            0,
        ).astype("int32")

    def step_bias(self, pending, expect, room):
        """`(B, V)` bias of one step, given the rows' state `(B,)` and `room`, the
        positions left after this one (a lead byte needs room for its continuations)."""
        room_bias = ops.where(ops.greater(self.opens, room), _NEVER, 0.0)
        return ops.take(self.table, expect, axis=0) + ops.expand_dims(room_bias, 0)

    def next_state(self, pending, expect, next_tokens):
        """`(pending, expect)` after each row's `next_tokens` `(B,)`."""
        inside = pending > 0
        new_pending = ops.where(inside, pending - 1, ops.take(self.opens, next_tokens))
        new_expect = ops.where(
            inside, ops.where(pending > 1, 1, 0), ops.take(self.expect, next_tokens)
        )
        return new_pending, new_expect


def _check_max_length(max_length: int, layers: TranslatorLayers) -> int:
    if max_length is None:
        return layers.sequence_length
    if not isinstance(max_length, int) or max_length < 1 or max_length > layers.sequence_length:
        raise ValueError(
            f"max_length must be an integer in [1, {layers.sequence_length}] (the model's "
            f"sequence_length). Received: max_length={max_length!r}"
        )
    return max_length


def greedy_decode(
    layers: TranslatorLayers, source_tokens, max_length: int | None = None, target_tokens=None
):
    """Cached greedy decoding of a batch, as a graph loop.

    Args:
        layers: `TranslatorLayers` of a trained model.
        source_tokens: int ids `(B, S)`, 0-padded.
        max_length: most output tokens (`[END]` included); defaults to the
            model's `sequence_length`.
        target_tokens: the target vocabulary's tokens, id order (optional):
            byte-fallback pieces among them then always form valid UTF-8.

    Returns:
        int32 ids `(B, max_length)`: each row's tokens up to and including its
        `[END]`, then `[PAD]` (a row that never ends fills all positions).
    """
    max_length = _check_max_length(max_length, layers)
    source_tokens = ops.convert_to_tensor(source_tokens, dtype="int32")
    batch_size = ops.shape(source_tokens)[0]
    encoded, source_mask = layers.encode(source_tokens)
    self_cache, cross_cache = layers.start_caches(encoded, max_length)
    rules = _OutputRules(layers.target_vocab_size, target_tokens)
    positions = ops.expand_dims(ops.arange(max_length, dtype="int32"), 0)

    def cond(index, tokens, output, done, state, self_cache):
        return ops.logical_and(index < max_length, ops.logical_not(ops.all(done)))

    def body(index, tokens, output, done, state, self_cache):
        logits, self_cache = layers.decode_step(tokens, index, source_mask, self_cache, cross_cache)
        bias = rules.step_bias(*state, max_length - 1 - index)
        next_tokens = ops.cast(ops.argmax(logits + bias, axis=-1), "int32")
        next_tokens = ops.where(done, PAD_ID, next_tokens)
        output = ops.where(positions == index, ops.expand_dims(next_tokens, 1), output)
        done = ops.logical_or(done, ops.equal(next_tokens, END_ID))
        state = rules.next_state(*state, next_tokens)
        return index + 1, ops.expand_dims(next_tokens, 1), output, done, state, self_cache

    start = ops.full((batch_size, 1), START_ID, dtype="int32")
    output = ops.zeros((batch_size, max_length), dtype="int32")
    done = ops.zeros((batch_size,), dtype="bool")
    state = (ops.zeros((batch_size,), dtype="int32"), ops.zeros((batch_size,), dtype="int32"))
    index = ops.convert_to_tensor(0, dtype="int32")
    loop_vars = (index, start, output, done, state, self_cache)
    output = ops.while_loop(cond, body, loop_vars)[2]
    return output


def reference_greedy_decode(
    model, source_tokens, max_length: int | None = None, target_tokens=None
) -> np.ndarray:
    """Greedy decoding that re-runs the full model on the whole prefix every step.

    Same arguments and result as `greedy_decode` (`model` is the training
    model); returns a NumPy array. A Python loop with no cache: the reference
    the cached loop is tested against, and the baseline of the benchmarks.
    """
    layers = TranslatorLayers(model)
    max_length = _check_max_length(max_length, layers)
    source_tokens = np.asarray(source_tokens, dtype="int32")
    batch_size = source_tokens.shape[0]
    rules = _OutputRules(layers.target_vocab_size, target_tokens)
    decoder_input = np.zeros((batch_size, max_length), dtype="int32")
    decoder_input[:, 0] = START_ID
    output = np.zeros((batch_size, max_length), dtype="int32")
    done = np.zeros((batch_size,), dtype=bool)
    pending = expect = np.zeros((batch_size,), dtype="int32")
    for index in range(max_length):
        logits = model({SOURCE_INPUT: source_tokens, DECODER_INPUT: decoder_input}, training=False)
        step_logits = ops.convert_to_numpy(logits[:, index, :])
        step_logits = (
            step_logits + rules.table[expect] + (rules.opens > max_length - 1 - index) * _NEVER
        )
        next_tokens = np.where(done, PAD_ID, step_logits.argmax(axis=-1)).astype("int32")
        output[:, index] = next_tokens
        done |= next_tokens == END_ID
        pending, expect = (
            np.where(pending > 0, pending - 1, rules.opens[next_tokens]),
            np.where(pending > 0, (pending > 1).astype("int32"), rules.expect[next_tokens]),
        )
        if done.all():
            break
        if index + 1 < max_length:
            decoder_input[:, index + 1] = next_tokens
    return output


def compile_decoder(
    layers: TranslatorLayers,
    max_length: int | None = None,
    jit_compile: bool = False,
    target_tokens=None,
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
        return greedy_decode(layers, source_tokens, max_length, target_tokens)

    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(decode, reduce_retracing=True, jit_compile=jit_compile)
    if backend == "jax":
        import jax

        return jax.jit(decode)
    return decode

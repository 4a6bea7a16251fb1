"""Tests of `TransformerEncoder`, `TransformerDecoder` and the mask helpers (every backend)."""

import keras
import numpy as np
import pytest
from keras import ops

from custom_layers.layers.embedding import PositionalEmbedding
from custom_layers.layers.transformer import (
    TransformerDecoder,
    TransformerEncoder,
    compute_causal_mask,
    merge_padding_and_attention_mask,
)
from tests.layer_testing import run_layer_test

BATCH, TARGET, SOURCE, DIM, HEADS, HIDDEN, VOCAB = 3, 6, 5, 8, 2, 16, 20

# Right-padded token ids (0 = padding), as the translator feeds them.
SOURCE_TOKENS = np.array([[4, 5, 6, 0, 0], [7, 8, 9, 10, 11], [12, 13, 0, 0, 0]], "int32")
TARGET_TOKENS = np.array([[1, 2, 3, 4, 0, 0], [5, 6, 7, 8, 9, 10], [11, 12, 0, 0, 0, 0]], "int32")
SOURCE_MASK = SOURCE_TOKENS != 0
TARGET_MASK = TARGET_TOKENS != 0


def _np(x):
    return ops.convert_to_numpy(x)


def _w(variable):
    # Through a tensor: NumPy 2 warns when it reads a backend variable directly.
    return ops.convert_to_numpy(ops.copy(variable))


def _compile(fn):
    """`fn` compiled the way decoding loops are: `tf.function` or `jax.jit`."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn)


def _sequences(seed=0):
    rng = np.random.default_rng(seed)
    decoder_x = rng.normal(size=(BATCH, TARGET, DIM)).astype("float32")
    encoder_x = rng.normal(size=(BATCH, SOURCE, DIM)).astype("float32")
    return decoder_x, encoder_x


# ------------------------------------------------------------------ NumPy reference blocks


def _np_attention(layer, query, value, mask):
    """Multi-head attention from the layer's weights; `mask` broadcasts to (B, T, S)."""

    def project(dense, x):
        return np.einsum("btd,dnh->btnh", x, _w(dense.kernel)) + _w(dense.bias)

    q = project(layer.query_dense, query) / np.sqrt(layer.key_dim)
    k = project(layer.key_dense, value)
    v = project(layer.value_dense, value)
    scores = np.einsum("btnh,bsnh->bnts", q, k)
    if mask is not None:
        scores = np.where(np.asarray(mask)[:, None], scores, -1e9)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    heads = np.einsum("bnts,bsnh->btnh", scores, v)
    out = np.einsum("btnh,nhd->btd", heads, _w(layer.output_dense.kernel))
    return out + _w(layer.output_dense.bias), scores


def _np_layer_norm(layer, x):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + layer.epsilon) * _w(layer.gamma) + _w(layer.beta)


def _np_residual(block, x, norm, fn):
    if block.normalize_first:
        return x + fn(_np_layer_norm(norm, x))
    return _np_layer_norm(norm, x + fn(x))


def _np_feedforward(block, x):
    inner, outer = block._feedforward_intermediate_dense, block._feedforward_output_dense
    hidden = np.maximum(x @ _w(inner.kernel) + _w(inner.bias), 0.0)
    return hidden @ _w(outer.kernel) + _w(outer.bias)


def _np_encoder(block, x, padding_mask):
    mask = padding_mask[:, None, :]
    x = _np_residual(
        block,
        x,
        block._self_attention_layer_norm,
        lambda h: _np_attention(block._self_attention_layer, h, h, mask)[0],
    )
    return _np_residual(
        block, x, block._feedforward_layer_norm, lambda h: _np_feedforward(block, h)
    )


def _np_decoder(block, x, encoder_x, decoder_padding, encoder_padding):
    length = x.shape[1]
    self_mask = decoder_padding[:, None, :] & np.tril(np.ones((length, length), bool))[None]
    x = _np_residual(
        block,
        x,
        block._self_attention_layer_norm,
        lambda h: _np_attention(block._self_attention_layer, h, h, self_mask)[0],
    )
    x = _np_residual(
        block,
        x,
        block._cross_attention_layer_norm,
        lambda h: _np_attention(
            block._cross_attention_layer, h, encoder_x, encoder_padding[:, None, :]
        )[0],
    )
    return _np_residual(
        block, x, block._feedforward_layer_norm, lambda h: _np_feedforward(block, h)
    )


# ------------------------------------------------------------------------------ mask helpers


def test_compute_causal_mask_is_lower_triangular():
    mask = _np(compute_causal_mask(2, 4, 4))
    assert mask.dtype == bool and mask.shape == (2, 4, 4)
    np.testing.assert_array_equal(mask[1], np.tril(np.ones((4, 4), bool)))


@pytest.mark.parametrize("as_tensor", [False, True], ids=["int", "tensor"])
def test_compute_causal_mask_with_cache_index(as_tensor):
    index = ops.convert_to_tensor(2, "int32") if as_tensor else 2
    mask = _np(compute_causal_mask(1, 1, 5, index))
    np.testing.assert_array_equal(mask, [[[True, True, True, False, False]]])


def test_merge_padding_and_attention_mask():
    padding = np.array([[1, 1, 0], [1, 0, 0]])
    causal = np.tril(np.ones((3, 3), bool))[None].repeat(2, 0)
    merged = _np(merge_padding_and_attention_mask(padding, causal))
    np.testing.assert_array_equal(merged, padding.astype(bool)[:, None, :] & causal)
    only_padding = _np(merge_padding_and_attention_mask(padding))
    np.testing.assert_array_equal(only_padding, padding.astype(bool)[:, None, :])
    assert merge_padding_and_attention_mask(None, None) is None
    with pytest.raises(ValueError, match=r"padding_mask with shape \(2, 3, 1\)"):
        merge_padding_and_attention_mask(padding[..., None])
    with pytest.raises(ValueError, match=r"attention_mask with shape \(3, 3\)"):
        merge_padding_and_attention_mask(padding, causal[0])


# ---------------------------------------------------------------------------- standard checks

ALL_ARGS = {
    "intermediate_dim": HIDDEN,
    "num_heads": HEADS,
    "dropout": 0.0,
    "activation": "relu",
    "layer_norm_epsilon": 1e-5,
    "key_dim": None,
    "kernel_initializer": "glorot_uniform",
    "bias_initializer": "zeros",
}


# Pre- and post-norm share config, build and saving code; their numerics are checked below.
def test_encoder_standard_checks(tmp_path):
    _, encoder_x = _sequences()
    run_layer_test(
        TransformerEncoder,
        {**ALL_ARGS, "normalize_first": False},
        encoder_x,
        expected_output_shape=(BATCH, SOURCE, DIM),
        expected_num_trainable_weights=16,  # attention 8, 2 norms x 2, 2 dense x 2
        expected_num_non_trainable_weights=0,
        supports_masking=True,
        tmp_path=tmp_path,
    )


def test_decoder_standard_checks(tmp_path):
    decoder_x, encoder_x = _sequences()
    run_layer_test(
        TransformerDecoder,
        {**ALL_ARGS, "normalize_first": True, "key_dim": 3},
        (decoder_x, encoder_x),
        expected_output_shape=(BATCH, TARGET, DIM),
        expected_num_trainable_weights=26,  # two attentions 16, 3 norms x 2, 2 dense x 2
        expected_num_non_trainable_weights=0,
        supports_masking=True,
        tmp_path=tmp_path,
    )


def test_decoder_only_standard_checks(tmp_path):
    decoder_x, _ = _sequences()
    run_layer_test(
        TransformerDecoder,
        {"intermediate_dim": HIDDEN, "num_heads": HEADS, "dropout": 0.1},
        decoder_x,
        expected_output_shape=(BATCH, TARGET, DIM),
        expected_num_trainable_weights=16,
        supports_masking=True,
        tmp_path=tmp_path,
    )


# ----------------------------------------------------------------------- values against NumPy


@pytest.mark.parametrize("normalize_first", [False, True], ids=["post_norm", "pre_norm"])
def test_encoder_matches_numpy_reference(normalize_first):
    _, encoder_x = _sequences()
    encoder = TransformerEncoder(HIDDEN, HEADS, normalize_first=normalize_first)
    out = _np(encoder(encoder_x, padding_mask=SOURCE_MASK))
    np.testing.assert_allclose(out, _np_encoder(encoder, encoder_x, SOURCE_MASK), atol=1e-5)


@pytest.mark.parametrize("normalize_first", [False, True], ids=["post_norm", "pre_norm"])
def test_decoder_matches_numpy_reference(normalize_first):
    decoder_x, encoder_x = _sequences()
    decoder = TransformerDecoder(HIDDEN, HEADS, normalize_first=normalize_first)
    out, scores = decoder(
        decoder_x,
        encoder_x,
        decoder_padding_mask=TARGET_MASK,
        encoder_padding_mask=SOURCE_MASK,
        return_attention_scores=True,
    )
    expected = _np_decoder(decoder, decoder_x, encoder_x, TARGET_MASK, SOURCE_MASK)
    np.testing.assert_allclose(_np(out), expected, atol=1e-5)
    scores = _np(scores)
    assert scores.shape == (BATCH, HEADS, TARGET, SOURCE)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        scores[~np.broadcast_to(SOURCE_MASK[:, None, None], scores.shape)], 0
    )


def test_post_norm_output_is_normalized_per_token():
    _, encoder_x = _sequences()
    out = _np(TransformerEncoder(HIDDEN, HEADS)(encoder_x))
    np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(-1), 1.0, atol=1e-3)


# ------------------------------------------------------------------------------------- masks


def test_encoder_padded_values_do_not_change_real_outputs():
    _, encoder_x = _sequences()
    encoder = TransformerEncoder(HIDDEN, HEADS)
    out = _np(encoder(encoder_x, padding_mask=SOURCE_MASK))
    noisy = np.where(SOURCE_MASK[..., None], encoder_x, 100.0 * encoder_x[::-1])
    noisy_out = _np(encoder(noisy, padding_mask=SOURCE_MASK))
    np.testing.assert_allclose(noisy_out[SOURCE_MASK], out[SOURCE_MASK], atol=1e-5)
    # Without the mask the padded values do leak into real positions (the test has teeth).
    leaked = _np(encoder(noisy))
    assert not np.allclose(leaked[SOURCE_MASK], out[SOURCE_MASK], atol=1e-3)


def test_encoder_padded_token_ids_do_not_change_real_outputs():
    """Change the ids under the padding (explicit mask fixed): real outputs are unchanged."""
    embedding = PositionalEmbedding(SOURCE, VOCAB, DIM, mask_zero=False)
    encoder = TransformerEncoder(HIDDEN, HEADS)
    out = _np(encoder(embedding(SOURCE_TOKENS), padding_mask=SOURCE_MASK))
    other_ids = np.where(SOURCE_MASK, SOURCE_TOKENS, 17)
    changed = _np(encoder(embedding(other_ids), padding_mask=SOURCE_MASK))
    np.testing.assert_allclose(changed[SOURCE_MASK], out[SOURCE_MASK], atol=1e-5)


def test_encoder_implicit_mask_equals_explicit_mask_in_eager_calls():
    embedding = PositionalEmbedding(SOURCE, VOCAB, DIM)
    encoder = TransformerEncoder(HIDDEN, HEADS)
    embedded = embedding(SOURCE_TOKENS)  # carries the Keras mask `ids != 0`
    implicit = _np(encoder(embedded))
    explicit = _np(encoder(_np(embedded), padding_mask=SOURCE_MASK))
    unmasked = _np(encoder(_np(embedded)))
    np.testing.assert_allclose(implicit, explicit, atol=1e-6)
    assert not np.allclose(implicit[0, :3], unmasked[0, :3], atol=1e-4)


def test_encoder_output_carries_the_padding_mask():
    """A mask-aware layer after the encoder averages over the real tokens only."""
    embedding = PositionalEmbedding(SOURCE, VOCAB, DIM)
    encoder = TransformerEncoder(HIDDEN, HEADS)
    pooling = keras.layers.GlobalAveragePooling1D()
    tokens = keras.Input((None,), dtype="int32")
    model = keras.Model(tokens, pooling(encoder(embedding(tokens))))
    encoded = _np(encoder(_np(embedding(SOURCE_TOKENS)), padding_mask=SOURCE_MASK))
    weights = SOURCE_MASK[..., None]
    expected = (encoded * weights).sum(1) / weights.sum(1)
    np.testing.assert_allclose(_np(model(SOURCE_TOKENS)), expected, atol=1e-5)
    # Eager as well, and with an explicit Keras mask on an unmasked input.
    eager = _np(pooling(encoder(embedding(SOURCE_TOKENS))))
    np.testing.assert_allclose(eager, expected, atol=1e-5)
    explicit = _np(pooling(encoder(_np(embedding(SOURCE_TOKENS)), mask=SOURCE_MASK)))
    np.testing.assert_allclose(explicit, expected, atol=1e-5)


def _translation_model(normalize_first=False, return_attention_scores=False):
    """Built exactly as the translator does, masks left to Keras."""
    source = keras.Input((None,), dtype="int32", name="source")
    target = keras.Input((None,), dtype="int32", name="target")
    source_embedding = PositionalEmbedding(16, VOCAB, DIM)
    target_embedding = PositionalEmbedding(16, VOCAB, DIM)
    encoder = TransformerEncoder(HIDDEN, HEADS, normalize_first=normalize_first)
    decoder = TransformerDecoder(HIDDEN, HEADS, normalize_first=normalize_first)
    outputs = decoder(
        target_embedding(target),
        encoder(source_embedding(source)),
        return_attention_scores=return_attention_scores,
    )
    model = keras.Model([source, target], outputs)
    return model, (source_embedding, target_embedding, encoder, decoder)


@pytest.mark.parametrize("normalize_first", [False, True], ids=["post_norm", "pre_norm"])
def test_masks_flow_automatically_in_a_functional_translation_model(normalize_first):
    model, (source_embedding, target_embedding, encoder, decoder) = _translation_model(
        normalize_first
    )
    implicit = _np(model([SOURCE_TOKENS, TARGET_TOKENS]))
    encoded = encoder(_np(source_embedding(SOURCE_TOKENS)), padding_mask=SOURCE_MASK)
    explicit = decoder(
        _np(target_embedding(TARGET_TOKENS)),
        _np(encoded),
        decoder_padding_mask=TARGET_MASK,
        encoder_padding_mask=SOURCE_MASK,
    )
    np.testing.assert_allclose(implicit, _np(explicit), atol=1e-5)
    # More padding on either side changes no output at a real target token.
    more_padding = model(
        [np.pad(SOURCE_TOKENS, ((0, 0), (0, 4))), np.pad(TARGET_TOKENS, ((0, 0), (0, 3)))]
    )
    np.testing.assert_allclose(
        _np(more_padding)[:, :TARGET][TARGET_MASK], implicit[TARGET_MASK], atol=1e-5
    )
    # And without masks the source padding leaks into row 0 (the test has teeth).
    unmasked = decoder(
        _np(target_embedding(TARGET_TOKENS)), _np(encoder(_np(source_embedding(SOURCE_TOKENS))))
    )
    assert not np.allclose(_np(unmasked)[0, :4], implicit[0, :4], atol=1e-4)


def test_masks_flow_automatically_in_eager_calls():
    _, (source_embedding, target_embedding, encoder, decoder) = _translation_model()
    implicit = decoder(target_embedding(TARGET_TOKENS), encoder(source_embedding(SOURCE_TOKENS)))
    encoded = encoder(_np(source_embedding(SOURCE_TOKENS)), padding_mask=SOURCE_MASK)
    explicit = decoder(
        _np(target_embedding(TARGET_TOKENS)),
        _np(encoded),
        decoder_padding_mask=TARGET_MASK,
        encoder_padding_mask=SOURCE_MASK,
    )
    np.testing.assert_allclose(_np(implicit), _np(explicit), atol=1e-5)


def test_functional_model_returns_cross_attention_scores_masked_by_source_padding():
    model, _ = _translation_model(return_attention_scores=True)
    assert tuple(model.outputs[1].shape) == (None, HEADS, None, None)
    _, scores = model([SOURCE_TOKENS, TARGET_TOKENS])
    scores = _np(scores)
    assert scores.shape == (BATCH, HEADS, TARGET, SOURCE)
    padded_source = np.broadcast_to(~SOURCE_MASK[:, None, None, :], scores.shape)
    np.testing.assert_allclose(scores[padded_source], 0.0, atol=1e-7)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)


def test_decoder_padded_values_do_not_change_real_outputs():
    decoder_x, encoder_x = _sequences()
    decoder = TransformerDecoder(HIDDEN, HEADS)
    masks = {"decoder_padding_mask": TARGET_MASK, "encoder_padding_mask": SOURCE_MASK}
    out = _np(decoder(decoder_x, encoder_x, **masks))
    noisy_decoder_x = np.where(TARGET_MASK[..., None], decoder_x, -50.0)
    noisy_encoder_x = np.where(SOURCE_MASK[..., None], encoder_x, 50.0)
    # Padded target values: real target outputs unchanged (self-attention).
    changed = _np(decoder(noisy_decoder_x, encoder_x, **masks))
    np.testing.assert_allclose(changed[TARGET_MASK], out[TARGET_MASK], atol=1e-5)
    # Padded source values: no output changes at all (cross-attention masks keys).
    changed = _np(decoder(decoder_x, noisy_encoder_x, **masks))
    np.testing.assert_allclose(changed, out, atol=1e-5)


def test_future_tokens_do_not_change_past_outputs():
    decoder_x, encoder_x = _sequences()
    decoder = TransformerDecoder(HIDDEN, HEADS)
    out = _np(decoder(decoder_x, encoder_x))
    future_changed = decoder_x.copy()
    future_changed[:, 3:] += 5.0
    changed = _np(decoder(future_changed, encoder_x))
    np.testing.assert_allclose(changed[:, :3], out[:, :3], atol=1e-5)
    assert not np.allclose(changed[:, 3:], out[:, 3:], atol=1e-3)
    # Without the causal mask the past sees the future.
    no_causal = _np(decoder(decoder_x, encoder_x, use_causal_mask=False))
    no_causal_changed = _np(decoder(future_changed, encoder_x, use_causal_mask=False))
    assert not np.allclose(no_causal[:, :3], no_causal_changed[:, :3], atol=1e-3)


# ------------------------------------------------------------------------------------ caching


def _decode_step_by_step(decoder, decoder_x, encoder_x, encoder_padding_mask=None, scores=False):
    """One token per call, cross-attention keys/values computed on the first step."""
    cache = decoder.init_self_attention_cache(BATCH, TARGET)
    cross_cache = None
    outputs, all_scores = [], []
    for i in range(TARGET):
        results = decoder(
            decoder_x[:, i : i + 1],
            encoder_x if cross_cache is None else None,
            encoder_padding_mask=encoder_padding_mask,
            self_attention_cache=cache,
            self_attention_cache_update_index=i,
            cross_attention_cache=cross_cache,
            return_attention_scores=scores,
        )
        if scores:
            out, step_scores, cache, cross_cache = results
            all_scores.append(_np(step_scores))
        else:
            out, cache, cross_cache = results
        outputs.append(_np(out))
    stepwise = np.concatenate(outputs, axis=1)
    return (stepwise, np.concatenate(all_scores, axis=2)) if scores else stepwise


@pytest.mark.parametrize("normalize_first", [False, True], ids=["post_norm", "pre_norm"])
def test_cached_decoding_equals_full_sequence_call(normalize_first):
    decoder_x, encoder_x = _sequences()
    decoder = TransformerDecoder(HIDDEN, HEADS, normalize_first=normalize_first)
    full, full_scores = decoder(
        decoder_x, encoder_x, encoder_padding_mask=SOURCE_MASK, return_attention_scores=True
    )
    stepwise, step_scores = _decode_step_by_step(
        decoder, decoder_x, encoder_x, SOURCE_MASK, scores=True
    )
    np.testing.assert_allclose(stepwise, _np(full), atol=1e-5)
    np.testing.assert_allclose(step_scores, _np(full_scores), atol=1e-5)


def test_cached_decoding_with_keras_masked_step_inputs():
    """Steps embedded with mask_zero carry a Keras mask; the cached call ignores it."""
    _, (source_embedding, target_embedding, encoder, decoder) = _translation_model()
    encoded = encoder(source_embedding(SOURCE_TOKENS))
    full = _np(decoder(target_embedding(TARGET_TOKENS), encoded))
    cache = decoder.init_self_attention_cache(BATCH, TARGET)
    cross_cache = decoder.compute_cross_attention_cache(encoded)
    outputs = []
    for i in range(TARGET):
        step = target_embedding(TARGET_TOKENS[:, i : i + 1], start_index=i)
        out, cache, _ = decoder(
            step,
            encoder_padding_mask=SOURCE_MASK,
            self_attention_cache=cache,
            self_attention_cache_update_index=i,
            cross_attention_cache=cross_cache,
        )
        outputs.append(_np(out))
    stepwise = np.concatenate(outputs, axis=1)
    np.testing.assert_allclose(stepwise[TARGET_MASK], full[TARGET_MASK], atol=1e-5)


def test_cached_decoder_only_equals_full_sequence_call():
    decoder_x, _ = _sequences()
    decoder = TransformerDecoder(HIDDEN, HEADS, normalize_first=True)
    full = _np(decoder(decoder_x))
    cache = decoder.init_self_attention_cache(BATCH, TARGET)
    outputs = []
    for i in range(TARGET):
        out, cache, cross_cache = decoder(
            decoder_x[:, i : i + 1], self_attention_cache=cache, self_attention_cache_update_index=i
        )
        assert cross_cache is None
        outputs.append(_np(out))
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, atol=1e-5)


def test_cached_decoding_inside_a_compiled_loop():
    """tf.while_loop in tf.function (TensorFlow) or keras.ops.while_loop in jax.jit (JAX)."""
    decoder_x, encoder_x = _sequences()
    decoder = TransformerDecoder(HIDDEN, HEADS)
    full = _np(decoder(decoder_x, encoder_x, encoder_padding_mask=SOURCE_MASK))

    def decode(decoder_x, encoder_x, encoder_padding_mask):
        cross_cache = decoder.compute_cross_attention_cache(encoder_x)

        def body(i, cache, outputs):
            step = ops.slice(decoder_x, (0, i, 0), (BATCH, 1, DIM))
            out, cache, _ = decoder(
                step,
                encoder_padding_mask=encoder_padding_mask,
                self_attention_cache=cache,
                self_attention_cache_update_index=i,
                cross_attention_cache=cross_cache,
            )
            return i + 1, cache, ops.slice_update(outputs, (0, i, 0), out)

        loop_vars = (
            ops.convert_to_tensor(0),
            decoder.init_self_attention_cache(BATCH, TARGET),
            ops.zeros((BATCH, TARGET, DIM)),
        )
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            _, _, outputs = tf.while_loop(lambda i, *_: i < TARGET, body, loop_vars)
        else:
            _, _, outputs = ops.while_loop(lambda i, *_: i < TARGET, body, loop_vars)
        return outputs

    stepwise = _compile(decode)(decoder_x, encoder_x, SOURCE_MASK)
    np.testing.assert_allclose(_np(stepwise), full, atol=1e-5)


def test_cache_helpers():
    decoder_x, encoder_x = _sequences()
    decoder = TransformerDecoder(HIDDEN, HEADS, key_dim=3)
    decoder(decoder_x, encoder_x)
    cache = _np(decoder.init_self_attention_cache(BATCH, 7, dtype="float32"))
    assert cache.shape == (BATCH, 2, 7, HEADS, 3) and not cache.any()
    cross = _np(decoder.compute_cross_attention_cache(encoder_x))
    assert cross.shape == (BATCH, 2, SOURCE, HEADS, 3)
    attention = decoder._cross_attention_layer
    np.testing.assert_allclose(cross[:, 0], _np(attention.key_dense(encoder_x)), atol=1e-6)
    np.testing.assert_allclose(cross[:, 1], _np(attention.value_dense(encoder_x)), atol=1e-6)
    with pytest.raises(ValueError, match="key_dim=None"):
        TransformerDecoder(HIDDEN, HEADS).init_self_attention_cache(BATCH, 7)


# ------------------------------------------------------------------------- training/inference


@pytest.mark.parametrize("block", ["encoder", "decoder"])
def test_dropout_follows_training(block):
    decoder_x, encoder_x = _sequences()
    cls, args = {
        "encoder": (TransformerEncoder, (encoder_x,)),
        "decoder": (TransformerDecoder, (decoder_x, encoder_x)),
    }[block]
    layer, twin = cls(HIDDEN, HEADS, dropout=0.3), cls(HIDDEN, HEADS)
    first = _np(layer(*args, training=True))
    second = _np(layer(*args, training=True))
    assert not np.allclose(first, second)
    inference = _np(layer(*args, training=False))
    np.testing.assert_array_equal(inference, _np(layer(*args, training=False)))
    np.testing.assert_array_equal(inference, _np(layer(*args)))  # default: inference
    # Inference is exactly the dropout-free block with the same weights.
    twin(*args)
    for source, target in zip(layer.trainable_weights, twin.trainable_weights, strict=True):
        target.assign(source)
    np.testing.assert_allclose(inference, _np(twin(*args)), atol=1e-6)


def test_training_flag_reaches_the_blocks_in_a_model():
    source = keras.Input((None,), dtype="int32")
    target = keras.Input((None,), dtype="int32")
    encoded = TransformerEncoder(HIDDEN, HEADS, dropout=0.3)(
        PositionalEmbedding(16, VOCAB, DIM)(source)
    )
    outputs = TransformerDecoder(HIDDEN, HEADS, dropout=0.3)(
        PositionalEmbedding(16, VOCAB, DIM)(target), encoded
    )
    model = keras.Model([source, target], outputs)
    inputs = [SOURCE_TOKENS, TARGET_TOKENS]
    assert not np.allclose(_np(model(inputs, training=True)), _np(model(inputs, training=True)))
    np.testing.assert_array_equal(_np(model(inputs)), _np(model(inputs, training=False)))


# ------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("cls", [TransformerEncoder, TransformerDecoder])
@pytest.mark.parametrize(
    "kwargs, received",
    [
        ({"num_heads": 0}, "num_heads=0"),
        ({"intermediate_dim": 0}, "intermediate_dim=0"),
        ({"intermediate_dim": -4}, "intermediate_dim=-4"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"dropout": -0.1}, "dropout=-0.1"),
        ({"layer_norm_epsilon": 0}, "layer_norm_epsilon=0"),
        ({"key_dim": 0}, "key_dim=0"),
        ({"normalize_first": "yes"}, "normalize_first='yes'"),
        ({"activation": "no_such_activation"}, "no_such_activation"),
    ],
)
def test_bad_constructor_arguments_raise(cls, kwargs, received):
    with pytest.raises(ValueError, match=received):
        cls(**{"intermediate_dim": HIDDEN, "num_heads": HEADS, **kwargs})


@pytest.mark.parametrize("cls", [TransformerEncoder, TransformerDecoder])
def test_embed_dim_not_divisible_by_num_heads_raises(cls):
    with pytest.raises(ValueError, match="embed_dim=7, num_heads=2"):
        cls(HIDDEN, 2).build((1, 4, 7))
    layer = cls(HIDDEN, 2, key_dim=4)  # an explicit key_dim is fine
    layer.build((1, 4, 7))
    assert layer.built and layer.compute_output_shape((1, 4, 7)) == (1, 4, 7)


def test_bad_decoder_calls_raise():
    decoder_x, encoder_x = _sequences()
    decoder = TransformerDecoder(HIDDEN, HEADS)
    decoder(decoder_x, encoder_x)
    cache = decoder.init_self_attention_cache(BATCH, TARGET)
    step = decoder_x[:, :1]
    with pytest.raises(ValueError, match="self_attention_cache_update_index=None"):
        decoder(step, encoder_x, self_attention_cache=cache)
    with pytest.raises(ValueError, match="self_attention_cache=None"):
        decoder(decoder_x, encoder_x, self_attention_cache_update_index=0)
    with pytest.raises(ValueError, match="encoder_sequence=None"):
        decoder(decoder_x)
    with pytest.raises(ValueError, match=r"decoder_padding_mask with shape \(3, 1\)"):
        decoder(
            step,
            encoder_x,
            decoder_padding_mask=np.ones((BATCH, 1), bool),
            self_attention_cache=cache,
            self_attention_cache_update_index=0,
        )
    decoder_only = TransformerDecoder(HIDDEN, HEADS)
    decoder_only(decoder_x)
    with pytest.raises(ValueError, match="return_attention_scores=True"):
        decoder_only(decoder_x, return_attention_scores=True)
    with pytest.raises(ValueError, match="no cross-attention"):
        decoder_only(decoder_x, encoder_x)
    with pytest.raises(ValueError, match="built=True"):
        decoder_only.compute_cross_attention_cache(encoder_x)

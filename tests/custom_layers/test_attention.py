"""Tests of `CachedMultiHeadAttention` (every backend)."""

import keras
import numpy as np
import pytest
from keras import ops

from custom_layers.layers.attention import CachedMultiHeadAttention
from tests.layer_testing import run_layer_test

BATCH, LENGTH, SOURCE, DIM, HEADS, KEY_DIM = 2, 5, 4, 8, 2, 4


def _compile(fn):
    """`fn` compiled the way decoding loops are: `tf.function` or `jax.jit`."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(BATCH, LENGTH, DIM)).astype("float32")
    source = rng.normal(size=(BATCH, SOURCE, DIM)).astype("float32")
    return query, source


def _built_pair(query, value, **kwargs):
    """A CachedMultiHeadAttention and a keras MultiHeadAttention with the same weights."""
    cached = CachedMultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM, **kwargs)
    reference = keras.layers.MultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM, **kwargs)
    cached(query, value)
    reference(query, value)
    reference.set_weights(cached.get_weights())
    return cached, reference


def _np(x):
    return ops.convert_to_numpy(x)


def test_standard_checks(tmp_path):
    query, source = _inputs()
    run_layer_test(
        CachedMultiHeadAttention,
        {"num_heads": HEADS, "key_dim": KEY_DIM, "dropout": 0.0, "use_bias": True},
        (query, source),
        expected_output_shape=(BATCH, LENGTH, DIM),
        expected_num_trainable_weights=8,
        expected_num_non_trainable_weights=0,
        supports_masking=True,
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize("causal", [False, True])
def test_without_cache_equals_keras_multi_head_attention(causal):
    query, source = _inputs()
    value = query if causal else source
    cached, reference = _built_pair(query, value)
    out, scores = cached(query, value, use_causal_mask=causal, return_attention_scores=True)
    ref_out, ref_scores = reference(
        query, value, use_causal_mask=causal, return_attention_scores=True
    )
    np.testing.assert_allclose(_np(out), _np(ref_out), atol=1e-6)
    np.testing.assert_allclose(_np(scores), _np(ref_scores), atol=1e-6)
    assert scores.shape == (BATCH, HEADS, LENGTH, value.shape[1])


def test_keras_masks_are_honoured_like_multi_head_attention():
    """In a Functional model the inputs' Keras masks reach the layer as they reach MHA."""
    target_in = keras.Input((None,), dtype="int32")
    source_in = keras.Input((None,), dtype="int32")
    target_embedding = keras.layers.Embedding(10, DIM, mask_zero=True)
    source_embedding = keras.layers.Embedding(10, DIM, mask_zero=True)

    def model_of(attention):
        # One model per attention layer: MultiHeadAttention clears the masks of the
        # tensors it is given, so the two must not share input tensors.
        outputs = attention(target_embedding(target_in), source_embedding(source_in))
        return keras.Model([target_in, source_in], outputs)

    cached = CachedMultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM)
    reference = keras.layers.MultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM)
    cached_model, reference_model = model_of(cached), model_of(reference)
    reference.set_weights(cached.get_weights())

    target_tokens = np.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5]])
    source_tokens = np.array([[6, 7, 0, 0], [8, 9, 1, 0]])
    out = _np(cached_model([target_tokens, source_tokens]))
    np.testing.assert_allclose(out, _np(reference_model([target_tokens, source_tokens])), atol=1e-6)
    # The masks mattered: more source padding changes no output at a real target token
    # (MultiHeadAttention spreads padded query rows uniformly over every key).
    longer = np.pad(source_tokens, ((0, 0), (0, 3)))
    real = target_tokens != 0
    np.testing.assert_allclose(
        _np(cached_model([target_tokens, longer]))[real], out[real], atol=1e-6
    )
    unmasked_out = _np(cached(target_embedding(target_tokens), _np(source_embedding(longer))))
    assert not np.allclose(unmasked_out[1], out[1], atol=1e-4)


def test_use_keras_masks_false_uses_only_the_explicit_mask():
    _, source = _inputs()
    layer = CachedMultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM)
    source_mask = np.array([[True, True, False, False], [True, True, True, False]])
    explicit = np.broadcast_to(source_mask[:, None, :], (BATCH, LENGTH, SOURCE))
    query_tokens = np.array([[1, 2, 0, 0, 0], [1, 1, 1, 1, 0]])
    masked_query = keras.layers.Embedding(10, DIM, mask_zero=True)(query_tokens)
    without_keras_masks = layer(_np(masked_query), source, attention_mask=explicit)
    got = layer(masked_query, source, attention_mask=explicit, use_keras_masks=False)
    np.testing.assert_allclose(_np(got), _np(without_keras_masks), atol=1e-6)
    # By default (MultiHeadAttention behaviour) the query's Keras mask also masks the
    # padded query rows, which then differ; real rows agree.
    default = _np(layer(masked_query, source, attention_mask=explicit))
    real = query_tokens != 0
    np.testing.assert_allclose(default[real], _np(got)[real], atol=1e-6)
    assert not np.allclose(default[~real], _np(got)[~real], atol=1e-4)


def _step_by_step(layer, query, use_causal_mask=True, explicit_mask=False):
    cache = np.zeros((BATCH, 2, LENGTH, HEADS, KEY_DIM), "float32")
    outputs = []
    for i in range(LENGTH):
        step = query[:, i : i + 1]
        kwargs = {"use_causal_mask": use_causal_mask}
        if explicit_mask:
            visible = np.arange(LENGTH) <= i
            kwargs = {"attention_mask": np.broadcast_to(visible, (BATCH, 1, LENGTH))}
        out, cache = layer(step, step, cache=cache, cache_update_index=i, **kwargs)
        outputs.append(_np(out))
    return np.concatenate(outputs, axis=1), cache


@pytest.mark.parametrize("explicit_mask", [False, True], ids=["use_causal_mask", "attention_mask"])
def test_cached_self_attention_equals_full_causal_call(explicit_mask):
    query, _ = _inputs()
    layer = CachedMultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM)
    full = _np(layer(query, query, use_causal_mask=True))
    stepwise, _ = _step_by_step(layer, query, explicit_mask=explicit_mask)
    np.testing.assert_allclose(stepwise, full, atol=1e-5)


def test_cache_holds_the_projected_keys_and_values():
    query, _ = _inputs()
    layer = CachedMultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM)
    layer(query, query)
    cache = np.zeros((BATCH, 2, LENGTH, HEADS, KEY_DIM), "float32")
    _, cache = layer(query[:, :2], query[:, :2], cache=cache, cache_update_index=1)
    cache = _np(cache)
    np.testing.assert_allclose(cache[:, 0, 1:3], _np(layer.key_dense(query[:, :2])), atol=1e-6)
    np.testing.assert_allclose(cache[:, 1, 1:3], _np(layer.value_dense(query[:, :2])), atol=1e-6)
    # Positions outside the update are untouched.
    assert not cache[:, :, 0].any() and not cache[:, :, 3:].any()


def test_cache_reuse_equals_cross_attention():
    query, source = _inputs()
    layer = CachedMultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM)
    full = _np(layer(query, source))
    cache = ops.stack([layer.key_dense(source), layer.value_dense(source)], axis=1)
    out, same_cache = layer(query, None, cache=cache)
    np.testing.assert_allclose(_np(out), full, atol=1e-6)
    np.testing.assert_array_equal(_np(same_cache), _np(cache))


def test_cached_call_returns_scores_that_ignore_future_positions():
    query, _ = _inputs()
    layer = CachedMultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM)
    _, full_scores = layer(query, query, use_causal_mask=True, return_attention_scores=True)
    cache = np.zeros((BATCH, 2, LENGTH, HEADS, KEY_DIM), "float32")
    for i in range(3):
        step = query[:, i : i + 1]
        out, scores, cache = layer(
            step,
            step,
            cache=cache,
            cache_update_index=i,
            use_causal_mask=True,
            return_attention_scores=True,
        )
    scores = _np(scores)
    assert scores.shape == (BATCH, HEADS, 1, LENGTH)
    np.testing.assert_allclose(scores[:, :, 0, 3:], 0.0, atol=1e-7)
    np.testing.assert_allclose(scores[:, :, 0], _np(full_scores)[:, :, 2], atol=1e-5)


def test_cached_step_runs_inside_a_compiled_loop():
    """The cache index is a loop counter tensor: tf.while_loop in tf.function, or jax.jit."""
    query, _ = _inputs()
    layer = CachedMultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM)
    full = _np(layer(query, query, use_causal_mask=True))

    def decode(query):
        def body(i, cache, outputs):
            step = ops.slice(query, (0, i, 0), (BATCH, 1, DIM))
            out, cache = layer(step, step, cache=cache, cache_update_index=i, use_causal_mask=True)
            return i + 1, cache, ops.slice_update(outputs, (0, i, 0), out)

        loop_vars = (
            ops.convert_to_tensor(0),
            ops.zeros((BATCH, 2, LENGTH, HEADS, KEY_DIM)),
            ops.zeros((BATCH, LENGTH, DIM)),
        )
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            _, _, outputs = tf.while_loop(lambda i, *_: i < LENGTH, body, loop_vars)
        else:
            _, _, outputs = ops.while_loop(lambda i, *_: i < LENGTH, body, loop_vars)
        return outputs

    np.testing.assert_allclose(_np(_compile(decode)(query)), full, atol=1e-5)


def test_dropout_follows_training():
    query, source = _inputs()
    layer = CachedMultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM, dropout=0.5)
    first = _np(layer(query, source, training=True))
    second = _np(layer(query, source, training=True))
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(
        _np(layer(query, source, training=False)), _np(layer(query, source, training=False))
    )
    # Also in the cached path (the whole sequence written at index 0, causal).
    cache = np.zeros((BATCH, 2, LENGTH, HEADS, KEY_DIM), "float32")
    kwargs = {"cache": cache, "cache_update_index": 0, "use_causal_mask": True}
    a, _ = layer(query, query, training=True, **kwargs)
    b, _ = layer(query, query, training=True, **kwargs)
    c, _ = layer(query, query, training=False, **kwargs)
    d, _ = layer(query, query, training=False, **kwargs)
    assert not np.allclose(_np(a), _np(b))
    np.testing.assert_array_equal(_np(c), _np(d))


def test_symbolic_call_with_cache_gives_the_right_shapes():
    query_in = keras.Input((1, DIM))
    cache_in = keras.Input((2, LENGTH, HEADS, KEY_DIM))
    layer = CachedMultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM)
    out, scores, cache = layer(
        query_in,
        query_in,
        cache=cache_in,
        cache_update_index=0,
        use_causal_mask=True,
        return_attention_scores=True,
    )
    assert tuple(out.shape) == (None, 1, DIM)
    assert tuple(scores.shape) == (None, HEADS, 1, LENGTH)
    assert tuple(cache.shape) == (None, 2, LENGTH, HEADS, KEY_DIM)


def test_bad_arguments_raise():
    query, source = _inputs()
    with pytest.raises(ValueError, match="num_heads=0"):
        CachedMultiHeadAttention(num_heads=0, key_dim=KEY_DIM)
    layer = CachedMultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM)
    layer(query, query)
    bad_cache = np.zeros((BATCH, 2, LENGTH, HEADS + 1, KEY_DIM), "float32")
    with pytest.raises(ValueError, match=r"Received: cache with shape \(2, 2, 5, 3, 4\)"):
        layer(query[:, :1], query[:, :1], cache=bad_cache, cache_update_index=0)
    cache = np.zeros((BATCH, 2, LENGTH, HEADS, KEY_DIM), "float32")
    with pytest.raises(ValueError, match="cache_update_index=None"):
        layer(query[:, :1], None, cache=cache, use_causal_mask=True)
    with pytest.raises(ValueError, match="value=None"):
        layer(query[:, :1], None, cache=cache, cache_update_index=0)
    wide = CachedMultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM, value_dim=KEY_DIM + 1)
    wide.build(query.shape, source.shape)
    with pytest.raises(ValueError, match="value_dim=5"):
        wide(query[:, :1], query[:, :1], cache=cache, cache_update_index=0)
    with pytest.raises(ValueError, match="value=None"):
        CachedMultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM)(query, None, cache=cache)

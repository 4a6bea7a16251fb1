"""Tests of `PositionalEmbedding` and `SinusoidalPositionEncoding` (every backend)."""

import keras
import numpy as np
import pytest
from keras import ops

from custom_layers.layers.embedding import (
    LearnedPositionEncoding,
    PositionalEmbedding,
    ReversibleEmbedding,
    SinusoidalPositionEncoding,
)
from tests.layer_testing import run_layer_test

TOKENS = np.array([[5, 7, 9, 2, 0, 0], [1, 3, 3, 8, 6, 4]], dtype="int32")


def _compile(fn):
    """`fn` compiled the way the backend's decoding loops are: `tf.function` or `jax.jit`."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn)


def _numpy(variable):
    # Through a tensor: NumPy 2 warns when it reads a backend variable directly.
    return ops.convert_to_numpy(ops.copy(variable))


def _numpy_sinusoid(positions, dim, max_wavelength=10000.0):
    """The paper's formula, one entry at a time: PE[pos, 2i] = sin, PE[pos, 2i+1] = cos."""
    out = np.zeros((len(positions), dim))
    for row, pos in enumerate(positions):
        for k in range(dim):
            angle = pos / max_wavelength ** (2 * (k // 2) / dim)
            out[row, k] = np.sin(angle) if k % 2 == 0 else np.cos(angle)
    return out


# --------------------------------------------------------------------------- PositionalEmbedding


def test_positional_embedding_standard_checks(tmp_path):
    run_layer_test(
        PositionalEmbedding,
        {
            "sequence_length": 8,
            "vocab_size": 10,
            "embed_dim": 4,
            "mask_zero": True,
            "embeddings_initializer": "glorot_uniform",
        },
        TOKENS,
        expected_output_shape=(2, 6, 4),
        expected_num_trainable_weights=2,
        expected_num_non_trainable_weights=0,
        supports_masking=True,
        tmp_path=tmp_path,
    )


def test_positional_embedding_is_token_plus_position_row():
    layer = PositionalEmbedding(sequence_length=8, vocab_size=10, embed_dim=4)
    out = ops.convert_to_numpy(layer(TOKENS))
    token_table = _numpy(layer.token_embedding.embeddings)
    position_table = _numpy(layer.position_embeddings)
    expected = token_table[TOKENS] + position_table[np.arange(6)][None]
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("as_tensor", [False, True], ids=["int", "tensor"])
def test_start_index_equals_slice_of_full_output(as_tensor):
    layer = PositionalEmbedding(sequence_length=8, vocab_size=10, embed_dim=4)
    full = ops.convert_to_numpy(layer(TOKENS))
    start = ops.convert_to_tensor(2, dtype="int32") if as_tensor else 2
    part = ops.convert_to_numpy(layer(TOKENS[:, 2:5], start_index=start))
    np.testing.assert_allclose(part, full[:, 2:5], atol=1e-6)


def test_start_index_as_loop_counter_in_compiled_function():
    layer = PositionalEmbedding(sequence_length=8, vocab_size=10, embed_dim=4)
    full = ops.convert_to_numpy(layer(TOKENS))

    def one_token_at_a_time(tokens):
        def body(i, outputs):
            step = ops.slice(tokens, (0, i), (2, 1))
            return i + 1, ops.slice_update(outputs, (0, i, 0), layer(step, start_index=i))

        _, outputs = ops.while_loop(
            lambda i, outputs: i < 6, body, (ops.convert_to_tensor(0), ops.zeros((2, 6, 4)))
        )
        return outputs

    stepwise = ops.convert_to_numpy(_compile(one_token_at_a_time)(TOKENS))
    np.testing.assert_allclose(stepwise, full, atol=1e-6)


def test_compute_mask_marks_nonzero_ids():
    layer = PositionalEmbedding(sequence_length=8, vocab_size=10, embed_dim=4)
    mask = ops.convert_to_numpy(layer.compute_mask(TOKENS))
    np.testing.assert_array_equal(mask, TOKENS != 0)
    unmasked = PositionalEmbedding(sequence_length=8, vocab_size=10, embed_dim=4, mask_zero=False)
    assert unmasked.compute_mask(TOKENS) is None


def test_mask_reaches_the_next_layer():
    """A mask-aware layer after the embedding averages over real tokens only."""
    inputs = keras.Input((None,), dtype="int32")
    embedding = PositionalEmbedding(sequence_length=8, vocab_size=10, embed_dim=4)
    pooled = keras.layers.GlobalAveragePooling1D()(embedding(inputs))
    model = keras.Model(inputs, pooled)
    vectors = ops.convert_to_numpy(embedding(TOKENS))
    mask = (TOKENS != 0)[..., None]
    expected = (vectors * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(ops.convert_to_numpy(model(TOKENS)), expected, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, received",
    [
        ({"sequence_length": 0, "vocab_size": 10, "embed_dim": 4}, "sequence_length=0"),
        ({"sequence_length": 8, "vocab_size": -1, "embed_dim": 4}, "vocab_size=-1"),
        ({"sequence_length": 8, "vocab_size": 10, "embed_dim": 2.5}, "embed_dim=2.5"),
        ({"sequence_length": 8, "vocab_size": 10, "embed_dim": 4, "mask_zero": 1}, "mask_zero=1"),
    ],
)
def test_positional_embedding_rejects_bad_arguments(kwargs, received):
    with pytest.raises(ValueError, match=received):
        PositionalEmbedding(**kwargs)


def test_positions_beyond_sequence_length_are_rejected():
    layer = PositionalEmbedding(sequence_length=8, vocab_size=10, embed_dim=4)
    with pytest.raises(ValueError, match="start_index=4"):
        layer(TOKENS, start_index=4)  # positions 4..9 > 7
    with pytest.raises(ValueError, match="start_index=-1"):
        layer(TOKENS, start_index=-1)


# ------------------------------------------------------------------ SinusoidalPositionEncoding


def test_sinusoidal_standard_checks(tmp_path):
    run_layer_test(
        SinusoidalPositionEncoding,
        {"max_wavelength": 1000},
        np.zeros((2, 5, 6), "float32"),
        expected_output_shape=(2, 5, 6),
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=0,
        supports_masking=True,
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize("dim", [8, 7], ids=["even_dim", "odd_dim"])
def test_sinusoidal_matches_numpy_formula(dim):
    x = np.random.default_rng(0).normal(size=(3, 12, dim)).astype("float32")
    out = ops.convert_to_numpy(SinusoidalPositionEncoding()(x))
    expected = _numpy_sinusoid(np.arange(12), dim)
    assert out.shape == x.shape
    for row in out:  # same encoding for every batch element, whatever the values
        np.testing.assert_allclose(row, expected, atol=1e-5)
    # Interleaved: feature 0 is sin(pos) and feature 1 is cos(pos).
    np.testing.assert_allclose(out[0, :, 0], np.sin(np.arange(12)), atol=1e-6)
    np.testing.assert_allclose(out[0, :, 1], np.cos(np.arange(12)), atol=1e-6)


def test_sinusoidal_max_wavelength_is_used():
    x = np.zeros((1, 4, 6), "float32")
    out = ops.convert_to_numpy(SinusoidalPositionEncoding(max_wavelength=50)(x))
    np.testing.assert_allclose(out[0], _numpy_sinusoid(np.arange(4), 6, 50.0), atol=1e-5)


@pytest.mark.parametrize("as_tensor", [False, True], ids=["int", "tensor"])
def test_sinusoidal_start_index_equals_slice(as_tensor):
    layer = SinusoidalPositionEncoding()
    x = np.zeros((2, 10, 6), "float32")
    full = ops.convert_to_numpy(layer(x))
    start = ops.convert_to_tensor(7, dtype="int32") if as_tensor else 7
    part = ops.convert_to_numpy(layer(x[:, 7:9], start_index=start))
    np.testing.assert_allclose(part, full[:, 7:9], atol=1e-6)


def test_sinusoidal_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_wavelength=0"):
        SinusoidalPositionEncoding(max_wavelength=0)
    with pytest.raises(ValueError, match="start_index=-2"):
        SinusoidalPositionEncoding()(np.zeros((1, 3, 4), "float32"), start_index=-2)


# --------------------------------------------------------------------------- LearnedPositionEncoding


def test_learned_position_encoding_standard_checks(tmp_path):
    run_layer_test(
        LearnedPositionEncoding,
        {"sequence_length": 8, "initializer": "glorot_uniform"},
        np.random.default_rng(0).random((2, 6, 4)).astype("float32"),
        expected_output_shape=(2, 6, 4),
        expected_num_trainable_weights=1,
        expected_num_non_trainable_weights=0,
        supports_masking=True,
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize("as_tensor", [False, True], ids=["int", "tensor"])
def test_learned_position_encoding_is_the_table_rows(as_tensor):
    layer = LearnedPositionEncoding(sequence_length=8)
    x = np.zeros((2, 3, 4), "float32")
    start = ops.convert_to_tensor(2, dtype="int32") if as_tensor else 2
    out = ops.convert_to_numpy(layer(x, start_index=start))
    table = _numpy(layer.position_embeddings)
    np.testing.assert_allclose(out, np.broadcast_to(table[2:5], (2, 3, 4)), atol=1e-7)


def test_learned_position_encoding_rejects_bad_arguments():
    with pytest.raises(ValueError, match="Received: sequence_length=0"):
        LearnedPositionEncoding(sequence_length=0)
    with pytest.raises(ValueError, match="exceed the `sequence_length`"):
        LearnedPositionEncoding(sequence_length=4)(np.zeros((1, 3, 2), "float32"), start_index=2)


# --------------------------------------------------------------------------- ReversibleEmbedding


def test_reversible_embedding_standard_checks(tmp_path):
    run_layer_test(
        ReversibleEmbedding,
        {"input_dim": 10, "output_dim": 4, "mask_zero": True},
        TOKENS,
        expected_output_shape=(2, 6, 4),
        expected_num_trainable_weights=1,
        expected_num_non_trainable_weights=0,
        supports_masking=True,
        tmp_path=tmp_path,
    )


def test_reversible_embedding_reverse_is_matmul_with_the_transposed_table():
    layer = ReversibleEmbedding(10, 4)
    vectors = ops.convert_to_numpy(layer(TOKENS))
    table = _numpy(layer.embeddings)
    np.testing.assert_allclose(vectors, table[TOKENS], atol=1e-7)
    logits = ops.convert_to_numpy(layer(vectors, reverse=True))
    np.testing.assert_allclose(logits, vectors @ table.T, atol=1e-6)
    assert layer.compute_output_shape((2, 6, 4), reverse=True) == (2, 6, 10)


def test_reversible_embedding_ties_input_and_output_in_a_model(tmp_path):
    tokens = keras.Input((None,), dtype="int32")
    shared = ReversibleEmbedding(10, 4, mask_zero=True, name="tied")
    x = shared(tokens)
    logits = shared(keras.layers.Dense(4, name="mix")(x), reverse=True)
    model = keras.Model(tokens, logits)
    assert [w.path for w in model.weights if tuple(w.shape) == (10, 4)] == ["tied/embeddings"]
    # Forward calls mask id 0; a reverse call passes the vectors' mask on.
    ids_mask = ops.convert_to_numpy(shared.compute_mask(TOKENS))
    np.testing.assert_array_equal(ids_mask, TOKENS != 0)
    vectors = shared(TOKENS)
    assert shared.compute_mask(vectors, mask=ids_mask) is ids_mask
    model.save(tmp_path / "tied.keras")
    loaded = keras.saving.load_model(tmp_path / "tied.keras")
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded(TOKENS)), ops.convert_to_numpy(model(TOKENS)), atol=1e-6
    )

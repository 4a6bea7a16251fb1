"""Position-aware embeddings for Transformers: learned and sinusoidal.

Both layers take a `start_index` so that a cached decoding step (one token at
position `i`) gets exactly the position information it would get inside the
full sequence. `start_index` may be a Python int or a scalar integer tensor,
for example the counter of a `tf.while_loop` or `keras.ops.while_loop`.
"""

from __future__ import annotations

import keras
from keras import ops

from custom_layers._validation import check_positive_int


def _check_static_start_index(start_index, length, sequence_length=None):
    """Checks a Python-int `start_index`; tensors are checked by the caller's loop."""
    if not isinstance(start_index, int):
        return
    if isinstance(start_index, bool) or start_index < 0:
        raise ValueError(
            f"`start_index` must be a non-negative integer. Received: start_index={start_index!r}"
        )
    if sequence_length is not None and isinstance(length, int):
        if start_index + length > sequence_length:
            raise ValueError(
                f"Positions {start_index}..{start_index + length - 1} exceed the "
                f"`sequence_length` of the layer ({sequence_length}). Received: "
                f"start_index={start_index} with an input of length {length}; build the layer "
                "with a larger `sequence_length` or shorten the input."
            )


@keras.saving.register_keras_serializable(package="custom_layers")
class PositionalEmbedding(keras.layers.Layer):
    """Token embedding plus a learned position embedding.

    Maps integer token ids of shape `(batch, seq)` to vectors of shape
    `(batch, seq, embed_dim)`: `token_embedding[id] + position_embedding[pos]`,
    where `pos` runs over `start_index, ..., start_index + seq - 1`. The
    position table has `sequence_length` rows, the longest sequence the layer
    accepts.

    With `mask_zero=True`, id 0 is padding: `compute_mask` returns
    `inputs != 0`, and Keras attaches that mask to the output so that
    downstream layers (`TransformerEncoder`, `TransformerDecoder`) mask padded
    positions with no explicit argument.

    Args:
        sequence_length: int. The number of learned positions (maximum length).
        vocab_size: int. The number of token ids.
        embed_dim: int. The size of each embedding vector.
        mask_zero: bool. Whether id 0 is padding and gets masked. Defaults to
            `True`.
        embeddings_initializer: initializer of both embedding tables. Defaults
            to `"uniform"` (as `keras.layers.Embedding`).
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: integer tensor of token ids, shape `(batch, seq)`.
        start_index: int or scalar int tensor. Position of the first token;
            a decoding step at position `i` passes `start_index=i`. Must be
            passed by keyword. Defaults to 0.

    Returns:
        Float tensor of shape `(batch, seq, embed_dim)`.

    Example:

    >>> layer = PositionalEmbedding(sequence_length=8, vocab_size=100, embed_dim=16)
    >>> tokens = np.array([[5, 7, 9, 0, 0]])
    >>> layer(tokens).shape
    (1, 5, 16)
    >>> layer(tokens[:, 2:3], start_index=2).shape  # one decoding step
    (1, 1, 16)

    Reference:
        Devlin et al., 2019, "BERT" (learned absolute position embeddings);
        Vaswani et al., 2017, "Attention Is All You Need".
    """

    def __init__(
        self,
        sequence_length,
        vocab_size,
        embed_dim,
        mask_zero=True,
        embeddings_initializer="uniform",
        **kwargs,
    ):
        check_positive_int("sequence_length", sequence_length)
        check_positive_int("vocab_size", vocab_size)
        check_positive_int("embed_dim", embed_dim)
        if not isinstance(mask_zero, bool):
            raise ValueError(f"`mask_zero` must be a bool. Received: mask_zero={mask_zero!r}")
        super().__init__(**kwargs)
        self.sequence_length = sequence_length
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.mask_zero = mask_zero
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        # `compute_mask` returns None when `mask_zero=False`.
        self.supports_masking = True

    def _clone_initializer(self):
        # A fresh instance per table, so the two tables do not share values.
        return self.embeddings_initializer.__class__.from_config(
            self.embeddings_initializer.get_config()
        )

    def build(self, inputs_shape):
        self.token_embedding = keras.layers.Embedding(
            self.vocab_size,
            self.embed_dim,
            embeddings_initializer=self._clone_initializer(),
            dtype=self.dtype_policy,
            name="token_embedding",
        )
        self.token_embedding.build(inputs_shape)
        self.position_embeddings = self.add_weight(
            shape=(self.sequence_length, self.embed_dim),
            initializer=self._clone_initializer(),
            name="position_embeddings",
        )

    def call(self, inputs, start_index=0):
        length = inputs.shape[-1]
        _check_static_start_index(start_index, length, self.sequence_length)
        if length is None:
            length = ops.shape(inputs)[-1]
        if not isinstance(start_index, int):
            start_index = ops.cast(start_index, "int32")
        tokens = self.token_embedding(inputs)
        table = ops.convert_to_tensor(self.position_embeddings)
        positions = ops.slice(table, (start_index, 0), (length, self.embed_dim))
        return tokens + ops.cast(positions, tokens.dtype)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return ops.not_equal(inputs, 0)

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape) + (self.embed_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "vocab_size": self.vocab_size,
                "embed_dim": self.embed_dim,
                "mask_zero": self.mask_zero,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="custom_layers")
class SinusoidalPositionEncoding(keras.layers.Layer):
    """Fixed sinusoidal position encoding (Vaswani et al. 2017).

    Returns the encoding only, with the shape of `inputs`; the caller adds it
    to its embeddings (`keras.layers.Add()([x, encoding])` keeps the Keras
    mask of `x` in a Functional model). For position `pos` and feature `k` of
    `dim` features, with `i = k // 2`:

    ```
    encoding[pos, k] = sin(pos / max_wavelength ** (2 * i / dim))   if k is even
    encoding[pos, k] = cos(pos / max_wavelength ** (2 * i / dim))   if k is odd
    ```

    i.e. sine and cosine are **interleaved** (features 0, 2, 4, ... are sines,
    1, 3, 5, ... the matching cosines), exactly the paper's formula. An odd
    `dim` ends with a sine. The layer has no weights; positions are
    `start_index, ..., start_index + seq - 1`.

    Args:
        max_wavelength: positive number. The longest wavelength, reached by
            the last features. Defaults to 10000, as in the paper.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: float tensor of shape `(batch, seq, dim)` (or `(seq, dim)`);
            only its shape and dtype are used.
        start_index: int or scalar int tensor. Position of the first row.
            Must be passed by keyword. Defaults to 0.

    Returns:
        Tensor with the shape and compute dtype of `inputs`. The Keras mask of
        `inputs`, if any, is passed on.

    Example:

    >>> x = np.zeros((2, 5, 16), "float32")
    >>> encoding = SinusoidalPositionEncoding()(x)
    >>> encoding.shape
    (2, 5, 16)

    Reference:
        Vaswani et al., 2017, "Attention Is All You Need", section 3.5.
    """

    def __init__(self, max_wavelength=10000, **kwargs):
        if (
            not isinstance(max_wavelength, (int, float))
            or isinstance(max_wavelength, bool)
            or max_wavelength <= 0
        ):
            raise ValueError(
                "`max_wavelength` must be a positive number. "
                f"Received: max_wavelength={max_wavelength!r}"
            )
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength
        self.supports_masking = True

    def call(self, inputs, start_index=0):
        length = inputs.shape[-2]
        dim = inputs.shape[-1]
        if dim is None:
            raise ValueError(
                "The last dimension of `inputs` must be known. "
                f"Received: inputs with shape {inputs.shape}"
            )
        _check_static_start_index(start_index, length)
        if length is None:
            length = ops.shape(inputs)[-2]
        dtype = self.compute_dtype
        positions = ops.cast(ops.arange(length), "float32")
        positions = positions + ops.cast(start_index, "float32")
        features = ops.arange(dim)
        exponents = ops.cast(2 * (features // 2), "float32") / float(dim)
        inverse_wavelengths = ops.power(float(self.max_wavelength), -exponents)
        angles = ops.expand_dims(positions, -1) * ops.expand_dims(inverse_wavelengths, 0)
        is_even = ops.equal(features % 2, 0)
        encoding = ops.where(is_even, ops.sin(angles), ops.cos(angles))
        return ops.broadcast_to(ops.cast(encoding, dtype), ops.shape(inputs))

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"max_wavelength": self.max_wavelength})
        return config


@keras.saving.register_keras_serializable(package="custom_layers")
class LearnedPositionEncoding(keras.layers.Layer):
    """A learned position table, returned for the positions of the input.

    The learned counterpart of `SinusoidalPositionEncoding`: returns the rows
    `start_index, ..., start_index + seq - 1` of a trainable
    `(sequence_length, dim)` table, broadcast to the shape of `inputs`; the
    caller adds them to its embeddings (`keras.layers.Add()([x, encoding])`
    keeps the Keras mask of `x`). With a `ReversibleEmbedding` it makes what
    `PositionalEmbedding` makes, when the token table is shared with other
    layers (tied input and output embeddings).

    Args:
        sequence_length: int. The number of learned positions (maximum length).
        initializer: initializer of the table. Defaults to `"uniform"` (as
            `PositionalEmbedding`).
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: float tensor of shape `(batch, seq, dim)`; only its shape and
            dtype are used.
        start_index: int or scalar int tensor. Position of the first row.
            Must be passed by keyword. Defaults to 0.

    Returns:
        Tensor with the shape and compute dtype of `inputs`. The Keras mask of
        `inputs`, if any, is passed on.

    Example:

    >>> x = np.zeros((2, 5, 16), "float32")
    >>> LearnedPositionEncoding(sequence_length=8)(x).shape
    (2, 5, 16)

    Reference:
        Devlin et al., 2019, "BERT" (learned absolute position embeddings).
    """

    def __init__(self, sequence_length, initializer="uniform", **kwargs):
        check_positive_int("sequence_length", sequence_length)
        super().__init__(**kwargs)
        self.sequence_length = sequence_length
        self.initializer = keras.initializers.get(initializer)
        self.supports_masking = True

    def build(self, inputs_shape):
        dim = inputs_shape[-1]
        if dim is None:
            raise ValueError(
                f"The last dimension of `inputs` must be known. Received: inputs_shape={inputs_shape}"
            )
        self.position_embeddings = self.add_weight(
            shape=(self.sequence_length, dim),
            initializer=self.initializer,
            name="position_embeddings",
        )

    def call(self, inputs, start_index=0):
        length = inputs.shape[-2]
        _check_static_start_index(start_index, length, self.sequence_length)
        if length is None:
            length = ops.shape(inputs)[-2]
        if not isinstance(start_index, int):
            start_index = ops.cast(start_index, "int32")
        table = ops.convert_to_tensor(self.position_embeddings)
        positions = ops.slice(table, (start_index, 0), (length, table.shape[-1]))
        return ops.broadcast_to(ops.cast(positions, self.compute_dtype), ops.shape(inputs))

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "initializer": keras.initializers.serialize(self.initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="custom_layers")
class ReversibleEmbedding(keras.layers.Embedding):
    """A token embedding that also projects vectors back onto the vocabulary (tied weights).

    `layer(ids)` looks up rows of the `(input_dim, output_dim)` matrix, as
    `keras.layers.Embedding` does; `layer(x, reverse=True)` returns
    `x @ embeddings.T`, one logit per token id. Calling one layer both ways
    ties the input embedding and the output projection (Press & Wolf 2017);
    calling it on two inputs (source and target ids) shares it between them.

    Masks: a forward call masks id 0 when `mask_zero=True`; a reverse call
    passes on the Keras mask of `x` unchanged.

    Args:
        input_dim: int. The number of token ids.
        output_dim: int. The size of each embedding vector.
        **kwargs: `keras.layers.Embedding` arguments (`mask_zero`,
            `embeddings_initializer`, `name`, ...).

    Call arguments:
        inputs: integer ids `(..., seq)`, or with `reverse=True` float
            vectors `(..., output_dim)`.
        reverse: bool. Project vectors onto the vocabulary instead of
            looking ids up. Defaults to False.

    Returns:
        `(..., seq, output_dim)` embeddings, or `(..., input_dim)` logits.

    Example:

    >>> layer = ReversibleEmbedding(100, 16)
    >>> vectors = layer(np.array([[5, 7, 9]]))
    >>> layer(vectors, reverse=True).shape
    (1, 3, 100)

    Reference:
        Press & Wolf, 2017, "Using the Output Embedding to Improve Language
        Models"; KerasHub's `ReversibleEmbedding`.
    """

    def call(self, inputs, reverse=False):
        if reverse:
            kernel = ops.cast(ops.transpose(self.embeddings), self.compute_dtype)
            return ops.matmul(ops.cast(inputs, self.compute_dtype), kernel)
        return super().call(inputs)

    def compute_mask(self, inputs, mask=None):
        if "float" in str(getattr(inputs, "dtype", "")):
            return mask  # A reverse call: the vectors' mask passes through.
        return super().compute_mask(inputs, mask)

    def compute_output_shape(self, input_shape, reverse=False):
        if reverse:
            return (*input_shape[:-1], self.input_dim)
        return super().compute_output_shape(input_shape)

    def compute_output_spec(self, inputs, reverse=False):
        shape = self.compute_output_shape(inputs.shape, reverse=reverse)
        return keras.KerasTensor(shape, dtype=self.compute_dtype)

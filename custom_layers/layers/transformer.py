"""Transformer encoder and decoder blocks with explicit masks and a decoding cache.

How masks flow. Each block reads its padding masks once, at its boundary:
an explicit argument (`padding_mask`, `decoder_padding_mask`,
`encoder_padding_mask`) wins; otherwise the Keras mask carried by the input
tensor is used. Keras 3 hands a layer the masks of its tensor arguments
through call arguments named `mask` (when the layer receives one tensor) and
`<argument>_mask` (when it receives several), so the blocks declare `mask`,
`inputs_mask`, `decoder_sequence_mask` and `encoder_sequence_mask`; these are
filled in by `Layer.__call__` in Functional models and in eager calls, on
every backend. The blocks then build one boolean attention mask per attention
with `merge_padding_and_attention_mask` / `compute_causal_mask` (`True` =
"may attend") and pass only that mask to the attention layer.

Padding masks mask keys (the positions attended to), not queries: the
outputs at padded positions are computed but meaningless, and the block's
output carries the input's padding mask so that downstream layers and masked
losses skip them.
"""

from __future__ import annotations

import keras
from keras import ops

from custom_layers._validation import check_positive_int
from custom_layers.layers.attention import CachedMultiHeadAttention


def compute_causal_mask(batch_size, input_length, output_length, cache_index=0):
    """Boolean causal mask `(batch_size, input_length, output_length)`.

    Query row `i` sits at position `cache_index + i` and may attend to key
    positions `j <= cache_index + i`. With `cache_index=0` and equal lengths
    this is the usual lower-triangular mask; in a cached decoding step
    (`input_length=1`, `output_length=max_length`) it lets step `i` see cache
    positions `0..i` only.

    Args:
        batch_size: int or scalar int tensor.
        input_length: int or scalar int tensor. Number of query rows.
        output_length: int or scalar int tensor. Number of key positions.
        cache_index: int or scalar int tensor. Position of query row 0.

    Returns:
        Boolean tensor of shape `(batch_size, input_length, output_length)`.
    """
    if not isinstance(cache_index, int):
        cache_index = ops.cast(cache_index, "int32")
    query_positions = ops.expand_dims(ops.arange(input_length) + cache_index, -1)
    key_positions = ops.arange(output_length)
    mask = ops.less_equal(key_positions, query_positions)
    return ops.broadcast_to(ops.expand_dims(mask, 0), (batch_size, input_length, output_length))


def merge_padding_and_attention_mask(padding_mask=None, attention_mask=None):
    """Merges a key padding mask and an attention mask into one boolean mask.

    Args:
        padding_mask: optional `(batch, source_length)` mask, nonzero / `True`
            for real tokens. It masks keys: broadcast to
            `(batch, 1, source_length)`.
        attention_mask: optional `(batch, target_length, source_length)` mask
            (e.g. from `compute_causal_mask`).

    Returns:
        `None` when both are `None`; otherwise a boolean mask broadcastable to
        `(batch, target_length, source_length)`: the logical AND of the two.
    """
    mask = None
    if padding_mask is not None:
        if len(padding_mask.shape) != 2:
            raise ValueError(
                "A padding mask must have shape (batch, sequence_length). "
                f"Received: padding_mask with shape {tuple(padding_mask.shape)}"
            )
        mask = ops.expand_dims(ops.cast(padding_mask, "bool"), 1)
    if attention_mask is not None:
        if len(attention_mask.shape) != 3:
            raise ValueError(
                "An attention mask must have shape (batch, target_length, source_length). "
                f"Received: attention_mask with shape {tuple(attention_mask.shape)}"
            )
        attention_mask = ops.cast(attention_mask, "bool")
        mask = attention_mask if mask is None else ops.logical_and(mask, attention_mask)
    return mask


def _clone_initializer(initializer):
    # One instance per sublayer: a shared seeded instance would repeat values.
    return initializer.__class__.from_config(initializer.get_config())


class _TransformerBlock(keras.layers.Layer):
    """Shared arguments, sublayer factories and feedforward of both blocks."""

    def __init__(
        self,
        intermediate_dim,
        num_heads,
        dropout=0.0,
        activation="relu",
        layer_norm_epsilon=1e-5,
        normalize_first=False,
        key_dim=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        check_positive_int("intermediate_dim", intermediate_dim)
        check_positive_int("num_heads", num_heads)
        if key_dim is not None:
            check_positive_int("key_dim", key_dim)
        if (
            not isinstance(dropout, (int, float))
            or isinstance(dropout, bool)
            or not 0 <= dropout < 1
        ):
            raise ValueError(f"`dropout` must be a number in [0, 1). Received: dropout={dropout!r}")
        if (
            not isinstance(layer_norm_epsilon, (int, float))
            or isinstance(layer_norm_epsilon, bool)
            or layer_norm_epsilon <= 0
        ):
            raise ValueError(
                "`layer_norm_epsilon` must be a positive number. "
                f"Received: layer_norm_epsilon={layer_norm_epsilon!r}"
            )
        if not isinstance(normalize_first, bool):
            raise ValueError(
                f"`normalize_first` must be a bool. Received: normalize_first={normalize_first!r}"
            )
        super().__init__(**kwargs)
        self.intermediate_dim = intermediate_dim
        self.num_heads = num_heads
        self.dropout = float(dropout)
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.normalize_first = normalize_first
        self.key_dim = key_dim
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True

    def _resolve_key_dim(self, embed_dim):
        if self.key_dim is not None:
            return self.key_dim
        if embed_dim is None or embed_dim % self.num_heads != 0:
            raise ValueError(
                "With `key_dim=None` the embedding size must be divisible by `num_heads` "
                f"(key_dim = embed_dim // num_heads). Received: embed_dim={embed_dim}, "
                f"num_heads={self.num_heads}; pass `key_dim` or change the sizes."
            )
        return embed_dim // self.num_heads

    def _make_attention(self, key_dim, name):
        return CachedMultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=key_dim,
            dropout=self.dropout,
            kernel_initializer=_clone_initializer(self.kernel_initializer),
            bias_initializer=_clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name=name,
        )

    def _make_layer_norm(self, name, input_shape):
        layer = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
        )
        layer.build(input_shape)
        return layer

    def _make_dropout(self, name):
        return keras.layers.Dropout(rate=self.dropout, dtype=self.dtype_policy, name=name)

    def _build_feedforward(self, input_shape):
        input_shape = tuple(input_shape)
        self._feedforward_layer_norm = self._make_layer_norm("feedforward_layer_norm", input_shape)
        self._feedforward_intermediate_dense = keras.layers.Dense(
            self.intermediate_dim,
            activation=self.activation,
            kernel_initializer=_clone_initializer(self.kernel_initializer),
            bias_initializer=_clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name="feedforward_intermediate_dense",
        )
        self._feedforward_intermediate_dense.build(input_shape)
        self._feedforward_output_dense = keras.layers.Dense(
            input_shape[-1],
            kernel_initializer=_clone_initializer(self.kernel_initializer),
            bias_initializer=_clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name="feedforward_output_dense",
        )
        self._feedforward_output_dense.build(input_shape[:-1] + (self.intermediate_dim,))
        self._feedforward_dropout = self._make_dropout("feedforward_dropout")

    def _residual(self, x, layer_norm, sublayer):
        """`x + sublayer(norm(x))` (pre-norm) or `norm(x + sublayer(x))` (post-norm).

        `sublayer` returns the new activations plus any extra outputs (scores,
        caches), which are passed through.
        """
        residual = x
        if self.normalize_first:
            x = layer_norm(x)
        x, *extras = sublayer(x)
        x = x + residual
        if not self.normalize_first:
            x = layer_norm(x)
        return (x, *extras)

    def _feedforward(self, x, training):
        x = self._feedforward_intermediate_dense(x)
        x = self._feedforward_output_dense(x)
        return (self._feedforward_dropout(x, training=training),)

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "num_heads": self.num_heads,
                "dropout": self.dropout,
                "activation": keras.activations.serialize(self.activation),
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "normalize_first": self.normalize_first,
                "key_dim": self.key_dim,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="custom_layers")
class TransformerEncoder(_TransformerBlock):
    """Transformer encoder block: self-attention, then a feedforward network.

    Each sublayer is wrapped as `x + dropout(sublayer(norm(x)))` when
    `normalize_first=True` (pre-norm) or `norm(x + dropout(sublayer(x)))`
    when `False` (post-norm, the original paper). The feedforward network is
    `Dense(intermediate_dim, activation) -> Dense(embed_dim)`.

    Masking: padded positions are never attended to. The padding mask is
    `padding_mask` if given, else the Keras mask carried by `inputs` (e.g.
    from `PositionalEmbedding(mask_zero=True)`); the output carries that same
    mask, so a following block or a decoder's cross-attention picks it up.

    Args:
        intermediate_dim: int. Hidden size of the feedforward network.
        num_heads: int. Number of attention heads.
        dropout: float in [0, 1). Dropout rate of the attention weights and
            of both sublayer outputs. Defaults to 0.
        activation: activation of the feedforward network (name, function
            or registered name such as `"custom_layers>relu"`). Defaults to
            `"relu"`.
        layer_norm_epsilon: float. Epsilon of the layer normalizations.
        normalize_first: bool. Pre-norm (`True`) or post-norm (`False`).
        key_dim: int or None. Size of each attention head; defaults to
            `embed_dim // num_heads` (then `embed_dim` must be divisible).
        kernel_initializer: initializer of every kernel.
        bias_initializer: initializer of every bias.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: float tensor `(batch, seq, embed_dim)`.
        padding_mask: optional `(batch, seq)` mask, `True`/1 for real tokens.
        attention_mask: optional `(batch, seq, seq)` mask, `True` = may attend;
            combined with the padding mask by logical AND.
        training: Python bool. Whether dropout is active.
        mask, inputs_mask: filled in by Keras with the mask carried by
            `inputs`; pass `padding_mask` instead.

    Returns:
        Tensor `(batch, seq, embed_dim)`. It carries the Keras mask of
        `inputs`, or the mask passed as `mask=` (an explicit `padding_mask`
        is used for attention but not attached to the output).

    Example:

    >>> tokens = keras.Input((None,), dtype="int32")
    >>> x = PositionalEmbedding(16, vocab_size=100, embed_dim=8)(tokens)
    >>> encoded = TransformerEncoder(intermediate_dim=32, num_heads=2)(x)
    >>> encoded.shape
    (None, None, 8)

    Reference:
        Vaswani et al., 2017, "Attention Is All You Need";
        Xiong et al., 2020, "On Layer Normalization in the Transformer
        Architecture" (pre-norm).
    """

    def build(self, inputs_shape):
        inputs_shape = tuple(inputs_shape)
        key_dim = self._resolve_key_dim(inputs_shape[-1])
        self._self_attention_layer = self._make_attention(key_dim, "self_attention")
        self._self_attention_layer.build(inputs_shape, inputs_shape)
        self._self_attention_layer_norm = self._make_layer_norm(
            "self_attention_layer_norm", inputs_shape
        )
        self._self_attention_dropout = self._make_dropout("self_attention_dropout")
        self._build_feedforward(inputs_shape)

    def call(
        self,
        inputs,
        padding_mask=None,
        attention_mask=None,
        training=None,
        mask=None,
        inputs_mask=None,
    ):
        if padding_mask is None:
            padding_mask = mask if mask is not None else inputs_mask
        self_attention_mask = merge_padding_and_attention_mask(padding_mask, attention_mask)

        def self_attention(x):
            x = self._self_attention_layer(
                x,
                x,
                attention_mask=self_attention_mask,
                training=training,
                use_keras_masks=False,
            )
            return (self._self_attention_dropout(x, training=training),)

        (x,) = self._residual(inputs, self._self_attention_layer_norm, self_attention)
        (x,) = self._residual(
            x, self._feedforward_layer_norm, lambda y: self._feedforward(y, training)
        )
        return x

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)


@keras.saving.register_keras_serializable(package="custom_layers")
class TransformerDecoder(_TransformerBlock):
    """Transformer decoder block: causal self-attention, cross-attention, feedforward.

    Sublayers are wrapped in residual connections and layer normalization as
    in `TransformerEncoder` (`normalize_first` picks pre- or post-norm). The
    cross-attention sublayer exists when the block is built with an
    `encoder_sequence`; without one it is a decoder-only (GPT-style) block.

    Masking, full-sequence call:
    - self-attention: causal mask (`use_causal_mask=True`) AND the decoder
      padding mask on keys. The padding mask is `decoder_padding_mask` if
      given, else the Keras mask carried by `decoder_sequence`.
    - cross-attention: the encoder padding mask on keys: `encoder_padding_mask`
      if given, else the Keras mask carried by `encoder_sequence` (which a
      `TransformerEncoder` output carries). So in
      `TransformerDecoder(...)(PositionalEmbedding(...)(target),
      TransformerEncoder(...)(PositionalEmbedding(...)(source)))` padding is
      masked everywhere with no explicit mask.

    Cached decoding (pass `self_attention_cache`): the call processes the
    decoder tokens at positions `self_attention_cache_update_index, ...`
    (usually one token), writes their self-attention keys/values into the
    cache, and lets query row `t` see cache positions
    `<= self_attention_cache_update_index + t` only. The cross-attention keys
    and values come from `cross_attention_cache` if given, else are computed
    from `encoder_sequence` and returned so that the next step reuses them.
    In this mode the Keras mask of the step input is ignored (it describes the
    new token only); a `decoder_padding_mask` given explicitly must cover the
    whole cache, shape `(batch, max_length)`. When `encoder_sequence` is not
    passed, pass `encoder_padding_mask` explicitly to mask source padding.
    Step-by-step outputs equal the full-sequence call.

    Args:
        intermediate_dim, num_heads, dropout, activation, layer_norm_epsilon,
        normalize_first, key_dim, kernel_initializer, bias_initializer:
            as in `TransformerEncoder`.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        decoder_sequence: float tensor `(batch, target_length, embed_dim)`.
        encoder_sequence: optional float tensor
            `(batch, source_length, encoder_dim)`.
        decoder_padding_mask: optional `(batch, target_length)` mask
            (`(batch, max_length)` in cached mode).
        encoder_padding_mask: optional `(batch, source_length)` mask.
        self_attention_cache: optional tensor
            `(batch, 2, max_length, num_heads, key_dim)`; see
            `init_self_attention_cache`.
        self_attention_cache_update_index: int or scalar int tensor, the
            position of the first decoder token; required with a cache.
        cross_attention_cache: optional tensor
            `(batch, 2, source_length, num_heads, key_dim)`; see
            `compute_cross_attention_cache`.
        use_causal_mask: bool. Defaults to `True`.
        return_attention_scores: bool. Also return the cross-attention
            weights `(batch, num_heads, target_length, source_length)`.
        training: Python bool. Whether dropout is active.
        mask, decoder_sequence_mask, encoder_sequence_mask: filled in by
            Keras with the masks the inputs carry; pass the padding masks
            instead.

    Returns:
        Full-sequence call: `outputs` `(batch, target_length, embed_dim)`, or
        `(outputs, cross_attention_scores)`. Cached call:
        `(outputs, self_attention_cache, cross_attention_cache)`, or
        `(outputs, cross_attention_scores, self_attention_cache,
        cross_attention_cache)`; `cross_attention_cache` is `None` for a
        decoder-only block.

    Example:

    >>> decoder = TransformerDecoder(intermediate_dim=32, num_heads=2)
    >>> target = np.random.rand(2, 6, 8).astype("float32")
    >>> source = np.random.rand(2, 5, 8).astype("float32")
    >>> full = decoder(target, source)
    >>> cache = decoder.init_self_attention_cache(batch_size=2, max_length=6)
    >>> cross_cache = decoder.compute_cross_attention_cache(source)
    >>> step, cache, cross_cache = decoder(
    ...     target[:, :1], self_attention_cache=cache, self_attention_cache_update_index=0,
    ...     cross_attention_cache=cross_cache)
    >>> np.allclose(step, full[:, :1], atol=1e-5)
    True

    Reference:
        Vaswani et al., 2017, "Attention Is All You Need".
    """

    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        decoder_sequence_shape = tuple(decoder_sequence_shape)
        key_dim = self._resolve_key_dim(decoder_sequence_shape[-1])
        self._resolved_key_dim = key_dim
        self._self_attention_layer = self._make_attention(key_dim, "self_attention")
        self._self_attention_layer.build(decoder_sequence_shape, decoder_sequence_shape)
        self._self_attention_layer_norm = self._make_layer_norm(
            "self_attention_layer_norm", decoder_sequence_shape
        )
        self._self_attention_dropout = self._make_dropout("self_attention_dropout")
        self._has_cross_attention = encoder_sequence_shape is not None
        if self._has_cross_attention:
            self._cross_attention_layer = self._make_attention(key_dim, "cross_attention")
            self._cross_attention_layer.build(decoder_sequence_shape, tuple(encoder_sequence_shape))
            self._cross_attention_layer_norm = self._make_layer_norm(
                "cross_attention_layer_norm", decoder_sequence_shape
            )
            self._cross_attention_dropout = self._make_dropout("cross_attention_dropout")
        self._build_feedforward(decoder_sequence_shape)

    def call(
        self,
        decoder_sequence,
        encoder_sequence=None,
        decoder_padding_mask=None,
        encoder_padding_mask=None,
        self_attention_cache=None,
        self_attention_cache_update_index=None,
        cross_attention_cache=None,
        use_causal_mask=True,
        return_attention_scores=False,
        training=None,
        mask=None,
        decoder_sequence_mask=None,
        encoder_sequence_mask=None,
    ):
        cached = self_attention_cache is not None
        self._check_call_arguments(
            encoder_sequence,
            self_attention_cache,
            self_attention_cache_update_index,
            cross_attention_cache,
            return_attention_scores,
        )
        if encoder_padding_mask is None:
            encoder_padding_mask = encoder_sequence_mask

        if cached:
            self_attention_mask = self._cached_self_attention_mask(
                decoder_sequence,
                self_attention_cache,
                self_attention_cache_update_index,
                decoder_padding_mask,
                use_causal_mask,
            )
        else:
            if decoder_padding_mask is None:
                decoder_padding_mask = (
                    decoder_sequence_mask if decoder_sequence_mask is not None else mask
                )
            causal_mask = None
            if use_causal_mask:
                batch_size = ops.shape(decoder_sequence)[0]
                length = ops.shape(decoder_sequence)[1]
                causal_mask = compute_causal_mask(batch_size, length, length)
            self_attention_mask = merge_padding_and_attention_mask(
                decoder_padding_mask, causal_mask
            )

        def self_attention(x):
            results = self._self_attention_layer(
                x,
                x,
                attention_mask=self_attention_mask,
                cache=self_attention_cache,
                cache_update_index=self_attention_cache_update_index,
                training=training,
                use_keras_masks=False,
            )
            x, *new_cache = results if cached else (results,)
            return (self._self_attention_dropout(x, training=training), *new_cache)

        x, *new_self_cache = self._residual(
            decoder_sequence, self._self_attention_layer_norm, self_attention
        )
        self_attention_cache = new_self_cache[0] if cached else None

        scores = None
        if self._has_cross_attention:
            if cached and cross_attention_cache is None:
                cross_attention_cache = self.compute_cross_attention_cache(encoder_sequence)
            cross_attention_mask = merge_padding_and_attention_mask(encoder_padding_mask)

            def cross_attention(x):
                results = self._cross_attention_layer(
                    x,
                    None if cached else encoder_sequence,
                    attention_mask=cross_attention_mask,
                    cache=cross_attention_cache if cached else None,
                    return_attention_scores=return_attention_scores,
                    training=training,
                    use_keras_masks=False,
                )
                results = results if isinstance(results, tuple) else (results,)
                x, *extras = results
                return (self._cross_attention_dropout(x, training=training), *extras)

            x, *extras = self._residual(x, self._cross_attention_layer_norm, cross_attention)
            if return_attention_scores:
                scores = extras[0]

        (x,) = self._residual(
            x, self._feedforward_layer_norm, lambda y: self._feedforward(y, training)
        )

        outputs = (x,)
        if return_attention_scores:
            outputs += (scores,)
        if cached:
            outputs += (self_attention_cache, cross_attention_cache)
        return outputs[0] if len(outputs) == 1 else outputs

    def _check_call_arguments(
        self,
        encoder_sequence,
        self_attention_cache,
        self_attention_cache_update_index,
        cross_attention_cache,
        return_attention_scores,
    ):
        if not self._has_cross_attention:
            if encoder_sequence is not None or cross_attention_cache is not None:
                raise ValueError(
                    f"Decoder '{self.name}' was built without `encoder_sequence`, so it has no "
                    "cross-attention; build it by calling it with an `encoder_sequence` first. "
                    "Received: encoder_sequence or cross_attention_cache"
                )
            if return_attention_scores:
                raise ValueError(
                    "`return_attention_scores=True` returns cross-attention scores, but decoder "
                    f"'{self.name}' has no cross-attention. Received: return_attention_scores=True"
                )
        elif encoder_sequence is None and cross_attention_cache is None:
            raise ValueError(
                f"Decoder '{self.name}' has cross-attention: pass `encoder_sequence` (or "
                "`cross_attention_cache` in cached mode). Received: encoder_sequence=None"
            )
        if self_attention_cache is None:
            if self_attention_cache_update_index is not None or cross_attention_cache is not None:
                raise ValueError(
                    "`self_attention_cache_update_index` and `cross_attention_cache` are only "
                    "used in cached mode: pass `self_attention_cache` too. Received: "
                    "self_attention_cache=None"
                )
        elif self_attention_cache_update_index is None:
            raise ValueError(
                "A cached call needs `self_attention_cache_update_index`, the position of the "
                "first decoder token. Received: self_attention_cache_update_index=None"
            )

    def _cached_self_attention_mask(
        self, decoder_sequence, cache, cache_index, padding_mask, causal
    ):
        batch_size = ops.shape(decoder_sequence)[0]
        max_length = ops.shape(cache)[2]
        attention_mask = None
        if causal:
            length = ops.shape(decoder_sequence)[1]
            attention_mask = compute_causal_mask(batch_size, length, max_length, cache_index)
        if padding_mask is not None:
            if padding_mask.shape[-1] != cache.shape[2]:
                raise ValueError(
                    "In cached mode `decoder_padding_mask` covers the whole cache: expected "
                    f"shape (batch, {cache.shape[2]}). Received: decoder_padding_mask with "
                    f"shape {tuple(padding_mask.shape)}"
                )
        return merge_padding_and_attention_mask(padding_mask, attention_mask)

    def compute_cross_attention_cache(self, encoder_sequence):
        """Projects `encoder_sequence` to the cross-attention keys and values.

        Args:
            encoder_sequence: float tensor `(batch, source_length, encoder_dim)`.

        Returns:
            Tensor `(batch, 2, source_length, num_heads, key_dim)`: keys at
            index 0, values at index 1 of axis 1. Compute it once per source
            sentence and pass it as `cross_attention_cache` at every step.
        """
        if not self.built or not self._has_cross_attention:
            raise ValueError(
                f"Decoder '{self.name}' has no cross-attention yet: call it once with an "
                "`encoder_sequence` (or build it) first. Received: "
                f"built={self.built}"
            )
        if encoder_sequence is None:
            raise ValueError(
                "`encoder_sequence` is needed to compute the cross-attention cache. "
                "Received: encoder_sequence=None"
            )
        attention = self._cross_attention_layer
        # A fresh tensor: the projections must not see (and warn about) a Keras mask.
        encoder_sequence = ops.copy(encoder_sequence)
        keys = attention.key_dense(encoder_sequence)
        values = attention.value_dense(encoder_sequence)
        return ops.stack([keys, values], axis=1)

    def init_self_attention_cache(self, batch_size, max_length, dtype="float32"):
        """Returns an all-zero self-attention cache.

        Args:
            batch_size: int or scalar int tensor.
            max_length: int. The number of decoding positions.
            dtype: dtype of the cache. Defaults to `"float32"`.

        Returns:
            Zeros of shape `(batch_size, 2, max_length, num_heads, key_dim)`.
        """
        key_dim = (
            self.key_dim if self.key_dim is not None else getattr(self, "_resolved_key_dim", None)
        )
        if key_dim is None:
            raise ValueError(
                f"Decoder '{self.name}' has `key_dim=None` and is not built yet, so its key size "
                "is unknown: build or call it first. Received: key_dim=None"
            )
        return ops.zeros((batch_size, 2, max_length, self.num_heads, key_dim), dtype=dtype)

    def compute_output_shape(self, decoder_sequence_shape, encoder_sequence_shape=None):
        return tuple(decoder_sequence_shape)

    def compute_output_spec(
        self,
        decoder_sequence,
        encoder_sequence=None,
        decoder_padding_mask=None,
        encoder_padding_mask=None,
        self_attention_cache=None,
        self_attention_cache_update_index=None,
        cross_attention_cache=None,
        use_causal_mask=True,
        return_attention_scores=False,
        training=None,
        mask=None,
        decoder_sequence_mask=None,
        encoder_sequence_mask=None,
    ):
        outputs = (keras.KerasTensor(tuple(decoder_sequence.shape), dtype=self.compute_dtype),)
        if encoder_sequence is not None:
            source_length = encoder_sequence.shape[1]
        elif cross_attention_cache is not None:
            source_length = cross_attention_cache.shape[2]
        else:
            source_length = None
        batch_size, target_length = decoder_sequence.shape[0], decoder_sequence.shape[1]
        if return_attention_scores:
            scores_shape = (batch_size, self.num_heads, target_length, source_length)
            outputs += (keras.KerasTensor(scores_shape, dtype=self.compute_dtype),)
        if self_attention_cache is not None:
            cache_dtype = self_attention_cache.dtype
            outputs += (keras.KerasTensor(tuple(self_attention_cache.shape), dtype=cache_dtype),)
            if self._has_cross_attention:
                cross_shape = (batch_size, 2, source_length, self.num_heads, self._resolved_key_dim)
                outputs += (keras.KerasTensor(cross_shape, dtype=self.compute_dtype),)
            else:
                outputs += (None,)
        return outputs[0] if len(outputs) == 1 else outputs

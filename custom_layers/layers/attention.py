"""Multi-head attention with a key/value cache for autoregressive decoding."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="custom_layers")
class CachedMultiHeadAttention(keras.layers.MultiHeadAttention):
    """`keras.layers.MultiHeadAttention` with a key/value cache.

    Without a cache this is `keras.layers.MultiHeadAttention`: same weights,
    same arguments, same outputs, Keras masks of `query`/`value`/`key`
    honoured. The cache adds two decoding modes. The cache is one tensor of
    shape `(batch, 2, max_length, num_heads, key_dim)`: `cache[:, 0]` holds
    the projected keys and `cache[:, 1]` the projected values.

    - `cache_update_index=None` (cross-attention reuse): the cache is used as
      it is as keys and values; `value`/`key` are not used (may be `None`).
      The keys/values of an encoder output are then projected once per
      sentence, not once per decoding step.
    - `cache_update_index=i` (self-attention step): the keys and values of
      the current input (`key`/`value`, normally the query step itself) are
      projected, written into the cache at positions `i, i+1, ...`
      (`ops.slice_update`), and the query attends over the whole cache. Cache
      positions after the current step still hold zeros: mask them with
      `attention_mask` of shape `(batch, seq, max_length)`, or pass
      `use_causal_mask=True` to let query row `t` see cache positions
      `<= i + t` only. `i` may be a Python int or a scalar int tensor (the
      counter of a `tf.while_loop` or `keras.ops.while_loop`).

    With a cache, Keras masks attached to the inputs are ignored (they
    describe only the current step, not the cached positions): all masking
    goes through `attention_mask` and `use_causal_mask`.

    Args:
        num_heads: int. Number of attention heads.
        key_dim: int. Size of each attention head for query and key.
        **kwargs: every other `keras.layers.MultiHeadAttention` argument
            (`value_dim`, `dropout`, `use_bias`, `output_shape`,
            `kernel_initializer`, ...). A cache needs `value_dim == key_dim`.

    Call arguments:
        query: query tensor of shape `(batch, seq, dim)`.
        value: value tensor of shape `(batch, source_seq, dim)`; may be `None`
            when a cache is used with `cache_update_index=None`.
        key: optional key tensor; defaults to `value`.
        attention_mask: optional boolean tensor `(batch, seq, source_seq)`, or
            `(batch, seq, max_length)` with a cache; `True` means "may attend".
        cache: optional tensor `(batch, 2, max_length, num_heads, key_dim)`.
        cache_update_index: optional int or scalar int tensor, see above.
        return_attention_scores: bool. Also return the attention weights
            `(batch, num_heads, seq, source_seq)` (or `max_length`).
        training: Python bool. Whether attention dropout is active.
        use_causal_mask: bool. Causal masking; with a cache, relative to
            `cache_update_index`.
        use_keras_masks: bool. When `False`, ignore the Keras masks of the
            inputs and use only `attention_mask` and `use_causal_mask` even
            without a cache. The Transformer blocks use this: they build one
            explicit mask per attention, and the inputs' own masks would add
            query-row masking on top. Defaults to `True`.
        query_mask, value_mask, key_mask: filled in by Keras from the masks
            the inputs carry (as for `MultiHeadAttention`).

    Returns:
        Without a cache: `attention_output`, or `(attention_output, scores)`
        with `return_attention_scores=True`. With a cache:
        `(attention_output, cache)`, or `(attention_output, scores, cache)`;
        `cache` is the updated cache (the input cache when
        `cache_update_index=None`). `attention_output` has the shape of
        `query` (last dimension `output_shape` if given).

    Example:

    >>> layer = CachedMultiHeadAttention(num_heads=2, key_dim=4)
    >>> x = np.random.rand(3, 5, 8).astype("float32")
    >>> full = layer(x, x, use_causal_mask=True)
    >>> cache = np.zeros((3, 2, 5, 2, 4), "float32")
    >>> step, cache = layer(x[:, :1], x[:, :1], cache=cache, cache_update_index=0,
    ...                     use_causal_mask=True)
    >>> np.allclose(step, full[:, :1], atol=1e-5)
    True

    Reference:
        Vaswani et al., 2017, "Attention Is All You Need"; the cache is the
        standard incremental-decoding trick (e.g. KerasHub
        `CachedMultiHeadAttention`).
    """

    def build(self, query_shape, value_shape=None, key_shape=None):
        if value_shape is None:
            raise ValueError(
                "CachedMultiHeadAttention is built from the shapes of `query` and `value`: call "
                "it once with a `value` tensor before passing only a cache. Received: value=None"
            )
        super().build(query_shape, value_shape, key_shape)

    def call(
        self,
        query,
        value,
        key=None,
        attention_mask=None,
        cache=None,
        cache_update_index=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
        use_keras_masks=True,
        query_mask=None,
        value_mask=None,
        key_mask=None,
    ):
        if cache is None and use_keras_masks:
            # Plain multi-head attention: let Keras do everything.
            return super().call(
                query,
                value,
                key=key,
                query_mask=query_mask,
                value_mask=value_mask,
                key_mask=key_mask,
                attention_mask=attention_mask,
                return_attention_scores=return_attention_scores,
                training=training,
                use_causal_mask=use_causal_mask,
            )

        # Fresh tensors carry no Keras mask, so the projections neither see nor
        # warn about one, and the caller's tensors keep theirs
        # (`MultiHeadAttention.call` instead clears the masks of its inputs).
        query = ops.copy(query)
        if value is not None:
            key = None if key is None or key is value else ops.copy(key)
            value = ops.copy(value)

        if cache is None:
            if value is None:
                raise ValueError(
                    "`value` is required when no `cache` is given. Received: value=None"
                )
            key = value if key is None else key
            attention_mask = self._compute_attention_mask(
                query, value, attention_mask=attention_mask, use_causal_mask=use_causal_mask
            )
            projected_key = self._key_dense(key)
            projected_value = self._value_dense(value)
        else:
            self._check_cache(cache)
            if cache_update_index is None:
                if use_causal_mask:
                    raise ValueError(
                        "`use_causal_mask=True` needs `cache_update_index` (the position of the "
                        "current step). Received: cache_update_index=None"
                    )
                projected_key = cache[:, 0, ...]
                projected_value = cache[:, 1, ...]
            else:
                if value is None:
                    raise ValueError(
                        "`value` (the current step's input) is required to update the cache. "
                        "Received: value=None"
                    )
                key = value if key is None else key
                if not isinstance(cache_update_index, int):
                    cache_update_index = ops.cast(cache_update_index, "int32")
                new_keys = ops.cast(self._key_dense(key), cache.dtype)
                new_values = ops.cast(self._value_dense(value), cache.dtype)
                update = ops.stack([new_keys, new_values], axis=1)
                cache = ops.slice_update(cache, [0, 0, cache_update_index, 0, 0], update)
                projected_key = cache[:, 0, ...]
                projected_value = cache[:, 1, ...]
                attention_mask = self._merge_cached_masks(
                    query, cache, cache_update_index, attention_mask, use_causal_mask
                )
            projected_key = ops.cast(projected_key, self.compute_dtype)
            projected_value = ops.cast(projected_value, self.compute_dtype)

        if self._use_gate:
            gate = self._gate_dense(query)
        projected_query = self._query_dense(query)
        attention_output, attention_scores = self._compute_attention(
            projected_query,
            projected_key,
            projected_value,
            attention_mask,
            training,
            return_attention_scores,
        )
        if self._use_gate:
            attention_output = ops.multiply(attention_output, gate)
        attention_output = self._output_dense(attention_output)

        outputs = (attention_output,)
        if return_attention_scores:
            outputs += (attention_scores,)
        if cache is not None:
            outputs += (cache,)
        return outputs[0] if len(outputs) == 1 else outputs

    def _check_cache(self, cache):
        if self._value_dim != self._key_dim:
            raise ValueError(
                "A key/value cache needs `value_dim == key_dim`. Received: "
                f"key_dim={self._key_dim}, value_dim={self._value_dim}"
            )
        expected = (2, self._num_heads, self._key_dim)
        shape = tuple(cache.shape)
        if len(shape) != 5 or (shape[1], shape[3], shape[4]) != expected:
            raise ValueError(
                "`cache` must have shape (batch, 2, max_length, num_heads, key_dim) = "
                f"(batch, 2, max_length, {self._num_heads}, {self._key_dim}). "
                f"Received: cache with shape {shape}"
            )

    def _merge_cached_masks(self, query, cache, cache_update_index, attention_mask, causal):
        """Mask of a cached step: query row t sits at position `cache_update_index + t`."""
        mask = None
        if causal or self._sliding_window is not None:
            query_positions = ops.arange(ops.shape(query)[1]) + cache_update_index
            key_positions = ops.arange(ops.shape(cache)[2])
            query_positions = ops.expand_dims(query_positions, -1)  # (T, 1)
            if causal:
                mask = ops.less_equal(key_positions, query_positions)  # (T, L)
            if self._sliding_window is not None:
                window = ops.less(ops.abs(query_positions - key_positions), self._sliding_window)
                mask = window if mask is None else ops.logical_and(mask, window)
            mask = ops.expand_dims(mask, 0)  # (1, T, L)
        if attention_mask is not None:
            attention_mask = ops.cast(attention_mask, "bool")
            mask = attention_mask if mask is None else ops.logical_and(attention_mask, mask)
        return mask

    def compute_output_spec(
        self,
        query,
        value,
        key=None,
        attention_mask=None,
        cache=None,
        cache_update_index=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
        use_keras_masks=True,
        query_mask=None,
        value_mask=None,
        key_mask=None,
    ):
        output_shape = tuple(query.shape)
        if self._output_shape:
            output_shape = output_shape[:-1] + tuple(self._output_shape)
        outputs = (keras.KerasTensor(output_shape, dtype=self.compute_dtype),)
        if return_attention_scores:
            if len(query.shape) != 3:
                # Several attention axes: let MultiHeadAttention describe its scores.
                _, scores = super().compute_output_spec(
                    query, value, key=key, return_attention_scores=True
                )
            else:
                source_length = value.shape[1] if cache is None else cache.shape[2]
                scores_shape = (query.shape[0], self._num_heads, query.shape[1], source_length)
                scores = keras.KerasTensor(scores_shape, dtype=self.compute_dtype)
            outputs += (scores,)
        if cache is not None:
            outputs += (keras.KerasTensor(tuple(cache.shape), dtype=cache.dtype),)
        return outputs[0] if len(outputs) == 1 else outputs

"""The encoder-decoder Transformer, built from `custom_layers`.

`build_model` returns the training model: a Functional `keras.Model` taking
`{"source_tokens": (B, S), "decoder_tokens": (B, T)}` (int ids, 0 = padding)
and returning next-token logits `(B, T, target_vocab_size)`. Padding masks
flow by Keras masking: `PositionalEmbedding(mask_zero=True)` attaches them and
the encoder/decoder blocks mask padded keys, including the cross-attention
over source padding.

Inference needs the same layers one at a time (encode once, then one decoder
step per token with a key/value cache). `TranslatorLayers` finds them by name
in a built or loaded model and offers `encode`, `decode` (full sequence) and
`decode_step` (cached), all written with `keras.ops`, so they run on every
backend and inside `keras.ops.while_loop`.

With `config.shared_vocab` (one subword vocabulary for both languages) the
source embedding, the target embedding and the output projection share one
`(vocab, embed_dim)` matrix: a `ReversibleEmbedding` named `shared_embedding`
is called on the source ids, on the decoder ids and, with `reverse=True`, on
the decoder output (`logits = y @ E.T`). Each side keeps its own learned
position table (`source_positions`, `target_positions`).
"""

from __future__ import annotations

import keras
from keras import ops

from apps.common.errors import UserError
from apps.translator.config import TranslatorConfig
from apps.translator.tokens import PAD_ID
from custom_layers.layers import (
    LearnedPositionEncoding,
    PositionalEmbedding,
    ReversibleEmbedding,
    TransformerDecoder,
    TransformerEncoder,
)

SOURCE_INPUT = "source_tokens"
DECODER_INPUT = "decoder_tokens"


def build_model(
    config: TranslatorConfig,
    source_vocab_size: int | None = None,
    target_vocab_size: int | None = None,
) -> keras.Model:
    """Builds the (uncompiled) training model for `config`.

    Args:
        config: the run's configuration.
        source_vocab_size, target_vocab_size: the sizes of the vocabularies
            actually built (a small corpus may have fewer words than the
            config's caps); default to the config's values.

    Layer names are part of the contract with `TranslatorLayers`:
    `source_embedding`, `encoder_<i>`, `target_embedding`, `decoder_<i>`,
    `encoder_final_norm` / `decoder_final_norm` (pre-norm only),
    `output_dropout` and `logits`; with `shared_vocab`, `shared_embedding`
    (embeddings and logits), `source_positions` and `target_positions`
    instead of `source_embedding`, `target_embedding` and `logits`.

    Raises:
        ValueError: `shared_vocab` with different source and target sizes.
    """
    source_vocab_size = source_vocab_size or config.source_vocab_size
    target_vocab_size = target_vocab_size or config.target_vocab_size
    if config.shared_vocab and source_vocab_size != target_vocab_size:
        raise ValueError(
            "A shared vocabulary has one size. Received: "
            f"source_vocab_size={source_vocab_size}, target_vocab_size={target_vocab_size}"
        )
    source = keras.Input((None,), dtype="int32", name=SOURCE_INPUT)
    decoder_tokens = keras.Input((None,), dtype="int32", name=DECODER_INPUT)
    block_args = dict(
        intermediate_dim=config.intermediate_dim,
        num_heads=config.num_heads,
        dropout=config.dropout,
        normalize_first=config.normalize_first,
        key_dim=config.key_dim,
    )

    if config.shared_vocab:
        shared = ReversibleEmbedding(
            source_vocab_size, config.embed_dim, mask_zero=True, name="shared_embedding"
        )

        def embed(tokens, side):
            x = shared(tokens)
            positions = LearnedPositionEncoding(config.sequence_length, name=f"{side}_positions")
            return keras.layers.Add(name=f"{side}_embedding_sum")([x, positions(x)])

    x = (
        embed(source, "source")
        if config.shared_vocab
        else PositionalEmbedding(
            config.sequence_length, source_vocab_size, config.embed_dim, name="source_embedding"
        )(source)
    )
    for i in range(config.num_encoder_layers):
        x = TransformerEncoder(**block_args, name=f"encoder_{i}")(x)
    if config.normalize_first:
        # Pre-norm blocks leave the residual stream unnormalised.
        x = keras.layers.LayerNormalization(epsilon=1e-5, name="encoder_final_norm")(x)

    y = (
        embed(decoder_tokens, "target")
        if config.shared_vocab
        else PositionalEmbedding(
            config.sequence_length, target_vocab_size, config.embed_dim, name="target_embedding"
        )(decoder_tokens)
    )
    for i in range(config.num_decoder_layers):
        y = TransformerDecoder(**block_args, name=f"decoder_{i}")(y, x)
    if config.normalize_first:
        y = keras.layers.LayerNormalization(epsilon=1e-5, name="decoder_final_norm")(y)
    y = keras.layers.Dropout(config.output_dropout, name="output_dropout")(y)
    if config.shared_vocab:
        logits = shared(y, reverse=True)
    else:
        logits = keras.layers.Dense(target_vocab_size, name="logits")(y)
    return keras.Model(
        {SOURCE_INPUT: source, DECODER_INPUT: decoder_tokens}, logits, name="translator"
    )


def _numbered_layers(model: keras.Model, prefix: str) -> list[keras.layers.Layer]:
    layers = []
    while True:
        try:
            layers.append(model.get_layer(f"{prefix}_{len(layers)}"))
        except ValueError:
            return layers


def _optional_layer(model: keras.Model, name: str):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


class TranslatorLayers:
    """The layers of a translator model, callable one piece at a time.

    Args:
        model: a model from `build_model` (or loaded from its `.keras` file).

    Attributes:
        sequence_length: most decoder positions (the target embedding's table).
        source_vocab_size: number of source ids.
        target_vocab_size: number of output classes.
        shared_embedding: the tied `ReversibleEmbedding`, or None.

    Raises:
        UserError: `model` is not a translator model (e.g. another app's
            `model.keras` in a translator run directory).
    """

    def __init__(self, model: keras.Model):
        try:
            self.output_dropout = model.get_layer("output_dropout")
            self.shared_embedding = _optional_layer(model, "shared_embedding")
            if self.shared_embedding is None:
                source_embedding = model.get_layer("source_embedding")
                target_embedding = model.get_layer("target_embedding")
                output_dense = model.get_layer("logits")
                self.source_vocab_size = source_embedding.vocab_size
                self.target_vocab_size = output_dense.units
                self.sequence_length = target_embedding.sequence_length
                self._embed_source = source_embedding
                self._embed_target = target_embedding
                self._project = output_dense
            else:
                source_positions = model.get_layer("source_positions")
                target_positions = model.get_layer("target_positions")
                shared = self.shared_embedding
                self.source_vocab_size = self.target_vocab_size = shared.input_dim
                self.sequence_length = target_positions.sequence_length

                def positioned(positions):
                    def embed(tokens, start_index=0):
                        x = shared(tokens)
                        return x + positions(x, start_index=start_index)

                    return embed

                self._embed_source = positioned(source_positions)
                self._embed_target = positioned(target_positions)
                self._project = lambda y: shared(y, reverse=True)
        except ValueError as e:
            raise UserError(
                f"Model '{model.name}' is not a translator model built by "
                f"apps.translator.model.build_model: {e}"
            ) from e
        self.encoders = _numbered_layers(model, "encoder")
        self.decoders = _numbered_layers(model, "decoder")
        if not self.encoders or not self.decoders:
            raise UserError(
                f"Model '{model.name}' has no encoder_<i>/decoder_<i> layers; it is not a "
                "translator model built by apps.translator.model.build_model."
            )
        self.encoder_norm = _optional_layer(model, "encoder_final_norm")
        self.decoder_norm = _optional_layer(model, "decoder_final_norm")
        self.model = model

    def encode(self, source_tokens, training=False):
        """Encodes source ids `(B, S)`: returns `(encoded (B, S, D), source_mask (B, S))`."""
        source_mask = ops.not_equal(source_tokens, PAD_ID)
        x = self._embed_source(source_tokens)
        for layer in self.encoders:
            x = layer(x, padding_mask=source_mask, training=training)
        if self.encoder_norm is not None:
            x = self.encoder_norm(x)
        # The mask travels explicitly from here on. Dropping the Keras mask that
        # `x` carries keeps the attention's key/value projections (in
        # `compute_cross_attention_cache`) from warning that they cannot use it.
        return ops.copy(x), source_mask

    def _logits(self, y, training=False):
        if self.decoder_norm is not None:
            y = self.decoder_norm(y)
        return self._project(self.output_dropout(y, training=training))

    def decode(self, decoder_tokens, encoded, source_mask, return_attention_scores=False):
        """Full-sequence decoder: logits `(B, T, V)` for decoder ids `(B, T)`.

        With `return_attention_scores`, also returns the last decoder block's
        cross-attention weights `(B, heads, T, S)`.
        """
        decoder_mask = ops.not_equal(decoder_tokens, PAD_ID)
        y = self._embed_target(decoder_tokens)
        scores = None
        for i, layer in enumerate(self.decoders):
            want_scores = return_attention_scores and i == len(self.decoders) - 1
            y = layer(
                y,
                encoded,
                decoder_padding_mask=decoder_mask,
                encoder_padding_mask=source_mask,
                return_attention_scores=want_scores,
            )
            if want_scores:
                y, scores = y
        logits = self._logits(y)
        return (logits, scores) if return_attention_scores else logits

    def start_caches(self, encoded, max_length: int):
        """Caches for `decode_step`: (self-attention, cross-attention), one slice per block.

        Returns:
            `self_cache` zeros `(layers, B, 2, max_length, heads, key_dim)` and
            `cross_cache` `(layers, B, 2, S, heads, key_dim)`: the encoder
            output projected to keys and values once, for every step.
        """
        batch_size = ops.shape(encoded)[0]
        self_cache = ops.stack(
            [
                layer.init_self_attention_cache(batch_size, max_length, dtype=encoded.dtype)
                for layer in self.decoders
            ]
        )
        cross_cache = ops.stack(
            [layer.compute_cross_attention_cache(encoded) for layer in self.decoders]
        )
        return self_cache, cross_cache

    def decode_step(self, tokens, index, source_mask, self_cache, cross_cache):
        """One cached decoder step.

        Args:
            tokens: ids `(B, 1)` at position `index`.
            index: scalar int (tensor), the position of `tokens`.
            source_mask: `(B, S)` from `encode`.
            self_cache, cross_cache: from `start_caches` (or the previous step).

        Returns:
            `(logits (B, V), updated self_cache)`.
        """
        y = self._embed_target(tokens, start_index=index)
        new_caches = []
        for i, layer in enumerate(self.decoders):
            y, layer_cache, _ = layer(
                y,
                encoder_padding_mask=source_mask,
                self_attention_cache=self_cache[i],
                self_attention_cache_update_index=index,
                cross_attention_cache=cross_cache[i],
            )
            new_caches.append(layer_cache)
        logits = self._logits(y)
        return logits[:, 0, :], ops.stack(new_caches)

"""Subword tokenisation: SentencePiece pieces learned from the training split, in TF Text ops.

Why SentencePiece (unigram) and not WordPiece: it is lossless. It treats the
text as a sequence of characters with the spaces marked (`▁`), so
`detokenize(tokenize(text)) == text` for every normalised sentence,
punctuation, `¿ ¡`, accents and case included; WordPiece splits on spaces
and punctuation first and cannot tell `¿Dónde` from `¿ Dónde` when it joins
the pieces again. With `byte_fallback`, a character the vocabulary lacks (an
emoji, a CJK character) becomes its UTF-8 bytes, `<0xF0> <0x9F> ...`, so no
input ever maps to `[UNK]`. `benchmarks/translator_tokenizers.py` measures
both (round-trip exactness, unknown tokens, pieces per sentence, speed).

Training settings (`train_sentencepiece`): `normalization_rule_name="identity"`
(case, accents, `¿ ¡` and full-width characters are kept exactly as typed),
`character_coverage=1.0` (every character of the training split is a piece),
`split_digits=True` (numbers are spelled digit by digit, so any number can be
copied through), `byte_fallback=True`, and the four reserved tokens at the
ids the rest of the app uses (`[PAD]` 0, `[UNK]` 1, `[START]` 2, `[END]` 3;
the last three never come out of text). Training is deterministic: the same
sentences give the same model bytes.

In the graph, `tensorflow_text.SentencepieceTokenizer` tokenises and
detokenises (`SubwordVocabulary`); a SavedModel that holds it needs
`import tensorflow_text` before `tf.saved_model.load` (that import registers
the ops; the stock TF Serving model server links them). Whitespace is
normalised first as `vectorization.split_words` does it: every character
Python's `str.isspace()` accepts becomes one space, and runs of spaces one.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

import tensorflow as tf
import tensorflow_text as tf_text

from apps.common.errors import DataError, MissingFileError
from apps.common.io import atomic_write_bytes
from apps.translator.config import SUBWORD_FIXED_PIECES
from apps.translator.tokens import (
    END,
    END_ID,
    PAD,
    PAD_ID,
    START,
    START_ID,
    UNK,
    UNK_ID,
    byte_piece_value,
    check_tokens,
)

# RE2: the characters for which str.isspace() is True (as `vectorization._SPACES`).
_SPACES = r"[\t-\r\x{1c}-\x{1f}\x{85}\pZ]+"


def normalize_spaces(text):
    """Every run of whitespace (any `str.isspace()` character) becomes one space, ends stripped."""
    text = tf.strings.regex_replace(text, _SPACES, " ")
    return tf.strings.strip(text)


def python_normalize_spaces(text: str) -> str:
    """`normalize_spaces` in plain Python (what training reads)."""
    return " ".join(text.split())


def train_sentencepiece(texts: Iterable[str], vocab_size: int) -> bytes:
    """Learns a SentencePiece unigram model from `texts`; returns its serialized bytes.

    Args:
        texts: the training sentences (whitespace is normalised first).
        vocab_size: the most pieces, the 260 fixed ones included; fewer when
            the sentences hold fewer.

    Raises:
        ValueError: `vocab_size` cannot hold the fixed pieces and every
            character of `texts` (the message gives the least size that can).
        DataError: no non-empty sentence.
    """
    import sentencepiece as spm  # Training only; tokenising runs in TF Text ops.

    sentences = [s for s in (python_normalize_spaces(t) for t in texts) if s]
    if not sentences:
        raise DataError("No non-empty sentence to learn a subword vocabulary from.")
    characters = {c for s in sentences for c in s if c != " "}
    # Characters, the fixed pieces and the space mark `▁` must all fit.
    least = SUBWORD_FIXED_PIECES + len(characters) + 1
    if vocab_size < least:
        raise ValueError(
            f"A subword vocabulary of these sentences needs at least {least} pieces (4 reserved "
            f"tokens, 256 bytes, {len(characters)} characters and the space mark). "
            f"Received: vocab_size={vocab_size}"
        )
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # A small corpus gets a smaller vocabulary, not an error.
        character_coverage=1.0,
        byte_fallback=True,
        normalization_rule_name="identity",
        split_digits=True,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=START_ID,
        eos_id=END_ID,
        pad_piece=PAD,
        unk_piece=UNK,
        bos_piece=START,
        eos_piece=END,
        input_sentence_size=0,  # All sentences, no sampling: deterministic.
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


class SubwordVocabulary(tf.Module):
    """A SentencePiece model as a vocabulary that runs in TensorFlow graphs.

    The interface of `vectorization.Vocabulary` (`tokens`, `size`, `encode`,
    `decode`, `save`, `load`), so data preparation, translation and export
    take either.

    Args:
        model_proto: a serialized SentencePiece model (`train_sentencepiece`).
        name: module name.

    Attributes:
        tokens: the pieces in id order (`RESERVED_TOKENS` first, then the
            byte pieces `<0x00>` ... `<0xFF>`, then the learned ones).
        model_proto: the model's bytes.
    """

    def __init__(self, model_proto: bytes, name: str | None = None):
        super().__init__(name=name)
        self.model_proto = bytes(model_proto)
        try:
            tokenizer = self._tokenizer()
            size = int(tokenizer.vocab_size())
            pieces = tokenizer.id_to_string(tf.range(size)).numpy()
        except (tf.errors.InvalidArgumentError, tf.errors.InternalError) as e:
            raise ValueError(f"Not a SentencePiece model: {e}") from e
        self.tokens = check_tokens([p.decode("utf-8") for p in pieces])
        self._is_byte = tf.constant([byte_piece_value(t) is not None for t in self.tokens])

    def _tokenizer(self) -> tf_text.SentencepieceTokenizer:
        # A fresh tokenizer per call, on purpose. TF Text's SentencePiece resource is
        # owned by the kernel of the op that creates it; created eagerly, it lives in
        # the eager kernel cache, which `tf.random.set_seed` (and so
        # `keras.utils.set_random_seed`) clears, deleting it under every graph that
        # captured it. Created inside a traced function (the translator's graphs, the
        # export), the op belongs to that graph and (re)creates its resource when run.
        return tf_text.SentencepieceTokenizer(model=self.model_proto, out_type=tf.int32)

    @property
    def size(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text) -> tf.RaggedTensor:
        """Piece ids of each string of a 1-D batch: `RaggedTensor` `(batch, None)`, int32."""
        text = normalize_spaces(tf.convert_to_tensor(text, dtype=tf.string))
        return self._tokenizer().tokenize(text)

    def count_unknown(self, ids: tf.RaggedTensor) -> tf.Tensor:
        """Byte-fallback pieces per row of `ids` (int32): characters the vocabulary lacks."""
        flags = tf.ragged.map_flat_values(tf.gather, self._is_byte, ids)
        return tf.reduce_sum(tf.cast(flags, tf.int32), axis=1)

    def decode(self, ids) -> tf.Tensor:
        """Text of each row of piece ids, shape `(batch, length)`.

        A row ends at its first `[END]`; `[PAD]` and `[START]` are dropped.
        """
        if isinstance(ids, tf.RaggedTensor):
            ids = ids.to_tensor(default_value=PAD_ID)
        ids = tf.cast(tf.convert_to_tensor(ids), tf.int32)
        after_end = tf.cumsum(tf.cast(ids == END_ID, tf.int32), axis=-1) > 0
        keep = ~after_end & (ids != PAD_ID) & (ids != START_ID)
        return self._tokenizer().detokenize(tf.ragged.boolean_mask(ids, keep))

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the SentencePiece model (bytes), atomically."""
        return atomic_write_bytes(path, self.model_proto)

    @classmethod
    def load(cls, path: str | os.PathLike, name: str | None = None) -> SubwordVocabulary:
        """Reads a file written by `save`.

        Raises:
            MissingFileError: the file does not exist.
            DataError: the file is not a SentencePiece model of this app.
        """
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"subword model file not found: {path}")
        try:
            return cls(path.read_bytes(), name=name)
        except ValueError as e:
            raise DataError(
                f"subword model file {path} is invalid: {e}. It must be the file that training "
                "wrote: copy the run directory again or retrain."
            ) from e

    @classmethod
    def from_texts(
        cls, texts: Iterable[str], vocab_size: int, name: str | None = None
    ) -> SubwordVocabulary:
        """Learns a vocabulary of at most `vocab_size` pieces from `texts` (`train_sentencepiece`)."""
        return cls(train_sentencepiece(texts, vocab_size), name=name)

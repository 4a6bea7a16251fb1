"""Word-level tokenisation that keeps case, accents and punctuation, in TensorFlow ops.

Why words and not subwords: the Tatoeba sentences are short and everyday
(15.5k English and 29k Spanish word types), so a 12k/16k-word vocabulary covers
over 98% of the running words; the tokenizer then needs nothing but
`tf.strings` regular expressions and a hash table, which run unchanged in
`tf.data` and inside the exported SavedModel (no `tensorflow-text` ops that TF
Serving would need to load). The cost is that rare words become `[UNK]`.

Splitting rules (`split_words`): punctuation marks `¿ ¡ ? ! . , ; : " « » ( ) [ ] { } …`
become tokens of their own, except `.` between two letters or digits
(`p.m.` -> `p.m` `.`, `3.5`) and `,` or `:` between two digits (`1,000`,
`10:30`); apostrophes and hyphens stay inside words
(`don't`, `Tom's`, `bien-estar`); case and accents are kept. `join_words`
undoes it the way Spanish is written: no space before closing marks, none
after `¿ ¡ ( [ { «`, straight double quotes hug the words they enclose:
`¿ Por qué no cogemos un taxi ?` -> `¿Por qué no cogemos un taxi?`.

Every vocabulary starts with the same four reserved tokens, so the ids below
hold for source and target alike. The token constants, vocabulary-file
checks and a Python detokeniser live in `tokens.py`, which needs no TensorFlow.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import tensorflow as tf

from apps.translator.tokens import (  # noqa: F401  (re-exported: the ids are used everywhere)
    END,
    END_ID,
    JOIN_RULES,
    PAD,
    PAD_ID,
    PUNCTUATION,
    RESERVED_TOKENS,
    START,
    START_ID,
    UNK,
    UNK_ID,
    check_tokens,
    load_tokens,
    save_tokens,
)

# RE2: the characters for which str.isspace() is True (Unicode separators Z*, ASCII
# and information-separator controls, NEL).
_SPACES = r"[\t-\r\x{1c}-\x{1f}\x{85}\pZ]"
# Marks inside a word or number are protected from splitting by swapping in
# private-use characters: "p.m.", "U.S.", "3.5", "1,000", "10:30".
_PROTECTED = (
    (r"([\pL\d])\.([\pL\d])", ".", "\ue000"),
    (r"(\d),(\d)", ",", "\ue001"),
    (r"(\d):(\d)", ":", "\ue002"),
)


def split_words(text) -> tf.Tensor | tf.RaggedTensor:
    """Splits text into words and punctuation marks, keeping case and accents.

    Args:
        text: a string or a 1-D batch of strings (tensor, list or scalar).

    Returns:
        For a batch, a `tf.RaggedTensor` of shape `(batch, None)` holding the
        tokens of each string; for a scalar, a 1-D string tensor.

    Example:

    >>> split_words(["¿Dónde está Tom?"]).to_list()
    [[b'\\xc2\\xbf', b'D\\xc3\\xb3nde', b'est\\xc3\\xa1', b'Tom', b'?']]
    """
    text = tf.convert_to_tensor(text, dtype=tf.string)
    # Every character Python's str.isspace() accepts separates words (tf.strings.split
    # knows only ASCII whitespace): no token holds a space, a line or paragraph
    # separator or a no-break space, so `check_tokens` accepts every vocabulary.
    text = tf.strings.regex_replace(text, _SPACES, " ")
    for pattern, _, placeholder in _PROTECTED:
        # Twice, because matches cannot overlap: "1.2.3" needs a second pass.
        for _ in range(2):
            text = tf.strings.regex_replace(text, pattern, r"\1" + placeholder + r"\2")
    text = tf.strings.regex_replace(text, "(" + PUNCTUATION + ")", r" \1 ")
    for _, mark, placeholder in _PROTECTED:
        text = tf.strings.regex_replace(text, placeholder, mark)
    return tf.strings.split(text)


def count_words(text) -> tf.Tensor:
    """Number of tokens `split_words` finds in each string of a 1-D batch (int64)."""
    return split_words(text).row_lengths()


def join_words(words: tf.RaggedTensor) -> tf.Tensor:
    """Joins tokens into text with Spanish/English spacing around punctuation.

    Args:
        words: `tf.RaggedTensor` of strings, shape `(batch, None)`.

    Returns:
        A 1-D string tensor, one sentence per row.
    """
    text = tf.strings.reduce_join(words, axis=-1, separator=" ")
    # The same rules as `tokens.join_tokens` (RE2 here, Python's `re` there).
    for pattern, replacement in JOIN_RULES:
        text = tf.strings.regex_replace(text, pattern, replacement)
    return text


class Vocabulary(tf.Module):
    """A word <-> id mapping that runs in TensorFlow graphs (tf.data, SavedModel).

    Ids are line numbers of the vocabulary file: 0 `[PAD]`, 1 `[UNK]`,
    2 `[START]`, 3 `[END]`, then the words from most to least frequent. Words
    not in the vocabulary map to `[UNK]`; `split_words` never produces the
    reserved tokens (it splits off their brackets), so user text cannot
    inject them.

    Args:
        tokens: all tokens in id order, starting with `RESERVED_TOKENS`.
        name: module name.
    """

    def __init__(self, tokens: Sequence[str], name: str | None = None):
        super().__init__(name=name)
        self.tokens = check_tokens(tokens)
        self._id_to_token = tf.constant(self.tokens, dtype=tf.string)
        self._table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                self._id_to_token, tf.range(len(self.tokens), dtype=tf.int64)
            ),
            default_value=UNK_ID,
        )

    @property
    def size(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def lookup(self, words):
        """Ids (int32) of a tensor or `RaggedTensor` of words; unknown words -> `UNK_ID`."""
        if isinstance(words, tf.RaggedTensor):
            return tf.ragged.map_flat_values(self.lookup, words)
        return tf.cast(self._table.lookup(words), tf.int32)

    def encode(self, text) -> tf.RaggedTensor:
        """Token ids of each string of a 1-D batch: `RaggedTensor` `(batch, None)`, int32."""
        return self.lookup(split_words(text))

    def count_unknown(self, ids: tf.RaggedTensor) -> tf.Tensor:
        """`[UNK]` ids per row of `ids` (int32): words the vocabulary lacks."""
        return tf.reduce_sum(tf.cast(ids == UNK_ID, tf.int32), axis=1)

    def decode(self, ids) -> tf.Tensor:
        """Text of each row of token ids, shape `(batch, length)`.

        A row ends at its first `[END]`; `[PAD]` and `[START]` are dropped,
        `[UNK]` is written as `[UNK]`.
        """
        if isinstance(ids, tf.RaggedTensor):  # (convert_to_tensor refuses ragged input)
            ids = ids.to_tensor(default_value=PAD_ID)
        ids = tf.cast(tf.convert_to_tensor(ids), tf.int32)
        after_end = tf.cumsum(tf.cast(ids == END_ID, tf.int32), axis=-1) > 0
        keep = ~after_end & (ids != PAD_ID) & (ids != START_ID)
        words = tf.ragged.boolean_mask(tf.gather(self._id_to_token, ids), keep)
        return join_words(words)

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the tokens, one per line in id order (UTF-8), atomically."""
        return save_tokens(path, self.tokens)

    @classmethod
    def load(cls, path: str | os.PathLike, name: str | None = None) -> Vocabulary:
        """Reads a file written by `save`.

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: the file is not a valid vocabulary (the message names it).
        """
        return cls(load_tokens(path), name=name)

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        max_size: int,
        min_count: int = 1,
        name: str | None = None,
        batch_size: int = 8192,
    ) -> Vocabulary:
        """Builds a vocabulary of the most frequent words of `texts`.

        Words are counted after `split_words`; ties in frequency are broken by
        the word itself, so the result does not depend on the order of `texts`.

        Args:
            texts: the training sentences.
            max_size: vocabulary size including the 4 reserved tokens.
            min_count: leave out words seen fewer times.
        """
        if max_size <= len(RESERVED_TOKENS):
            raise ValueError(
                f"max_size must exceed the {len(RESERVED_TOKENS)} reserved tokens. "
                f"Received: max_size={max_size}"
            )
        counts: collections.Counter[bytes] = collections.Counter()
        texts = list(texts)
        for start in range(0, len(texts), batch_size):
            words = split_words(texts[start : start + batch_size]).flat_values.numpy()
            counts.update(words.tolist())
        ranked = sorted(
            (w.decode("utf-8") for w, n in counts.items() if n >= min_count),
            key=lambda w: (-counts[w.encode("utf-8")], w),
        )
        ranked = [w for w in ranked if w not in RESERVED_TOKENS]
        return cls(list(RESERVED_TOKENS) + ranked[: max_size - len(RESERVED_TOKENS)], name=name)


def pad_batch(ids: tf.RaggedTensor, max_length: int) -> tf.Tensor:
    """Dense `(batch, width)` ids: rows truncated to `max_length`, padded with `PAD_ID`.

    `width` is the longest (truncated) row of the batch, at least 1, so a
    batch of short sentences is not padded to `max_length` (the encoder's
    cost grows with the width) and a batch of empty sentences still has one
    column.
    """
    ids = ids[:, :max_length]
    width = tf.maximum(tf.reduce_max(ids.row_lengths()), 1)
    return ids.to_tensor(default_value=PAD_ID, shape=tf.stack([ids.nrows(), width]))


def build_vocabularies(train_pairs, config):
    """English and Spanish vocabularies of the training pairs (`Pair`s), as the config says.

    `config` (a `TranslatorConfig`) picks the tokenizer: word `Vocabulary`s
    capped by `source_vocab_size` / `target_vocab_size` and `min_count`, or
    `subword.SubwordVocabulary`s of that many pieces; with `shared_vocab`, one
    subword vocabulary learned from both languages, returned twice (the same
    object).
    """
    english = [p.english for p in train_pairs]
    spanish = [p.spanish for p in train_pairs]
    if config.tokenizer == "subword":
        from apps.translator.subword import SubwordVocabulary

        if config.shared_vocab:
            shared = SubwordVocabulary.from_texts(
                english + spanish, config.source_vocab_size, "shared_vocab"
            )
            return shared, shared
        return (
            SubwordVocabulary.from_texts(english, config.source_vocab_size, "source_vocab"),
            SubwordVocabulary.from_texts(spanish, config.target_vocab_size, "target_vocab"),
        )
    source_vocab = Vocabulary.from_texts(
        english, config.source_vocab_size, config.min_count, "source_vocab"
    )
    target_vocab = Vocabulary.from_texts(
        spanish, config.target_vocab_size, config.min_count, "target_vocab"
    )
    return source_vocab, target_vocab


def save_vocabularies(directory, source_vocab, target_vocab) -> None:
    """Writes both vocabularies into `directory`, each file atomically.

    Every tokenizer writes `vocab_source.txt` / `vocab_target.txt` (one token
    per line, line i = id i: what NumPy-only processes read); a subword
    vocabulary also writes its SentencePiece model (`subword_*.model`), the
    file the graph tokenises with.
    """
    from apps.translator.config import (
        SOURCE_SUBWORD_FILE,
        SOURCE_VOCAB_FILE,
        TARGET_SUBWORD_FILE,
        TARGET_VOCAB_FILE,
    )

    directory = Path(directory)
    for vocab, tokens_file, model_file in (
        (source_vocab, SOURCE_VOCAB_FILE, SOURCE_SUBWORD_FILE),
        (target_vocab, TARGET_VOCAB_FILE, TARGET_SUBWORD_FILE),
    ):
        save_tokens(directory / tokens_file, vocab.tokens)
        if not isinstance(vocab, Vocabulary):
            vocab.save(directory / model_file)


def load_vocabularies(directory, config):
    """The (source, target) vocabularies that `save_vocabularies` wrote for `config`.

    A shared subword vocabulary is loaded once and returned twice.

    Raises:
        MissingFileError: a file is missing.
        DataError: a file is damaged, or a subword model does not match its
            token list.
    """
    from apps.common.errors import DataError
    from apps.translator.config import (
        SOURCE_SUBWORD_FILE,
        SOURCE_VOCAB_FILE,
        TARGET_SUBWORD_FILE,
        TARGET_VOCAB_FILE,
    )

    directory = Path(directory)
    if config.tokenizer != "subword":
        return (
            Vocabulary.load(directory / SOURCE_VOCAB_FILE, name="source_vocab"),
            Vocabulary.load(directory / TARGET_VOCAB_FILE, name="target_vocab"),
        )
    from apps.translator.subword import SubwordVocabulary

    vocabs = []
    for tokens_file, model_file, side in (
        (SOURCE_VOCAB_FILE, SOURCE_SUBWORD_FILE, "source"),
        (TARGET_VOCAB_FILE, TARGET_SUBWORD_FILE, "target"),
    ):
        if config.shared_vocab and vocabs:
            vocab = vocabs[0]
        else:
            name = "shared_vocab" if config.shared_vocab else f"{side}_vocab"
            vocab = SubwordVocabulary.load(directory / model_file, name=name)
        if load_tokens(directory / tokens_file) != vocab.tokens:
            raise DataError(
                f"{directory / tokens_file} does not list the pieces of {directory / model_file}: "
                "the files come from different runs; copy the run directory again or retrain."
            )
        vocabs.append(vocab)
    return vocabs[0], vocabs[1]

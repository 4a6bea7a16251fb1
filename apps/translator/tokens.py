"""Reserved tokens, vocabulary files and detokenisation in plain Python (no TensorFlow).

Everything a training or decoding process needs to know about tokens lives
here, so that training from prepared arrays (`prepared.py`, `batches.py`) runs where
TensorFlow cannot be imported, e.g. a GPU machine with only JAX. Splitting
text into words needs `tf.strings` and stays in `vectorization.py`, which
imports its constants from here.

`ids_to_text` is the Python twin of `Vocabulary.decode` (the TensorFlow
version that runs inside the exported graph): same end-of-sentence rule, same
rejoining of punctuation; a test checks that both give the same strings.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Iterable, Sequence

from apps.common.errors import DataError
from apps.common.io import atomic_write_text
from apps.common.textio import join_lines, read_lines

PAD, UNK, START, END = "[PAD]", "[UNK]", "[START]", "[END]"
RESERVED_TOKENS = (PAD, UNK, START, END)
PAD_ID, UNK_ID, START_ID, END_ID = 0, 1, 2, 3

# Character classes shared by RE2 (`tf.strings.regex_replace`) and Python's `re`.
PUNCTUATION = r'[¿¡?!.,;:"«»()\[\]{}…]'
CLOSING = r"[?!.,;:)\]}»…]"
OPENING = r"[¿¡(\[{«]"
# (pattern, replacement) pairs applied in order by `join_words` / `join_tokens`.
JOIN_RULES = (
    (" (" + CLOSING + ")", r"\1"),  # No space before closing marks.
    ("(" + OPENING + ") ", r"\1"),  # None after opening marks.
    ('" ([^"]*?) "', r'"\1"'),  # Straight quotes hug the words they enclose (pairs, left to right).
)


def check_tokens(tokens: Sequence[str]) -> tuple[str, ...]:
    """Checks a vocabulary's tokens (id order) and returns them as a tuple.

    Raises:
        ValueError: the tokens do not start with `RESERVED_TOKENS`, one is empty
            or holds whitespace, or one appears twice.
    """
    tokens = tuple(str(t) for t in tokens)
    if tokens[: len(RESERVED_TOKENS)] != RESERVED_TOKENS:
        raise ValueError(
            f"A vocabulary must start with the reserved tokens {list(RESERVED_TOKENS)}. "
            f"Received: tokens[:4]={list(tokens[:4])}"
        )
    bad = [t for t in tokens if not t or t != t.strip() or any(c.isspace() for c in t)]
    if bad:
        raise ValueError(
            f"Vocabulary tokens must be non-empty words without spaces. Received: {bad[:5]}"
        )
    duplicates = [t for t, n in collections.Counter(tokens).items() if n > 1]
    if duplicates:
        raise ValueError(f"Vocabulary tokens must be unique. Received duplicates: {duplicates[:5]}")
    return tokens


def load_tokens(path: str | os.PathLike) -> tuple[str, ...]:
    """Reads and checks a vocabulary file (one token per line, line i = id i).

    Lines end at `\\n` or `\\r\\n` only (`textio.split_lines`): no other
    character can shift the ids of the tokens after it.

    Raises:
        MissingFileError: the file does not exist.
        DataError: the file is not UTF-8 or not a valid vocabulary (empty,
            reserved tokens missing, a duplicate or blank line); the message
            names it and says what to do.
    """
    lines = read_lines(path, "vocabulary file")
    try:
        return check_tokens(lines)
    except ValueError as e:
        raise DataError(
            f"vocabulary file {path} is invalid: {e}. It must be the file that training "
            "wrote (one token per line, line i = id i): copy the run directory again or retrain."
        ) from e


def save_tokens(path: str | os.PathLike, tokens: Sequence[str]):
    """Writes a vocabulary file (one token per line, line i = id i, UTF-8), atomically.

    The one writer of the files `load_tokens` reads; returns the path.
    """
    return atomic_write_text(path, join_lines(check_tokens(tokens)))


def join_tokens(words: Iterable[str]) -> str:
    """Joins tokens into text with Spanish/English punctuation spacing (see `JOIN_RULES`)."""
    text = " ".join(words)
    for pattern, replacement in JOIN_RULES:
        text = re.sub(pattern, replacement, text)
    return text


def ids_to_text(ids: Iterable[int], tokens: Sequence[str]) -> str:
    """The text of one row of output ids, as `Vocabulary.decode` writes it.

    The row ends at its first `[END]`; `[PAD]` and `[START]` are dropped and
    `[UNK]` is written as `[UNK]`.
    """
    words = []
    for i in ids:
        i = int(i)
        if i == END_ID:
            break
        if i not in (PAD_ID, START_ID):
            words.append(tokens[i])
    return join_tokens(words)

"""Reserved tokens, vocabulary files and detokenisation in plain Python (no TensorFlow).

Everything a training or decoding process needs to know about tokens lives
here, so that training from prepared arrays (`prepared.py`, `batches.py`) runs where
TensorFlow cannot be imported, e.g. a GPU machine with only JAX. Splitting
text into words needs `tf.strings` and stays in `vectorization.py`, which
imports its constants from here.

`ids_to_text` is the Python twin of `Vocabulary.decode` and
`SubwordVocabulary.decode` (the TensorFlow versions that run inside the
exported graph): same end-of-sentence rule, same rejoining of punctuation or
of SentencePiece pieces; tests check that both give the same strings.
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
# SentencePiece writes a space as this character (U+2581) inside pieces, and a
# byte it falls back to as a piece "<0xAB>".
SPACE_MARK = "\u2581"
_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")

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


def byte_piece_value(piece: str) -> int | None:
    """The byte a SentencePiece byte-fallback piece (`<0xAB>`) stands for, else None."""
    match = _BYTE_PIECE.fullmatch(piece)
    return None if match is None else int(match.group(1), 16)


def _decode_bytes(data: bytes) -> str:
    """UTF-8 with one U+FFFD per byte that starts no valid character (as SentencePiece)."""
    out, i = [], 0
    while i < len(data):
        for n in range(1, 5):
            try:
                out.append(data[i : i + n].decode("utf-8"))
            except UnicodeDecodeError:
                continue
            i += n
            break
        else:
            out.append("\ufffd")
            i += 1
    return "".join(out)


def join_pieces(pieces: Iterable[str]) -> str:
    """Joins SentencePiece pieces into text, as SentencePiece decodes them.

    `▁` becomes a space, except that a piece drops one leading `▁` while the
    text is still empty (SentencePiece's own rule); a run of byte pieces is
    decoded as UTF-8, each byte that starts no valid character as U+FFFD.
    """
    units: list[tuple[bool, str]] = []  # (is a byte run, text)
    pending = bytearray()
    for piece in pieces:
        value = byte_piece_value(piece)
        if value is not None:
            pending.append(value)
            continue
        if pending:
            units.append((True, _decode_bytes(bytes(pending))))
            pending.clear()
        units.append((False, piece))
    if pending:
        units.append((True, _decode_bytes(bytes(pending))))
    text = ""
    for is_bytes, unit in units:
        if not text and not is_bytes:
            unit = unit.removeprefix(SPACE_MARK)
        text += unit if is_bytes else unit.replace(SPACE_MARK, " ")
    return text


def group_pieces(pieces: Sequence[str]) -> list[list[int]]:
    """Indices of the pieces that make up each space-separated word, in order.

    A word starts at a piece that begins with `▁` (and at the first piece);
    byte pieces and pieces without `▁` continue the current word. Used to
    label attention plots with words: `join_pieces` of a group is its word.
    """
    groups: list[list[int]] = []
    for i, piece in enumerate(pieces):
        if not groups or piece.startswith(SPACE_MARK):
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def ids_to_text(ids: Iterable[int], tokens: Sequence[str], tokenizer: str = "word") -> str:
    """The text of one row of output ids, as the graph's `decode` writes it.

    The row ends at its first `[END]`; `[PAD]` and `[START]` are dropped. For
    `tokenizer="word"` the tokens are joined with `join_tokens` (`[UNK]` is
    written as `[UNK]`); for `"subword"` the pieces with `join_pieces`.
    """
    kept = []
    for i in ids:
        i = int(i)
        if i == END_ID:
            break
        if i not in (PAD_ID, START_ID):
            kept.append(tokens[i])
    return join_pieces(kept) if tokenizer == "subword" else join_tokens(kept)

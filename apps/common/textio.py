"""Text input as lines: files and pipes read alike, UTF-8 errors that name the line.

A line ends at `\\n` (a `\\r` just before it is dropped, so Windows line ends
read the same) and nowhere else. `str.splitlines()` also breaks at `\\v \\f
\\x1c-\\x1e \\x85 \\u2028 \\u2029`: a sentence holding one of them would become two,
and every translation after it would land on the wrong line. Whatever reads
or writes "one item per line" (sentences to translate, `English<TAB>Spanish`
pairs, vocabulary files) goes through `split_lines` / `join_lines`.

Standard library only (no TensorFlow, no NumPy).
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterable
from pathlib import Path

from apps.common.errors import DataError, MissingFileError


def split_lines(text: str) -> list[str]:
    """Splits `text` into lines at `\\n` and `\\r\\n` only.

    A final line break ends the last line rather than starting an empty one,
    so `split_lines("a\\n\\nb\\n") == ["a", "", "b"]`, as `str.splitlines` has it;
    but `split_lines("a\\fb") == ["a\\fb"]` (one line), where `splitlines` gives two.
    """
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def join_lines(lines: Iterable[str]) -> str:
    """`lines` as text, each followed by `\\n`; `split_lines` gives the same lines back.

    A `\\r` or `\\n` inside a line becomes a space: one input line is always one
    output line.
    """
    return "".join(str(line).replace("\r", " ").replace("\n", " ") + "\n" for line in lines)


def decode_utf8(raw: bytes, name: str) -> str:
    """Decodes UTF-8 bytes (a leading byte-order mark is dropped).

    Args:
        raw: the bytes of a file or of standard input.
        name: how messages name the input, e.g. `"input file in.txt"`.

    Raises:
        DataError: the bytes are not UTF-8; the message gives the 1-based
            line and the byte's column in it.
    """
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{name}, line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
            f"{column}); the input must be UTF-8: convert it first, e.g. with "
            f"iconv -f latin1 -t utf-8."
        ) from None


def read_input_bytes(path: str | os.PathLike, what: str) -> bytes:
    """The bytes of a file the user named; pipes (`/dev/fd/N`, `<(...)`) work too.

    Existence and readability are what count, not `Path.is_file()` (False for a pipe).

    Args:
        path: the file.
        what: how messages name it, e.g. `"input file"`.

    Raises:
        MissingFileError: `path` does not exist (`"<what> not found: <path>"`).
        DataError: `path` is a folder, or cannot be read (permissions).
    """
    path = Path(path).expanduser()
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        raise MissingFileError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{what} {path} is a folder, not a file; pass the file itself.") from None
    except PermissionError:
        raise DataError(
            f"{what} {path} cannot be read (permission denied); check its permissions."
        ) from None


def read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """`split_lines` of a UTF-8 file (or pipe); errors as in `read_input_bytes` and `decode_utf8`."""
    raw = read_input_bytes(path, what)
    return split_lines(decode_utf8(raw, f"{what} {Path(path).expanduser()}"))

"""Text input as lines: `\\n` / `\\r\\n` only, UTF-8 errors naming the line, pipes read like files."""

import os
import threading

import pytest

from apps.common.errors import DataError, MissingFileError
from apps.common.textio import decode_utf8, join_lines, read_input_bytes, read_lines, split_lines

# Characters that str.splitlines() treats as line breaks but a text file does not.
NOT_LINE_BREAKS = ["\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r"]


def test_split_lines_breaks_at_newline_and_crlf_only():
    assert split_lines("") == []
    assert split_lines("\n") == [""]
    assert split_lines("a\n\nb") == ["a", "", "b"]
    assert split_lines("a\r\n\r\nb\r\n") == ["a", "", "b"]
    for char in NOT_LINE_BREAKS:
        text = f"Where is Tom?\nI am here{char}now\nGood morning\n"
        assert len(text.splitlines()) == 4  # What went wrong before.
        assert split_lines(text) == ["Where is Tom?", f"I am here{char}now", "Good morning"]


def test_join_lines_writes_one_line_per_item_and_round_trips():
    lines = ["¿Dónde está Tom?", "", "a\fb", "c\u2028d"]
    assert join_lines(lines) == "¿Dónde está Tom?\n\na\fb\nc\u2028d\n"
    assert split_lines(join_lines(lines)) == lines
    assert join_lines(["two\nlines", "cr\rhere"]) == "two lines\ncr here\n"
    assert join_lines([]) == ""


def test_decode_utf8_names_the_line_and_column():
    assert decode_utf8("\ufeffHola\n".encode(), "x") == "Hola\n"  # BOM dropped
    raw = b"Where is Tom?\r\nI am \xff here\n"
    with pytest.raises(
        DataError, match=r"^standard input, line 2: not UTF-8 text \(byte 0xff at column 6\)"
    ):
        decode_utf8(raw, "standard input")
    with pytest.raises(DataError, match="line 1: not UTF-8 text"):
        decode_utf8(b"\xef\xbb\xbfcaf\xe9", "in.txt")  # Latin-1 after a BOM


def test_read_input_bytes_reports_missing_folders_and_reads_pipes(tmp_path):
    with pytest.raises(MissingFileError, match="input file not found: .*nope.txt"):
        read_input_bytes(tmp_path / "nope.txt", "input file")
    with pytest.raises(FileNotFoundError):  # Old callers catch FileNotFoundError.
        read_input_bytes(tmp_path / "nope.txt", "input file")
    with pytest.raises(DataError, match="is a folder, not a file"):
        read_input_bytes(tmp_path, "input file")
    # A pipe, as the shell's <(...) passes it: is_file() is False, yet it reads.
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_end, b"a\nb\n"), os.close(write_end)))
    writer.start()
    try:
        pipe = f"/dev/fd/{read_end}"
        assert read_lines(pipe, "pairs file") == ["a", "b"]
    finally:
        writer.join(5)
        os.close(read_end)

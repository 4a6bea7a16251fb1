"""English-Spanish sentence pairs: reading, a stable split, references and token ids.

The corpus is the Tatoeba/Anki `spa-eng` archive (one `English<TAB>Spanish`
pair per line, an English sentence often on several lines with different
translations). `load_pairs` reads the zip or a `spa.txt`-style file (online:
the official download, checksum verified); `split_pairs` assigns every pair to
`train`, `val` or `test` by a SHA-256 hash of its English sentence, so the
split is the same on every machine and in every version, and all translations
of one sentence land in the same split (no test sentence is seen in training).
`encode_pairs` turns pairs into token ids for teacher forcing: the decoder
input is the target prefixed with `[START]` and the labels are the target
followed by `[END]` (shift by one); `prepare.py` writes them as arrays and
`batches.py` batches them.

Reading, splitting and grouping are plain Python; only the tokenising
step (`encode_pairs`) imports TensorFlow, so this module
also serves a process without it (training from prepared arrays).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from apps.common.data import fetch_file
from apps.common.errors import DataError, MissingFileError
from apps.common.textio import decode_utf8, read_input_bytes, split_lines
from apps.translator.tokens import END_ID, START_ID

if TYPE_CHECKING:
    import tensorflow as tf

    from apps.translator.vectorization import Vocabulary

SPA_ENG_URL = "http://storage.googleapis.com/download.tensorflow.org/data/spa-eng.zip"
SPA_ENG_SHA256 = "f80e581ae291aa34dd3aba7bd98b5e9505234da4318e2f3295df70a1520c7f61"
SPLITS = ("train", "val", "test")
# Hash buckets out of 1000: [0, 900) train, [900, 950) val, [950, 1000) test.
_SPLIT_BOUNDS = (900, 950)
# A zip archive starts with a local file header (or, empty, with its end record).
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# Training needs at least this many validation pairs (and `batch_size` training pairs).
MIN_VAL_PAIRS = 1


class Pair(NamedTuple):
    english: str
    spanish: str


class Splits(NamedTuple):
    train: list[Pair]
    val: list[Pair]
    test: list[Pair]


def resolve_data_path(data: str | os.PathLike | None = None) -> Path:
    """The local corpus file: `data` if given (must exist), else the verified download.

    `data` may be any readable file, a pipe (`--data <(...)`) included; it is
    read by `read_pairs`, which reports a folder or an unreadable file.
    """
    if data is None:
        return fetch_file(SPA_ENG_URL, SPA_ENG_SHA256, "spa-eng.zip")
    path = Path(data).expanduser()
    if not path.exists():
        raise MissingFileError(f"data file not found: {path}")
    return path


def _read_text(path: Path, what: str) -> tuple[str, str]:
    """Returns (text, name for messages) of a text file or of the pairs file inside a zip."""
    raw = read_input_bytes(path, what)
    if raw.startswith(_ZIP_MAGIC) or path.suffix.lower() == ".zip":
        return _read_zip(raw, path, what)
    name = f"{what} {path}"
    return decode_utf8(raw, name), name


def _read_zip(raw: bytes, path: Path, what: str) -> tuple[str, str]:
    damaged = (
        f"{what} {path} is a truncated or corrupt zip archive"
        if raw.startswith(_ZIP_MAGIC)
        else f"{what} {path} is not a zip archive (it does not start like one)"
    )
    get_copy = (
        f"get a complete copy: download {SPA_ENG_URL} again (or leave --data out to download "
        "it), or pass --data a complete file."
    )
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            candidates = [
                n
                for n in zf.namelist()
                if n.endswith(".txt") and not Path(n).name.startswith(("_", "."))
            ]
            if len(candidates) != 1:
                raise DataError(
                    f"{what} {path}: expected exactly one pairs file (*.txt, e.g. spa-eng/spa.txt) "
                    f"in the zip. Found: {candidates or 'none'}"
                )
            member = zf.read(candidates[0])
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise DataError(f"{damaged} ({e}); {get_copy}") from None
    name = f"{what} {path}:{candidates[0]}"
    return decode_utf8(member, name), name


def parse_pairs(text: str, name: str = "<text>") -> list[Pair]:
    """Parses `English<TAB>Spanish[<TAB>anything]` lines; blank lines are skipped.

    Lines end at `\\n` or `\\r\\n` only (`textio.split_lines`), so the line
    numbers in messages are the ones an editor shows.

    Raises:
        DataError: a line without a tab or with an empty side (file and line
            named), or no pairs at all.
    """
    pairs = []
    for number, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        english, spanish = (fields[0].strip(), fields[1].strip()) if len(fields) > 1 else ("", "")
        if not english or not spanish:
            raise DataError(
                f"{name}, line {number}: expected 'English<TAB>Spanish'. Received: {line[:80]!r}"
            )
        pairs.append(Pair(english, spanish))
    if not pairs:
        raise DataError(f"{name} holds no sentence pairs; expected 'English<TAB>Spanish' lines.")
    return pairs


def read_pairs(path: str | os.PathLike, what: str = "pairs file") -> list[Pair]:
    """Reads all pairs of a local zip (holding one `*.txt`) or tab-separated text file.

    Any readable file will do, a pipe included.

    Args:
        path: the file.
        what: how messages name it (`"pairs file"`, `"data file"`).

    Raises:
        MissingFileError: no such file.
        DataError: a folder, an unreadable file, a truncated or corrupt zip,
            text that is not UTF-8 (the line named) or not pairs.
    """
    return parse_pairs(*_read_text(Path(path).expanduser(), what))


def load_pairs(data: str | os.PathLike | None = None) -> list[Pair]:
    """Reads all pairs from `data` (zip or text file), or from the official download."""
    return read_pairs(resolve_data_path(data), what="data file")


def split_key(english: str) -> str:
    """The grouping key of a sentence: case-folded with whitespace collapsed.

    Grouping on it (rather than the exact string) also keeps near-duplicates
    such as `"Go."` / `"go."` together, so neither leaks into another split.
    """
    return " ".join(english.split()).casefold()


def split_of(english: str) -> str:
    """The split (`train`, `val` or `test`) of an English sentence, by a stable hash.

    SHA-256 of the UTF-8 grouping key, never Python's `hash()` (salted per process).
    """
    digest = hashlib.sha256(split_key(english).encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 1000
    if bucket < _SPLIT_BOUNDS[0]:
        return "train"
    return "val" if bucket < _SPLIT_BOUNDS[1] else "test"


def split_pairs(pairs: Iterable[Pair]) -> Splits:
    """Splits pairs about 90/5/5, grouped by English sentence; order is kept within splits."""
    out = {name: [] for name in SPLITS}
    for pair in pairs:
        out[split_of(pair.english)].append(pair)
    return Splits(**out)


def load_splits(data: str | os.PathLike | None = None) -> Splits:
    """`split_pairs(load_pairs(data))`."""
    return split_pairs(load_pairs(data))


def check_split_sizes(
    num_train: int,
    num_val: int,
    num_test: int,
    batch_size: int,
    source: str,
    max_train_pairs: int | None = None,
) -> None:
    """Raises unless the splits can train a model; warns when training can go on but not all is well.

    The minimum: `batch_size` training pairs (one full batch per epoch; fewer
    cannot train a useful translator) and one validation pair (its loss picks
    the model that is kept). An empty test split only warns (`UserWarning`):
    training goes on, but `translator evaluate --split test` has nothing to score.

    Args:
        num_train, num_val, num_test: pairs per split (training pairs after
            `max_train_pairs`).
        batch_size: the config's batch size.
        source: how messages name the corpus, e.g. `"data file spa.txt"`.
        max_train_pairs: the config's cap, named in the message when it is the cause.

    Raises:
        DataError: too few training or validation pairs; the message gives the
            counts and the minimum.
    """
    counts = f"{num_train} training, {num_val} validation and {num_test} test pairs"
    if num_train < batch_size or num_val < MIN_VAL_PAIRS:
        capped = max_train_pairs is not None and max_train_pairs < batch_size
        raise DataError(
            f"{source} gives {counts}; training needs at least {batch_size} training pairs "
            f"(one batch, batch_size={batch_size}) and {MIN_VAL_PAIRS} validation pair. "
            + (
                f"Raise --max-train-pairs (now {max_train_pairs}) to {batch_size} or more."
                if capped
                else "Pairs go to train/val/test about 90/5/5 by a hash of their English "
                "sentence: pass a larger corpus (a few hundred 'English<TAB>Spanish' lines "
                "or more)."
            )
        )
    if num_test == 0:
        warnings.warn(
            f"{source} gives {counts}: training goes on, but 'translator evaluate "
            "--split test' will have nothing to score.",
            UserWarning,
            stacklevel=2,
        )


def group_references(pairs: Iterable[Pair]) -> list[tuple[str, list[str]]]:
    """Groups pairs by exact English sentence: `[(english, [spanish, ...]), ...]`.

    Sources keep the order of their first appearance, references their file order.
    """
    grouped: dict[str, list[str]] = {}
    for english, spanish in pairs:
        grouped.setdefault(english, []).append(spanish)
    return list(grouped.items())


def encode_pairs(
    pairs: Sequence[Pair],
    source_vocab: Vocabulary,
    target_vocab: Vocabulary,
    sequence_length: int,
) -> tuple[tf.RaggedTensor, tf.RaggedTensor, tf.RaggedTensor]:
    """Token ids of the pairs that fit `sequence_length`: (source, decoder input, labels).

    The decoder input is `[START] + target` and the labels `target + [END]`;
    pairs whose source has more than `sequence_length` tokens, or whose target
    with its end token has more, are left out (a truncated target would teach
    the model to stop mid-sentence).
    """
    import tensorflow as tf

    if not pairs:
        raise ValueError("No sentence pairs to encode.")
    english = tf.constant([p.english for p in pairs])
    spanish = tf.constant([p.spanish for p in pairs])
    source = source_vocab.encode(english)
    target = target_vocab.encode(spanish)
    keep = (source.row_lengths() <= sequence_length) & (target.row_lengths() + 1 <= sequence_length)
    keep &= source.row_lengths() > 0
    index = tf.where(keep)[:, 0]
    source, target = tf.gather(source, index), tf.gather(target, index)
    n = tf.shape(index)[0]
    decoder_input = tf.concat([tf.fill([n, 1], START_ID), target], axis=1)
    labels = tf.concat([target, tf.fill([n, 1], END_ID)], axis=1)
    return source, decoder_input, labels

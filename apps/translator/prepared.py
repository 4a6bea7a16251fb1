"""Prepared data: the tokenised splits as integer arrays, to train without TensorFlow.

Tokenising needs TensorFlow (`tf.strings`, the same ops the exported model
runs); training does not. `translator prepare` tokenises once, on a machine
with TensorFlow, and writes a folder that `translator train --prepared DIR`
reads with NumPy alone, under any Keras backend, e.g. JAX on a GPU machine
where `import tensorflow` fails:

    manifest.json          format version, the config it was prepared with, vocabulary
                           sizes, sequence length, counts, the corpus's and every file's sha256
    vocab_source.txt       the vocabularies (the very files a run directory holds)
    vocab_target.txt
    train.npz              source_tokens, decoder_tokens, labels: int32 (pairs, sequence_length),
    val.npz                0-padded; decoder_tokens = [START] + target, labels = target + [END]
    test.npz               (pairs that do not fit sequence_length are left out, as in training);
                           val/test also hold `sources` (one row per distinct English
                           sentence, truncated to sequence_length, as `translate` reads it)
    val_references.json    [[english, [spanish, ...]], ...], one entry per row of `sources`
    test_references.json

Every file is written atomically and the manifest last (an older manifest is
removed first), so a folder with a manifest is complete; `load_prepared`
checks each file against the sha256 the manifest records, so a truncated copy
fails with a clear message instead of training on garbage.

`ArrayBatches` batches the arrays like `data.make_dataset` (shuffled, each
epoch's order a pure function of the seed and the epoch, so that a resumed
run sees the batches of an uninterrupted one; grouped by length and cut to
the bucket width), and fills each short batch up to `batch_size` with
all-`[PAD]` rows, which the masked loss and accuracy ignore: every batch then
has the same number of rows, so JAX compiles one program per bucket width and
`keras.distribution.DataParallel` can split every batch evenly. Training
from text (`train.py`) batches the encoded pairs with it too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from apps.common.batches import EpochBatches
from apps.common.config import config_from_dict, config_to_dict
from apps.common.errors import DataError, MissingFileError, UserError
from apps.common.io import atomic_write_bytes, atomic_write_json
from apps.common.rundir import check_run_dir_path
from apps.translator.config import (
    DATA_FIELDS,
    SOURCE_VOCAB_FILE,
    TARGET_VOCAB_FILE,
    TranslatorConfig,
)
from apps.translator.data import SPLITS, bucket_boundaries
from apps.translator.model import DECODER_INPUT, SOURCE_INPUT
from apps.translator.tokens import PAD_ID, ids_to_text, load_tokens

FORMAT = "translator-prepared"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
ARRAY_KEYS = ("source_tokens", "decoder_tokens", "labels")
EVAL_SPLITS = ("val", "test")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _dense(ragged, width: int) -> np.ndarray:
    """A `tf.RaggedTensor` of ids as an int32 `(rows, width)` array, truncated and 0-padded."""
    return ragged[:, :width].to_tensor(default_value=PAD_ID, shape=[None, width]).numpy()


def split_from_encoded(encoded, sequence_length: int) -> PreparedSplit:
    """`data.encode_pairs`'s (source, decoder input, labels) as a `PreparedSplit`.

    The arrays `prepare` writes for the same pairs, so text and prepared
    training batch them alike (`ArrayBatches`).
    """
    return PreparedSplit(*(_dense(x, sequence_length) for x in encoded))


# --------------------------------------------------------------------------- writing (TensorFlow)


def prepare(
    config: TranslatorConfig,
    out_dir: str | os.PathLike,
    data: str | os.PathLike | None = None,
    preset: str | None = None,
) -> dict:
    """Tokenises the corpus into a prepared folder (see the module docs); returns the manifest.

    Args:
        config: the run's config; its data fields (`DATA_FIELDS`) decide the
            vocabularies, the sequence length and the training pairs used.
        out_dir: the folder to write (created; files of an earlier preparation
            there are replaced).
        data: the corpus (zip or `spa.txt`-style file); `None` downloads the
            official archive (sha256 checked).
        preset: the preset name, recorded in the manifest.
    """
    import tensorflow as tf  # noqa: F401  (tokenising needs it; fail here, clearly)

    from apps.translator.data import (
        check_split_sizes,
        encode_pairs,
        group_references,
        read_pairs,
        resolve_data_path,
        split_pairs,
    )
    from apps.translator.vectorization import build_vocabularies

    out_dir = check_run_dir_path(out_dir, "--out")
    data_path = resolve_data_path(data)
    splits = split_pairs(read_pairs(data_path, what="data file"))
    train_pairs = splits.train[: config.max_train_pairs] if config.max_train_pairs else splits.train
    check_split_sizes(
        len(train_pairs),
        len(splits.val),
        len(splits.test),
        config.batch_size,
        f"data file {data_path}",
        config.max_train_pairs,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # Incomplete until the new one is written.

    source_vocab, target_vocab = build_vocabularies(train_pairs, config)
    source_vocab.save(out_dir / SOURCE_VOCAB_FILE)
    target_vocab.save(out_dir / TARGET_VOCAB_FILE)
    length = config.sequence_length
    counts = {}
    for name, pairs in zip(SPLITS, (train_pairs, splits.val, splits.test), strict=True):
        arrays = {key: np.zeros((0, length), "int32") for key in ARRAY_KEYS}
        if pairs:
            encoded = encode_pairs(pairs, source_vocab, target_vocab, length)
            arrays = {key: _dense(x, length) for key, x in zip(ARRAY_KEYS, encoded, strict=True)}
        counts[name] = {
            "pairs": len(pairs),
            "kept_pairs": int(arrays["labels"].shape[0]),
            "label_tokens": int(np.count_nonzero(arrays["labels"])),
        }
        if name in EVAL_SPLITS:
            grouped = group_references(pairs)
            english = [source for source, _ in grouped]
            arrays["sources"] = (
                _dense(source_vocab.encode(english), length)
                if english
                else np.zeros((0, length), "int32")
            )
            atomic_write_json(out_dir / f"{name}_references.json", grouped, indent=None)
            counts[name]["sources"] = len(grouped)
        atomic_write_bytes(out_dir / f"{name}.npz", _npz_bytes(arrays))

    files = sorted(
        [SOURCE_VOCAB_FILE, TARGET_VOCAB_FILE]
        + [f"{name}.npz" for name in SPLITS]
        + [f"{name}_references.json" for name in EVAL_SPLITS]
    )
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "preset": preset,
        "config": config_to_dict(config),
        "sequence_length": length,
        "vocab_sizes": {"source": source_vocab.size, "target": target_vocab.size},
        "splits": counts,
        # A pipe (--data <(...)) cannot be read twice: its checksum is not known.
        "data": {
            "path": str(data_path),
            "sha256": _sha256_file(data_path) if data_path.is_file() else None,
        },
        "files": {name: _sha256_file(out_dir / name) for name in files},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest


# --------------------------------------------------------------------------- reading (NumPy)


@dataclasses.dataclass(frozen=True)
class PreparedSplit:
    """One split's arrays (see the module docs); `sources` is None for `train`."""

    source_tokens: np.ndarray
    decoder_tokens: np.ndarray
    labels: np.ndarray
    sources: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A prepared folder, its manifest checked (load it with `load_prepared`).

    Attributes:
        path: the folder.
        manifest: `manifest.json` as a dict.
        config: the config it was prepared with.
        source_tokens, target_tokens: the vocabularies (token per id).
    """

    path: Path
    manifest: dict
    config: TranslatorConfig
    source_tokens: tuple[str, ...]
    target_tokens: tuple[str, ...]

    def _checked(self, name: str) -> Path:
        path = self.path / name
        if not path.is_file():
            raise MissingFileError(
                f"prepared data file not found: {path}; copy the folder again or re-run "
                "translator prepare."
            )
        if _sha256_file(path) != self.manifest["files"].get(name):
            raise DataError(
                f"prepared data file {path} does not match its sha256 in {MANIFEST_FILE} "
                "(truncated or changed copy?); copy the folder again or re-run translator prepare."
            )
        return path

    def split(self, name: str) -> PreparedSplit:
        """The arrays of split `name` (`train`, `val` or `test`)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}. Received: split={name!r}")
        with np.load(self._checked(f"{name}.npz")) as arrays:
            split = PreparedSplit(
                *(arrays[key].astype("int32") for key in ARRAY_KEYS),
                sources=arrays["sources"].astype("int32") if "sources" in arrays else None,
            )
        length = self.config.sequence_length
        shapes = [x.shape for x in (*(getattr(split, k) for k in ARRAY_KEYS),)]
        if len(set(shapes)) != 1 or shapes[0][1:] != (length,):
            raise DataError(
                f"{self.path / (name + '.npz')} holds arrays of shapes {shapes}; expected "
                f"(pairs, {length}) each."
            )
        return split

    def references(self, name: str) -> list[tuple[str, list[str]]]:
        """`[(english, [spanish, ...]), ...]` of `val` or `test`, one per row of `sources`."""
        if name not in EVAL_SPLITS:
            raise ValueError(
                f"references exist for {', '.join(EVAL_SPLITS)}. Received: split={name!r}"
            )
        path = self._checked(f"{name}_references.json")
        return [(english, list(refs)) for english, refs in json.loads(path.read_text("utf-8"))]

    def vocabulary_file(self, side: str) -> Path:
        """The checked path of the `source` or `target` vocabulary file."""
        return self._checked(SOURCE_VOCAB_FILE if side == "source" else TARGET_VOCAB_FILE)


def load_prepared(path: str | os.PathLike) -> Prepared:
    """Opens a folder written by `prepare` and checks its manifest and vocabularies.

    Raises:
        MissingFileError: the folder does not exist.
        DataError: a file, not a folder; no manifest (not a prepared folder, or
            an unfinished one), another format or version, or a file that fails
            its sha256 check.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise MissingFileError(f"prepared data folder not found: {path}")
    if not path.is_dir():
        raise DataError(
            f"--prepared {path} is a file; pass the folder written by "
            "'translator prepare --out DIR'."
        )
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise DataError(
            f"{path} holds no {MANIFEST_FILE}: not a prepared data folder, or its preparation "
            "did not finish. Write one with: translator prepare --data CORPUS --out DIR"
        )
    try:
        manifest = json.loads(manifest_path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(
            f"{manifest_path} is not valid JSON ({e}); re-run translator prepare."
        ) from e
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or manifest.get("format_version") != FORMAT_VERSION
    ):
        found = manifest if isinstance(manifest, dict) else {}
        raise DataError(
            f"{manifest_path} is not a '{FORMAT}' manifest of version {FORMAT_VERSION}. "
            f"Received: format={found.get('format')!r}, "
            f"format_version={found.get('format_version')!r}; re-run translator prepare."
        )
    try:
        config = config_from_dict(TranslatorConfig, manifest["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(
            f"{manifest_path} holds no valid translator config ({e}); re-run translator prepare."
        ) from e
    prepared = Prepared(path, manifest, config, (), ())
    source_tokens = load_tokens(prepared.vocabulary_file("source"))
    target_tokens = load_tokens(prepared.vocabulary_file("target"))
    return dataclasses.replace(prepared, source_tokens=source_tokens, target_tokens=target_tokens)


def check_compatible(config: TranslatorConfig, prepared: Prepared) -> None:
    """Raises ValueError unless `config` tokenises as the prepared data was tokenised."""
    changed = [
        f"{k}={getattr(config, k)!r} (prepared with {getattr(prepared.config, k)!r})"
        for k in DATA_FIELDS
        if getattr(config, k) != getattr(prepared.config, k)
    ]
    if changed:
        preset = prepared.manifest.get("preset")
        raise UserError(
            f"the training config differs from the data prepared in {prepared.path} in "
            f"{', '.join(changed)}. Train with the preparation's settings"
            + (f" (--preset {preset}, or leave --preset out)" if preset else "")
            + ", or prepare again with this preset: translator prepare --preset NAME ..."
        )


# --------------------------------------------------------------------------- batches


class ArrayBatches(EpochBatches):
    """Batches of prepared arrays for `model.fit`, bucketed by length, NumPy only.

    Yields `({"source_tokens": (B, W), "decoder_tokens": (B, W)}, labels (B, W))`,
    int32, where `B = batch_size` always (short batches are filled up with
    all-`[PAD]` rows) and `W` is the width of the batch's length bucket
    (`data.bucket_boundaries`), or `sequence_length` without bucketing. The
    number of batches per epoch equals `data.make_dataset`'s for the same pairs.

    Shuffled, epoch `e`'s batches are a pure function of `seed` and `e`
    (`apps.common.batches.EpochBatches`), so a resumed run sees the batches an
    uninterrupted run sees: keep it on Keras's epoch with
    `apps.common.batches.FollowEpochs`; on TensorFlow, `as_tf_dataset()` gives
    the same batches as a `tf.data.Dataset`.

    Args:
        split: a `PreparedSplit`.
        batch_size: rows per batch.
        sequence_length: the arrays' width.
        shuffle: reshuffle the pairs (and the order of the batches) every epoch.
        seed: seeds the shuffling; epoch `e` uses `default_rng([seed, e])`.
        bucket_by_length: group pairs of similar length; else pad to `sequence_length`.
    """

    def __init__(
        self,
        split: PreparedSplit,
        batch_size: int,
        sequence_length: int,
        shuffle: bool = False,
        seed: int = 0,
        bucket_by_length: bool = True,
    ):
        super().__init__(shuffle=shuffle, seed=seed)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"batch_size must be a positive integer. Received: batch_size={batch_size!r}"
            )
        if len(split) == 0:
            raise ValueError("No prepared pairs to batch (the split is empty).")
        self.arrays = tuple(getattr(split, key) for key in ARRAY_KEYS)
        self.batch_size = batch_size
        lengths = np.maximum(
            np.count_nonzero(split.source_tokens, axis=1), np.count_nonzero(split.labels, axis=1)
        )
        if bucket_by_length:
            bounds = np.asarray(bucket_boundaries(sequence_length))
            self._bucket = np.searchsorted(bounds, lengths, side="right")
            self._widths = np.minimum(bounds - 1, sequence_length)
        else:
            self._bucket = np.zeros_like(lengths)
            self._widths = np.asarray([sequence_length])
        self.label_tokens = int(np.count_nonzero(split.labels))

    def make_plan(self, rng) -> list[tuple[int, np.ndarray]]:
        """The epoch's batches: (bucket, row indices) each."""
        order = (
            rng.permutation(len(self._bucket)) if rng is not None else np.arange(len(self._bucket))
        )
        plan = []
        for bucket in np.unique(self._bucket):
            rows = order[self._bucket[order] == bucket]
            plan += [
                (int(bucket), rows[i : i + self.batch_size])
                for i in range(0, len(rows), self.batch_size)
            ]
        if rng is not None:
            plan = [plan[i] for i in rng.permutation(len(plan))]
        return plan

    def load_batch(self, item):
        bucket, rows = item
        width = int(self._widths[bucket])
        batch = []
        for array in self.arrays:
            x = np.zeros((self.batch_size, width), "int32")
            x[: len(rows)] = array[rows, :width]
            batch.append(x)
        source, decoder, labels = batch
        return {SOURCE_INPUT: source, DECODER_INPUT: decoder}, labels

    def tf_output_signature(self):
        # Widths vary by bucket: given here, where Keras would guess them from
        # the first few batches if it converted this PyDataset itself.
        import tensorflow as tf

        spec = tf.TensorSpec((self.batch_size, None), tf.int32)
        return {SOURCE_INPUT: spec, DECODER_INPUT: spec}, spec


# --------------------------------------------------------------------------- evaluation


def translate_source_ids(
    model: keras.Model,
    sources: np.ndarray,
    target_tokens: Sequence[str],
    batch_size: int = 64,
) -> list[str]:
    """Translates rows of source ids with cached greedy decoding; no TensorFlow needed.

    The text is what `Translator.translate` returns for the same sentences
    (`tokens.ids_to_text` is the Python twin of the graph's detokeniser); an
    all-padding row translates to `""`. Rows are batched by length; each batch
    is cut to its bucket width and filled up to `batch_size` rows, so the
    decoder compiles once per bucket width.
    """
    from apps.translator.decoding import compile_decoder
    from apps.translator.model import TranslatorLayers

    layers = TranslatorLayers(model)
    decode = compile_decoder(layers)
    sources = np.asarray(sources, "int32")
    length = sources.shape[1]
    lengths = np.count_nonzero(sources, axis=1)
    bounds = np.asarray(bucket_boundaries(length))
    widths = np.minimum(
        bounds[np.searchsorted(bounds, np.maximum(lengths, 1), side="right")] - 1, length
    )
    out = [""] * len(sources)
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = np.zeros((batch_size, int(widths[rows].max())), "int32")
        batch[: len(rows)] = sources[rows, : batch.shape[1]]
        ids = np.asarray(decode(batch))
        for row, output in zip(rows, ids, strict=False):
            if lengths[row]:
                out[row] = ids_to_text(output, target_tokens)
    return out


def evaluate_prepared(
    model: keras.Model,
    prepared: Prepared,
    split: str = "val",
    limit: int | None = None,
    num_samples: int = 20,
    batch_size: int = 64,
    seed: int = 0,
) -> dict:
    """BLEU/chrF of `model` on a prepared split, as `evaluate.evaluate_pairs` computes them.

    The same sources (all, or `limit` evenly spaced ones), references, scores
    and samples as `evaluate_pairs` on the split's text pairs, without
    tokenising text (so without TensorFlow).
    """
    from apps.translator.evaluate import score_translations, select_evenly

    references = prepared.references(split)
    sources = prepared.split(split).sources
    if sources is None or len(sources) != len(references):
        raise DataError(
            f"{prepared.path}: {split}.npz and {split}_references.json do not match; "
            "re-run translator prepare."
        )
    picks = select_evenly(range(len(references)), limit)
    start = time.perf_counter()
    hypotheses = translate_source_ids(model, sources[picks], prepared.target_tokens, batch_size)
    seconds = time.perf_counter() - start
    return score_translations(
        [references[i][0] for i in picks],
        [references[i][1] for i in picks],
        hypotheses,
        seconds,
        num_samples,
        seed,
    )

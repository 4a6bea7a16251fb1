"""Writing prepared data: tokenise a corpus (with TensorFlow) into a prepared folder.

The folder's layout is described in `prepared.py`, which reads it. `translator
prepare --out DIR` writes one; `translator train --data CORPUS` writes one
into `RUN/data/` and trains from it, as `train --prepared DIR` does.
"""

from __future__ import annotations

import io
import os
import time

import numpy as np

from apps.common.config import config_to_dict
from apps.common.io import atomic_write_bytes, atomic_write_json
from apps.common.rundir import check_run_dir_path
from apps.translator.config import TranslatorConfig, vocabulary_files
from apps.translator.data import SPLITS, Splits
from apps.translator.prepared import (
    ARRAY_KEYS,
    EVAL_SPLITS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    PreparedSplit,
    sha256_file,
)
from apps.translator.tokens import PAD_ID


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def dense(ragged, width: int) -> np.ndarray:
    """A `tf.RaggedTensor` of ids as an int32 `(rows, width)` array, truncated and 0-padded."""
    return ragged[:, :width].to_tensor(default_value=PAD_ID, shape=[None, width]).numpy()


def split_from_encoded(encoded, sequence_length: int) -> PreparedSplit:
    """`data.encode_pairs`'s (source, decoder input, labels) as a `PreparedSplit`."""
    return PreparedSplit(*(dense(x, sequence_length) for x in encoded))


def prepare(
    config: TranslatorConfig,
    out_dir: str | os.PathLike,
    data: str | os.PathLike | None = None,
    preset: str | None = None,
    splits: Splits | None = None,
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
        splits: pairs already split (tests pass slices), instead of `data`;
            the manifest then records no corpus path.
    """
    import tensorflow as tf  # noqa: F401  (tokenising needs it; fail here, clearly)

    from apps.translator.augment import copy_augment
    from apps.translator.data import (
        check_split_sizes,
        encode_pairs,
        group_references,
        read_pairs,
        resolve_data_path,
        split_pairs,
    )
    from apps.translator.vectorization import build_vocabularies, save_vocabularies

    out_dir = check_run_dir_path(out_dir, "--out")
    if splits is None:
        data_path = resolve_data_path(data)
        splits = split_pairs(read_pairs(data_path, what="data file"))
        source = f"data file {data_path}"
    else:
        data_path, source = None, "the corpus"
    train_pairs = splits.train[: config.max_train_pairs] if config.max_train_pairs else splits.train
    check_split_sizes(
        len(train_pairs),
        len(splits.val),
        len(splits.test),
        config.batch_size,
        source,
        config.max_train_pairs,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # Incomplete until the new one is written.

    source_vocab, target_vocab = build_vocabularies(train_pairs, config)
    save_vocabularies(out_dir, source_vocab, target_vocab)
    # After the vocabulary is learned from the text as written: random names
    # must not become pieces.
    train_pairs, copy_augmented = copy_augment(train_pairs, config.copy_augmentation, seed=0)
    length = config.sequence_length
    counts = {}
    for name, pairs in zip(SPLITS, (train_pairs, splits.val, splits.test), strict=True):
        arrays = {key: np.zeros((0, length), "int32") for key in ARRAY_KEYS}
        if pairs:
            encoded = encode_pairs(pairs, source_vocab, target_vocab, length)
            arrays = {key: dense(x, length) for key, x in zip(ARRAY_KEYS, encoded, strict=True)}
        counts[name] = {
            "pairs": len(pairs),
            **({"copy_augmented_pairs": copy_augmented} if name == "train" else {}),
            "kept_pairs": int(arrays["labels"].shape[0]),
            "label_tokens": int(np.count_nonzero(arrays["labels"])),
        }
        if name in EVAL_SPLITS:
            grouped = group_references(pairs)
            english = [source for source, _ in grouped]
            arrays["sources"] = (
                dense(source_vocab.encode(english), length)
                if english
                else np.zeros((0, length), "int32")
            )
            atomic_write_json(out_dir / f"{name}_references.json", grouped, indent=None)
            counts[name]["sources"] = len(grouped)
        atomic_write_bytes(out_dir / f"{name}.npz", _npz_bytes(arrays))

    files = sorted(
        vocabulary_files(config)
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
            "path": None if data_path is None else str(data_path),
            "sha256": sha256_file(data_path)
            if data_path is not None and data_path.is_file()
            else None,
        },
        "files": {name: sha256_file(out_dir / name) for name in files},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest

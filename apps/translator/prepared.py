"""Prepared data: a folder of tokenised splits as integer arrays, read with NumPy alone.

`translator prepare` (and `translator train --data`, into `RUN/data/`) writes
it with `prepare.py` (tokenising needs TensorFlow); everything after reads it
here, under any Keras backend, e.g. JAX on a GPU machine where `import
tensorflow` fails:

    manifest.json          format version, the config it was prepared with, vocabulary
                           sizes, sequence length, counts, the corpus's and every file's sha256
    vocab_source.txt       the vocabularies (the very files a run directory holds)
    vocab_target.txt
    subword_source.model   subword runs only: the SentencePiece models (vocab_*.txt then
    subword_target.model   list their pieces; with a shared vocabulary both hold one model)
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

Batching: `batches.ArrayBatches`; scoring ids: `evaluate.evaluate_ids`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from apps.common.config import config_from_dict
from apps.common.errors import DataError, MissingFileError, UserError
from apps.translator.config import (
    DATA_FIELDS,
    SOURCE_VOCAB_FILE,
    TARGET_VOCAB_FILE,
    TranslatorConfig,
)
from apps.translator.data import SPLITS
from apps.translator.tokens import load_tokens

FORMAT = "translator-prepared"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
ARRAY_KEYS = ("source_tokens", "decoder_tokens", "labels")
EVAL_SPLITS = ("val", "test")


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
        if sha256_file(path) != self.manifest["files"].get(name):
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

    def file(self, name: str) -> Path:
        """The checked path of file `name` of the folder (e.g. one of `vocabulary_files`)."""
        return self._checked(name)


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
    _check_manifest_keys(manifest, manifest_path)
    prepared = Prepared(path, manifest, config, (), ())
    source_tokens = load_tokens(prepared.vocabulary_file("source"))
    target_tokens = load_tokens(prepared.vocabulary_file("target"))
    return dataclasses.replace(prepared, source_tokens=source_tokens, target_tokens=target_tokens)


def _check_manifest_keys(manifest: dict, manifest_path: Path) -> None:
    """Raises `DataError` if a (hand-edited or damaged) manifest lacks what training reads."""
    splits = manifest.get("splits")
    data = manifest.get("data")
    problems = []
    if not isinstance(manifest.get("files"), dict):
        problems.append("'files'")
    if not isinstance(data, dict) or not {"path", "sha256"} <= data.keys():
        problems.append("'data' (path, sha256)")
    if not isinstance(splits, dict) or not all(
        isinstance(splits.get(name), dict) and isinstance(splits[name].get("kept_pairs"), int)
        for name in SPLITS
    ):
        problems.append(f"'splits' ({', '.join(SPLITS)}, each with kept_pairs)")
    if problems:
        raise DataError(
            f"{manifest_path} lacks or has malformed {'; '.join(problems)}; re-run "
            "translator prepare."
        )


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

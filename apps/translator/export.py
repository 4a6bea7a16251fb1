"""Export: a string-in, string-out SavedModel for TensorFlow Serving.

Signatures:

- `serving_default`: input `sentences` (string, shape `[batch]`) -> output
  `translations` (string, `[batch]`). Tokenisation, cached greedy decoding
  (a `tf.while_loop`) and detokenisation all run in the graph; it is the very
  graph `Translator.translate` runs, so the strings are identical.
- `source_stats`: input `sentences` -> `num_words`, `num_unknown`,
  `max_words` (int32, `[batch]`), so that clients can warn about truncated or
  non-English input without the vocabulary.

Reloading needs only TensorFlow (`tf.saved_model.load`), not this project;
an export of a subword run also needs `import tensorflow_text` first (its
SentencePiece ops are TF Text ops, registered by that import; the stock TF
Serving model server links them).
Versions go to `<base>/<N>/` atomically through `apps.common.export`, each with
TF Serving's warm-up file (`assets.extra/tf_serving_warmup_requests`,
`apps.common.warmup`): `WARMUP_SENTENCES` alone and together, for both
signatures, replayed by the server before the version takes requests.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from apps.common.errors import UserError
from apps.common.export import export_versioned
from apps.common.warmup import write_warmup_requests
from apps.translator.translate import SENTENCES_SPEC, Translator

DEFAULT_BASE = Path("saved_models") / "translator"
# Warm-up requests: short and long sentences, alone and as one batch.
WARMUP_SENTENCES = ("Hello.", "How are you?", "Tom told me that he would be late tomorrow.")


def write_saved_model(translator: Translator, path: str | os.PathLike) -> None:
    """Writes the translator's serving graph as a SavedModel at `path`."""
    archive = keras.export.ExportArchive()
    archive.track(translator.model)
    # Lookup tables and SentencePiece models are TF resources, not Keras
    # variables: track them explicitly (a shared vocabulary is one module).
    archive.track(translator.source_vocab)
    archive.track(translator.target_vocab)

    def serve(sentences):
        return {"translations": translator.translate_graph(sentences)}

    archive.add_endpoint("serving_default", serve, input_signature=[SENTENCES_SPEC])
    archive.add_endpoint(
        "source_stats", translator.source_stats_graph, input_signature=[SENTENCES_SPEC]
    )
    archive.write_out(str(path), verbose=False)
    batches = [list(WARMUP_SENTENCES[:1]), list(WARMUP_SENTENCES)]
    write_warmup_requests(
        path,
        [(name, {"sentences": b}) for name in ("serving_default", "source_stats") for b in batches],
    )


def export(
    model: str | os.PathLike, base: str | os.PathLike = DEFAULT_BASE, keep: int | None = None
) -> Path:
    """Exports a run directory as the next integer version under `base`; returns its path."""
    if keras.backend.backend() != "tensorflow":
        raise UserError(
            "Exporting a SavedModel needs the TensorFlow backend: run with "
            f"KERAS_BACKEND=tensorflow. Received: KERAS_BACKEND={keras.backend.backend()}"
        )
    translator = Translator.from_run_dir(model)
    return export_versioned(base, lambda tmp: write_saved_model(translator, tmp), keep=keep)

"""Translating text with a trained run directory or an exported SavedModel.

`Translator` holds a run's model and vocabularies and translates in one
TensorFlow graph per batch: tokenise (`vocab.encode`: words and a lookup
table, or SentencePiece pieces), cached greedy decoding
(`decoding.greedy_decode`), detokenise (`vocab.decode`). `export.py`
saves exactly this graph, so a SavedModel returns the same strings;
`ExportedTranslator` wraps such an export behind the same interface, and
`load_translator` picks the right one for a path.

Behaviour on awkward input: an empty (or blank) sentence translates to an
empty string; a sentence longer than the model's `sequence_length` tokens is
truncated (callers can warn, see `source_stats`); with word tokens, unknown
words become `[UNK]` in the source and never appear in the output; with
subword tokens nothing is unknown (characters the vocabulary lacks are
spelled as bytes, and `source_stats` counts those as `num_unknown`).

A SavedModel of a subword run holds TF Text ops: `ExportedTranslator` imports
`tensorflow_text` before loading it (that import registers the ops).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from apps.common.config import load_config
from apps.common.errors import RunDirError, UserError
from apps.common.io import atomic_write_bytes
from apps.common.model_io import ModelLoadError, load_keras_model
from apps.common.rundir import check_run_app
from apps.translator.config import (  # noqa: F401  (file names re-exported)
    APP_NAME,
    CONFIG_FILE,
    MODEL_FILE,
    SOURCE_VOCAB_FILE,
    TARGET_VOCAB_FILE,
    TranslatorConfig,
)
from apps.translator.decoding import greedy_decode
from apps.translator.model import TranslatorLayers
from apps.translator.tokens import END, group_pieces, join_pieces
from apps.translator.vectorization import (
    PAD_ID,
    START_ID,
    Vocabulary,
    load_vocabularies,
    pad_batch,
    split_words,
)

SENTENCES_SPEC = tf.TensorSpec([None], tf.string, name="sentences")


def clean_sentences(sentences: Sequence[str]) -> list[str]:
    """One line per sentence: whitespace runs (line breaks included) become one space."""
    if isinstance(sentences, str):
        raise TypeError("Expected a list of sentences, not one string. Received: a str")
    # A sentence is one line: inner line breaks would break line-based I/O.
    return [" ".join(str(s).split()) for s in sentences]


def translate_in_batches(
    sentences: Sequence[str], batch_size: int, translate_batch: Callable[[list[str]], list[str]]
) -> list[str]:
    """Translates `sentences` in batches of similar length and returns them in input order.

    A batch decodes until its longest translation ends, so grouping sentences
    by length (here: by characters) saves most of the wasted steps. Each
    sentence's translation does not depend on its batch.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive integer. Received: batch_size={batch_size!r}"
        )
    sentences = clean_sentences(sentences)
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    out: list[str] = [""] * len(sentences)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        for i, text in zip(indices, translate_batch([sentences[i] for i in indices]), strict=True):
            out[i] = text
    return out


class Translator:
    """English -> Spanish translation with a model and its vocabularies, in memory.

    Args:
        model: a translator model (see `model.build_model`), trained.
        source_vocab: English `Vocabulary` or `subword.SubwordVocabulary`.
        target_vocab: Spanish vocabulary, of the same kind (with a shared
            subword vocabulary, the same object).
        sequence_length: most source tokens read and output tokens written.

    Example:

    >>> translator = Translator.from_run_dir("runs/translator/20250101-120000")
    >>> translator.translate(["Where is Tom?", ""])
    ['¿Dónde está Tom?', '']
    """

    def __init__(self, model, source_vocab, target_vocab, sequence_length: int):
        self.model = model
        self.layers = TranslatorLayers(model)
        self.source_vocab = source_vocab
        self.target_vocab = target_vocab
        self.subword = not isinstance(source_vocab, Vocabulary)
        self.sequence_length = int(sequence_length)
        for side, vocab, size in (
            ("source", source_vocab, self.layers.source_vocab_size),
            ("target", target_vocab, self.layers.target_vocab_size),
        ):
            if vocab.size != size:
                raise RunDirError(
                    f"The model expects {size} {side} tokens but the {side} vocabulary has "
                    f"{vocab.size}; the model and the vocabulary come from different runs."
                )
        self._translate = tf.function(self.translate_graph, input_signature=[SENTENCES_SPEC])
        self._stats = tf.function(self.source_stats_graph, input_signature=[SENTENCES_SPEC])
        self._token_ids = tf.function(self._token_ids_graph, input_signature=[SENTENCES_SPEC])

    @classmethod
    def from_run_dir(cls, run_dir: str | os.PathLike) -> Translator:
        """Loads `model.keras`, `config.json` and the vocabularies of a training run.

        Raises:
            ModelLoadError / MissingFileError: a file is missing or unreadable.
            RunDirError: another app's run directory (e.g. a medical-cnn run).
            DataError: a vocabulary file is damaged.
        """
        run_dir = Path(run_dir)
        if run_dir.is_file() and run_dir.suffix == ".keras":
            run_dir = run_dir.parent
        if run_dir.is_file():
            raise ModelLoadError(
                f"{run_dir} is a file; pass the run directory that holds it "
                f"({run_dir.parent}) or an export."
            )
        if not run_dir.is_dir():
            raise ModelLoadError(
                f"model not found: {run_dir} (expected a run directory or an export)"
            )
        check_run_app(run_dir, APP_NAME)
        if not (run_dir / CONFIG_FILE).is_file():
            raise ModelLoadError(
                f"{run_dir} holds no {CONFIG_FILE}: not a translator run directory or export."
            )
        config = load_config(TranslatorConfig, run_dir / CONFIG_FILE, app=APP_NAME)
        source_vocab, target_vocab = load_vocabularies(run_dir, config)
        model = load_keras_model(run_dir / MODEL_FILE, compile=False)
        return cls(model, source_vocab, target_vocab, config.sequence_length)

    # Graph functions (also what export.py saves).

    def _source_ids(self, sentences):
        ids = self.source_vocab.encode(sentences)
        return ids, pad_batch(ids, self.sequence_length)

    def _decode(self, source_ids):
        # The target tokens keep byte-fallback pieces to whole UTF-8 characters.
        return greedy_decode(
            self.layers, source_ids, self.sequence_length, target_tokens=self.target_vocab.tokens
        )

    def _token_ids_graph(self, sentences):
        _, source_ids = self._source_ids(sentences)
        return source_ids, self._decode(source_ids)

    def translate_graph(self, sentences):
        """Strings `(B,)` -> translations `(B,)`, all in TensorFlow ops."""
        ids, source_ids = self._source_ids(sentences)
        text = self.target_vocab.decode(self._decode(source_ids))
        return tf.where(ids.row_lengths() > 0, text, tf.constant(""))

    def source_stats_graph(self, sentences):
        """Per sentence: tokens found, tokens unknown to the vocabulary, and the model's limit.

        Tokens are words (word runs) or pieces (subword runs); unknown tokens
        are `[UNK]` words, or pieces that spell a character as bytes.
        """
        ids = self.source_vocab.encode(sentences)
        num_words = tf.cast(ids.row_lengths(), tf.int32)
        return {
            "num_words": num_words,
            "num_unknown": self.source_vocab.count_unknown(ids),
            "max_words": tf.fill(tf.shape(num_words), self.sequence_length),
        }

    # Python API.

    def translate(self, sentences: Sequence[str], batch_size: int = 64) -> list[str]:
        """Translates a list of sentences (batched); returns one string per sentence."""

        def translate_batch(batch):
            result = self._translate(tf.constant(batch, dtype=tf.string)).numpy()
            return [t.decode("utf-8") for t in result]

        return translate_in_batches(sentences, batch_size, translate_batch)

    def source_stats(self, sentences: Sequence[str]) -> dict[str, np.ndarray]:
        """`num_words`, `num_unknown` and `max_words` per sentence (NumPy int arrays)."""
        sentences = clean_sentences(sentences)
        if not sentences:
            return {k: np.zeros((0,), "int32") for k in ("num_words", "num_unknown", "max_words")}
        stats = self._stats(tf.constant(sentences, dtype=tf.string))
        return {k: v.numpy() for k, v in stats.items()}

    def translate_ids(self, sentences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(source ids `(B, S)`, output ids `(B, sequence_length)`) of a batch, for inspection."""
        source_ids, output_ids = self._token_ids(
            tf.constant(clean_sentences(sentences), dtype=tf.string)
        )
        return source_ids.numpy(), output_ids.numpy()

    @property
    def num_heads(self) -> int:
        """Attention heads of the last decoder block (`cross_attention(head=...)` picks one)."""
        return int(self.layers.decoders[-1].num_heads)

    def cross_attention(
        self, sentence: str, head: int | None = None
    ) -> tuple[list[str], list[str], np.ndarray]:
        """The last decoder block's cross-attention for one translated sentence.

        Args:
            sentence: one English sentence.
            head: `None` for the mean over heads, else one head, `0..num_heads - 1`.

        Returns:
            `(source_tokens, output_tokens, weights)` where `weights` has shape
            `(len(output_tokens), len(source_tokens))`, averaged over heads (or
            the chosen head's); output tokens end with `[END]` when the model produced it. In a
            subword run the tokens are words (space-separated, punctuation
            attached as written): a source word's column is the **sum** of
            its pieces' columns (the attention the word receives; rows still
            sum to 1) and an output word's row the **mean** of its pieces'
            rows (`merge_attention`).
        """
        if head is not None and (
            isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < self.num_heads
        ):
            raise ValueError(
                f"head must be None (the mean) or an integer in 0..{self.num_heads - 1}. "
                f"Received: head={head!r}"
            )
        source_ids, output_ids = self.translate_ids([sentence])
        source_len = int((source_ids[0] != PAD_ID).sum())
        out = output_ids[0]
        out_len = int((out != PAD_ID).sum())
        if source_len == 0 or out_len == 0:
            return [], [], np.zeros((0, 0), "float32")
        decoder_input = np.concatenate([[START_ID], out[: out_len - 1]])[None].astype("int32")
        encoded, source_mask = self.layers.encode(source_ids[:, :source_len])
        _, scores = self.layers.decode(
            decoder_input, encoded, source_mask, return_attention_scores=True
        )
        scores = np.asarray(scores)[0]  # (heads, T, S)
        weights = scores.mean(axis=0) if head is None else scores[head]  # (T, S)
        if self.subword:
            source_pieces = [self.source_vocab.tokens[i] for i in source_ids[0, :source_len]]
            output_pieces = [self.target_vocab.tokens[i] for i in out[:out_len]]
            return merge_attention(source_pieces, output_pieces, weights)
        source_words = [w.decode("utf-8") for w in split_words(sentence).numpy()][:source_len]
        output_words = [self.target_vocab.tokens[i] for i in out[:out_len]]
        return source_words, output_words, weights


def merge_attention(
    source_pieces: Sequence[str], output_pieces: Sequence[str], weights: np.ndarray
) -> tuple[list[str], list[str], np.ndarray]:
    """Attention over subword pieces as attention over words (`tokens.group_pieces`).

    Columns (source) of a word's pieces are summed: the share of attention the
    word receives, so each row still sums to 1. Rows (output) of a word's
    pieces are averaged: the word's mean attention, also summing to 1. A
    trailing `[END]` keeps its own row.

    Returns:
        `(source_words, output_words, weights (len(output_words), len(source_words)))`.
    """
    end = [i for i, p in enumerate(output_pieces) if p == END]
    body = output_pieces[: end[0]] if end else output_pieces
    source_groups = group_pieces(source_pieces)
    output_groups = group_pieces(body) + ([[len(body)]] if end else [])
    columns = np.stack([weights[:, g].sum(axis=1) for g in source_groups], axis=1)
    merged = np.stack([columns[g].mean(axis=0) for g in output_groups], axis=0)
    source_words = [join_pieces(source_pieces[i] for i in g).strip() for g in source_groups]
    output_words = [join_pieces(body[i] for i in g).strip() for g in group_pieces(body)]
    return source_words, output_words + ([END] if end else []), merged


class ExportedTranslator:
    """The same interface over an exported SavedModel (see `export.py`).

    Args:
        path: a SavedModel folder (`.../<version>/`), or a base folder holding
            integer versions, in which case the highest is used.
    """

    def __init__(self, path: str | os.PathLike):
        from apps.common.export import latest_version_path

        path = Path(path)
        if not (path / "saved_model.pb").is_file():
            path = latest_version_path(path)
        self.path = path
        # A subword export holds TF Text ops (SentencePiece): importing
        # tensorflow_text registers them, and must come before loading.
        import tensorflow_text  # noqa: F401

        try:
            self._loaded = tf.saved_model.load(str(path))
        except Exception as e:  # A corrupt SavedModel raises assorted TF errors.
            raise ModelLoadError(
                f"could not load SavedModel {path}: {type(e).__name__}: {e}"
            ) from e
        signatures = self._loaded.signatures
        for name in ("serving_default", "source_stats"):
            if name not in signatures:
                raise ModelLoadError(
                    f"SavedModel {path} has no '{name}' signature: not a translator export."
                )
        self._serve = signatures["serving_default"]
        self._stats = signatures["source_stats"]

    def translate(self, sentences: Sequence[str], batch_size: int = 64) -> list[str]:
        def translate_batch(batch):
            result = self._serve(sentences=tf.constant(batch, dtype=tf.string))["translations"]
            return [t.decode("utf-8") for t in result.numpy()]

        return translate_in_batches(sentences, batch_size, translate_batch)

    def source_stats(self, sentences: Sequence[str]) -> dict[str, np.ndarray]:
        sentences = clean_sentences(sentences)
        if not sentences:
            return {k: np.zeros((0,), "int32") for k in ("num_words", "num_unknown", "max_words")}
        stats = self._stats(sentences=tf.constant(sentences, dtype=tf.string))
        return {k: v.numpy() for k, v in stats.items()}


def is_saved_model_path(path: str | os.PathLike) -> bool:
    """True for a SavedModel folder or a base folder of integer SavedModel versions."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return True
    return path.is_dir() and any(
        p.name.isdigit() and (p / "saved_model.pb").is_file() for p in path.iterdir()
    )


def load_translator(path: str | os.PathLike) -> Translator | ExportedTranslator:
    """A `Translator` for a run directory, an `ExportedTranslator` for an export."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model not found: {path} (expected a run directory or an export)")
    check_run_app(path, APP_NAME)
    if is_saved_model_path(path):
        return ExportedTranslator(path)
    return Translator.from_run_dir(path)


def input_warnings(stats: dict[str, np.ndarray], first_line: int = 1) -> list[str]:
    """Warnings for truncated and mostly-unknown sentences, one string each."""
    warnings = []
    for i, (n, unknown, limit) in enumerate(
        zip(stats["num_words"], stats["num_unknown"], stats["max_words"], strict=True)
    ):
        line = first_line + i
        if n > limit:
            warnings.append(
                f"warning: line {line} has {n} tokens, more than the model's limit of {limit}; "
                f"only the first {limit} are translated."
            )
        if n > 0 and unknown * 2 > n:
            warnings.append(
                f"warning: line {line}: {unknown} of {n} tokens are not in the English "
                "vocabulary; is it English? The translation will be poor."
            )
    return warnings


# Two lines: a one-line title is wider than the plot of a short sentence.
ATTENTION_TITLE = "cross-attention, last decoder block\n(mean over heads)"


def plot_cross_attention(
    source_words: Sequence[str],
    output_words: Sequence[str],
    weights: np.ndarray,
    path,
    title: str = ATTENTION_TITLE,
) -> Path:
    """Writes a heatmap PNG (output tokens as rows, source tokens as columns) atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = max(4.0, 0.55 * len(source_words) + 2.0)
    height = max(3.0, 0.4 * len(output_words) + 1.5)
    fig, ax = plt.subplots(figsize=(width, height))
    try:
        image = ax.imshow(weights, cmap="viridis", vmin=0.0, aspect="auto")
        ax.set_xticks(range(len(source_words)), labels=source_words, rotation=60, ha="right")
        ax.set_yticks(range(len(output_words)), labels=output_words)
        ax.set_xlabel("source (English)")
        ax.set_ylabel("output (Spanish)")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, fraction=0.046)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def write_attention_plots(translator: Translator, sentences: Sequence[str], out_dir) -> list[Path]:
    """One PNG per non-empty sentence, `out_dir/line_<n>.png` (1-based line numbers)."""
    if not isinstance(translator, Translator):
        raise UserError(
            "--attention-plot needs a run directory (the model's layers); an exported "
            "SavedModel only translates."
        )
    paths = []
    for i, sentence in enumerate(sentences, start=1):
        source_words, output_words, weights = translator.cross_attention(sentence)
        if not source_words:
            continue
        paths.append(
            plot_cross_attention(
                source_words, output_words, weights, Path(out_dir) / f"line_{i:04d}.png"
            )
        )
    return paths

"""What the demo page shows, computed by the apps' own code paths (no Gradio here).

`XrayDemo.predict` is `medical-cnn predict [--explain]`: the record comes from
`predict.predict_files` (a local run) or `serving.predict_files_served` (TF
Serving), the Grad-CAM overlay is the PNG `predict_files(..., explain_dir=...)`
writes. `TranslateDemo.translate` is `translator translate`: the same
`input_warnings`, then `translate` of a `Translator`, an `ExportedTranslator`
or a `ServedTranslator`; `TranslateDemo.attention_plot` is `--attention-plot`
(`Translator.cross_attention` and `plot_cross_attention`), with a head chosen.

Errors are the apps' own `UserError`s (a `ServingError` among them), raised
with the CLIs' words; the page prints them as the CLIs do, `error: <message>`.
A tab whose model cannot be had (none given, a path that is not a run, a
server without the model) gets an `Unavailable` with the reason instead of a
backend, so the page still starts.

`load_xray` and `load_translate` load what the command line names; both need
TensorFlow, and nothing here needs Gradio.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from apps.common.cli import USER_ERRORS
from apps.common.errors import UserError
from apps.common.io import to_json
from apps.common.textio import split_lines

# The server's model names: the CLIs' defaults (`--model-name`).
MEDICAL_MODEL_NAME = "medical_cnn"
TRANSLATOR_MODEL_NAME = "translator"
# Seconds to wait for each answer of a server (the CLIs' defaults).
MEDICAL_TIMEOUT_S = 30.0
TRANSLATOR_TIMEOUT_S = 60.0
# Sample images per class taken from the run's validation split.
SAMPLES_PER_CLASS = 2

NO_IMAGE = "no image: upload a PNG, JPEG, BMP or GIF file, or pick a sample."
NO_TEXT = "nothing to translate: type one or more English sentences, one per line."
NO_GRADCAM = (
    "Grad-CAM needs the Keras model, which TF Serving does not expose: start the demo with "
    "--medical RUN_DIR beside --server URL to see where the network looked."
)
NO_ATTENTION_SERVER = (
    "The attention heatmap needs the model's layers, which TF Serving does not expose: start "
    "the demo with --translator RUN_DIR beside --server URL to see it."
)
NO_ATTENTION_EXPORT = (
    "The attention heatmap needs a run directory (the model's layers); an exported "
    "SavedModel only translates."
)


@dataclasses.dataclass(frozen=True)
class Unavailable:
    """A tab that is off, and why (an error message or what to pass to turn it on)."""

    reason: str


@dataclasses.dataclass
class XrayResult:
    """One classified image.

    Attributes:
        record: what `medical-cnn predict` prints for it (`prediction_record`),
            with `file` the name the user gave.
        image: the image as uploaded, RGB uint8 `(H, W, 3)`; `None` where
            Pillow cannot open it (TensorFlow could).
        overlay: the Grad-CAM overlay `medical-cnn predict --explain` writes,
            RGB uint8, or `None` without a local model.
    """

    record: dict
    image: np.ndarray | None
    overlay: np.ndarray | None

    @property
    def json_line(self) -> str:
        """The record as `medical-cnn predict` prints it (one JSON line)."""
        return to_json(self.record)


def escape_markdown(text: str) -> str:
    """`text` shown as written in Markdown (paths hold `_`, messages `*` or `[`)."""
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~])", r"\\\1", str(text))


def describe_prediction(record: dict) -> str:
    """Markdown lines of a prediction record: label, probability and (binary) threshold.

    The probability is written with 4 decimals; the JSON line keeps all of them.
    """
    label, name, probability = record["label"], record["class_name"], record["probability"]
    lines = [f"### {escape_markdown(name)} (label {label})"]
    if "threshold" in record:
        lines.append(f"probability of label 1: **{probability:.4f}**")
        lines.append(
            f"threshold: **{record['threshold']:.4f}** (stored with the model; "
            f"label 1 at or above it)"
        )
    else:
        lines.append(f"probability of label {label}, the most likely: **{probability:.4f}**")
    return "\n\n".join(lines)


def _open_rgb(path) -> np.ndarray | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError):
        return None


class XrayDemo:
    """Chest X-ray classification for the page, by a local run or a TF Serving server.

    Args:
        run: a `LoadedRun` (`artifacts.load_run`): predicts when there is no
            `server`, and gives the Grad-CAM overlays in both cases.
        server: TF Serving's REST or gRPC address; predicts when given.
        model_name: the model's name on the server.
        timeout: seconds to wait for each answer of the server.
        samples: image files offered as samples on the page.
    """

    def __init__(
        self,
        run=None,
        server: str | None = None,
        model_name: str = MEDICAL_MODEL_NAME,
        timeout: float = MEDICAL_TIMEOUT_S,
        samples: Sequence[str | os.PathLike] = (),
    ):
        if run is None and server is None:
            raise ValueError("XrayDemo needs a run or a server. Received: run=None, server=None")
        self.run = run
        self.server = server
        self.model_name = model_name
        self.timeout = timeout
        self.samples = [Path(p) for p in samples]

    @property
    def explains(self) -> bool:
        """Whether Grad-CAM overlays are shown (they need the local Keras model)."""
        return self.run is not None

    @property
    def source(self) -> str:
        """Where predictions come from, in words."""
        if self.server is not None:
            return f"model '{self.model_name}' on TF Serving at {self.server}"
        return f"{self.run.model_path} (local)"

    def predict(self, path: str | os.PathLike | None, name: str | None = None) -> XrayResult:
        """Classifies one image file as `medical-cnn predict` does (with `--explain` locally).

        Args:
            path: the image file (the page's upload).
            name: how messages and the record name the file (default: its name).

        Raises:
            UserError: no file, or one that is not a readable image (the CLI's
                message, naming `name`); a `ServingError` when the server fails.
        """
        from apps.medical_cnn.predict import predict_files

        if path is None:
            raise UserError(NO_IMAGE)
        path = Path(path)
        name = name or path.name
        with tempfile.TemporaryDirectory(prefix="demo-gradcam-") as folder:
            if self.server is None:
                record = predict_files(self.run, [path], explain_dir=folder)[0]
            else:
                from apps.medical_cnn.serving import predict_files_served

                record = predict_files_served(
                    self.server, [path], self.model_name, timeout=self.timeout
                )[0]
                if "error" not in record and self.run is not None:
                    explained = predict_files(self.run, [path], explain_dir=folder)[0]
                    record["gradcam"] = explained.get("gradcam")
            if "error" in record:
                raise UserError(record["error"].replace(str(path), name))
            gradcam = record.pop("gradcam", None)
            overlay = _open_rgb(gradcam) if gradcam else None
        record["file"] = name
        return XrayResult(record, _open_rgb(path), overlay)


def write_samples(run, folder: str | os.PathLike, per_class: int = SAMPLES_PER_CLASS) -> list[Path]:
    """PNG files of the first `per_class` validation images of each class of `run`'s data.

    The images come from the `.npz` file named in the run's `config.json`
    (`data_path`); without one (a TFDS run, a bare `.keras` file, a file no
    longer there) there are no samples.

    Returns:
        The files written, `val_<index>_<class>.png`, in class order.
    """
    from PIL import Image

    from apps.medical_cnn.data import load_npz

    config = run.config
    if config is None or not config.data_path or not Path(config.data_path).is_file():
        return []
    try:
        val = load_npz(config.data_path, splits=("val",))["val"]
    except USER_ERRORS:
        return []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for label, class_name in enumerate(run.class_names):
        for index in np.flatnonzero(val.labels == label)[:per_class]:
            pixels = val.images[index]
            pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
            path = folder / f"val_{index:04d}_{class_name}.png"
            Image.fromarray(np.asarray(pixels, "uint8")).save(path)
            paths.append(path)
    return paths


def load_xray(
    medical: str | os.PathLike | None,
    server: str | None,
    samples_dir: str | os.PathLike | None = None,
    timeout: float = MEDICAL_TIMEOUT_S,
) -> XrayDemo | Unavailable:
    """The X-ray tab's backend for `--medical RUN` and/or `--server URL`, or why it is off.

    With a server, predictions come from it (checked here: the model must be
    a `medical_cnn` export); a run given too only adds Grad-CAM. Sample
    images are written to `samples_dir` when given.
    """
    if medical is None and server is None:
        return Unavailable(
            "no X-ray model: start the demo with --medical RUN_DIR (a run written by "
            "'medical-cnn train') or --server URL (TF Serving with a medical_cnn export)."
        )
    run = None
    try:
        if medical is not None:
            from apps.medical_cnn.artifacts import load_run

            run = load_run(medical)
        if server is not None:
            from apps.common.serving import connect
            from apps.medical_cnn.serving import check_signature

            try:
                client = connect(server, MEDICAL_MODEL_NAME, timeout=timeout)
            except ValueError as e:  # The URL the user gave (as predict_files_served).
                raise UserError(str(e)) from None
            check_signature(client)
    except USER_ERRORS as e:
        return Unavailable(str(e))
    samples = write_samples(run, samples_dir) if run is not None and samples_dir else []
    return XrayDemo(run, server, timeout=timeout, samples=samples)


@dataclasses.dataclass
class TranslateResult:
    """Translated text: one output line per input line, and the CLI's warnings."""

    sentences: list[str]
    translations: list[str]
    warnings: list[str]

    @property
    def text(self) -> str:
        """The translations, one per line, as `translator translate` prints them (no final break)."""
        return "\n".join(self.translations)

    def lines_with_text(self) -> list[int]:
        """1-based numbers of the input lines that are not blank (those with attention)."""
        return [i for i, s in enumerate(self.sentences, start=1) if s.strip()]


class TranslateDemo:
    """English -> Spanish for the page.

    Args:
        translator: what translates: a `Translator` (run directory), an
            `ExportedTranslator` or a `ServedTranslator` (TF Serving).
        attention: a `Translator` whose layers give the cross-attention, or
            `None` (then `note` says why the heatmap is hidden).
        note: why there is no heatmap, shown on the page.
        source: where translations come from, in words.
    """

    def __init__(self, translator, attention=None, note: str | None = None, source: str = ""):
        self.translator = translator
        self.attention = attention
        self.note = note
        self.source = source

    @property
    def num_heads(self) -> int:
        """Heads to choose from (0 without attention)."""
        return 0 if self.attention is None else self.attention.num_heads

    def translate(self, text: str | None) -> TranslateResult:
        """Translates `text`, one sentence per line, as `translator translate` does.

        Raises:
            UserError: the text is empty or blank; a `ServingError` when the server fails.
        """
        from apps.translator.translate import input_warnings

        sentences = split_lines(text or "")
        if not any(s.strip() for s in sentences):
            raise UserError(NO_TEXT)
        warnings = input_warnings(self.translator.source_stats(sentences))
        translations = self.translator.translate(sentences)
        return TranslateResult(sentences, translations, warnings)

    def attention_plot(self, sentence: str, head: int | None = None) -> np.ndarray | None:
        """The `--attention-plot` heatmap of one sentence as RGB uint8 (`None` for a blank one).

        Args:
            sentence: one English sentence.
            head: `None` for the mean over heads, else `0..num_heads - 1`.
        """
        from apps.translator.translate import ATTENTION_TITLE, plot_cross_attention

        if self.attention is None:
            raise UserError(self.note or NO_ATTENTION_SERVER)
        source_words, output_words, weights = self.attention.cross_attention(sentence, head=head)
        if not source_words:
            return None
        title = ATTENTION_TITLE
        if head is not None:
            title = f"cross-attention, last decoder block\n(head {head + 1} of {self.num_heads})"
        with tempfile.TemporaryDirectory(prefix="demo-attention-") as folder:
            path = plot_cross_attention(
                source_words, output_words, weights, Path(folder) / "attention.png", title=title
            )
            return _open_rgb(path)


def load_translate(
    translator: str | os.PathLike | None,
    server: str | None,
    timeout: float = TRANSLATOR_TIMEOUT_S,
) -> TranslateDemo | Unavailable:
    """The Translate tab's backend for `--translator RUN` and/or `--server URL`, or why it is off.

    With a server, translations come from it (checked here with one sentence);
    a run directory given too gives the attention heatmaps. The model
    translates one sentence here, so that the page's first answer is quick.
    """
    from apps.translator.translate import Translator, load_translator

    if translator is None and server is None:
        return Unavailable(
            "no translator: start the demo with --translator RUN_DIR (a run written by "
            "'translator train', or an export) or --server URL (TF Serving with a "
            "translator export)."
        )
    try:
        local = load_translator(translator) if translator is not None else None
        if server is not None:
            from apps.translator.serving import ServedTranslator

            translating = ServedTranslator(server, TRANSLATOR_MODEL_NAME, timeout=timeout)
            source = f"model '{TRANSLATOR_MODEL_NAME}' on TF Serving at {server}"
        else:
            translating, source = local, f"{translator} (local)"
        translating.translate(["Hello."])  # Fails now, clearly, on a wrong model or server.
    except USER_ERRORS as e:
        return Unavailable(str(e))
    attention = local if isinstance(local, Translator) else None
    note = None
    if attention is None:
        note = NO_ATTENTION_EXPORT if local is not None else NO_ATTENTION_SERVER
    return TranslateDemo(translating, attention, note, source)

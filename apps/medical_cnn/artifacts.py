"""Loading a trained run: the model (safe mode), its config and its decision threshold."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import keras

from apps.common.config import load_config
from apps.common.errors import UserError
from apps.common.model_io import ModelLoadError, load_keras_model, resolve_model_path
from apps.common.rundir import CONFIG_FILE, check_run_app
from apps.medical_cnn.config import MedicalCNNConfig

APP_NAME = "medical_cnn"
THRESHOLD_FILE = "threshold.json"
DEFAULT_THRESHOLD = 0.5


@dataclasses.dataclass
class LoadedRun:
    """A model with what prediction needs to know about it."""

    model: keras.Model
    model_path: Path
    config: MedicalCNNConfig | None
    threshold: float
    threshold_source: str
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """`(height, width, channels)` of the images the model takes."""
        return tuple(int(d) for d in self.model.input_shape[1:])

    @property
    def num_classes(self) -> int:
        units = int(self.model.output_shape[-1])
        return 2 if units == 1 else units


def read_threshold(folder: str | os.PathLike) -> tuple[float, str]:
    """The threshold stored in `folder/threshold.json`, or 0.5 when there is none."""
    path = Path(folder) / THRESHOLD_FILE
    if not path.is_file():
        return DEFAULT_THRESHOLD, "default (no threshold.json beside the model)"
    try:
        value = float(json.loads(path.read_text())["threshold"])
    except (ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f'{path} is malformed ({e}); expected {{"threshold": 0.x}}.') from e
    if not 0.0 <= value <= 1.0:
        raise ModelLoadError(f"{path} holds threshold {value}, outside [0, 1].")
    return value, str(path)


def check_image_classifier(model: keras.Model, model_path: str | os.PathLike) -> None:
    """Raises `ModelLoadError` unless `model` is an image classifier this app can use.

    That is: one image input `(batch, height, width, channels)` with known
    height and width and 1 or 3 channels, and one output `(batch, units)`.
    A translator model, or any other `.keras` file, is refused here with a
    message naming the file rather than failing later inside prediction or
    export.
    """
    inputs, outputs = list(model.inputs), list(model.outputs)
    problems = []
    if len(inputs) != 1:
        problems.append(f"it takes {len(inputs)} inputs")
    else:
        shape = tuple(inputs[0].shape)
        if len(shape) != 4:
            problems.append(f"its input has shape {shape}, not (batch, height, width, channels)")
        elif shape[1] is None or shape[2] is None or shape[3] not in (1, 3):
            problems.append(f"its input {shape} is not a fixed-size grey or RGB image")
    if len(outputs) != 1:
        problems.append(f"it has {len(outputs)} outputs")
    elif len(tuple(outputs[0].shape)) != 2:
        problems.append(f"its output has shape {tuple(outputs[0].shape)}, not (batch, classes)")
    if problems:
        raise ModelLoadError(
            f"{model_path} is not a medical-cnn image classifier: {'; '.join(problems)}. "
            f"Pass a run directory written by 'medical-cnn train' (or its model.keras)."
        )


def load_run(model_or_run_dir: str | os.PathLike, compile: bool = False) -> LoadedRun:
    """Loads a run directory (or a `.keras` file and the run files beside it).

    The folder's `config.json` must not name another app (a translator run is
    refused before its model is loaded), and the model must be an image
    classifier (`check_image_classifier`).

    Raises:
        RunDirError: the folder is another app's run directory.
        ModelLoadError: the model is missing, corrupt, refused by safe mode,
            not an image classifier, or its `threshold.json` is malformed.
    """
    given = Path(model_or_run_dir).expanduser()
    check_run_app(given if given.is_dir() else given.parent, APP_NAME, option="--model")
    model_path = resolve_model_path(given)
    folder = model_path.parent
    import apps.medical_cnn.ensemble  # noqa: F401  (registers the ensemble's layers)

    model = load_keras_model(model_path, compile=compile)
    check_image_classifier(model, model_path)
    config = None
    if (folder / CONFIG_FILE).is_file():
        try:
            config = load_config(MedicalCNNConfig, folder / CONFIG_FILE, app=APP_NAME)
        except (UserError, TypeError):
            config = None  # A foreign or unreadable config.json: the model alone is enough.
    threshold, source = read_threshold(folder)
    units = int(model.output_shape[-1])
    k = 2 if units == 1 else units
    names = tuple(config.class_names) if config and config.class_names else None
    if names is None or len(names) != k:
        names = tuple(str(i) for i in range(k))
    return LoadedRun(model, model_path, config, threshold, source, names)

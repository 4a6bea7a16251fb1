"""Loading a trained run: the model (safe mode), its config and its decision threshold."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import keras

from apps.common.config import load_config
from apps.common.model_io import ModelLoadError, load_keras_model, resolve_model_path
from apps.medical_cnn.config import MedicalCNNConfig

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


def load_run(model_or_run_dir: str | os.PathLike, compile: bool = False) -> LoadedRun:
    """Loads a run directory (or a `.keras` file and the run files beside it).

    Raises:
        ModelLoadError: the model is missing, corrupt, or refused by safe mode.
    """
    model_path = resolve_model_path(model_or_run_dir)
    model = load_keras_model(model_path, compile=compile)
    folder = model_path.parent
    config = None
    if (folder / "config.json").is_file():
        try:
            config = load_config(MedicalCNNConfig, folder / "config.json")
        except ValueError:
            config = None  # A foreign config.json: the model alone is enough.
    threshold, source = read_threshold(folder)
    units = int(model.output_shape[-1])
    k = 2 if units == 1 else units
    names = tuple(config.class_names) if config and config.class_names else None
    if names is None or len(names) != k:
        names = tuple(str(i) for i in range(k))
    return LoadedRun(model, model_path, config, threshold, source, names)

"""Loading `.keras` models safely, with errors a user can act on.

`load_keras_model` always loads with Keras safe mode on: a `.keras` file that
carries Python code (a `Lambda` layer holding a lambda) is refused, because
loading it would run that code. Missing, truncated and corrupt files raise
`ModelLoadError` naming the file instead of a deep traceback.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from apps.common.errors import UserError
from apps.common.rundir import CONFIG_FILE
from apps.common.rundir import MODEL_FILE as MODEL_FILENAME


class ModelLoadError(UserError):
    """A model file could not be found, read, or safely loaded."""


def resolve_model_path(run_dir_or_file: str | os.PathLike) -> Path:
    """Returns the `.keras` file for a run directory (its `model.keras`) or a file path.

    Raises:
        ModelLoadError: the path does not exist, or the directory has no `model.keras`.
    """
    path = Path(run_dir_or_file).expanduser()
    if path.is_dir():
        model_path = path / MODEL_FILENAME
        if not model_path.is_file():
            raise ModelLoadError(
                f"run directory {path} holds no {MODEL_FILENAME}; pass a finished run "
                f"directory or a .keras file."
            )
        return model_path
    if not path.exists():
        raise ModelLoadError(f"model not found: {path} (expected a run directory or a .keras file)")
    return path


def load_keras_model(path: str | os.PathLike, compile: bool = True, custom_objects=None):
    """Loads a `.keras` model (or a run directory's) with `safe_mode=True`.

    Importing `custom_layers` first registers the project's layers, losses and
    metrics, so no `custom_objects` are needed for them.

    Raises:
        ModelLoadError: missing file, not a `.keras` archive, truncated or
            corrupt archive, or a model that carries code refused by safe mode.
    """
    import keras

    import custom_layers  # noqa: F401  (registers the custom objects)

    model_path = resolve_model_path(path)
    if model_path.suffix != ".keras":
        raise ModelLoadError(f"{model_path} is not a .keras file (expected the .keras format).")
    if not zipfile.is_zipfile(model_path):
        raise ModelLoadError(
            f"{model_path} is not a valid .keras file: not a zip archive (truncated or corrupt?)."
        )
    try:
        with zipfile.ZipFile(model_path) as zf:
            bad = zf.testzip()
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ModelLoadError(f"{model_path} is corrupt: {e}") from e
    if bad is not None:
        raise ModelLoadError(f"{model_path} is corrupt: member {bad!r} fails its CRC check.")
    if CONFIG_FILE not in names:  # A .keras archive holds its own config.json.
        raise ModelLoadError(f"{model_path} is not a Keras model archive: it has no config.json.")
    try:
        return keras.saving.load_model(
            model_path, custom_objects=custom_objects, compile=compile, safe_mode=True
        )
    except Exception as e:
        message = str(e)
        if "safe_mode" in message or "Lambda" in message or "unsafe" in message:
            raise ModelLoadError(
                f"refused to load {model_path}: it carries Python code (e.g. a Lambda layer), "
                f"which Keras safe mode does not execute. Rebuild the model without Lambda "
                f"layers (use a registered custom layer) and save it again."
            ) from e
        raise ModelLoadError(f"could not load model {model_path}: {type(e).__name__}: {e}") from e


def save_model_atomically(model, path: str | os.PathLike) -> Path:
    """Saves `model` as `.keras` beside `path`, then renames it over `path`.

    Readers (and a crash) never see a half-written model file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path

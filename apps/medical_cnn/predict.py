"""Prediction on image files: PNG, JPEG (and BMP/GIF) of any size and colour mode.

Each file is decoded and converted exactly as the exported SavedModel does it
(`data.decode_image`: luminance or RGB to match the model, central crop to the
training aspect ratio, antialiased resize), then the model gives a probability
and a label at the run's stored threshold. A file that cannot be read or
decoded gets an `error` record naming it; the others are still predicted.

Prediction through TF Serving (`apps.medical_cnn.serving`) reads files with the
same `read_image_file` and builds records with the same `prediction_record`,
so both print identical lines. This module imports Keras only when a model is
loaded, so the served path stays light.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from apps.common.errors import DataError, UserError
from apps.common.rundir import check_folder_path
from apps.common.textio import read_input_bytes
from apps.medical_cnn import data as data_lib

if TYPE_CHECKING:
    from apps.medical_cnn.artifacts import LoadedRun

# First bytes of the encodings `tf.io.decode_image` recognises (WebP and JPEG XL
# too, in recent TensorFlow). A file that starts otherwise is not sent anywhere.
_IMAGE_SIGNATURES = (
    (b"\x89PNG", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
)
# Errors reading one file that leave the other files to be predicted.
FILE_ERRORS = (FileNotFoundError, ValueError, IsADirectoryError, PermissionError)


def image_format(data: bytes) -> str | None:
    """The encoding of `data` by its first bytes (`"PNG"`, `"JPEG"`, ...), or `None`.

    A check of the signature only: a file that passes may still be truncated.
    """
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    for magic, name in _IMAGE_SIGNATURES:
        if data.startswith(magic):
            return name
    return None


def not_an_image(path: str | os.PathLike, reason: str) -> DataError:
    """The error for a file that is not a readable image (the same text everywhere)."""
    return DataError(f"{path} is not a readable image (PNG, JPEG, BMP or GIF expected): {reason}")


def read_image_file(path: str | os.PathLike) -> bytes:
    """The bytes of an image file, checked to start like an image.

    Raises:
        MissingFileError: the file does not exist (a `FileNotFoundError`).
        UserError: the path is a folder.
        DataError: the file cannot be read, or does not start like a PNG, JPEG,
            BMP or GIF.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not an image file; pass the image files in it.")
    data = read_input_bytes(path, "image file")  # pipes too; a clear error when unreadable
    if image_format(data) is None:
        reason = "the file is empty" if not data else "its content is not in an image format"
        raise not_an_image(path, reason)
    return data


def load_image_file(path: str | os.PathLike, height: int, width: int, channels: int) -> np.ndarray:
    """One image file -> float32 `(height, width, channels)` in 0..255.

    Raises:
        MissingFileError: the file does not exist (a `FileNotFoundError`).
        UserError: the path is a folder.
        DataError: the file is not a decodable image.
    """
    import tensorflow as tf

    encoded = read_image_file(path)
    try:
        return data_lib.decode_image(tf.constant(encoded), height, width, channels).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
        # TF messages look like "{{function_node ...}} Unknown image file format. ... [Op:...]".
        reason = getattr(e, "message", str(e)).split("}}")[-1].split("[Op:")[0].strip()
        raise not_an_image(path, reason) from e


def prediction_record(
    path: str | os.PathLike,
    probability: float,
    label: int,
    class_name: str,
    threshold: float | None = None,
    probabilities=None,
) -> dict:
    """One output line: `{"file", ["probabilities"], "probability", "label",
    "class_name", ["threshold"]}`, in this order, with plain Python values.

    `threshold` is given for binary models, `probabilities` for multi-class ones.
    """
    record = {"file": str(path)}
    if probabilities is not None:
        record["probabilities"] = [float(v) for v in probabilities]
    record.update(probability=float(probability), label=int(label), class_name=str(class_name))
    if threshold is not None:
        record["threshold"] = float(threshold)
    return record


def error_record(path: str | os.PathLike, error: BaseException) -> dict:
    """The output line of a file that could not be predicted: `{"file", "error"}`."""
    return {"file": str(path), "error": str(error)}


def _record(run: LoadedRun, path, probs: np.ndarray) -> dict:
    if probs.shape[-1] == 1:
        p = float(probs[0])
        label = int(p >= run.threshold)
        return prediction_record(path, p, label, run.class_names[label], threshold=run.threshold)
    label = int(np.argmax(probs))
    return prediction_record(path, probs[label], label, run.class_names[label], probabilities=probs)


def predict_files(
    model: str | os.PathLike | LoadedRun,
    paths: list[str | os.PathLike],
    explain_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """Predicts each image file; returns one record per file, in order.

    Args:
        model: run directory, `.keras` file, or a `LoadedRun`.
        paths: image files.
        explain_dir: if given, a Grad-CAM overlay `<stem>_gradcam.png` is
            written there for each image (its path is in the record as `gradcam`).

    Returns:
        Records `{"file", "probability", "label", "class_name", "threshold"}`
        (multi-class: `probabilities` too), or `{"file", "error"}` for a file
        that could not be read.

    Raises:
        UserError: `explain_dir` (or a parent) is a file, or Grad-CAM cannot
            run here (not the TensorFlow backend, a model without a
            `ConvBlock`); checked before any image is predicted, the folder
            before the model is even loaded.
        RunDirError, ModelLoadError: the model cannot be used (see `load_run`).
    """
    import keras

    from apps.medical_cnn.artifacts import LoadedRun, load_run

    if explain_dir is not None:
        explain_dir = check_folder_path(explain_dir, "--explain", "the Grad-CAM overlays")
        if keras.backend.backend() != "tensorflow":
            raise UserError(
                f"--explain (Grad-CAM) needs the TensorFlow backend; run with "
                f"KERAS_BACKEND=tensorflow (current backend: {keras.backend.backend()})."
            )
    run = model if isinstance(model, LoadedRun) else load_run(model)
    if explain_dir is not None:
        from apps.medical_cnn.gradcam import explained_layers

        try:
            explained_layers(run.model)
        except ValueError:
            raise UserError(
                f"--explain: {run.model_path} has no ConvBlock layer for Grad-CAM to explain; "
                f"use a model written by 'medical-cnn train', or leave out --explain."
            ) from None
    height, width, channels = run.input_shape
    records: list[dict | None] = [None] * len(paths)
    images, positions = [], []
    for i, path in enumerate(paths):
        try:
            images.append(load_image_file(path, height, width, channels))
            positions.append(i)
        except FILE_ERRORS as e:
            records[i] = error_record(path, e)
    if images:
        batch = np.stack(images)
        probabilities = np.asarray(run.model.predict(batch, verbose=0))
        heatmaps = None
        if explain_dir is not None:
            from apps.medical_cnn.gradcam import gradcam, save_overlay

            heatmaps, _ = gradcam(run.model, batch)
        for j, i in enumerate(positions):
            records[i] = _record(run, paths[i], probabilities[j])
            if heatmaps is not None:
                out = Path(explain_dir) / f"{Path(paths[i]).stem}_gradcam.png"
                if any(r and r.get("gradcam") == str(out) for r in records if r):
                    out = out.with_name(f"{Path(paths[i]).stem}_{i}_gradcam.png")
                save_overlay(out, batch[j], heatmaps[j])
                records[i]["gradcam"] = str(out)
    return records

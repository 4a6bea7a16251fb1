"""Prediction on image files: PNG, JPEG (and BMP/GIF) of any size and colour mode.

Each file is decoded and converted exactly as the exported SavedModel does it
(`data.decode_image`: luminance or RGB to match the model, central crop to the
training aspect ratio, antialiased resize), then the model gives a probability
and a label at the run's stored threshold. A file that cannot be read or
decoded gets an `error` record naming it; the others are still predicted.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from apps.medical_cnn import data as data_lib
from apps.medical_cnn.artifacts import LoadedRun, load_run


def load_image_file(path: str | os.PathLike, height: int, width: int, channels: int) -> np.ndarray:
    """One image file -> float32 `(height, width, channels)` in 0..255.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a decodable image.
    """
    import tensorflow as tf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    encoded = path.read_bytes()
    try:
        return data_lib.decode_image(tf.constant(encoded), height, width, channels).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
        # TF messages look like "{{function_node ...}} Unknown image file format. ... [Op:...]".
        reason = getattr(e, "message", str(e)).split("}}")[-1].split("[Op:")[0].strip()
        raise ValueError(
            f"{path} is not a readable image (PNG, JPEG, BMP or GIF expected): {reason}"
        ) from e


def _record(run: LoadedRun, path, probs: np.ndarray) -> dict:
    if probs.shape[-1] == 1:
        p = float(probs[0])
        label = int(p >= run.threshold)
        return {
            "file": str(path),
            "probability": p,
            "label": label,
            "class_name": run.class_names[label],
            "threshold": run.threshold,
        }
    label = int(np.argmax(probs))
    return {
        "file": str(path),
        "probabilities": [float(v) for v in probs],
        "probability": float(probs[label]),
        "label": label,
        "class_name": run.class_names[label],
    }


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
    """
    run = model if isinstance(model, LoadedRun) else load_run(model)
    height, width, channels = run.input_shape
    records: list[dict | None] = [None] * len(paths)
    images, positions = [], []
    for i, path in enumerate(paths):
        try:
            images.append(load_image_file(path, height, width, channels))
            positions.append(i)
        except (FileNotFoundError, ValueError, IsADirectoryError, PermissionError) as e:
            records[i] = {"file": str(path), "error": str(e)}
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

"""Export to a TF Serving SavedModel with the image preprocessing inside the graph.

Signatures of the SavedModel (binary models; `probabilities` `(batch, K)` is
added for multi-class ones):

- `serving_default(image_bytes: string[batch])`: encoded PNG/JPEG/BMP/GIF
  bytes of any size and colour mode; decoded, converted (luminance or RGB),
  centre-cropped and resized exactly as `predict` does, then the model.
- `predict_pixels(pixels: float32[batch, H, W, C])`: images already at the
  model's input size, pixel values in 0..255.

Both return `probability` (float32 `[batch]`, of the positive class, or of the
predicted class), `label` (int64 `[batch]`) and `class_name` (string `[batch]`).
Binary models also return `threshold` (float64 `[batch]`): the decision
threshold read from the run's `threshold.json` at export time (0.5 when there
is none), the one `label` is computed with (`label = probability >= threshold`).
It is float64 so that a client prints it exactly as stored, and it travels with
every prediction so that a served answer carries what a local one does.

The version folder also holds `assets.extra/model_info.json`: what the
model is (`ensemble.ensemble_info`: members, test-time views and shift,
temperature), its threshold and class names, so that whoever serves it can
tell a TTA ensemble from a single model without loading it. (TF Serving
copies `assets.extra/` along and ignores files it does not know.)

The version folder is written by `apps.common.export.export_versioned`: a
temporary folder renamed to `<base>/<next integer>` only when complete. It
holds TF Serving's warm-up file (`assets.extra/tf_serving_warmup_requests`,
`apps.common.warmup`): batches of 1 and 3 images for each signature, so that
the server traces both before the version takes requests.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from apps.common.errors import UserError
from apps.common.export import check_base_dir, export_versioned
from apps.common.io import atomic_write_json
from apps.common.rundir import check_folder_path
from apps.common.warmup import write_warmup_requests
from apps.medical_cnn import data as data_lib
from apps.medical_cnn.artifacts import LoadedRun, load_run
from apps.medical_cnn.ensemble import ensemble_info

MODEL_INFO_FILE = Path("assets.extra") / "model_info.json"

DEFAULT_BASE = Path("saved_models") / "medical_cnn"


def warmup_requests(height: int, width: int, channels: int) -> list:
    """Warm-up requests for both signatures: `[(signature_name, {input: batch})]`.

    `serving_default` gets encoded images as clients send them (a greyscale
    PNG at the model's size, an RGB JPEG and an RGBA PNG of other sizes, so
    that decoding, colour conversion and resizing all run); `predict_pixels`
    the same images as pixels. Batches of 1 and 3.
    """
    import numpy as np
    import tensorflow as tf

    ramp = np.linspace(0, 255, 64 * 64, dtype=np.float32).reshape(64, 64, 1)
    grey = tf.image.resize(ramp, (height, width)).numpy().astype(np.uint8)
    rgb = np.concatenate([ramp, ramp[::-1], ramp.transpose(1, 0, 2)], axis=-1).astype(np.uint8)
    rgba = np.concatenate([rgb[:40, :48], np.full((40, 48, 1), 255, np.uint8)], axis=-1)
    encoded = [
        tf.io.encode_png(grey).numpy(),
        tf.io.encode_jpeg(rgb[:48, :], quality=90).numpy(),
        tf.io.encode_png(rgba).numpy(),
    ]
    pixels = np.stack(
        [data_lib.decode_image(e, height, width, channels).numpy() for e in encoded]
    ).astype(np.float32)
    return [
        ("serving_default", {"image_bytes": encoded[:1]}),
        ("serving_default", {"image_bytes": encoded}),
        ("predict_pixels", {"pixels": pixels[:1]}),
        ("predict_pixels", {"pixels": pixels}),
    ]


def write_saved_model(run: LoadedRun, path: str | os.PathLike) -> None:
    """Writes the SavedModel of `run` into the folder `path` (see the module doc),
    with its warm-up requests."""
    import tensorflow as tf

    model = run.model
    height, width, channels = run.input_shape
    binary = run.num_classes == 2
    threshold = tf.constant(run.threshold, tf.float64)
    names = tf.constant(list(run.class_names))

    def outputs(probabilities):
        if binary:
            p = probabilities[:, 0]
            # Compared in float64, as `predict` compares float(p) with the stored value.
            label = tf.cast(tf.cast(p, tf.float64) >= threshold, tf.int64)
            return {
                "probability": p,
                "label": label,
                "class_name": tf.gather(names, label),
                "threshold": tf.fill(tf.shape(p), threshold),
            }
        label = tf.argmax(probabilities, axis=-1)
        return {
            "probabilities": probabilities,
            "probability": tf.reduce_max(probabilities, axis=-1),
            "label": label,
            "class_name": tf.gather(names, label),
        }

    def serve_bytes(image_bytes):
        images = tf.map_fn(
            lambda encoded: data_lib.decode_image(encoded, height, width, channels),
            image_bytes,
            fn_output_signature=tf.TensorSpec((height, width, channels), tf.float32),
        )
        return outputs(model(images, training=False))

    def serve_pixels(pixels):
        return outputs(model(pixels, training=False))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        serve_bytes,
        input_signature=[tf.TensorSpec((None,), tf.string, name="image_bytes")],
    )
    archive.add_endpoint(
        "predict_pixels",
        serve_pixels,
        input_signature=[tf.TensorSpec((None, height, width, channels), tf.float32, name="pixels")],
    )
    archive.write_out(os.fspath(path), verbose=False)
    atomic_write_json(
        Path(path) / MODEL_INFO_FILE,
        {
            **ensemble_info(model),
            "threshold": run.threshold if binary else None,
            "class_names": list(run.class_names),
            "input_shape": [height, width, channels],
        },
    )
    write_warmup_requests(path, warmup_requests(height, width, channels))


def export(
    model: str | os.PathLike,
    base_dir: str | os.PathLike = DEFAULT_BASE,
    keep: int | None = None,
) -> Path:
    """Exports a run directory or `.keras` file as the next version under `base_dir`.

    Everything is checked before `base_dir` is created: the base path, `keep`,
    the run (not another app's, a readable image classifier, a valid
    threshold). If writing still fails, folders this call created are removed
    again, so a failed export leaves nothing behind.

    Returns:
        The new version folder, e.g. `saved_models/medical_cnn/3`.

    Raises:
        UserError: `base_dir` (or a parent) is a file, or is itself a
            SavedModel; `keep` is not a positive integer.
        RunDirError: `model` is another app's run directory.
        ModelLoadError: the model is missing, corrupt, unsafe or not an image
            classifier (see `artifacts.load_run`).
    """
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise UserError(f"--keep must be a positive integer. Received: {keep!r}")
    base = check_folder_path(base_dir, "--base", "the exported versions")
    check_base_dir(base)
    run = load_run(model)
    # The first missing folder of `base` (and its parents): removed again on failure.
    created = next((p for p in (*reversed(base.parents), base) if not p.exists()), None)
    try:
        return export_versioned(base, lambda tmp: write_saved_model(run, tmp), keep=keep)
    except BaseException:
        if created is not None:
            _remove_empty_folders(base, created)
        raise


def _remove_empty_folders(path: Path, top: Path) -> None:
    """Removes `path` and its parents up to `top` (included) while they are empty."""
    for folder in (path, *path.parents):
        try:
            folder.rmdir()  # Only empty folders: never data.
        except OSError:
            return
        if folder == top:
            return

"""Grad-CAM heatmaps on the last convolution block (Selvaraju et al., 2017).

For a class score `y` and the feature maps `A_k` of the last `ConvBlock`,
`heatmap = ReLU(sum_k alpha_k A_k)` with `alpha_k` the spatial mean of
`dy / dA_k`, scaled to [0, 1] per image. The explained score is the predicted
class's probability (for a sigmoid output: `p` for label 1, `1 - p` for label 0).

For an ensemble (`ensemble.build_ensemble`) the explained score is the mean of
its members' probabilities on the image as given (test-time shifts would move
the feature maps, and the temperature is monotone, so neither changes where
the evidence lies), and the last blocks of all members count as one layer:
`heatmap = ReLU(sum_m sum_k alpha_mk A_mk)`, with `alpha_mk` from the gradient
of that mean. Members share the architecture, so their maps align.

Gradients use TensorFlow's `GradientTape`, so Grad-CAM needs the TensorFlow
backend (prediction itself does not).

Reference:
    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017 (https://arxiv.org/abs/1610.02391).
"""

from __future__ import annotations

import io
import os

import keras
import numpy as np

from apps.common.io import atomic_write_bytes
from apps.medical_cnn.ensemble import ensemble_members
from apps.medical_cnn.model import last_conv_block


def explained_layers(
    model: keras.Model, layer_name: str | None = None
) -> list[tuple[keras.Model, keras.layers.Layer]]:
    """`(model, layer)` pairs Grad-CAM reads: the model's last `ConvBlock`, or each member's.

    Raises:
        ValueError: a model (or member) has no `ConvBlock` (or no `layer_name`).
    """
    members = ensemble_members(model) or [model]
    return [(m, m.get_layer(layer_name) if layer_name else last_conv_block(m)) for m in members]


def gradcam(
    model: keras.Model,
    images: np.ndarray,
    class_index=None,
    layer_name: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM heatmaps for a batch.

    Args:
        model: a Functional classifier (sigmoid `(batch, 1)` or softmax output).
        images: `(batch, H, W, C)` model inputs.
        class_index: class to explain, an int or one per image; default: the
            predicted class (with threshold 0.5 for a sigmoid output).
        layer_name: layer whose output is explained; default: the last `ConvBlock`.

    Returns:
        `(heatmaps, probabilities)`: heatmaps `(batch, h, w)` in [0, 1] at the
        layer's resolution, and the model's output `(batch, units)`.

    With a `class_index` of None the explained class of an ensemble is the one
    its members' mean predicts (at 0.5 for a sigmoid output).
    """
    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError(
            f"Grad-CAM here uses tf.GradientTape; run with KERAS_BACKEND=tensorflow "
            f"(current backend: {keras.backend.backend()})."
        )
    import tensorflow as tf

    explained = explained_layers(model, layer_name)
    grad_models = [keras.Model(m.inputs, [layer.output, m.output]) for m, layer in explained]
    x = tf.convert_to_tensor(np.asarray(images, "float32"))
    with tf.GradientTape() as tape:
        outputs = [grad_model(x, training=False) for grad_model in grad_models]
        features = [f for f, _ in outputs]
        probabilities = tf.add_n([p for _, p in outputs]) / float(len(outputs))
        if probabilities.shape[-1] == 1:
            p = probabilities[:, 0]
            if class_index is None:
                chosen = tf.cast(p >= 0.5, tf.float32)
            else:
                chosen = tf.broadcast_to(tf.cast(class_index, tf.float32), tf.shape(p))
            score = chosen * p + (1.0 - chosen) * (1.0 - p)
        else:
            if class_index is None:
                idx = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            else:
                idx = tf.broadcast_to(tf.cast(class_index, tf.int32), tf.shape(probabilities)[:1])
            score = tf.gather(probabilities, idx, axis=1, batch_dims=1)
    grads = tape.gradient(score, features)
    cam = 0.0
    for grad, feature in zip(grads, features, strict=True):
        weights = tf.reduce_mean(grad, axis=(1, 2), keepdims=True)
        cam += tf.reduce_sum(weights * feature, axis=-1)
    cam = tf.nn.relu(cam).numpy()
    if explained[0][0] is not model:
        probabilities = model(x, training=False)  # The ensemble's own output.
    peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    cam = np.where(peak > 0, cam / np.where(peak > 0, peak, 1.0), 0.0)
    return cam.astype("float32"), probabilities.numpy()


def upsample(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of one `(h, w)` heatmap to `(height, width)`."""
    from PIL import Image

    image = Image.fromarray(np.asarray(heatmap, "float32"), mode="F")
    return np.asarray(image.resize((width, height), Image.BILINEAR), "float32")


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, min_size: int = 224):
    """RGB uint8 picture of `image` (H, W, C in 0..255) with a jet-coloured heatmap on top.

    Small images are enlarged (nearest neighbour) to at least `min_size` pixels
    so the overlay is readable.
    """
    from matplotlib import colormaps
    from PIL import Image

    image = np.asarray(image, "float32")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    rgb = np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]
    scale = max(1, int(np.ceil(min_size / max(rgb.shape[:2]))))
    h, w = rgb.shape[0] * scale, rgb.shape[1] * scale
    base = np.asarray(
        Image.fromarray(np.clip(rgb, 0, 255).astype("uint8")).resize((w, h), Image.NEAREST),
        "float32",
    )
    heat = np.clip(upsample(heatmap, h, w), 0.0, 1.0)
    colour = colormaps["jet"](heat)[..., :3] * 255.0
    return np.clip((1 - alpha) * base + alpha * colour, 0, 255).astype("uint8")


def save_overlay(path: str | os.PathLike, image: np.ndarray, heatmap: np.ndarray) -> None:
    """Writes `overlay(image, heatmap)` as a PNG (atomically)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(overlay(image, heatmap)).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())

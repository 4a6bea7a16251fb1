import keras
import numpy as np
import pytest

from apps.common.model_io import load_keras_model
from apps.medical_cnn.gradcam import gradcam, overlay, save_overlay
from custom_layers.layers import ConvBlock


def _toy_model():
    """Score = sigmoid(mean brightness): the evidence is wherever pixels are bright."""
    inputs = keras.Input((28, 28, 1))
    features = ConvBlock(
        2,
        kernel_size=1,
        use_batch_norm=False,
        activation="relu",
        kernel_initializer="ones",
        name="last_conv_block",
    )(inputs)
    x = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="ones")(x)
    return keras.Model(inputs, outputs)


def test_gradcam_highlights_planted_patch():
    model = _toy_model()
    images = np.zeros((2, 28, 28, 1), "float32")
    images[0, 4:9, 17:22] = 1.0  # top right
    images[1, 20:25, 3:8] = 1.0  # bottom left
    heatmaps, probabilities = gradcam(model, images, class_index=1)
    assert heatmaps.shape == (2, 28, 28)
    assert probabilities.shape == (2, 1)
    assert heatmaps.min() >= 0.0 and heatmaps.max() == pytest.approx(1.0)
    for heat, (rows, cols) in zip(
        heatmaps, [(slice(4, 9), slice(17, 22)), (slice(20, 25), slice(3, 8))], strict=True
    ):
        mask = np.zeros((28, 28), bool)
        mask[rows, cols] = True
        peak = np.unravel_index(np.argmax(heat), heat.shape)
        assert mask[peak]
        np.testing.assert_allclose(heat[mask], 1.0)
        np.testing.assert_allclose(heat[~mask], 0.0)


def test_gradcam_on_trained_model_and_overlay(tiny_run, tmp_path, pneumoniamnist_npz):
    run_dir, _ = tiny_run
    model = load_keras_model(run_dir)
    images = np.load(pneumoniamnist_npz)["val_images"][:3, :, :, None].astype("float32")
    heatmaps, probabilities = gradcam(model, images)
    # tiny: 28x28 input, two stages -> the last block works at 14x14.
    assert heatmaps.shape == (3, 14, 14)
    assert np.all((heatmaps >= 0) & (heatmaps <= 1))
    np.testing.assert_allclose(probabilities, model.predict(images, verbose=0), rtol=1e-5)
    picture = overlay(images[0], heatmaps[0])
    assert picture.shape == (224, 224, 3) and picture.dtype == np.uint8
    save_overlay(tmp_path / "x.png", images[0], heatmaps[0])
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"

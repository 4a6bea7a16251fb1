"""The app beyond PneumoniaMNIST: a multi-class RGB .npz, and a TFDS data set (mock data)."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from apps.medical_cnn.config import get_config
from apps.medical_cnn.evaluate import evaluate
from apps.medical_cnn.export import export
from apps.medical_cnn.predict import predict_files
from apps.medical_cnn.train import train


def _synthetic_rgb(n, seed):
    """Three classes told apart by which colour channel is bright."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, (n, 16, 16, 3)).astype("uint8")
    for i, c in enumerate(labels):
        images[i, :, :, c] += 150
    return images, labels[:, None]


def test_multiclass_rgb_npz_end_to_end(tmp_path):
    train_x, train_y = _synthetic_rgb(240, 0)
    val_x, val_y = _synthetic_rgb(30, 1)
    path = tmp_path / "colours.npz"
    np.savez(path, train_images=train_x, train_labels=train_y, val_images=val_x, val_labels=val_y)
    cfg = dataclasses.replace(
        get_config("tiny"),
        dataset="npz",
        data_path=str(path),
        input_size=16,
        epochs=4,
        batch_size=16,
    )
    run_dir = tmp_path / "run"
    report = train(cfg, run_dir, verbose=0, tensorboard=False)
    assert report["accuracy"] > 0.9
    assert len(report["confusion_matrix"]) == 3
    assert not (run_dir / "threshold.json").exists()  # argmax, no binary threshold

    evaluation = evaluate(run_dir, split="val")
    assert evaluation["accuracy"] == pytest.approx(report["accuracy"])
    assert len(evaluation["per_class"]) == 3

    # A grey image file is replicated to RGB for this 3-channel model.
    Image.fromarray(val_x[0]).save(tmp_path / "rgb.png")
    Image.fromarray(val_x[0]).convert("L").save(tmp_path / "gray.png")
    records = predict_files(run_dir, [tmp_path / "rgb.png", tmp_path / "gray.png"])
    assert records[0]["label"] == int(val_y[0, 0])
    assert len(records[0]["probabilities"]) == 3
    assert sum(records[1]["probabilities"]) == pytest.approx(1.0, abs=1e-5)

    version = export(run_dir, tmp_path / "sm")
    served = tf.saved_model.load(str(version)).signatures["serving_default"](
        image_bytes=tf.constant([(tmp_path / "rgb.png").read_bytes()])
    )
    np.testing.assert_allclose(
        served["probabilities"].numpy()[0], records[0]["probabilities"], atol=1e-5
    )
    assert served["label"].numpy().tolist() == [records[0]["label"]]


def test_tfds_training_with_mock_data(tmp_path):
    cfg = dataclasses.replace(
        get_config("tiny"), dataset="tfds:malaria", tfds_image_size=16, input_size=16, epochs=1
    )
    with tfds.testing.mock_data(num_examples=40):
        report = train(cfg, tmp_path / "run", verbose=0, tensorboard=False)
    assert report["data_source"] == "tfds:malaria"
    assert report["num_train_examples"] == 40
    saved = (tmp_path / "run" / "config.json").read_text()
    assert '"parasitized"' in saved and '"input_shape": [\n    16,\n    16,\n    3\n  ]' in saved


def test_pneumoniamnist_loader_rejects_multiclass_file(tmp_path):
    from apps.common.errors import DataError
    from apps.medical_cnn.data import load_pneumoniamnist

    x, y = _synthetic_rgb(6, 0)
    path = tmp_path / "blood.npz"
    np.savez(path, train_images=x, train_labels=y, val_images=x, val_labels=y)
    with pytest.raises(
        DataError,
        match=r"'train_labels' holds label 2 \(2 images\), but PneumoniaMNIST has 2 classes.*"
        r"--dataset npz",
    ):
        load_pneumoniamnist(path)

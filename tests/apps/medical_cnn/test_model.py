import dataclasses

import keras
import numpy as np
import pytest

from apps.medical_cnn.config import PRESETS, MedicalCNNConfig, get_config
from apps.medical_cnn.model import build_loss, build_model, compile_model, last_conv_block
from custom_layers import losses as cl_losses
from custom_layers.layers import ConvBlock


def resolved(**overrides):
    base = dict(
        input_shape=(28, 28, 1),
        num_classes=2,
        class_names=("normal", "pneumonia"),
        class_weights=(2.0, 0.5),
        pixel_mean=(120.0,),
        pixel_variance=(3600.0,),
    )
    base.update(overrides)
    return dataclasses.replace(get_config("tiny"), **base)


def test_binary_and_multiclass_heads():
    x = np.random.default_rng(0).uniform(0, 255, (3, 28, 28, 1)).astype("float32")
    binary = build_model(resolved())
    p = binary.predict(x, verbose=0)
    assert p.shape == (3, 1) and np.all((p > 0) & (p < 1))
    multi = build_model(resolved(num_classes=4, class_weights=(1.0,) * 4))
    p = multi.predict(x, verbose=0)
    assert p.shape == (3, 4)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)


def test_config_choices_reach_the_layers():
    cfg = resolved(pooling="l2", activation="prelu", filters=(4, 8, 8), convs_per_stage=2)
    model = build_model(cfg)
    blocks = [layer for layer in model.layers if isinstance(layer, ConvBlock)]
    assert len(blocks) == 6
    assert [b.pooling for b in blocks] == [None, "l2", None, "l2", None, None]
    assert all(b.activation == "prelu" for b in blocks)
    assert last_conv_block(model) is blocks[-1]
    assert model.get_layer("normalize").mean is not None


def test_input_resized_inside_model_and_normalised():
    cfg = resolved(input_size=56)
    model = build_model(cfg)
    assert model.get_layer("resize").output.shape[1:3] == (56, 56)
    assert model.input_shape == (None, 28, 28, 1)
    norm = keras.Model(model.input, model.get_layer("normalize").output)
    x = np.full((1, 28, 28, 1), 180.0, "float32")
    np.testing.assert_allclose(norm.predict(x, verbose=0), (180.0 - 120.0) / 60.0, rtol=1e-4)


def test_augmentation_only_in_training():
    model = build_model(resolved(augment=True, rotation=0.1, translation=0.1, zoom=0.1))
    x = np.random.default_rng(0).uniform(0, 255, (2, 28, 28, 1)).astype("float32")
    aug = model.get_layer("augmentation")
    np.testing.assert_array_equal(aug(x, training=False), x)
    assert not np.allclose(aug(x, training=True), x)
    np.testing.assert_allclose(model(x, training=False), model(x, training=False))


@pytest.mark.parametrize(
    "loss, imbalance, num_classes, expected",
    [
        ("bce", "class_weight", 2, cl_losses.BinaryCrossentropy),
        ("bce", "none", 3, cl_losses.CategoricalCrossentropy),
        ("focal", "none", 2, cl_losses.BinaryFocalCrossentropy),
        ("focal", "none", 3, cl_losses.CategoricalFocalCrossentropy),
        ("gce", "none", 2, cl_losses.GeneralizedCrossentropy),
        ("weighted_bce", "none", 2, cl_losses.WeightedBinaryCrossentropy),
        ("weighted_bce", "none", 3, cl_losses.WeightedCategoricalCrossentropy),
    ],
)
def test_loss_choice(loss, imbalance, num_classes, expected):
    cfg = resolved(
        loss=loss,
        imbalance=imbalance,
        num_classes=num_classes,
        class_weights=(2.0,) + (0.5,) * (num_classes - 1),
    )
    assert type(build_loss(cfg)) is expected


def test_focal_alpha_balances_classes():
    loss = build_loss(resolved(loss="focal", imbalance="none", class_weights=(2.0, 2 / 3)))
    # alpha = weight share of the positive class = n_neg / n = 0.25 for 25% negatives.
    assert loss.get_config()["alpha"] == pytest.approx(0.25)


def test_compiled_model_trains_one_step():
    cfg = resolved()
    model = compile_model(build_model(cfg), cfg)
    x = np.random.default_rng(0).uniform(0, 255, (8, 28, 28, 1)).astype("float32")
    y = np.array([[0], [1]] * 4, "float32")
    logs = model.fit(x, y, epochs=1, verbose=0).history
    assert {"loss", "auc", "accuracy"} <= set(logs)


def test_config_validation_and_presets():
    assert set(PRESETS) == {"tiny", "default", "best"}
    with pytest.raises(
        ValueError, match="Unknown preset 'huge'. Known presets: best, default, tiny"
    ):
        get_config("huge")
    with pytest.raises(ValueError, match="pooling must be one of .*Received: pooling='median'"):
        MedicalCNNConfig(pooling="median")
    with pytest.raises(ValueError, match="already balances the classes"):
        MedicalCNNConfig(loss="focal", imbalance="class_weight")
    with pytest.raises(ValueError, match="dataset must be 'pneumoniamnist', 'npz' or 'tfds:NAME'"):
        MedicalCNNConfig(dataset="mnist")
    with pytest.raises(ValueError, match="Received: gce_q=0.0"):
        MedicalCNNConfig(gce_q=0.0)
    with pytest.raises(ValueError, match="lacks data-derived fields"):
        build_model(get_config("tiny"))

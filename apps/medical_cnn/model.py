"""The chest X-ray CNN, built from `custom_layers` blocks.

```
image (H, W, C) in 0..255
 -> Resizing to input_size x input_size     (only if H, W differ from it)
 -> augmentation                             (random layers: active in training only)
 -> Normalization (training-set mean/variance)
 -> stage 1: ConvBlock x convs_per_stage, pooling   (conv, [batch norm], activation)
 -> ...
 -> last stage: ConvBlock x convs_per_stage  (no pooling; Grad-CAM reads this block)
 -> GlobalAveragePooling2D -> Dropout -> Dense(1, sigmoid) | Dense(K, softmax)
```

Everything from raw pixels to probabilities is inside the model, so the
`.keras` file, `predict` and the exported SavedModel all see the same
preprocessing. No TensorFlow import here: the model runs on any Keras backend.
"""

from __future__ import annotations

import keras

from apps.medical_cnn.config import MedicalCNNConfig
from custom_layers import losses as cl_losses
from custom_layers.layers import ConvBlock

LAST_CONV_BLOCK = "last_conv_block"


def _check_resolved(cfg: MedicalCNNConfig) -> None:
    missing = [
        name
        for name in ("input_shape", "num_classes", "pixel_mean", "pixel_variance")
        if getattr(cfg, name) is None
    ]
    if missing:
        raise ValueError(
            f"config lacks data-derived fields {missing}; `train` fills them from the data "
            f"(see `train.resolve_config`)."
        )


def build_augmentation(cfg: MedicalCNNConfig, seed: int | None = None) -> keras.Sequential:
    """Random geometric and contrast changes, active only when `training=True`."""
    layers = []
    if cfg.rotation:
        layers.append(keras.layers.RandomRotation(cfg.rotation, fill_mode="nearest", seed=seed))
    if cfg.translation:
        layers.append(
            keras.layers.RandomTranslation(
                cfg.translation, cfg.translation, fill_mode="nearest", seed=seed
            )
        )
    if cfg.zoom:
        layers.append(keras.layers.RandomZoom(cfg.zoom, fill_mode="nearest", seed=seed))
    if cfg.contrast:
        layers.append(keras.layers.RandomContrast(cfg.contrast, value_range=(0, 255), seed=seed))
    if cfg.brightness:
        layers.append(
            keras.layers.RandomBrightness(cfg.brightness, value_range=(0, 255), seed=seed)
        )
    return keras.Sequential(layers, name="augmentation")


def build_model(cfg: MedicalCNNConfig, sync_batch_norm: bool = False) -> keras.Model:
    """Builds the (uncompiled) classifier for a config resolved from the data.

    Args:
        cfg: a config whose `input_shape`, `num_classes`, `pixel_mean` and
            `pixel_variance` are set (see `train.resolve_config`).
        sync_batch_norm: batch statistics over the global batch under a
            TensorFlow strategy with several replicas
            (`ConvBlock(batch_norm_synchronized=True)`; see
            `Distribution.sync_batch_norm`). Inference is unaffected.

    Returns:
        A Functional model mapping images `(batch, H, W, C)` in 0..255 to
        probabilities `(batch, 1)` (binary) or `(batch, K)`.
    """
    _check_resolved(cfg)
    inputs = keras.Input(tuple(cfg.input_shape), name="image")
    x = inputs
    h, w = cfg.input_shape[0], cfg.input_shape[1]
    if (h, w) != (cfg.input_size, cfg.input_size):
        x = keras.layers.Resizing(cfg.input_size, cfg.input_size, name="resize")(x)
    if cfg.augment:
        x = build_augmentation(cfg, seed=cfg.seed)(x)
    x = keras.layers.Normalization(
        mean=list(cfg.pixel_mean), variance=list(cfg.pixel_variance), name="normalize"
    )(x)
    n_stages = len(cfg.filters)
    for i, filters in enumerate(cfg.filters):
        last_stage = i == n_stages - 1
        for j in range(cfg.convs_per_stage):
            last_in_stage = j == cfg.convs_per_stage - 1
            pooled = last_in_stage and not last_stage
            name = (
                LAST_CONV_BLOCK if (last_stage and last_in_stage) else f"stage{i + 1}_block{j + 1}"
            )
            x = ConvBlock(
                filters,
                kernel_size=3,
                use_batch_norm=cfg.batch_norm,
                activation=cfg.activation,
                pooling=cfg.pooling if pooled else None,
                pool_size=2,
                # Distance-weighted pooling needs a window wider than its stride.
                pool_strides=2,
                dropout=cfg.conv_dropout if pooled else 0.0,
                batch_norm_momentum=cfg.batch_norm_momentum,
                batch_norm_synchronized=sync_batch_norm,
                name=name,
            )(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    if cfg.dropout:
        x = keras.layers.Dropout(cfg.dropout, name="head_dropout")(x)
    if cfg.num_classes == 2:
        outputs = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    else:
        outputs = keras.layers.Dense(cfg.num_classes, activation="softmax", name="probability")(x)
    return keras.Model(inputs, outputs, name="medical_cnn")


def build_loss(cfg: MedicalCNNConfig) -> keras.losses.Loss:
    """The configured loss from `custom_layers.losses`, binary or categorical form."""
    binary = cfg.num_classes == 2
    if cfg.loss == "bce":
        cls = cl_losses.BinaryCrossentropy if binary else cl_losses.CategoricalCrossentropy
        return cls(label_smoothing=cfg.label_smoothing)
    if cfg.loss == "focal":
        alpha = cfg.focal_alpha
        if alpha is None:
            # Weight of the positive class = share of negatives: balances the classes.
            alpha = cfg.class_weights[1] / sum(cfg.class_weights) if binary else 0.25
        cls = (
            cl_losses.BinaryFocalCrossentropy if binary else cl_losses.CategoricalFocalCrossentropy
        )
        return cls(alpha=float(alpha), gamma=cfg.focal_gamma, label_smoothing=cfg.label_smoothing)
    if cfg.loss == "gce":
        return cl_losses.GeneralizedCrossentropy(q=cfg.gce_q)
    if cfg.loss == "weighted_bce":
        cls = (
            cl_losses.WeightedBinaryCrossentropy
            if binary
            else cl_losses.WeightedCategoricalCrossentropy
        )
        return cls(class_weights=list(cfg.class_weights), label_smoothing=cfg.label_smoothing)
    raise ValueError(f"unknown loss {cfg.loss!r}")


def compile_model(model: keras.Model, cfg: MedicalCNNConfig) -> keras.Model:
    """Compiles with AdamW, the configured loss, and AUC / accuracy metrics."""
    binary = cfg.num_classes == 2
    metrics = [
        keras.metrics.AUC(name="auc"),
        keras.metrics.BinaryAccuracy(name="accuracy")
        if binary
        else keras.metrics.CategoricalAccuracy(name="accuracy"),
    ]
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay
        ),
        loss=build_loss(cfg),
        metrics=metrics,
    )
    return model


def last_conv_block(model: keras.Model) -> keras.layers.Layer:
    """The last `ConvBlock` of the model (where Grad-CAM looks)."""
    try:
        return model.get_layer(LAST_CONV_BLOCK)
    except ValueError:
        blocks = [layer for layer in model.layers if isinstance(layer, ConvBlock)]
        if not blocks:
            raise ValueError(f"model {model.name!r} has no ConvBlock for Grad-CAM.") from None
        return blocks[-1]

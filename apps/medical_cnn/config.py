"""Typed configuration of the chest X-ray classifier, with named presets.

One flat dataclass holds every choice a run makes (data, model, loss,
imbalance handling, optimisation); `train` saves the resolved config as
`config.json` beside the model, including what it learned from the data
(input shape, classes, class weights, normalisation statistics).

Presets:
- `tiny`: a few thousand parameters and 28x28 input; trains in seconds, for tests.
- `default`: one model, threshold on the validation split; trains in under 5
  minutes on a 2-core CPU without AVX-512.
- `best`: the 5-fold cross-validated ensemble of `default` models with
  test-time shifts and calibration; the one to pick for quality.
"""

from __future__ import annotations

import dataclasses
import math

from apps.common.config import get_preset
from apps.common.errors import UserError

POOLING_CHOICES = ("max", "average", "l2", "distance_weighted")
LOSS_CHOICES = ("bce", "focal", "gce", "weighted_bce")
IMBALANCE_CHOICES = ("class_weight", "none")
LR_SCHEDULE_CHOICES = ("cosine", "constant")
THRESHOLD_CHOICES = ("youden", "sensitivity")


@dataclasses.dataclass
class MedicalCNNConfig:
    """Everything a training run of `medical-cnn` decides.

    Data:
        dataset: `"pneumoniamnist"` (official MedMNIST file: downloaded and
            verified, or `data_path`), `"npz"` (a MedMNIST-style file at
            `data_path`) or `"tfds:NAME"` (a TensorFlow Datasets image
            classification data set with `image` and `label` features).
        data_path: local `.npz` file; used instead of downloading.
        tfds_image_size: TFDS images (any size) are resized to this square size.
        max_train_examples: if set, train on a seeded random subset of this size.

    Model (see `model.build_model`):
        input_size: the square size the network works at; inputs of another
            size are resized inside the model (e.g. 28 -> 56 gives the small
            MedMNIST images more room for convolutions).
        filters: filters per stage; each stage has `convs_per_stage` `ConvBlock`s
            and all stages but the last end with pooling.
        pooling: `max`, `average`, `l2` (`L2Pooling2D`) or `distance_weighted`.
        activation: any `ConvBlock` activation: `relu`, `prelu`,
            `custom_layers>leaky_relu`, `gelu`, ...
        conv_dropout / dropout: dropout after each pooling stage / before the head.
        batch_norm: batch normalization in every `ConvBlock`. Under a
            TensorFlow strategy with several replicas its statistics are
            all-reduced over the global batch, so with no dropout a step on
            several devices equals a step on one (see `docs/distributed.md`).
        batch_norm_momentum: momentum of the batch-norm moving statistics
            (lower suits short runs with few steps).
        weight_decay: AdamW decoupled weight decay.
        augment: random rotation (fraction of a full turn), translation and
            zoom (fractions of the size), contrast and brightness (fractions
            of the 0..255 range), active only in training.

    Loss and imbalance:
        loss: `bce`, `focal` (`BinaryFocalCrossentropy`; `focal_alpha` None
            means the share of negative examples, which balances the classes),
            `gce` (`GeneralizedCrossentropy`, robust to label noise) or
            `weighted_bce` (balanced class weights inside the loss). Multi-class
            data uses the categorical form of each.
        imbalance: `class_weight` (balanced weights passed to `fit`) or `none`.
            Use `none` with `focal` / `weighted_bce`, which balance in the loss.
            The default was chosen on validation results (see the benchmark).

    Training:
        batch_size, epochs, learning_rate, lr_schedule (`cosine` decay per
        epoch or `constant`), patience (early stopping on `val_auc`), seed.

    Cross-validation and ensembling (see `crossval.py`):
        folds: 1 trains one model on train and picks the threshold on val;
            K >= 2 pools train + val, trains one model per stratified fold,
            and takes the threshold, calibration and figures from the
            out-of-fold predictions; `model.keras` is then the ensemble of
            the K fold models (`ensemble.build_ensemble`).
        tta / tta_shift: the ensemble also averages over the image shifted by
            `tta_shift` pixels left, right, up and down.
        calibrate: fit a temperature on the out-of-fold predictions and put
            it in the ensemble (`--folds` only).
        threshold_method / target_sensitivity: the decision threshold
            maximises Youden's J (`youden`) or is the most specific one that
            keeps `target_sensitivity` (`sensitivity`).
        distribute: the `--distribute` strategy the run was trained with
            (recorded by `train`; a run may be resumed with another one, since
            `batch_size` is the global batch).

    Filled by `train` from the data (saved in `config.json`):
        input_shape, num_classes, class_names, class_weights, pixel_mean, pixel_variance.

    Raises:
        UserError: a field out of range or an unknown choice (a `ValueError`;
            the message names the field and the value received). Values come
            from presets, command-line flags and `config.json` files, which
            the user controls.
    """

    # Data
    dataset: str = "pneumoniamnist"
    data_path: str | None = None
    tfds_image_size: int = 64
    max_train_examples: int | None = None
    # Model
    input_size: int = 28
    filters: tuple[int, ...] = (24, 48, 96)
    convs_per_stage: int = 2
    pooling: str = "max"
    activation: str = "relu"
    conv_dropout: float = 0.1
    dropout: float = 0.3
    batch_norm: bool = True
    weight_decay: float = 1e-4
    batch_norm_momentum: float = 0.99
    augment: bool = True
    rotation: float = 0.05
    translation: float = 0.1
    zoom: float = 0.15
    contrast: float = 0.3
    brightness: float = 0.1
    # Loss and imbalance
    loss: str = "bce"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    focal_alpha: float | None = None
    gce_q: float = 0.7
    imbalance: str = "class_weight"
    # Training
    batch_size: int = 64
    # 15, not 20: the 5-minute budget on a 2-core CPU without AVX-512 (see the README).
    epochs: int = 15
    learning_rate: float = 2e-3
    lr_schedule: str = "cosine"
    patience: int = 10
    seed: int = 42
    distribute: str = "none"
    # Cross-validation and ensembling
    folds: int = 1
    tta: bool = False
    tta_shift: int = 2
    calibrate: bool = True
    threshold_method: str = "youden"
    target_sensitivity: float = 0.95
    # Resolved from the data by `train` (None until then).
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    class_weights: tuple[float, ...] | None = None
    pixel_mean: tuple[float, ...] | None = None
    pixel_variance: tuple[float, ...] | None = None

    def __post_init__(self):
        _check_choice("pooling", self.pooling, POOLING_CHOICES)
        _check_choice("loss", self.loss, LOSS_CHOICES)
        _check_choice("imbalance", self.imbalance, IMBALANCE_CHOICES)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULE_CHOICES)
        _check_choice("threshold_method", self.threshold_method, THRESHOLD_CHOICES)
        if not (self.dataset in ("pneumoniamnist", "npz") or self.dataset.startswith("tfds:")):
            raise UserError(
                "dataset must be 'pneumoniamnist', 'npz' or 'tfds:NAME'. "
                f"Received: dataset={self.dataset!r}"
            )
        if self.dataset == "npz" and not self.data_path:
            raise UserError("dataset='npz' needs data_path (pass --data PATH).")
        for name in (
            "input_size",
            "convs_per_stage",
            "batch_size",
            "epochs",
            "patience",
            "folds",
            "tta_shift",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer. Received: {name}={value!r}")
        if not self.filters or any(not isinstance(f, int) or f < 1 for f in self.filters):
            raise UserError(
                f"filters must be a non-empty tuple of positive integers. Received: "
                f"filters={self.filters!r}"
            )
        for name in ("conv_dropout", "dropout", "label_smoothing"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise UserError(f"{name} must be in [0, 1). Received: {name}={value!r}")
        if not (
            isinstance(self.learning_rate, (int, float))
            and math.isfinite(self.learning_rate)
            and self.learning_rate > 0
        ):
            raise UserError(
                f"learning_rate must be a positive number. Received: "
                f"learning_rate={self.learning_rate!r}"
            )
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise UserError(f"seed must be an integer in 0..2**32-1. Received: seed={self.seed!r}")
        if not 0.0 < self.gce_q <= 1.0:
            raise UserError(f"gce_q must be in (0, 1]. Received: gce_q={self.gce_q!r}")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise UserError(
                "max_train_examples must be a positive integer or None. "
                f"Received: max_train_examples={self.max_train_examples!r}"
            )
        if self.loss in ("weighted_bce", "focal") and self.imbalance == "class_weight":
            raise UserError(
                f"loss={self.loss!r} already balances the classes; combine it with "
                f"imbalance='none' (received imbalance='class_weight')."
            )
        if self.folds == 1 and self.tta:
            raise UserError(
                "tta averages the fold models over shifted views; it needs folds >= 2 "
                "(received folds=1, tta=True)."
            )
        if not 0.0 < self.target_sensitivity <= 1.0:
            raise UserError(
                f"target_sensitivity must be in (0, 1]. Received: "
                f"target_sensitivity={self.target_sensitivity!r}"
            )
        if self.focal_alpha is not None and not 0.0 <= self.focal_alpha <= 1.0:
            raise UserError(f"focal_alpha must be in [0, 1]. Received: {self.focal_alpha!r}")
        self.filters = tuple(self.filters)

    @property
    def is_binary(self) -> bool:
        return self.num_classes == 2


def _check_choice(name, value, choices):
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}. Received: {name}={value!r}")


def tiny() -> MedicalCNNConfig:
    """A small, fast model for tests: 28x28, two stages, a few epochs."""
    return MedicalCNNConfig(
        input_size=28,
        filters=(8, 16),
        convs_per_stage=1,
        conv_dropout=0.0,
        dropout=0.1,
        batch_norm_momentum=0.9,
        augment=False,
        batch_size=64,
        epochs=4,
        learning_rate=3e-3,
        patience=3,
    )


def default() -> MedicalCNNConfig:
    """The benchmarked model (see `benchmarks/medical_cnn.py`)."""
    return MedicalCNNConfig()


def best() -> MedicalCNNConfig:
    """The quality preset: 5-fold cross-validated ensemble of `default` models, with TTA.

    Five `default` models, one per stratified fold of train + val, averaged
    with test-time shifts into one calibrated model; the threshold and the
    reported figures come from the out-of-fold predictions. See
    `benchmarks/medical_cv_study.py` for the choices, and the README for its
    time on a 2-core CPU without AVX-512.
    """
    return dataclasses.replace(default(), folds=5, tta=True)


PRESETS = {"tiny": tiny, "default": default, "best": best}


def get_config(name: str) -> MedicalCNNConfig:
    """Returns a fresh config for the preset `name` (`tiny`, `default` or `best`)."""
    return get_preset(PRESETS, name)

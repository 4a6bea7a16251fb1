"""An ensemble of classifiers as one Keras model, with optional test-time shifts.

```
image ─┬─ view 0 (as is) ──┬─ member_0 ─┐
       ├─ view 1 (shifted) ├─ member_1 ─┤  mean of every (view, member)
       └─ ...              └─ ...       ┘  probability ─> temperature ─> probability
```

`build_ensemble` wraps trained members (the fold models of
`medical-cnn train --folds K`) in one Functional model: the same input and
output as a single classifier, so `.keras` saving, `predict`, `evaluate`,
Grad-CAM (`gradcam` explains the members' mean) and the TF Serving export
need nothing new. Its output is the mean of its members' probabilities over
the test-time views, then temperature scaling (`ProbabilityTemperature`,
fitted on out-of-fold predictions; 1.0 leaves it unchanged).

Test-time augmentation (TTA) adds views shifted by `tta_shift` pixels left,
right, up and down (edges repeated, as the training augmentation's
`fill_mode="nearest"` does). Shifts are the change a chest X-ray tolerates
without becoming another X-ray: patient position varies by a few percent of
the field. Flips are left out on purpose: a mirrored chest puts the heart on
the right (dextrocardia), which the training augmentation never shows and
real images almost never have. The number of views and the shift are
recorded in the model itself (`tta_views` in `ensemble_info`) and in the
export's signature-independent metadata (see `export.py`).

Layers here are registered (package `medical_cnn`) and written with
`keras.ops`, so the ensemble saves, loads in safe mode and runs on any backend.
"""

from __future__ import annotations

import keras
from keras import ops

MEMBER_PREFIX = "member_"


@keras.saving.register_keras_serializable(package="medical_cnn")
class ImageShift(keras.layers.Layer):
    """Shifts images `(batch, H, W, C)` by whole pixels, repeating the edge rows/columns.

    Args:
        dx: pixels to the right (negative: to the left).
        dy: pixels down (negative: up).

    Example:
        `ImageShift(dx=1)(x)[:, :, 1:]` equals `x[:, :, :-1]`, and column 0
        repeats column 0 of `x`.
    """

    def __init__(self, dx: int = 0, dy: int = 0, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("dx", dx), ("dy", dy)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer. Received: {name}={value!r}")
        self.dx, self.dy = dx, dy

    @staticmethod
    def _shift(x, shift: int, axis: int):
        if shift == 0:
            return x
        size = x.shape[axis]
        if size is None or abs(shift) >= size:
            raise ValueError(f"cannot shift by {shift} pixels an axis of size {size}.")
        index = [slice(None)] * 4
        if shift > 0:
            index[axis] = slice(0, 1)
            edge = ops.repeat(x[tuple(index)], shift, axis=axis)
            index[axis] = slice(0, size - shift)
            return ops.concatenate([edge, x[tuple(index)]], axis=axis)
        index[axis] = slice(size - 1, size)
        edge = ops.repeat(x[tuple(index)], -shift, axis=axis)
        index[axis] = slice(-shift, size)
        return ops.concatenate([x[tuple(index)], edge], axis=axis)

    def call(self, images):
        return self._shift(self._shift(images, self.dy, 1), self.dx, 2)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "dx": self.dx, "dy": self.dy}


@keras.saving.register_keras_serializable(package="medical_cnn")
class ProbabilityTemperature(keras.layers.Layer):
    """Temperature scaling of probabilities: logits divided by `temperature`.

    One unit (sigmoid): `sigmoid(logit(p) / T)`; several (softmax):
    `softmax(log(p) / T)`. `T > 1` softens over-confident probabilities,
    `T < 1` sharpens them; the ranking of the examples never changes. See
    `apps.medical_cnn.calibration` (the NumPy twin that fits `T`).

    Args:
        temperature: a positive number (1.0: the identity).
    """

    def __init__(self, temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(
                f"temperature must be a positive number. Received: temperature={temperature!r}"
            )
        self.temperature = float(temperature)

    def call(self, probabilities):
        if self.temperature == 1.0:
            return probabilities
        eps = 1e-7
        p = ops.clip(probabilities, eps, 1.0 - eps)
        if probabilities.shape[-1] == 1:
            return ops.sigmoid((ops.log(p) - ops.log1p(-p)) / self.temperature)
        return ops.softmax(ops.log(p) / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


def tta_offsets(tta: bool, shift: int) -> list[tuple[int, int]]:
    """The `(dx, dy)` of each test-time view: the image, then +-shift in x and y."""
    if not tta:
        return [(0, 0)]
    return [(0, 0), (shift, 0), (-shift, 0), (0, shift), (0, -shift)]


def build_ensemble(
    members: list[keras.Model],
    tta: bool = False,
    tta_shift: int = 2,
    temperature: float = 1.0,
    name: str = "medical_cnn_ensemble",
) -> keras.Model:
    """One model averaging `members`' probabilities (over test-time views if `tta`).

    Args:
        members: trained classifiers with the same input and output shapes.
            They are used as they are (their weights are shared, not copied)
            and renamed `member_0`, `member_1`, ...
        tta: add the four shifted views of `tta_offsets`.
        tta_shift: the shift in pixels.
        temperature: `ProbabilityTemperature` applied to the mean.

    Returns:
        A Functional model: images `(batch, H, W, C)` in 0..255 to
        probabilities, like each member.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member.")
    shapes = {(tuple(m.input_shape[1:]), tuple(m.output_shape[1:])) for m in members}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members differ in input/output shapes: {sorted(shapes)}")
    if isinstance(tta_shift, bool) or not isinstance(tta_shift, int) or tta_shift < 1:
        raise ValueError(f"tta_shift must be a positive integer. Received: {tta_shift!r}")
    for i, member in enumerate(members):
        member.name = f"{MEMBER_PREFIX}{i}"
    inputs = keras.Input(tuple(members[0].input_shape[1:]), name="image")
    outputs = []
    for dx, dy in tta_offsets(tta, tta_shift):
        view = inputs if (dx, dy) == (0, 0) else ImageShift(dx, dy, name=f"view_{dx}_{dy}")(inputs)
        outputs.extend(member(view) for member in members)
    mean = outputs[0] if len(outputs) == 1 else keras.layers.Average(name="mean")(outputs)
    probability = ProbabilityTemperature(temperature, name="temperature")(mean)
    return keras.Model(inputs, probability, name=name)


def ensemble_members(model: keras.Model) -> list[keras.Model]:
    """The member models of an ensemble built by `build_ensemble` ([] for a plain model)."""
    return [
        layer
        for layer in model.layers
        if isinstance(layer, keras.Model) and layer.name.startswith(MEMBER_PREFIX)
    ]


def ensemble_info(model: keras.Model) -> dict:
    """What an ensemble is made of: members, test-time views, temperature (None if plain)."""
    members = ensemble_members(model)
    if not members:
        return {"members": 1, "tta_views": 1, "temperature": 1.0}
    views = [layer for layer in model.layers if isinstance(layer, ImageShift)]
    temperature = next(
        (layer.temperature for layer in model.layers if isinstance(layer, ProbabilityTemperature)),
        1.0,
    )
    return {
        "members": len(members),
        "tta_views": 1 + len(views),
        "tta_shifts": [[v.dx, v.dy] for v in views],
        "temperature": temperature,
    }

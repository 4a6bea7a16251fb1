"""Argument checks shared by the whole library (private; Keras keeps `argument_validation.py`).

Each check raises `ValueError` naming the argument and what was received, in
Keras's style (`... Received: num_heads=0`), and returns the normalised value.
Bools are never accepted as numbers.
"""

from __future__ import annotations

import numbers

import keras
import numpy as np
from keras import ops


def is_int(value) -> bool:
    """True for Python and NumPy integers, False for bools."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """True for real numbers (ints, floats, NumPy scalars), False for bools."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_bool(name, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"Argument `{name}` must be True or False. Received: {name}={value!r}")
    return bool(value)


def check_int(name, value) -> int:
    """Any integer (negative ones too), as a Python int."""
    if not is_int(value):
        raise ValueError(f"Argument `{name}` must be an integer. Received: {name}={value!r}")
    return int(value)


def check_positive_int(name, value) -> int:
    if not is_int(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def check_range(name, value, low, high, low_open=False) -> float:
    """Checks `low <= value <= high` (`low < value` if `low_open`)."""
    ok = is_number(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(
            f"Argument `{name}` must be a number in {bracket}{low}, {high}]. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def check_non_negative(name, value) -> float:
    """A finite number `>= 0`, as a float."""
    if not (is_number(value) and 0 <= value < float("inf")):
        raise ValueError(
            f"Argument `{name}` must be a finite number >= 0. Received: {name}={value!r}"
        )
    return float(value)


def normalize_pair(value, name) -> tuple[int, int]:
    """Return `value` (an int or a pair of ints) as a tuple of two positive ints."""
    pair = (value, value) if is_int(value) else value
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(is_int(v) and v > 0 for v in pair)
    ):
        raise ValueError(
            f"`{name}` must be a positive integer or a tuple of two positive integers. "
            f"Received: {name}={value!r}"
        )
    return tuple(int(v) for v in pair)


def normalize_padding(value, name="padding") -> str:
    """Return `"valid"` or `"same"` (any case accepted), else raise."""
    if isinstance(value, str) and value.lower() in ("valid", "same"):
        return value.lower()
    raise ValueError(f'`{name}` must be "valid" or "same". Received: {name}={value!r}')


def normalize_data_format(value) -> str:
    """Return `"channels_last"` or `"channels_first"`; `None` means Keras's global default."""
    data_format = keras.config.image_data_format() if value is None else value
    if isinstance(data_format, str) and data_format.lower() in ("channels_last", "channels_first"):
        return data_format.lower()
    raise ValueError(
        '`data_format` must be None, "channels_last" or "channels_first". '
        f"Received: data_format={value!r}"
    )


def sparse_token_ids(y_true, y_pred):
    """`y_true` as int32 token ids `(batch, T)` for predictions `(batch, T, vocab_size)`.

    A trailing axis of size 1 on `y_true` is dropped. Shared by the masked
    sequence loss and `custom_layers.metrics.MaskedAccuracy`.

    Raises:
        ValueError: the ranks do not fit that pattern.
    """
    y_true = ops.cast(y_true, "int32")
    if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, -1)
    if len(y_true.shape) + 1 != len(y_pred.shape):
        raise ValueError(
            "Expected `y_true` of shape (batch, T) holding token ids and `y_pred` of "
            "shape (batch, T, vocab_size). "
            f"Received: y_true.shape={y_true.shape}, y_pred.shape={y_pred.shape}"
        )
    return y_true

"""Calibration: temperature scaling and the expected calibration error, in NumPy.

A classifier is calibrated when, among the images it gives probability `p`, a
share `p` is positive. Class-weighted training is not (it is trained as if
the classes were balanced), and neither is an average of models. Temperature
scaling (Guo et al., 2017) divides the logits by one number `T` fitted to
minimise the negative log-likelihood on held-out predictions (here: the
out-of-fold ones). It is monotone, so it changes no ranking (AUC) and no
decision made at a correspondingly moved threshold; it only makes the
probabilities mean what they say. The expected calibration error (ECE) is the
bin-weighted mean gap between confidence and accuracy over equal-width bins.

Binary models have one sigmoid output `p` (logit `log p - log(1 - p)`);
multi-class models a softmax (logits `log p` up to a constant).

Reference:
    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017
    (https://arxiv.org/abs/1706.04599).
"""

from __future__ import annotations

import numpy as np

# Probabilities are clipped away from 0 and 1 before taking logits (float32 saturates).
EPS = 1e-7


def _binary(probabilities) -> bool:
    p = np.asarray(probabilities)
    return p.ndim == 1 or p.shape[-1] == 1


def apply_temperature(probabilities, temperature: float) -> np.ndarray:
    """Probabilities with their logits divided by `temperature` (shape kept)."""
    p = np.clip(np.asarray(probabilities, "float64"), EPS, 1.0 - EPS)
    if _binary(p):
        logits = np.log(p) - np.log1p(-p)
        return 1.0 / (1.0 + np.exp(-logits / temperature))
    z = np.log(p) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def negative_log_likelihood(labels, probabilities) -> float:
    """Mean negative log-likelihood of integer `labels` under `probabilities`."""
    labels = np.asarray(labels).reshape(-1).astype("int64")
    p = np.clip(np.asarray(probabilities, "float64"), EPS, 1.0 - EPS)
    if _binary(p):
        p = p.reshape(-1)
        return float(-np.mean(np.where(labels == 1, np.log(p), np.log1p(-p))))
    return float(-np.mean(np.log(p[np.arange(len(labels)), labels])))


def fit_temperature(labels, probabilities, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature in [low, high] minimising the NLL of `labels` (golden-section on log T).

    The NLL of temperature-scaled predictions is unimodal in `log T` for
    these one-parameter families, so a golden-section search finds its
    minimum to ~1e-6 in log space without an optimiser dependency.
    """
    if not 0 < low < high:
        raise ValueError(f"need 0 < low < high. Received: low={low}, high={high}")

    def loss(log_t):
        return negative_log_likelihood(labels, apply_temperature(probabilities, np.exp(log_t)))

    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > 1e-6:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    return float(np.exp((a + b) / 2.0))


def expected_calibration_error(labels, probabilities, bins: int = 15) -> float:
    """ECE over `bins` equal-width confidence bins.

    Binary: the confidence is the positive-class probability and the
    "accuracy" of a bin its share of positives (a reliability diagram of
    `p`). Multi-class: confidence is the top probability, accuracy whether
    the top class is right. `sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`.
    """
    labels = np.asarray(labels).reshape(-1).astype("int64")
    p = np.asarray(probabilities, "float64")
    if _binary(p):
        confidence = p.reshape(-1)
        hit = (labels == 1).astype("float64")
    else:
        confidence = p.max(axis=-1)
        hit = (p.argmax(axis=-1) == labels).astype("float64")
    if len(confidence) != len(labels):
        raise ValueError(
            f"labels and probabilities differ in length: {len(labels)} vs {len(confidence)}."
        )
    # Bin b holds confidences in (b/bins, (b+1)/bins]; 0 falls in the first bin.
    index = np.clip(np.ceil(confidence * bins).astype("int64") - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        chosen = index == b
        if chosen.any():
            total += chosen.mean() * abs(hit[chosen].mean() - confidence[chosen].mean())
    return float(total)

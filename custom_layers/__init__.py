"""Reusable Keras 3 layers, activations, losses and metrics.

Everything here is written with `keras.ops`, so it runs on every Keras backend
(TensorFlow, JAX, PyTorch), and every object is registered under the
`custom_layers` package so that models using it save to and load from `.keras`
files.
"""

from custom_layers import activations, layers, losses, metrics

__all__ = ["activations", "layers", "losses", "metrics"]
__version__ = "0.1.0"

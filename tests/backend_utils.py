"""Backend-neutral gradient helpers for tests (TensorFlow: GradientTape; JAX: jax.grad)."""

import keras
import numpy as np
import pytest
from keras import ops


def value_and_grad(fn, x):
    """`fn(x)` and the gradient of `sum(fn(x))` with respect to `x`, as NumPy arrays."""
    x = np.asarray(x, dtype="float32")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
            total = ops.sum(value)
        return ops.convert_to_numpy(value), ops.convert_to_numpy(tape.gradient(total, x))
    if backend == "jax":
        import jax

        def total(v):
            value = fn(v)
            return ops.sum(value), value

        (_, value), grad = jax.value_and_grad(total, has_aux=True)(x)
        return np.asarray(value), np.asarray(grad)
    pytest.skip(f"no gradient helper for the {backend} backend")


def gradients(fn, *args):
    """Gradients of `sum(fn(*args))` with respect to every argument, as NumPy arrays."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        grad_fn = jax.grad(lambda *a: ops.sum(fn(*a)), argnums=tuple(range(len(args))))
        return [np.asarray(g) for g in grad_fn(*args)]
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(a) for a in args]
        with tf.GradientTape() as tape:
            for t in tensors:
                tape.watch(t)
            total = tf.reduce_sum(fn(*tensors))
        return [g.numpy() for g in tape.gradient(total, tensors)]
    pytest.skip(f"no gradient helper for the {backend} backend")


# Prepended to scripts that a test runs in a subprocess to play a machine without TensorFlow:
# a meta-path finder that makes every `import tensorflow` (and TFDS) fail. Imports `json`, `sys`.
BLOCK_TENSORFLOW = r"""
import importlib.abc, json, sys

BLOCKED = ("tensorflow", "tensorflow_datasets")


class BlockTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None


sys.meta_path.insert(0, BlockTensorFlow())
"""

"""Helpers shared by the tests: gradients on every backend (TensorFlow: GradientTape; JAX:
jax.grad), child processes on a chosen backend, two-worker launches, crashing and diverging
callbacks, a server that never answers."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops


class CrashAtBatch(keras.callbacks.Callback):
    """Raises `RuntimeError("simulated crash")` after batch `batch` of epoch `epoch`.

    It stops `fit` in the middle of an epoch, like a killed process.
    """

    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            raise RuntimeError("simulated crash")


# The TensorFlow side of a cross-backend test: it starts the JAX side in a child process.
TENSORFLOW_SIDE_ONLY = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="this test process plays the TensorFlow side; it starts the JAX side itself",
)


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


# The end of a script that starts with BLOCK_TENSORFLOW: writes `{out}/report.json` with the
# script's `rc`, the backend, the TensorFlow modules that got loaded (none, if the blocker
# held) and the error that `import tensorflow` raises.
REPORT_TENSORFLOW_ABSENCE = r"""
import keras

try:
    import tensorflow  # noqa: F401

    import_error = None
except ImportError as e:
    import_error = str(e)
report = {
    "rc": rc,
    "backend": keras.backend.backend(),
    "tensorflow_modules": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
    "import_error": import_error,
}
with open(f"{out}/report.json", "w") as f:
    json.dump(report, f)
"""


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(backend, **extra):
    """Environment for a child Python process on `backend` that can import this project."""
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), env.get("PYTHONPATH", "")]),
        **extra,
    )
    return env


def run_python_script(script_text, args, workdir, backend, timeout, name="script.py", **env):
    """Runs `script_text` with `args` in a fresh Python process on `backend`.

    The script is written to `workdir / name` and run there, with
    `subprocess_env(backend, **env)`. Fails the test with the end of the
    child's stderr unless it exits with 0; returns the completed process.
    """
    path = Path(workdir) / name
    path.write_text(script_text)
    proc = subprocess.run(
        [sys.executable, str(path), *map(str, args)],
        env=subprocess_env(backend, **env),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def free_loopback_ports(n):
    """`n` distinct free TCP ports on 127.0.0.1 (bound to port 0, then released)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_tensorflow_workers(script_text, worker_args, tmp_path, timeout):
    """Runs one `MultiWorkerMirroredStrategy` worker process per entry of `worker_args`.

    Each worker runs `script_text` with its arguments, on 127.0.0.1 ports only,
    with its own `TF_CONFIG` and temporary folder. Every worker is killed if any
    one does not finish within `timeout` seconds. Asserts each exits with 0.

    Returns:
        The combined stdout/stderr of each worker.
    """
    script = Path(tmp_path) / "worker.py"
    script.write_text(script_text)
    ports = free_loopback_ports(len(worker_args))
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    procs = []
    try:
        for index, args in enumerate(worker_args):
            scratch = Path(tmp_path) / f"tmp{index}"  # each worker's tempfile.gettempdir()
            scratch.mkdir()
            tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            env = subprocess_env("tensorflow", TF_CONFIG=json.dumps(tf_config), TMPDIR=str(scratch))
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(script), *map(str, args)],
                    env=env,
                    cwd=tmp_path,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-4000:]
    return logs


class VariablesAtEpochEnd(keras.callbacks.Callback):
    """Keeps every variable of the model (dropout seeds included) at the end of each epoch."""

    def __init__(self):
        super().__init__()
        self.epochs = {}

    def on_epoch_end(self, epoch, logs=None):
        self.epochs[epoch] = [np.array(v) for v in self.model.variables]


def read_history_rows(run_dir):
    """The rows of a run directory's `history.csv`, as dicts of strings."""
    import csv

    with open(Path(run_dir) / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


class NaNWeightsAtEpoch(keras.callbacks.Callback):
    """Makes every trainable weight NaN before the first batch of epoch `epoch`: the run diverges."""

    def __init__(self, epoch=0):
        super().__init__()
        self.epoch, self.current = epoch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.current == self.epoch:
            for weight in self.model.trainable_weights:
                weight.assign(np.full(weight.shape, np.nan, weight.dtype))


@contextlib.contextmanager
def silent_server():
    """A server on 127.0.0.1 that accepts connections and never answers; yields its URL."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop, held = threading.Event(), []

    def accept_and_stay_silent():
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:  # the accept timeout, or the socket closed
                pass

    listener = threading.Thread(target=accept_and_stay_silent, daemon=True)
    listener.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        listener.join(5)
        for connection in held:
            connection.close()
        server.close()


def call_bounded(fn, limit=30.0):
    """`fn()` in a thread; returns (its result, seconds), or fails the test after `limit` s.

    For calls that must give up by themselves (a client's timeout): a call that
    ignores its timeout fails the test instead of hanging it.
    """
    result = {}

    def run():
        start = time.monotonic()
        result["value"] = fn()
        result["seconds"] = time.monotonic() - start

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(limit)
    assert not worker.is_alive(), f"the call did not return within {limit:g} s"
    return result["value"], result["seconds"]

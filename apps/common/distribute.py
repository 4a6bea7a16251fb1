"""Training on several devices or machines with Keras's standard engines.

Every app's `train --distribute` flag maps to one of:

| `--distribute` | TensorFlow backend                                   | JAX backend                                   |
|----------------|------------------------------------------------------|-----------------------------------------------|
| `none`         | one device (the default strategy)                    | one device                                    |
| `mirrored`     | `tf.distribute.MirroredStrategy` over the local GPUs | `keras.distribution.DataParallel` over the    |
|                | (over the logical CPU devices when there is no GPU)  | local devices (`keras.distribution.list_devices()`) |
| `multiworker`  | `tf.distribute.MultiWorkerMirroredStrategy`, cluster | not supported: a clear error                  |
|                | and role read from the `TF_CONFIG` variable          |                                               |

The model is built, compiled and fitted inside `distribution_scope`:

```python
with distribution_scope("mirrored") as dist:
    model = build_model(cfg)
    model.compile(...)
    model.fit(batches_of_the_global_batch_size, ...)
```

The batch the data pipeline yields is the *global* batch: TensorFlow splits it
over the replicas (and, with several workers, shards the `tf.data` pipeline by
data); JAX places each global batch on the device mesh, split along the batch
axis, which needs a batch size divisible by the number of devices
(`Distribution.check_batch_size`). The gradients are averaged over the global
batch, so one step equals a one-device step on the same batch, up to float
rounding, once two TensorFlow-specific gaps are closed by the apps:

- Keras's TensorFlow optimizer clips gradients (`clipnorm`, `global_clipnorm`,
  `clipvalue`) on each replica, before the replicas' gradients are summed.
  `Distribution.prepare_optimizer` makes it sum first and clip the global
  gradient, as on one device (JAX's step already sees the global gradient).
- `BatchNormalization` on TensorFlow normalises with each replica's own batch
  statistics unless it is built with `synchronized=True`
  (`ConvBlock(batch_norm_synchronized=True)`, set where
  `Distribution.sync_batch_norm` says so). Under JAX the step is one SPMD
  program over the global batch, so batch statistics are global already.

Dropout still draws a different mask per TensorFlow replica (same distribution).

With several workers, only the chief writes the run directory; each other
worker writes its checkpoints, logs and backup (`apps.common.callbacks`) to a scratch
folder of its own (`Distribution.work_dir`), as the TensorFlow guide on
multi-worker training recommends, so that workers never race on the same files.
The scratch folder's path depends only on the run directory and the worker's
role, so a worker restarted after a crash finds its backup again; it is removed
when training ends (`Distribution.release_work_dir`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from apps.common.errors import UserError

STRATEGIES = ("none", "mirrored", "multiworker")
TF_CONFIG_ENV = "TF_CONFIG"
# Task types of a `TF_CONFIG` cluster that train (`ps` and `evaluator` belong to
# other strategies).
TRAINING_TASK_TYPES = ("chief", "worker")
WORKER_DIRS_NAME = "keras-apps-worker-dirs"


def keras_backend() -> str:
    import keras

    return keras.backend.backend()


# --------------------------------------------------------------------------- TF_CONFIG


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """The parsed and checked `TF_CONFIG` of one worker.

    Attributes:
        cluster: task type (`"chief"`, `"worker"`) -> list of `"host:port"`.
        task_type: this process's task type.
        task_index: this process's index within its task type.
    """

    cluster: dict[str, list[str]]
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        """Processes that train (chief included)."""
        return sum(len(self.cluster.get(t, [])) for t in TRAINING_TASK_TYPES)

    @property
    def is_chief(self) -> bool:
        """The chief is `chief:0` if the cluster names one, else `worker:0`."""
        if "chief" in self.cluster:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0


def _tf_config_error(problem: str) -> UserError:
    example = json.dumps(
        {
            "cluster": {"worker": ["host1:12345", "host2:12345"]},
            "task": {"type": "worker", "index": 0},
        }
    )
    return UserError(
        f"--distribute multiworker reads the cluster from the {TF_CONFIG_ENV} environment "
        f"variable, but {problem}. Set it on every worker to the same cluster and that "
        f"worker's own task, e.g. {TF_CONFIG_ENV}='{example}' (index 1 on the second "
        f"worker); see docs/distributed.md."
    )


def parse_tf_config(text: str | None = None) -> ClusterConfig:
    """Parses and checks a `TF_CONFIG` value (default: the environment variable).

    Args:
        text: the JSON text; None reads `$TF_CONFIG`.

    Returns:
        A `ClusterConfig`.

    Raises:
        UserError: the variable is missing or empty, not JSON, lacks `cluster`
            or `task`, has no `chief`/`worker` tasks, an address that is not
            `host:port`, or a task type / index that the cluster does not have.
    """
    if text is None:
        text = os.environ.get(TF_CONFIG_ENV)
    if text is None or not text.strip():
        raise _tf_config_error(f"{TF_CONFIG_ENV} is not set")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise _tf_config_error(f"{TF_CONFIG_ENV} is not valid JSON ({e}): {text!r}") from None
    if not isinstance(config, dict):
        raise _tf_config_error(f"{TF_CONFIG_ENV} is not a JSON object: {text!r}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise _tf_config_error(f"{TF_CONFIG_ENV} has no 'cluster' object: {text!r}")
    if not isinstance(task, dict):
        raise _tf_config_error(f"{TF_CONFIG_ENV} has no 'task' object: {text!r}")
    checked = {}
    for task_type, addresses in cluster.items():
        if isinstance(addresses, str):
            addresses = [addresses]
        if not isinstance(addresses, list) or not addresses:
            raise _tf_config_error(
                f"cluster['{task_type}'] is not a non-empty list of 'host:port' addresses"
            )
        for address in addresses:
            host, _, port = str(address).rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise _tf_config_error(
                    f"cluster['{task_type}'] holds {address!r}, which is not 'host:port'"
                )
        checked[task_type] = [str(a) for a in addresses]
    if not any(t in checked for t in TRAINING_TASK_TYPES):
        raise _tf_config_error(
            f"its cluster has no 'chief' or 'worker' tasks (found: {', '.join(checked)})"
        )
    task_type, task_index = task.get("type"), task.get("index", 0)
    if task_type not in TRAINING_TASK_TYPES or task_type not in checked:
        raise _tf_config_error(
            f"task type {task_type!r} is not one of the cluster's training tasks "
            f"({', '.join(t for t in TRAINING_TASK_TYPES if t in checked)})"
        )
    if isinstance(task_index, str) and task_index.isdigit():
        task_index = int(task_index)
    if (
        not isinstance(task_index, int)
        or isinstance(task_index, bool)
        or not 0 <= task_index < len(checked[task_type])
    ):
        raise _tf_config_error(
            f"task index {task_index!r} is out of range for the {len(checked[task_type])} "
            f"'{task_type}' address(es)"
        )
    if "chief" in checked and len(checked["chief"]) != 1:
        raise _tf_config_error("its cluster names more than one 'chief'")
    return ClusterConfig(checked, task_type, task_index)


# --------------------------------------------------------------------------- Distribution


@dataclasses.dataclass(frozen=True)
class Distribution:
    """How one training process uses devices and machines (see the module docs).

    Attributes:
        name: `"none"`, `"mirrored"` or `"multiworker"`.
        backend: the Keras backend it was made for.
        strategy: the `tf.distribute.Strategy` (TensorFlow), the
            `keras.distribution.DataParallel` (JAX), or None for `"none"`.
        num_replicas: model replicas that share each global batch, over all
            workers.
        cluster: the parsed `TF_CONFIG` for `"multiworker"`, else None.
    """

    name: str
    backend: str
    strategy: Any = None
    num_replicas: int = 1
    cluster: ClusterConfig | None = None

    @property
    def num_workers(self) -> int:
        return 1 if self.cluster is None else self.cluster.num_workers

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run directory (always, but for non-chief workers)."""
        return self.cluster is None or self.cluster.is_chief

    @property
    def batch_multiple(self) -> int:
        """Each batch must hold a multiple of this many examples.

        JAX shards every batch evenly over the devices; TensorFlow strategies
        split uneven batches themselves.
        """
        return self.num_replicas if self.backend == "jax" else 1

    def check_batch_size(self, batch_size: int) -> None:
        """Raises `UserError` if the global batch cannot be split evenly where needed."""
        if batch_size % self.batch_multiple:
            raise UserError(
                f"batch_size={batch_size} cannot be split evenly over the {self.num_replicas} "
                f"devices of --distribute {self.name} on JAX; use a multiple of "
                f"{self.num_replicas} (the batch size is the global batch, over all devices)."
            )

    def scope(self) -> contextlib.AbstractContextManager:
        """The context to build, compile and fit the model in."""
        if self.strategy is None:
            return contextlib.nullcontext()
        return self.strategy.scope()

    def work_dir(self, run_dir: str | os.PathLike) -> Path:
        """Where this process writes: `run_dir` on the chief, a scratch folder on other workers."""
        run_dir = Path(run_dir)
        if self.is_chief:
            return run_dir
        key = hashlib.sha256(str(run_dir.expanduser().absolute()).encode()).hexdigest()[:16]
        role = f"{self.cluster.task_type}-{self.cluster.task_index}"
        return Path(tempfile.gettempdir()) / WORKER_DIRS_NAME / f"{key}-{role}"

    def release_work_dir(self, work_dir: str | os.PathLike) -> None:
        """Removes a non-chief worker's scratch folder (never the chief's run directory)."""
        if not self.is_chief:
            shutil.rmtree(work_dir, ignore_errors=True)

    def prepare_tf_dataset(self, dataset):
        """Sets the `tf.data` auto-shard policy: by data with several workers.

        Each worker then reads the whole (identically seeded) pipeline and keeps
        its share of every global batch. Other cases: the dataset, unchanged.
        """
        if self.num_workers == 1:
            return dataset
        import tensorflow as tf

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        return dataset.with_options(options)

    @property
    def sync_batch_norm(self) -> bool:
        """Whether batch norm must all-reduce its statistics to see the global batch.

        True for TensorFlow strategies with several replicas, where each replica
        otherwise normalises its own share of the batch. JAX data parallelism
        computes them over the global batch already.
        """
        return self.backend == "tensorflow" and self.num_replicas > 1

    def prepare_optimizer(self, optimizer):
        """Makes a TensorFlow strategy's optimizer clip the global gradient, as one device does.

        Keras's TensorFlow optimizer clips each replica's gradient (`clipnorm`,
        `global_clipnorm`, `clipvalue`) and only then sums the replicas'
        gradients, so with several replicas a clipped step is not the one-device
        step (tensorflow/tensorflow#33929). With clipping configured, this makes
        the optimizer sum the gradients over the replicas first, clip the sum,
        and hand each replica its share of it (the sum divided by the number of
        replicas) to the optimizer's own cross-replica sum, which so yields the
        clipped global gradient. The price is a second all-reduce per step, paid
        only when clipping is on.

        Call it on the compiled model's optimizer inside `scope()`, before
        `fit`. In other cases (one replica, JAX, no clipping) nothing changes.
        Only this optimizer object is adapted, not its class or config, so a
        saved model loads anywhere as before.

        Args:
            optimizer: a `keras.optimizers.Optimizer`.

        Returns:
            The same optimizer.
        """
        clips = optimizer.clipnorm or optimizer.global_clipnorm or optimizer.clipvalue
        if self.backend == "tensorflow" and self.num_replicas > 1 and clips:
            _clip_after_cross_replica_sum(optimizer)
        return optimizer

    def prepare_loss(self, loss):
        """Makes a loss that averages over the global batch (`global_count`) see all replicas.

        `custom_layers.losses.MaskedSparseCategoricalCrossentropy` divides by
        the number of real tokens of the batch, which under a TensorFlow
        strategy each replica only knows for its own share. For such a loss,
        with several TensorFlow replicas, this replaces the object's
        `global_count` by a sum over the replicas (an all-reduce per step).
        Other losses, one replica and JAX are left as they are. Only this
        object is adapted, not its class or config.

        Returns:
            The same loss.
        """
        if self.backend == "tensorflow" and self.num_replicas > 1 and hasattr(loss, "global_count"):
            loss.global_count = _sum_over_replicas
        return loss

    def prepare_model(self, model):
        """`prepare_optimizer` and `prepare_loss` for a compiled model, inside `scope()`, before `fit`.

        Returns:
            The same model.
        """
        self.prepare_optimizer(model.optimizer)
        losses = model.loss if isinstance(model.loss, (list, tuple)) else [model.loss]
        if isinstance(model.loss, dict):
            losses = list(model.loss.values())
        for loss in losses:
            self.prepare_loss(loss)
        return model

    def describe(self) -> dict:
        """A JSON-friendly summary (stored in an app's metrics)."""
        info = {
            "strategy": self.name,
            "backend": self.backend,
            "num_replicas": self.num_replicas,
            "num_workers": self.num_workers,
        }
        if self.cluster is not None:
            info["task"] = f"{self.cluster.task_type}:{self.cluster.task_index}"
        return info


# TensorFlow allows one MultiWorkerMirroredStrategy per process (collective ops
# are configured once, at start-up), so strategies are made once and reused.
_TF_STRATEGIES: dict[str, Any] = {}


def _check_name(name: str) -> None:
    if name not in STRATEGIES:
        raise ValueError(
            f"distribute must be one of {', '.join(STRATEGIES)}. Received: distribute={name!r}"
        )


def _tf_mirrored():
    import tensorflow as tf

    if "mirrored" not in _TF_STRATEGIES:
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        _TF_STRATEGIES["mirrored"] = tf.distribute.MirroredStrategy(
            devices=[d.name for d in devices]
        )
    return _TF_STRATEGIES["mirrored"]


def _tf_multiworker():
    import tensorflow as tf

    if "multiworker" not in _TF_STRATEGIES:
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as e:
            raise RuntimeError(
                "could not start MultiWorkerMirroredStrategy; it must be created before "
                f"TensorFlow runs any operation in the process ({e})."
            ) from e
        _patch_keras_for_multi_worker()
        _TF_STRATEGIES["multiworker"] = strategy
    return _TF_STRATEGIES["multiworker"]


def get_distribution(name: str = "none", backend: str | None = None) -> Distribution:
    """Creates (or reuses) the distribution for `--distribute name`.

    Call it early: a multi-worker strategy must exist before TensorFlow runs any
    operation in the process.

    Args:
        name: `"none"`, `"mirrored"` or `"multiworker"`.
        backend: the Keras backend; default: the current one.

    Returns:
        A `Distribution`.

    Raises:
        ValueError: an unknown name.
        UserError: a strategy the backend has no engine for (`multiworker` on
            JAX, any strategy on other backends); for `multiworker`, a missing
            or invalid `TF_CONFIG`.
    """
    _check_name(name)
    backend = backend or keras_backend()
    if name == "none":
        return Distribution(name, backend)
    if backend == "jax":
        if name == "multiworker":
            raise UserError(
                "--distribute multiworker uses tf.distribute.MultiWorkerMirroredStrategy and "
                "needs KERAS_BACKEND=tensorflow (current backend: jax). On JAX, use "
                "--distribute mirrored for all the devices of one machine."
            )
        import keras

        devices = keras.distribution.list_devices()
        strategy = keras.distribution.DataParallel(devices=devices)
        return Distribution(name, backend, strategy, num_replicas=len(devices))
    if backend != "tensorflow":
        raise UserError(
            f"--distribute {name} needs the tensorflow or jax backend (current backend: "
            f"{backend}); use --distribute none."
        )
    if name == "mirrored":
        strategy = _tf_mirrored()
        return Distribution(name, backend, strategy, strategy.num_replicas_in_sync)
    cluster = parse_tf_config()
    strategy = _tf_multiworker()
    return Distribution(name, backend, strategy, strategy.num_replicas_in_sync, cluster)


@contextlib.contextmanager
def distribution_scope(name: str = "none", backend: str | None = None) -> Iterator[Distribution]:
    """`get_distribution(name)` and, inside, its scope: build, compile and fit there.

    Example:

    ```python
    with distribution_scope(args.distribute) as dist:
        dist.check_batch_size(cfg.batch_size)
        model = build_model(cfg)
        model.compile(...)
        model.fit(...)
    ```
    """
    distribution = get_distribution(name, backend)
    with distribution.scope():
        yield distribution


# --------------------------------------------------------------------------- Keras workarounds


def _sum_over_replicas(value):
    """`value` summed over the replicas of the current `tf.distribute` replica context.

    Outside a replica context (or with one replica) `value` itself.
    """
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _clip_after_cross_replica_sum(optimizer) -> None:
    """See `Distribution.prepare_optimizer`.

    Keras's `Optimizer.apply` calls its private `_clip_gradients(grads)` in
    each replica, just before the TensorFlow optimizer sums the gradients over
    the replicas. This replaces that one method on this one object (not on the
    class); the replacement calls the original on the summed gradients.
    """
    import tensorflow as tf

    if getattr(optimizer, "_apps_clips_after_sum", False):
        return
    original = getattr(optimizer, "_clip_gradients", None)
    if original is None:
        raise RuntimeError(
            "this Keras version lacks Optimizer._clip_gradients, which --distribute adapts "
            "so that gradient clipping sees the global gradient; use Keras 3.5-3.15, or an "
            "optimizer without clipnorm / global_clipnorm / clipvalue."
        )

    def scale(gradient, factor):
        if isinstance(gradient, tf.IndexedSlices):  # e.g. the gradient of an embedding
            return tf.IndexedSlices(
                gradient.values * factor, gradient.indices, gradient.dense_shape
            )
        return gradient * factor

    def clip_gradients(grads):
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return original(grads)
        present = [g for g in grads if g is not None]
        clipped = iter(original(context.all_reduce(tf.distribute.ReduceOp.SUM, present)))
        share = 1.0 / context.num_replicas_in_sync
        return [None if g is None else scale(next(clipped), share) for g in grads]

    optimizer._clip_gradients = clip_gradients
    optimizer._apps_clips_after_sum = True


def _patch_keras_for_multi_worker() -> None:
    """Lets `model.fit` run under `MultiWorkerMirroredStrategy` with several workers.

    Keras 3's TensorFlow trainer reduces two things across workers in ways the
    multi-worker strategy rejects (keras-team/keras#20585, tensorflow/tensorflow#72388):

    1. `fit` first reduces a whole nested input batch with `strategy.reduce`
       only to learn its shapes for a symbolic build: "Attempt to convert a
       value (PerReplica...)". The local batch has the same shapes, so it is
       used instead.
    2. Each step averages the scalar logs (loss, metrics) over the replicas
       with `strategy.reduce("MEAN", v, axis=0)`: "Invalid reduction dimension
       0 for input with 0 dimensions". Scalars are averaged with `axis=None`
       (the same all-reduce over every replica), other values as before.

    Both replace private functions of `keras.src.backend.tensorflow.trainer`;
    this is the only place in the project that reaches into `keras.src`. The
    replacements call the originals for everything else, and change nothing
    unless the strategy spans several workers. There is no per-model way: the
    trainer's step functions call the module's `reduce_per_replica` directly.
    `_unpatch_keras_for_multi_worker` puts the originals back.
    """
    import keras
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer  # private: see above

    trainer_cls = tf_trainer.TensorFlowTrainer
    if getattr(trainer_cls, "_apps_multi_worker_patch", False):
        return
    for name in ("reduce_per_replica", "_collective_all_reduce_multi_worker"):
        if not hasattr(tf_trainer, name) or not hasattr(trainer_cls, "_maybe_symbolic_build"):
            raise RuntimeError(
                f"this Keras version ({keras.__version__}) lacks the internals that "
                "--distribute multiworker adapts (keras.src.backend.tensorflow.trainer."
                f"{name}); use Keras 3.5-3.15 or --distribute mirrored."
            )
    multi_worker = tf_trainer._collective_all_reduce_multi_worker
    original_reduce = tf_trainer.reduce_per_replica
    original_build = trainer_cls._maybe_symbolic_build

    def local_value(strategy, value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def reduce_per_replica(values, strategy, reduction="auto"):
        if reduction not in ("auto", "mean") or not multi_worker(strategy):
            return original_reduce(values, strategy, reduction=reduction)

        def reduce_one(value):
            local = local_value(strategy, value)
            if tf.is_tensor(local) and local.shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return original_reduce(value, strategy, reduction=reduction)

        return keras.tree.map_structure(reduce_one, values)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is not None and strategy is not None and multi_worker(strategy):
            for _, _, batches in iterator:
                batch = next(batches)
                break
            data_batch = keras.tree.map_structure(lambda v: local_value(strategy, v), batch)
            iterator = None
        return original_build(self, iterator=iterator, data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_per_replica
    trainer_cls._maybe_symbolic_build = maybe_symbolic_build
    trainer_cls._apps_multi_worker_patch = (original_reduce, original_build)


def _unpatch_keras_for_multi_worker() -> bool:
    """Undoes `_patch_keras_for_multi_worker`; returns whether a patch was in place."""
    from keras.src.backend.tensorflow import trainer as tf_trainer  # private: see above

    trainer_cls = tf_trainer.TensorFlowTrainer
    originals = getattr(trainer_cls, "_apps_multi_worker_patch", None)
    if not originals:
        return False
    tf_trainer.reduce_per_replica, trainer_cls._maybe_symbolic_build = originals
    del trainer_cls._apps_multi_worker_patch
    return True

"""`apps.common.distribute`: TF_CONFIG checks, backend checks, worker folders, scopes.

The end-to-end cases (two logical CPU devices, two JAX devices, two workers on
127.0.0.1) train the medical app in `tests/apps/medical_cnn/test_distribute.py`.
Here: the pieces, and `distribution_scope` on a plain Keras model under JAX data
parallelism (two fake CPU devices, in a fresh process).
"""

import json
import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest

from apps.common.distribute import (
    ClusterConfig,
    Distribution,
    distribution_scope,
    get_distribution,
    parse_tf_config,
)
from tests.backend_utils import TENSORFLOW_SIDE_ONLY, run_python_script

PROJECT_ROOT = Path(__file__).resolve().parents[3]
TWO_WORKERS = {"worker": ["127.0.0.1:20001", "127.0.0.1:20002"]}


def _tf_config(cluster=None, task_type="worker", index=0):
    return json.dumps(
        {"cluster": cluster or TWO_WORKERS, "task": {"type": task_type, "index": index}}
    )


def test_parse_tf_config_workers_and_chief():
    second = parse_tf_config(_tf_config(index=1))
    assert second == ClusterConfig(TWO_WORKERS, "worker", 1)
    assert second.num_workers == 2 and not second.is_chief
    assert parse_tf_config(_tf_config(index=0)).is_chief  # worker 0 leads without a chief
    cluster = {"chief": ["10.0.0.1:2222"], "worker": ["10.0.0.2:2222", "10.0.0.3:2222"]}
    chief = parse_tf_config(_tf_config(cluster, "chief", 0))
    assert chief.is_chief and chief.num_workers == 3
    assert not parse_tf_config(_tf_config(cluster, "worker", 0)).is_chief


def test_parse_tf_config_reads_the_environment(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", _tf_config(index=1))
    assert parse_tf_config().task_index == 1
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ValueError, match="TF_CONFIG is not set.*docs/distributed.md"):
        parse_tf_config()


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "TF_CONFIG is not set"),
        ("{cluster:", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({"task": {"type": "worker", "index": 0}}), "no 'cluster' object"),
        (json.dumps({"cluster": TWO_WORKERS}), "no 'task' object"),
        (_tf_config({"worker": ["127.0.0.1"]}), r"'127.0.0.1', which is not 'host:port'"),
        (_tf_config({"worker": ["host:99999"]}), "not 'host:port'"),
        (_tf_config({"worker": []}), "not a non-empty list"),
        (_tf_config({"ps": ["h:1"]}, "ps"), "no 'chief' or 'worker' tasks"),
        (_tf_config(TWO_WORKERS, "evaluator"), "task type 'evaluator' is not one of"),
        (_tf_config(TWO_WORKERS, "worker", 2), "task index 2 is out of range for the 2"),
        (_tf_config(TWO_WORKERS, "worker", -1), "task index -1 is out of range"),
        (_tf_config(TWO_WORKERS, "worker", True), "task index True is out of range"),
        (_tf_config({"chief": ["a:1", "b:1"], "worker": ["c:1"]}), "more than one 'chief'"),
    ],
)
def test_parse_tf_config_rejects_bad_values(text, message):
    with pytest.raises(ValueError, match=message):
        parse_tf_config(text)


def test_get_distribution_rejects_unknown_names_and_wrong_backends(monkeypatch):
    with pytest.raises(ValueError, match="distribute must be one of none, mirrored, multiworker"):
        get_distribution("horovod")
    with pytest.raises(ValueError, match="multiworker .* needs KERAS_BACKEND=tensorflow"):
        get_distribution("multiworker", backend="jax")
    with pytest.raises(ValueError, match="needs the tensorflow or jax backend .*torch"):
        get_distribution("mirrored", backend="torch")
    # Checked before any strategy is created (which could not be undone in this process).
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG is not set"):
        get_distribution("multiworker", backend="tensorflow")


def test_none_is_a_plain_single_device_run(tmp_path):
    dist = get_distribution("none", backend="torch")  # every backend
    assert dist.strategy is None and dist.num_replicas == 1 and dist.is_chief
    assert dist.work_dir(tmp_path) == tmp_path
    dist.check_batch_size(7)
    with dist.scope():
        pass
    dist.release_work_dir(tmp_path)  # never removes a chief's run directory
    assert tmp_path.is_dir()
    assert dist.describe() == {
        "strategy": "none",
        "backend": "torch",
        "num_replicas": 1,
        "num_workers": 1,
    }


def test_worker_dirs_are_scratch_folders_per_run_and_role(tmp_path):
    def worker(index):
        cluster = parse_tf_config(_tf_config(index=index))
        return Distribution("multiworker", "tensorflow", None, 2, cluster)

    run_dir = tmp_path / "run"
    assert worker(0).work_dir(run_dir) == run_dir  # the chief
    scratch = worker(1).work_dir(run_dir)
    assert scratch.is_relative_to(tempfile.gettempdir()) and scratch != run_dir
    assert worker(1).work_dir(run_dir) == scratch  # found again after a restart
    assert worker(1).work_dir(tmp_path / "other") != scratch
    assert worker(1).describe()["task"] == "worker:1"
    scratch.mkdir(parents=True)
    (scratch / "history.csv").write_text("epoch\n")
    worker(1).release_work_dir(scratch)
    assert not scratch.exists()


def test_batch_size_must_split_evenly_only_on_jax():
    jax_two = Distribution("mirrored", "jax", None, num_replicas=2)
    jax_two.check_batch_size(64)
    assert jax_two.batch_multiple == 2
    with pytest.raises(ValueError, match="batch_size=63 cannot be split evenly over the 2"):
        jax_two.check_batch_size(63)
    tf_two = Distribution("mirrored", "tensorflow", None, num_replicas=2)
    tf_two.check_batch_size(63)  # tf.distribute splits uneven batches itself
    assert tf_two.batch_multiple == 1


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow strategies")
def test_prepare_tf_dataset_shards_by_data_with_several_workers():
    import tensorflow as tf

    dataset = tf.data.Dataset.range(8).batch(4)
    assert Distribution("mirrored", "tensorflow").prepare_tf_dataset(dataset) is dataset
    cluster = parse_tf_config(_tf_config(index=1))
    sharded = Distribution("multiworker", "tensorflow", None, 2, cluster).prepare_tf_dataset(
        dataset
    )
    policy = sharded.options().experimental_distribute.auto_shard_policy
    assert policy == tf.data.experimental.AutoShardPolicy.DATA
    assert [b.tolist() for b in sharded.as_numpy_iterator()] == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow strategies")
def test_mirrored_scope_on_tensorflow_builds_mirrored_variables():
    import tensorflow as tf

    with distribution_scope("mirrored") as dist:
        assert tf.distribute.has_strategy() and tf.distribute.get_strategy() is dist.strategy
        assert isinstance(dist.strategy, tf.distribute.MirroredStrategy)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile("sgd", "mse")
    assert not tf.distribute.has_strategy()
    assert model.distribute_strategy is dist.strategy
    assert dist.num_replicas == len(tf.config.list_logical_devices("CPU"))
    assert get_distribution("mirrored").strategy is dist.strategy  # made once per process


# Under TensorFlow with two logical CPU devices: gradient clipping under MirroredStrategy.
TF_CLIP_SCRIPT = r"""
import json, sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
import numpy as np

from apps.common.distribute import get_distribution

rng = np.random.default_rng(0)
tokens = rng.integers(0, 20, size=(64, 6))
y = 10.0 * rng.normal(size=(64, 1)).astype("float32")  # big errors: clipping is active


def fit(name, clipping, prepare):
    keras.utils.set_random_seed(3)
    dist = get_distribution(name)
    with dist.scope():
        model = keras.Sequential(
            [
                keras.Input((6,), dtype="int32"),
                keras.layers.Embedding(20, 4),  # a sparse (IndexedSlices) gradient
                keras.layers.Flatten(),
                keras.layers.Dense(1),
            ]
        )
        model.compile(keras.optimizers.SGD(0.1, **clipping), "mse")
        optimizer = dist.prepare_optimizer(model.optimizer) if prepare else model.optimizer
        assert optimizer is model.optimizer
        model.fit(tokens, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    return [np.asarray(w).tolist() for w in model.weights]


clippings = {
    "global_clipnorm": {"global_clipnorm": 0.05},
    "clipnorm": {"clipnorm": 0.05},
    "clipvalue": {"clipvalue": 0.01},
    "none": {},
}
result = {
    name: {
        "one_device": fit("none", clipping, prepare=True),
        "mirrored": fit("mirrored", clipping, prepare=True),
        "mirrored_as_keras_does": fit("mirrored", clipping, prepare=False),
    }
    for name, clipping in clippings.items()
}
json.dump(result, open(sys.argv[1], "w"))
"""


def _max_difference(a, b):
    return max(np.abs(np.subtract(x, y)).max() for x, y in zip(a, b, strict=True))


def test_prepared_optimizer_clips_the_global_gradient_under_mirrored_strategy(tmp_path):
    out = tmp_path / "out.json"
    run_python_script(TF_CLIP_SCRIPT, [out], tmp_path, "tensorflow", timeout=180)
    result = json.loads(out.read_text())
    for name, runs in result.items():
        one, two = runs["one_device"], runs["mirrored"]
        for a, b in zip(one, two, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=name)
        keras_default = _max_difference(runs["mirrored_as_keras_does"], one)
        if name == "none":
            assert keras_default < 1e-5  # nothing to adapt without clipping
        else:
            # Keras alone clips each replica's half of the gradient: another result.
            assert keras_default > 1e-3, name


# Under KERAS_BACKEND=jax with two fake CPU devices.
JAX_SCRIPT = r"""
import json, sys

import keras
import numpy as np

from apps.common.distribute import distribution_scope

x = np.random.default_rng(0).normal(size=(64, 5)).astype("float32")
y = (x[:, :1] > 0).astype("float32")


def fit(name):
    keras.utils.set_random_seed(3)
    with distribution_scope(name) as dist:
        dist.check_batch_size(16)
        model = keras.Sequential(
            [keras.Input((5,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
        )
        model.compile(keras.optimizers.Adam(0.01), "mse")
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        devices = len(model.weights[0].value.sharding.device_set)
    return dist, devices, [np.asarray(w).tolist() for w in model.weights]


one, one_devices, one_weights = fit("none")
two, two_devices, two_weights = fit("mirrored")
errors = {}
for name, batch in (("multiworker", 16), ("mirrored", 15)):
    try:
        with distribution_scope(name) as dist:
            dist.check_batch_size(batch)
    except ValueError as e:
        errors[name] = str(e)
json.dump(
    {
        "replicas": [one.num_replicas, two.num_replicas],
        "strategy": type(two.strategy).__name__,
        "variable_devices": [one_devices, two_devices],
        "weights": [one_weights, two_weights],
        "errors": errors,
        "distribution_after": keras.distribution.distribution() is None,
    },
    open(sys.argv[1], "w"),
)
"""


def test_data_parallel_on_two_jax_devices_matches_one_device(tmp_path):
    out = tmp_path / "out.json"
    flags = "--xla_force_host_platform_device_count=2"
    run_python_script(JAX_SCRIPT, [out], tmp_path, "jax", timeout=180, XLA_FLAGS=flags)
    result = json.loads(out.read_text())
    assert result["replicas"] == [1, 2] and result["strategy"] == "DataParallel"
    assert result["variable_devices"] == [1, 2]  # replicated on both devices
    assert result["distribution_after"]  # the scope restores "no distribution"
    for a, b in zip(*result["weights"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert "needs KERAS_BACKEND=tensorflow" in result["errors"]["multiworker"]
    assert "batch_size=15 cannot be split evenly over the 2" in result["errors"]["mirrored"]


# Two logical CPUs: the masked token mean of the global batch, split unevenly.
TF_MASKED_LOSS_SCRIPT = r"""
import json, sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
import numpy as np

from apps.common.distribute import get_distribution
from custom_layers.losses import MaskedSparseCategoricalCrossentropy

rng = np.random.default_rng(0)
# Replica 0 gets rows 0-1 (7 real tokens), replica 1 rows 2-3 (2 real tokens).
y_true = np.array([[3, 1, 2, 4], [1, 2, 3, 0], [2, 0, 0, 0], [4, 0, 0, 0]], "int32")
y_pred = rng.normal(size=(4, 4, 5)).astype("float32")
one_device = float(MaskedSparseCategoricalCrossentropy(from_logits=True)(y_true, y_pred))

dist = get_distribution("mirrored")
strategy = dist.strategy
values = strategy.experimental_distribute_values_from_function(
    lambda ctx: (y_true[2 * ctx.replica_id_in_sync_group : 2 * ctx.replica_id_in_sync_group + 2],
                 y_pred[2 * ctx.replica_id_in_sync_group : 2 * ctx.replica_id_in_sync_group + 2])
)


def summed_over_replicas(loss):
    # Keras sums the replicas' gradients, so the replicas' losses add up to the step's loss.
    per_replica = strategy.run(tf.function(lambda t, p: loss(t, p)), args=values)
    return float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))


plain = MaskedSparseCategoricalCrossentropy(from_logits=True)
prepared = dist.prepare_loss(MaskedSparseCategoricalCrossentropy(from_logits=True))
json.dump(
    {
        "replicas": dist.num_replicas,
        "one_device": one_device,
        "prepared": summed_over_replicas(prepared),
        "plain": summed_over_replicas(plain),
        "config_unchanged": prepared.get_config() == plain.get_config(),
    },
    open(sys.argv[1], "w"),
)
"""


def test_prepared_masked_loss_divides_by_the_tokens_of_all_replicas(tmp_path):
    out = tmp_path / "out.json"
    run_python_script(TF_MASKED_LOSS_SCRIPT, [out], tmp_path, "tensorflow", timeout=180)
    result = json.loads(out.read_text())
    assert result["replicas"] == 2 and result["config_unchanged"]
    np.testing.assert_allclose(result["prepared"], result["one_device"], rtol=1e-6)
    # Each replica dividing by its own token count gives another number.
    assert abs(result["plain"] - result["one_device"]) > 0.1


def test_prepare_loss_leaves_one_device_and_other_losses_alone():
    from custom_layers.losses import MaskedSparseCategoricalCrossentropy

    dist = get_distribution("none")
    loss = MaskedSparseCategoricalCrossentropy()
    assert dist.prepare_loss(loss) is loss
    assert "global_count" not in vars(loss)  # the class's identity method stays
    assert dist.prepare_loss("mse") == "mse"


@TENSORFLOW_SIDE_ONLY
def test_the_multi_worker_patch_is_one_reversible_change_to_the_installed_keras():
    # The patch reaches into keras.src (the project's only place that does); on the
    # Keras installed here it must find its targets, apply once, and undo cleanly.
    from keras.src.backend.tensorflow import trainer as tf_trainer

    from apps.common import distribute

    original_reduce = tf_trainer.reduce_per_replica
    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    was_patched = distribute._unpatch_keras_for_multi_worker()  # start clean
    try:
        original_reduce = tf_trainer.reduce_per_replica
        original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
        distribute._patch_keras_for_multi_worker()
        patched = tf_trainer.reduce_per_replica
        assert patched is not original_reduce
        assert tf_trainer.TensorFlowTrainer._maybe_symbolic_build is not original_build
        distribute._patch_keras_for_multi_worker()  # a second call changes nothing
        assert tf_trainer.reduce_per_replica is patched
        assert distribute._unpatch_keras_for_multi_worker()
        assert tf_trainer.reduce_per_replica is original_reduce
        assert tf_trainer.TensorFlowTrainer._maybe_symbolic_build is original_build
        assert not distribute._unpatch_keras_for_multi_worker()
    finally:
        if was_patched:
            distribute._patch_keras_for_multi_worker()

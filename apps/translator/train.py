"""Training: `model.fit` with teacher forcing, masked loss, warm-up schedule and a run directory.

A run directory holds everything needed to use or resume the run:

    config.json            the resolved TranslatorConfig
    vocab_source.txt       English vocabulary (one token per line, line i = id i)
    vocab_target.txt       Spanish vocabulary
    model.keras            the best model so far (lowest val_loss), written atomically
    history.csv            one row per epoch, with its epoch_seconds (continued when a run resumes)
    logs/                  TensorBoard
    backup/                the state of the last completed epoch while training (removed at the end)
    metrics.json           final figures: best epoch, val loss/accuracy, val BLEU/chrF, timing
                           (train_seconds: the sum of epoch_seconds, every epoch of the run)

Running the same command again on an interrupted run directory resumes it
(same config and vocabularies required) from its last completed epoch, and
ends as an uninterrupted run would have ended (same history, same weights;
an interrupted epoch is redone from its start, see `apps.common.callbacks`).
A directory whose training finished is refused.

Two sources of training pairs, batched alike by `prepared.ArrayBatches`
(NumPy; each epoch's order a pure function of the seed and the epoch, so a
resumed run sees the batches of an uninterrupted one):

- text (`data=` / `splits=`): tokenised here with `tf.strings`
  (`data.encode_pairs`), so TensorFlow is needed;
- prepared arrays (`prepared=`, written by `translator prepare`): training,
  checkpoints and the BLEU in `metrics.json` need no TensorFlow (e.g.
  `KERAS_BACKEND=jax` on a GPU machine without it). The run directory is the
  same either way, and so are the batches (`prepare` writes the arrays that
  the text path encodes, `prepared.split_from_encoded`).

`distribute` runs `model.fit` on several devices or machines through
`apps.common.distribute` (`MirroredStrategy` / `MultiWorkerMirroredStrategy` on
TensorFlow, `keras.distribution.DataParallel` on JAX); `config.batch_size` is
the global batch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import keras

from apps.common.batches import FollowEpochs
from apps.common.callbacks import HISTORY_FILE, logged_seconds, read_history, standard_callbacks
from apps.common.config import config_to_dict, load_config, save_config
from apps.common.distribute import Distribution, get_distribution
from apps.common.errors import DataError, RunDirError
from apps.common.io import atomic_write_json, atomic_write_text
from apps.common.model_io import load_keras_model
from apps.common.rundir import check_run_app, check_run_dir_path, default_run_dir
from apps.translator import prepared as prepared_lib
from apps.translator.config import (
    APP_NAME,
    CONFIG_FILE,
    MODEL_FILE,
    SOURCE_VOCAB_FILE,
    TARGET_VOCAB_FILE,
    TranslatorConfig,
)
from apps.translator.data import SPLITS, Splits, check_split_sizes, load_splits
from apps.translator.model import build_model
from apps.translator.tokens import PAD_ID, load_tokens
from custom_layers.losses import MaskedSparseCategoricalCrossentropy
from custom_layers.metrics import MaskedAccuracy

METRICS_FILE = "metrics.json"
MONITOR = "val_loss"


def learning_rate_schedule(config: TranslatorConfig, total_steps: int):
    """A float (constant) or a `keras.optimizers.schedules.CosineDecay` with linear warm-up.

    The schedule is a built-in Keras object, so it serialises with the model
    and a resumed run continues it from the optimizer's step counter.
    """
    if config.warmup_steps == 0 and not config.cosine_decay:
        return config.learning_rate
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.learning_rate,
        decay_steps=max(total_steps - warmup, 1),
        alpha=config.final_learning_rate_fraction if config.cosine_decay else 1.0,
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(config: TranslatorConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """The configured optimizer with its learning-rate schedule."""
    learning_rate = learning_rate_schedule(config, total_steps)
    kwargs = {} if config.clipnorm is None else {"global_clipnorm": config.clipnorm}
    if config.optimizer == "adam":
        # beta_2 = 0.98 as in Vaswani et al. 2017: steadier with a short warm-up.
        return keras.optimizers.Adam(learning_rate, beta_2=0.98, epsilon=1e-9, **kwargs)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(
            learning_rate, weight_decay=config.weight_decay, beta_2=0.98, epsilon=1e-9, **kwargs
        )
    return keras.optimizers.RMSprop(learning_rate, **kwargs)


def compile_model(model: keras.Model, config: TranslatorConfig, total_steps: int) -> keras.Model:
    """Compiles with the masked, optionally label-smoothed loss and masked token accuracy."""
    model.compile(
        optimizer=make_optimizer(config, total_steps),
        loss=MaskedSparseCategoricalCrossentropy(
            pad_id=PAD_ID, from_logits=True, label_smoothing=config.label_smoothing
        ),
        metrics=[MaskedAccuracy(pad_id=PAD_ID, name="accuracy")],
        # JAX without jit runs every op eagerly (about 50x slower here): always compile.
        jit_compile=config.jit_compile or keras.backend.backend() == "jax",
    )
    return model


class TimeBudget(keras.callbacks.Callback):
    """Stops training after the current batch once `minutes` have passed.

    Keras then still validates the interrupted epoch, so the checkpoint and
    history stay consistent.

    Args:
        minutes: the budget.
        spent_seconds: already spent by earlier calls of the same run (a
            resumed run: the `epoch_seconds` logged so far).
    """

    def __init__(self, minutes: float, spent_seconds: float = 0.0):
        super().__init__()
        self.seconds = 60.0 * minutes - spent_seconds
        self.stopped = False

    def on_train_begin(self, logs=None):
        self._start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() - self._start >= self.seconds:
            self.stopped = True
            self.model.stop_training = True


class StepTimer(keras.callbacks.Callback):
    """Measures training steps and time (validation excluded), skipping the first `warmup` steps."""

    def __init__(self, warmup: int = 5):
        super().__init__()
        self.warmup = warmup
        self.steps = 0
        self.timed_steps = 0
        self.timed_seconds = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps > self.warmup:
            self.timed_steps += 1
            self.timed_seconds += time.perf_counter() - self._t

    @property
    def ms_per_step(self) -> float | None:
        return 1000.0 * self.timed_seconds / self.timed_steps if self.timed_steps else None


def _prepare_run_dir(run_dir: Path, config: TranslatorConfig) -> None:
    """Writes config.json, or checks that a resumed run dir has the same config."""
    config_path = run_dir / CONFIG_FILE
    if config_path.is_file():
        saved = load_config(TranslatorConfig, config_path, app=APP_NAME)
        if saved != config:
            changed = sorted(
                k for k, v in config_to_dict(config).items() if config_to_dict(saved).get(k) != v
            )
            raise RunDirError(
                f"run directory {run_dir} holds a run with a different config (fields: "
                f"{', '.join(changed)}); resume it with the same options or pass a new --run-dir."
            )
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, config_path, app=APP_NAME)


def _vocabularies(run_dir: Path, splits_train, config: TranslatorConfig):
    """The run's vocabularies: loaded when resuming, else built from the training split and saved."""
    from apps.translator.vectorization import Vocabulary, build_vocabularies

    source_path, target_path = run_dir / SOURCE_VOCAB_FILE, run_dir / TARGET_VOCAB_FILE
    if source_path.is_file() and target_path.is_file():
        return (
            Vocabulary.load(source_path, name="source_vocab"),
            Vocabulary.load(target_path, name="target_vocab"),
        )
    source_vocab, target_vocab = build_vocabularies(splits_train, config)
    source_vocab.save(source_path)
    target_vocab.save(target_path)
    return source_vocab, target_vocab


class _Inputs(NamedTuple):
    """What `train` needs from a data source."""

    train: object  # a tf.data.Dataset or a keras.utils.PyDataset
    val: object
    steps_per_epoch: int
    train_pairs: int
    train_label_tokens: int
    source_vocab_size: int
    target_vocab_size: int
    # fn(run_dir) -> BLEU/chrF dict of the saved best model on validation sentences.
    evaluate: Callable[[Path], dict]
    description: dict
    callbacks: tuple = ()


def _text_inputs(config, data, splits, run_dir: Path, dist: Distribution) -> _Inputs:
    """Pairs from text, tokenised with tf.strings (needs TensorFlow), batched as prepared ones."""
    from apps.translator.data import encode_pairs

    splits = splits if splits is not None else load_splits(data)
    train_pairs = splits.train[: config.max_train_pairs] if config.max_train_pairs else splits.train
    source_vocab, target_vocab = _vocabularies(run_dir, train_pairs, config)
    arrays = []
    for pairs in (train_pairs, splits.val):
        encoded = encode_pairs(pairs, source_vocab, target_vocab, config.sequence_length)
        if int(encoded[0].nrows()) == 0:
            raise DataError(
                f"None of the {len(pairs)} pairs fits sequence_length={config.sequence_length}."
            )
        arrays.append(prepared_lib.split_from_encoded(encoded, config.sequence_length))
    train, val, batches = _batches(config, *arrays, dist)

    def evaluate(run_dir: Path) -> dict:
        from apps.translator.evaluate import evaluate_pairs
        from apps.translator.translate import Translator

        translator = Translator.from_run_dir(run_dir)  # The best checkpoint, as users get it.
        if not config.eval_sentences:
            return {}
        return evaluate_pairs(translator, splits.val, limit=config.eval_sentences, num_samples=5)

    return _Inputs(
        train,
        val,
        len(batches),
        len(train_pairs),
        batches.label_tokens,
        source_vocab.size,
        target_vocab.size,
        evaluate,
        {"data": "text"},
        (FollowEpochs(batches),),
    )


def _batches(config, train_split, val_split, dist: Distribution):
    """The training and validation data for `fit`, and the training `ArrayBatches`.

    `ArrayBatches` on every backend (each epoch's order a function of the seed
    and the epoch, also on resume: keep the training batches on Keras's epoch
    with `FollowEpochs`); on TensorFlow handed over as `tf.data` datasets,
    which `tf.distribute` strategies shard (by data across workers).
    """
    batch_args = dict(
        batch_size=config.batch_size,
        sequence_length=config.sequence_length,
        bucket_by_length=config.bucket_by_length,
    )
    train_batches = prepared_lib.ArrayBatches(
        train_split, shuffle=True, seed=config.seed, **batch_args
    )
    val_batches = prepared_lib.ArrayBatches(val_split, **batch_args)
    if keras.backend.backend() == "tensorflow":
        return (
            dist.prepare_tf_dataset(train_batches.as_tf_dataset()),
            dist.prepare_tf_dataset(val_batches.as_tf_dataset()),
            train_batches,
        )
    return train_batches, val_batches, train_batches


def _copy_vocabulary(source: Path, destination: Path) -> None:
    """Copies a prepared vocabulary into the run dir (a resumed run must already hold the same)."""
    tokens = load_tokens(source)
    if destination.is_file():
        if load_tokens(destination) != tokens:
            raise RunDirError(
                f"{destination} differs from the prepared {source}: this run directory was "
                "trained on other data; pass a new --run-dir."
            )
        return
    atomic_write_text(destination, "\n".join(tokens) + "\n")


def _prepared_inputs(config, prepared, run_dir: Path, dist: Distribution) -> _Inputs:
    """Pairs from prepared arrays, batched with NumPy (no TensorFlow needed)."""
    _copy_vocabulary(prepared.vocabulary_file("source"), run_dir / SOURCE_VOCAB_FILE)
    _copy_vocabulary(prepared.vocabulary_file("target"), run_dir / TARGET_VOCAB_FILE)
    train_split, val_split = prepared.split("train"), prepared.split("val")
    train, val, batches = _batches(config, train_split, val_split, dist)

    def evaluate(run_dir: Path) -> dict:
        model = load_keras_model(run_dir / MODEL_FILE, compile=False)
        if not config.eval_sentences:
            return {}
        return prepared_lib.evaluate_prepared(
            model, prepared, "val", limit=config.eval_sentences, num_samples=5
        )

    return _Inputs(
        train,
        val,
        len(batches),
        len(train_split),
        batches.label_tokens,
        len(prepared.source_tokens),
        len(prepared.target_tokens),
        evaluate,
        {"data": "prepared", "prepared": str(prepared.path)},
        (FollowEpochs(batches),),
    )


def _check_split_sizes(config, data, splits, prepared) -> None:
    """`data.check_split_sizes` of the pairs training will use (before the run dir is written)."""
    if prepared is not None:
        counts = [prepared.manifest["splits"][name]["kept_pairs"] for name in SPLITS]
        source = f"prepared data {prepared.path}"
    else:
        train_pairs = (
            splits.train[: config.max_train_pairs] if config.max_train_pairs else splits.train
        )
        counts = [len(train_pairs), len(splits.val), len(splits.test)]
        source = "the corpus" if data is None else f"data file {data}"
    check_split_sizes(*counts, config.batch_size, source, config.max_train_pairs)


def train(
    config: TranslatorConfig,
    data: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    splits: Splits | None = None,
    verbose: str | int = "auto",
    prepared: str | os.PathLike | prepared_lib.Prepared | None = None,
    distribute: str = "none",
    callbacks: list | None = None,
) -> dict:
    """Trains a translator and returns the metrics written to `metrics.json`.

    Args:
        config: the run's configuration.
        data: the corpus (zip or text file); `None` downloads the official archive.
        run_dir: output folder (created; an existing one is resumed);
            defaults to `runs/translator/<timestamp>`.
        splits: pairs already split (tests pass slices); overrides `data`.
        verbose: passed to `model.fit`.
        prepared: a folder written by `translator prepare` (or its loaded
            `Prepared`): train from its arrays, without TensorFlow. Excludes
            `data` and `splits`; `config`'s data fields must match it.
        distribute: `"none"`, `"mirrored"` or `"multiworker"` (see
            `apps.common.distribute`). With several workers only the chief
            writes `run_dir` and evaluates; the others return
            `{"worker": "worker:1", ...}`.
        callbacks: extra Keras callbacks (appended to the standard ones).

    Raises:
        RunDirError: `run_dir` (or a parent) is a file, another app's run, a
            run of another config or data, or a finished training.
        DataError: fewer than `config.batch_size` training pairs or no
            validation pair (`data.check_split_sizes`, checked before `run_dir`
            is written); an empty test split only warns.
    """
    # First: a multi-worker strategy must exist before TensorFlow runs anything.
    dist = get_distribution(distribute)
    dist.check_batch_size(config.batch_size)
    if prepared is not None and (data is not None or splits is not None):
        raise ValueError("Pass either prepared data or a corpus (data / splits), not both.")
    if prepared is not None and not isinstance(prepared, prepared_lib.Prepared):
        prepared = prepared_lib.load_prepared(prepared)
    if run_dir is None:
        run_dir = default_run_dir(APP_NAME)
    run_dir = check_run_dir_path(run_dir, "--run-dir")
    check_run_app(run_dir, APP_NAME, option="--run-dir")
    work_dir = dist.work_dir(run_dir)
    if prepared is not None:
        prepared_lib.check_compatible(config, prepared)
    elif splits is None:
        splits = load_splits(data)
    _check_split_sizes(config, data, splits, prepared)
    _prepare_run_dir(work_dir, config)
    keras.utils.set_random_seed(config.seed)

    if prepared is not None:
        inputs = _prepared_inputs(config, prepared, work_dir, dist)
    else:
        inputs = _text_inputs(config, data, splits, work_dir, dist)

    timer = StepTimer()
    extra_callbacks = list(callbacks or [])
    callbacks = standard_callbacks(work_dir, monitor=MONITOR, mode="min", patience=config.patience)
    callbacks += [*inputs.callbacks, timer]
    budget = None
    if config.time_budget_minutes is not None:
        # The budget is the whole run's: a resumed run has spent the logged epochs' seconds.
        budget = TimeBudget(config.time_budget_minutes, logged_seconds(work_dir / HISTORY_FILE))
        callbacks.append(budget)
    callbacks += extra_callbacks

    with dist.scope():
        model = build_model(config, inputs.source_vocab_size, inputs.target_vocab_size)
        compile_model(model, config, total_steps=inputs.steps_per_epoch * config.epochs)
        dist.prepare_model(model)  # clip the global gradient, count tokens over all replicas
        model.fit(
            inputs.train,
            validation_data=inputs.val,
            epochs=config.epochs,
            callbacks=callbacks,
            shuffle=False,  # The batches are shuffled (seeded by epoch) before batching by length.
            verbose=verbose,
        )

    if not (work_dir / MODEL_FILE).is_file():
        raise RuntimeError(
            f"Training wrote no {MODEL_FILE} to {work_dir}: no epoch produced a finite {MONITOR}."
        )
    # Every epoch of the run, also those of the calls before a resume.
    history = read_history(work_dir / HISTORY_FILE)
    if not dist.is_chief:
        dist.release_work_dir(work_dir)
        return {"worker": dist.describe()["task"], "epochs_run": len(history)}
    val_loss = [float(row[MONITOR]) for row in history]
    best_epoch = int(min(range(len(val_loss)), key=val_loss.__getitem__)) if val_loss else None
    ms_per_step = timer.ms_per_step
    tokens_per_step = inputs.train_label_tokens / max(inputs.steps_per_epoch, 1)
    metrics = {
        "best_epoch": None if best_epoch is None else best_epoch + 1,
        "best_val_loss": None if best_epoch is None else float(val_loss[best_epoch]),
        "best_val_accuracy": None
        if best_epoch is None
        else float(history[best_epoch]["val_accuracy"]),
        "epochs_run": len(val_loss),
        "stopped_by_time_budget": bool(budget and budget.stopped),
        "train_seconds": round(logged_seconds(work_dir / HISTORY_FILE), 1),
        "train_pairs": inputs.train_pairs,
        "steps_per_epoch": inputs.steps_per_epoch,
        "batch_size": config.batch_size,
        "ms_per_step": None if ms_per_step is None else round(ms_per_step, 2),
        "pairs_per_second": None
        if not ms_per_step
        else round(config.batch_size * 1000.0 / ms_per_step, 1),
        # Target tokens ([END] included, padding not) per second of training steps.
        "label_tokens_per_second": None
        if not ms_per_step
        else round(tokens_per_step * 1000.0 / ms_per_step, 1),
        "num_parameters": int(model.count_params()),
        "backend": keras.backend.backend(),
        "distribute": dist.describe(),
        **inputs.description,
    }
    scores = inputs.evaluate(run_dir)  # Also proves that the best checkpoint loads.
    if scores:
        metrics["val_subset_sources"] = scores["num_sources"]
        metrics["val_subset_bleu"] = scores["bleu"]
        metrics["val_subset_chrf"] = scores["chrf"]
        metrics["samples"] = scores["samples"]
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    return metrics

"""Training: `model.fit` with teacher forcing, masked loss, warm-up schedule and a run directory.

A run directory holds everything needed to use or resume the run:

    config.json            the resolved TranslatorConfig
    vocab_source.txt       English vocabulary (one token per line, line i = id i)
    vocab_target.txt       Spanish vocabulary
    subword_*.model        subword runs: the SentencePiece models (see `subword.py`)
    model.keras            the best model so far (lowest val_loss), written atomically
    history.csv            one row per epoch, with its epoch_seconds (continued when a run resumes)
    logs/                  TensorBoard
    backup/                the state of the last completed epoch while training (removed at the end)
    data/                  the prepared data of a `--data` run (see `prepared.py`)
    metrics.json           final figures: best epoch, val loss/accuracy, val BLEU/chrF, timing
                           (train_seconds: the sum of epoch_seconds, every epoch of the run)

Running the same command again on an interrupted run directory resumes it
(same config and vocabularies required) from its last completed epoch, and
ends as an uninterrupted run would have ended (same history, same weights;
an interrupted epoch is redone from its start, see `apps.common.callbacks`).
A directory whose training finished is refused.

One way through: `data=` (text) is tokenised once into `RUN/data/`, the
prepared format `translator prepare` writes (`prepare.py`, needs TensorFlow);
a resumed text run reuses that folder and its vocabularies. `prepared=`
names a folder written by `translator prepare`. From there on every run,
on TensorFlow or JAX, is the same: the arrays are batched by
`batches.ArrayBatches` (NumPy; each epoch's order a pure function of the
seed and the epoch, so a resumed run sees the batches of an uninterrupted
one) and the best checkpoint is scored on validation ids by
`evaluate.evaluate_ids` (no TensorFlow needed).

`distribute` runs `model.fit` on several devices or machines through
`apps.common.distribute` (`MirroredStrategy` / `MultiWorkerMirroredStrategy` on
TensorFlow, `keras.distribution.DataParallel` on JAX); `config.batch_size` is
the global batch.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import keras

from apps.common.batches import FollowEpochs
from apps.common.callbacks import (
    check_not_diverged,
    logged_seconds,
    read_history,
    standard_callbacks,
)
from apps.common.config import save_config
from apps.common.distribute import Distribution, get_distribution
from apps.common.errors import RunDirError
from apps.common.io import atomic_write_bytes, atomic_write_json
from apps.common.machine import machine_info
from apps.common.model_io import load_keras_model
from apps.common.rundir import (
    HISTORY_FILE,
    METRICS_FILE,
    check_run_app,
    check_run_dir_path,
    check_same_config,
    default_run_dir,
    run_state,
)
from apps.translator.batches import ArrayBatches
from apps.translator.config import (
    APP_NAME,
    CONFIG_FILE,
    DATA_FIELDS,
    MODEL_FILE,
    PREPARED_DIR,
    RUN_FIELDS,
    TranslatorConfig,
    get_config,
    vocabulary_files,
)
from apps.translator.data import SPLITS, Splits, check_split_sizes
from apps.translator.evaluate import evaluate_ids
from apps.translator.model import build_model
from apps.translator.prepared import (
    MANIFEST_FILE,
    Prepared,
    check_compatible,
    load_prepared,
    sha256_file,
)
from apps.translator.tokens import PAD_ID, load_tokens, save_tokens
from custom_layers.losses import MaskedSparseCategoricalCrossentropy
from custom_layers.metrics import MaskedAccuracy

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


def resolve_run_dir(run_dir: str | os.PathLike | None) -> Path:
    """`run_dir` checked, or a fresh `runs/translator/<timestamp>` (the one place it is chosen)."""
    path = check_run_dir_path(
        default_run_dir(APP_NAME) if run_dir is None else run_dir, "--run-dir"
    )
    check_run_app(path, APP_NAME, option="--run-dir")
    return path


def base_config(preset: str | None, prepared: Prepared | None = None) -> TranslatorConfig:
    """The config a run starts from: `preset`'s, or without one the preparation's, or `default`.

    The one place that decides which config applies to prepared data (`train`
    then only checks that the data fields match, `prepared.check_compatible`).
    """
    if preset is None and prepared is not None:
        return prepared.config
    return get_config(preset or "default")


def _tokenised(config: TranslatorConfig, data, splits, run_dir: Path) -> Prepared:
    """`RUN/data/`: the text tokenised once into the prepared format (reused when resuming)."""
    data_dir = run_dir / PREPARED_DIR
    if (data_dir / MANIFEST_FILE).is_file():
        prepared = load_prepared(data_dir)
        changed = [k for k in DATA_FIELDS if getattr(config, k) != getattr(prepared.config, k)]
        recorded = prepared.manifest["data"]["sha256"]
        if data is not None and recorded is not None and Path(data).is_file():
            if sha256_file(Path(data)) != recorded:
                changed.append(f"the corpus (sha256 of {data})")
        if changed:
            raise RunDirError(
                f"{data_dir} was tokenised from other data or settings ({', '.join(changed)}): "
                "resume with the same --data and options, or pass a new --run-dir."
            )
        return prepared
    from apps.translator.prepare import prepare

    prepare(config, data_dir, data=data, splits=splits)
    return load_prepared(data_dir)


def _copy_vocabulary(source: Path, destination: Path) -> None:
    """Copies a prepared vocabulary file into the run dir (a resumed run must already hold the same).

    Token lists (`.txt`) are compared as tokens, SentencePiece models as bytes.
    """
    if source.suffix == ".txt":
        content, read, write = load_tokens(source), load_tokens, save_tokens
    else:
        content, read, write = source.read_bytes(), Path.read_bytes, atomic_write_bytes
    if destination.is_file():
        if read(destination) != content:
            raise RunDirError(
                f"{destination} differs from the prepared {source}: this run directory was "
                "trained on other data; pass a new --run-dir."
            )
        return
    write(destination, content)


def _batches(config, prepared: Prepared, dist: Distribution):
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
    train_batches = ArrayBatches(
        prepared.split("train"), shuffle=True, seed=config.seed, **batch_args
    )
    val_batches = ArrayBatches(prepared.split("val"), **batch_args)
    if keras.backend.backend() == "tensorflow":
        return (
            dist.prepare_tf_dataset(train_batches.as_tf_dataset()),
            dist.prepare_tf_dataset(val_batches.as_tf_dataset()),
            train_batches,
        )
    return train_batches, val_batches, train_batches


def _check_split_sizes(config, prepared: Prepared, source: str) -> None:
    """`data.check_split_sizes` of the pairs training will use (before the run dir is written)."""
    counts = [prepared.manifest["splits"][name]["kept_pairs"] for name in SPLITS]
    check_split_sizes(*counts, config.batch_size, source, config.max_train_pairs)


def train(
    config: TranslatorConfig,
    data: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    splits: Splits | None = None,
    verbose: str | int = "auto",
    prepared: str | os.PathLike | Prepared | None = None,
    distribute: str = "none",
    callbacks: list | None = None,
) -> dict:
    """Trains a translator and returns the metrics written to `metrics.json`.

    Args:
        config: the run's configuration.
        data: the corpus (zip or text file); `None` downloads the official
            archive. Tokenised once into `run_dir/data/` (reused on resume).
        run_dir: output folder (created; an existing one is resumed);
            defaults to `runs/translator/<timestamp>` (`resolve_run_dir`).
        splits: pairs already split (tests pass slices), tokenised into
            `run_dir/data/` as `data` would be; overrides `data`.
        verbose: passed to `model.fit`.
        prepared: a folder written by `translator prepare` (or its loaded
            `Prepared`): train from its arrays, without TensorFlow. Excludes
            `data` and `splits`; `config`'s data fields must match it
            (`base_config` picks a config that does).
        distribute: `"none"`, `"mirrored"` or `"multiworker"` (see
            `apps.common.distribute`). With several workers only the chief
            writes `run_dir` and evaluates; the others return
            `{"worker": "worker:1", ...}`.
        callbacks: extra Keras callbacks (appended to the standard ones).

    The data source (`data_path`, `data_sha256`) and `distribute` are
    recorded in the run's `config.json`.

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
    run_dir = resolve_run_dir(run_dir)
    work_dir = dist.work_dir(run_dir)
    check_same_config(work_dir, config, APP_NAME, ignore=RUN_FIELDS)
    if prepared is None:
        # Tokenised once (TensorFlow); from here on a text run is a prepared one.
        prepared = _tokenised(config, data, splits, work_dir)
        source = prepared.manifest["data"]
        inputs = {"data_path": source["path"], "data_sha256": source["sha256"]}
        description = {"data": "text"}
    else:
        if not isinstance(prepared, Prepared):
            prepared = load_prepared(prepared)
        manifest_sha256 = sha256_file(prepared.path / MANIFEST_FILE)
        inputs = {"data_path": str(prepared.path), "data_sha256": manifest_sha256}
        description = {"data": "prepared", "prepared": str(prepared.path)}
    check_compatible(config, prepared)
    _check_split_sizes(config, prepared, f"prepared data {prepared.path}")
    config = dataclasses.replace(config, **inputs, distribute=distribute)
    if not (work_dir / CONFIG_FILE).is_file():
        work_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, work_dir / CONFIG_FILE, app=APP_NAME)
    for name in vocabulary_files(config):
        _copy_vocabulary(prepared.file(name), work_dir / name)
    # A run that diverged (its history shows it) is neither trained again nor finished.
    advice = (
        f"Lower the learning rate (learning_rate, now {config.learning_rate:g}) or lengthen "
        f"the warm-up (warmup_steps, now {config.warmup_steps}), and train into a new --run-dir."
    )
    check_not_diverged(work_dir, advice)
    keras.utils.set_random_seed(config.seed)
    train_data, val_data, batches = _batches(config, prepared, dist)
    steps_per_epoch = len(batches)

    timer = StepTimer()
    budget = None
    # "finalize": training ended but the final figures were not written (the process
    # stopped in between); they are computed now, without training again.
    finalize = run_state(work_dir) == "finalize"
    if not finalize:
        extra_callbacks = list(callbacks or [])
        callbacks = standard_callbacks(
            work_dir, monitor=MONITOR, mode="min", patience=config.patience
        )
        callbacks += [FollowEpochs(batches), timer]
        if config.time_budget_minutes is not None:
            # The budget is the whole run's: a resumed run has spent the logged epochs' seconds.
            budget = TimeBudget(config.time_budget_minutes, logged_seconds(work_dir / HISTORY_FILE))
            callbacks.append(budget)
        callbacks += extra_callbacks

    with dist.scope():
        model = build_model(config, len(prepared.source_tokens), len(prepared.target_tokens))
        compile_model(model, config, total_steps=steps_per_epoch * config.epochs)
        dist.prepare_model(model)  # clip the global gradient, count tokens over all replicas
        if not finalize:
            model.fit(
                train_data,
                validation_data=val_data,
                epochs=config.epochs,
                callbacks=callbacks,
                shuffle=False,  # Shuffled (seeded by epoch) before batching by length.
                verbose=verbose,
            )

    check_not_diverged(work_dir, advice)
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
    tokens_per_step = batches.label_tokens / max(steps_per_epoch, 1)
    metrics = {
        "best_epoch": None if best_epoch is None else best_epoch + 1,
        "best_val_loss": None if best_epoch is None else float(val_loss[best_epoch]),
        "best_val_accuracy": None
        if best_epoch is None
        else float(history[best_epoch]["val_accuracy"]),
        "epochs_run": len(val_loss),
        "stopped_by_time_budget": bool(budget and budget.stopped),
        "train_seconds": round(logged_seconds(work_dir / HISTORY_FILE), 1),
        "train_pairs": len(batches.arrays[0]),
        "steps_per_epoch": steps_per_epoch,
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
        "machine": machine_info(),
        "distribute": dist.describe(),
        **description,
    }
    # The best checkpoint, loaded as users get it (which also proves that it loads).
    best = load_keras_model(run_dir / MODEL_FILE, compile=False)
    scores = {}
    if config.eval_sentences:
        scores = evaluate_ids(best, prepared, "val", limit=config.eval_sentences, num_samples=5)
    if scores:
        metrics["val_subset_sources"] = scores["num_sources"]
        metrics["val_subset_bleu"] = scores["bleu"]
        metrics["val_subset_chrf"] = scores["chrf"]
        metrics["samples"] = scores["samples"]
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    return metrics

"""Training: `model.fit` with teacher forcing, masked loss, warm-up schedule and a run directory.

A run directory holds everything needed to use or resume the run:

    config.json            the resolved TranslatorConfig
    vocab_source.txt       English vocabulary (one token per line, line i = id i)
    vocab_target.txt       Spanish vocabulary
    model.keras            the best model so far (lowest val_loss), written atomically
    history.csv            one row per epoch (appended to when a run resumes)
    logs/                  TensorBoard
    backup/                BackupAndRestore state while training (removed at the end)
    metrics.json           final figures: best epoch, val loss/accuracy, val BLEU/chrF, timing

Running the same command again on an interrupted run directory resumes it
(same config and vocabularies required).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import keras

from apps.common.callbacks import standard_callbacks
from apps.common.cli import default_run_dir
from apps.common.config import config_to_dict, load_config, save_config
from apps.common.io import atomic_write_json
from apps.translator.config import TranslatorConfig
from apps.translator.data import Splits, load_splits, make_dataset
from apps.translator.model import build_model
from apps.translator.translate import (
    CONFIG_FILE,
    MODEL_FILE,
    SOURCE_VOCAB_FILE,
    TARGET_VOCAB_FILE,
    Translator,
)
from apps.translator.vectorization import PAD_ID, Vocabulary
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
        jit_compile=config.jit_compile,
    )
    return model


class TimeBudget(keras.callbacks.Callback):
    """Stops training after the current batch once `minutes` have passed.

    Keras then still validates the interrupted epoch, so the checkpoint and
    history stay consistent.
    """

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds = 60.0 * minutes
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
        saved = load_config(TranslatorConfig, config_path)
        if saved != config:
            changed = sorted(
                k for k, v in config_to_dict(config).items() if config_to_dict(saved).get(k) != v
            )
            raise ValueError(
                f"run directory {run_dir} holds a run with a different config (fields: "
                f"{', '.join(changed)}); resume it with the same options or pass a new --run-dir."
            )
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, config_path)


def _vocabularies(run_dir: Path, splits_train, config: TranslatorConfig):
    """The run's vocabularies: loaded when resuming, else built from the training split and saved."""
    source_path, target_path = run_dir / SOURCE_VOCAB_FILE, run_dir / TARGET_VOCAB_FILE
    if source_path.is_file() and target_path.is_file():
        return (
            Vocabulary.load(source_path, name="source_vocab"),
            Vocabulary.load(target_path, name="target_vocab"),
        )
    source_vocab = Vocabulary.from_texts(
        (p.english for p in splits_train),
        config.source_vocab_size,
        config.min_count,
        "source_vocab",
    )
    target_vocab = Vocabulary.from_texts(
        (p.spanish for p in splits_train),
        config.target_vocab_size,
        config.min_count,
        "target_vocab",
    )
    source_vocab.save(source_path)
    target_vocab.save(target_path)
    return source_vocab, target_vocab


def train(
    config: TranslatorConfig,
    data: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    splits: Splits | None = None,
    verbose: str | int = "auto",
) -> dict:
    """Trains a translator and returns the metrics written to `metrics.json`.

    Args:
        config: the run's configuration.
        data: the corpus (zip or text file); `None` downloads the official archive.
        run_dir: output folder (created; an existing one is resumed);
            defaults to `runs/translator/<timestamp>`.
        splits: pairs already split (tests pass slices); overrides `data`.
        verbose: passed to `model.fit`.
    """
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir("translator")
    _prepare_run_dir(run_dir, config)
    keras.utils.set_random_seed(config.seed)

    splits = splits if splits is not None else load_splits(data)
    train_pairs = splits.train[: config.max_train_pairs] if config.max_train_pairs else splits.train
    if not train_pairs or not splits.val:
        raise ValueError(
            f"Training needs training and validation pairs. Received: {len(train_pairs)} "
            f"training and {len(splits.val)} validation pairs."
        )
    source_vocab, target_vocab = _vocabularies(run_dir, train_pairs, config)
    dataset_args = dict(
        source_vocab=source_vocab,
        target_vocab=target_vocab,
        sequence_length=config.sequence_length,
        batch_size=config.batch_size,
        bucket_by_length=config.bucket_by_length,
    )
    train_ds, steps_per_epoch = make_dataset(
        train_pairs, shuffle=True, seed=config.seed, **dataset_args
    )
    val_ds, _ = make_dataset(splits.val, **dataset_args)

    model = build_model(config, source_vocab.size, target_vocab.size)
    compile_model(model, config, total_steps=steps_per_epoch * config.epochs)
    timer = StepTimer()
    callbacks = standard_callbacks(run_dir, monitor=MONITOR, mode="min", patience=config.patience)
    callbacks.append(timer)
    budget = None
    if config.time_budget_minutes is not None:
        budget = TimeBudget(config.time_budget_minutes)
        callbacks.append(budget)

    start = time.monotonic()
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        callbacks=callbacks,
        shuffle=False,  # The tf.data pipeline shuffles (seeded) before batching by length.
        verbose=verbose,
    )
    train_seconds = time.monotonic() - start

    if not (run_dir / MODEL_FILE).is_file():
        raise RuntimeError(
            f"Training wrote no {MODEL_FILE} to {run_dir}: no epoch produced a finite {MONITOR}."
        )
    translator = Translator.from_run_dir(run_dir)  # The best checkpoint, as users get it.
    val_loss = history.history.get(MONITOR, [])
    best_epoch = int(min(range(len(val_loss)), key=val_loss.__getitem__)) if val_loss else None
    metrics = {
        "best_epoch": None if best_epoch is None else best_epoch + 1,
        "best_val_loss": None if best_epoch is None else float(val_loss[best_epoch]),
        "best_val_accuracy": None
        if best_epoch is None
        else float(history.history["val_accuracy"][best_epoch]),
        "epochs_run": len(val_loss),
        "stopped_by_time_budget": bool(budget and budget.stopped),
        "train_seconds": round(train_seconds, 1),
        "train_pairs": len(train_pairs),
        "steps_per_epoch": steps_per_epoch,
        "batch_size": config.batch_size,
        "ms_per_step": None if timer.ms_per_step is None else round(timer.ms_per_step, 2),
        "pairs_per_second": None
        if not timer.ms_per_step
        else round(config.batch_size * 1000.0 / timer.ms_per_step, 1),
        "num_parameters": int(model.count_params()),
    }
    if config.eval_sentences:
        from apps.translator.evaluate import evaluate_pairs

        scores = evaluate_pairs(translator, splits.val, limit=config.eval_sentences, num_samples=5)
        metrics["val_subset_sources"] = scores["num_sources"]
        metrics["val_subset_bleu"] = scores["bleu"]
        metrics["val_subset_chrf"] = scores["chrf"]
        metrics["samples"] = scores["samples"]
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    return metrics

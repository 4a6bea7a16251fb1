"""Training throughput of the translator: ms/step and pairs/s per preset, on the real corpus.

Runs `model.fit` on the real training pipeline (same tokenisation, batching and
compiled train step as `translator train`) for a fixed number of steps, after
warm-up steps that absorb tracing and XLA compilation, and reports the mean
step time. Nothing is written to a run directory.

    python benchmarks/translator_training.py --presets keras-io-reference default --steps 60

Writes `benchmarks/results/translator_training.json`. For scale (issue 4): a
faithful re-implementation of the keras-io example runs 946 ms/step at batch
64 on this project's reference CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402

from apps.common.config import add_override_argument, apply_overrides  # noqa: E402
from apps.common.data import find_shared_data  # noqa: E402
from apps.common.io import atomic_write_json  # noqa: E402
from apps.common.machine import machine_info  # noqa: E402
from apps.translator.batches import make_dataset  # noqa: E402
from apps.translator.config import get_config  # noqa: E402
from apps.translator.data import load_splits  # noqa: E402
from apps.translator.model import build_model  # noqa: E402
from apps.translator.train import compile_model  # noqa: E402
from apps.translator.vectorization import build_vocabularies  # noqa: E402


class _Timer(keras.callbacks.Callback):
    def __init__(self, warmup):
        super().__init__()
        self.warmup, self.times = warmup, []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def measure(preset: str, splits, steps: int, warmup: int, jit_compile, overrides=()) -> dict:
    config = apply_overrides(get_config(preset), **dict(overrides))
    keras.utils.set_random_seed(config.seed)
    train = splits.train
    start = time.perf_counter()
    source_vocab, target_vocab = build_vocabularies(train, config)
    vocabulary_seconds = time.perf_counter() - start
    ds, steps_per_epoch = make_dataset(
        train,
        source_vocab,
        target_vocab,
        config.sequence_length,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        bucket_by_length=config.bucket_by_length,
        pad_batches=True,  # As training does: one batch shape per length bucket.
    )
    model = build_model(config, source_vocab.size, target_vocab.size)
    compile_model(model, config, total_steps=steps_per_epoch * config.epochs)
    if jit_compile is not None:
        model.jit_compile = jit_compile
    timer = _Timer(warmup)
    model.fit(
        ds.take(warmup + steps).repeat(),
        epochs=1,
        steps_per_epoch=warmup + steps,
        callbacks=[timer],
        verbose=0,
        shuffle=False,
    )
    timed = timer.times[warmup:]
    ms = 1000.0 * sum(timed) / len(timed)
    median_ms = 1000.0 * sorted(timed)[len(timed) // 2]
    # Real target tokens per step, measured on the same batches.
    tokens = [int((y.numpy() != 0).sum()) for _, y in ds.take(warmup + steps)][warmup:]
    return {
        "preset": preset,
        "overrides": dict(overrides),
        "batch_size": config.batch_size,
        "bucket_by_length": config.bucket_by_length,
        "jit_compile": bool(model.jit_compile),
        "num_parameters": int(model.count_params()),
        "timed_steps": len(timed),
        "ms_per_step": round(ms, 1),
        # Robust to a step that compiles a new bucket shape (XLA) inside the timed window.
        "median_ms_per_step": round(median_ms, 1),
        "pairs_per_second": round(config.batch_size * 1000.0 / ms, 1),
        "target_tokens_per_second": round(sum(tokens) / sum(timed), 1),
        "steps_per_epoch": steps_per_epoch,
        "estimated_epoch_minutes": round(steps_per_epoch * ms / 60000.0, 1),
        "vocabulary_seconds": round(vocabulary_seconds, 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--presets", nargs="+", default=["keras-io-reference", "default"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--jit-compile", choices=("config", "on", "off"), default="config")
    add_override_argument(parser)
    parser.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks/results/translator_training.json"
    )
    args = parser.parse_args(argv)
    data = args.data or find_shared_data("spa-eng/spa-eng.zip")
    jit = {"config": None, "on": True, "off": False}[args.jit_compile]
    splits = load_splits(data)
    results = []
    for preset in args.presets:
        result = measure(preset, splits, args.steps, args.warmup, jit, args.overrides)
        print(json.dumps(result), flush=True)
        results.append(result)
    report = {
        "command": "python benchmarks/translator_training.py " + " ".join(sys.argv[1:]),
        "backend": keras.backend.backend(),
        "machine": machine_info(),
        "results": results,
    }
    atomic_write_json(args.output, report)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

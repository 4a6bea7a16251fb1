"""Latency and throughput of exported signatures, called in-process.

Loads each SavedModel with `tf.saved_model.load` (what TF Serving runs, minus
the network) and times every signature at the given batch sizes: p50/p95/mean
latency per call and throughput in examples per second. Inputs are made from
each signature's input specs: encoded PNG images for the medical model's string
input, English sentences for the translator's, random values for numeric inputs.

    python benchmarks/serving.py --medical saved_models/medical_cnn \
        --translator saved_models/translator [--batch-sizes 1 32] [--iterations 20]

A path may be a base path (its highest version is used) or a version folder.
`--model NAME=PATH` adds any other SavedModel. Results are printed and written
as JSON (default `benchmarks/results/serving.json`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402, F401  (registers the SentencePiece ops of subword translator exports)

from apps.common.export import is_complete_saved_model, latest_version_path  # noqa: E402
from apps.common.io import atomic_write_json  # noqa: E402
from apps.common.machine import machine_info  # noqa: E402

SENTENCES = [
    "Hello.",
    "How are you?",
    "I don't know what to do.",
    "Why don't we take a taxi?",
    "She has been living in Madrid for three years.",
    "Tom told me that he would be late for the meeting tomorrow.",
    "Can you help me?",
    "The book is on the table.",
]


def resolve_saved_model(path: str | os.PathLike) -> Path:
    """A version folder as given, or the highest version of a base path."""
    path = Path(path)
    if is_complete_saved_model(path):
        return path
    return latest_version_path(path)


def _images(n: int, size: int, rng: np.random.Generator) -> list[bytes]:
    # Smooth random images (noise would make PNG decoding unrepresentatively slow).
    base = rng.integers(0, 256, size=(n, 4, 4, 1)).astype(np.float32)
    images = tf.image.resize(base, (size, size)).numpy().astype(np.uint8)
    return [tf.io.encode_png(im).numpy() for im in images]


def make_inputs(kind: str, spec: tf.TensorSpec, batch: int, args, rng) -> tf.Tensor:
    """A batch for one input of a signature, from its spec and the model kind."""
    if spec.dtype == tf.string:
        name = (spec.name or "").lower()
        if kind == "medical" or (kind != "translator" and ("image" in name or "byte" in name)):
            return tf.constant(_images(batch, args.image_size, rng))
        return tf.constant([SENTENCES[i % len(SENTENCES)] for i in range(batch)])
    shape = [batch] + [d if d is not None else args.image_size for d in spec.shape.as_list()[1:]]
    if spec.dtype.is_floating:
        return tf.constant(rng.random(shape), dtype=spec.dtype)
    return tf.zeros(shape, dtype=spec.dtype)


def time_signature(fn, inputs, iterations: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn(**inputs)
    latencies = []
    start = time.perf_counter()
    for _ in range(iterations):
        t0 = time.perf_counter()
        outputs = fn(**inputs)
        for value in outputs.values():
            value.numpy()  # Make sure the work is done.
        latencies.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    batch = int(next(iter(inputs.values())).shape[0])
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "throughput_per_s": round(batch * iterations / total, 2),
        "iterations": iterations,
    }


def benchmark(models: dict[str, tuple[str, Path]], args) -> list[dict]:
    rng = np.random.default_rng(args.seed)
    results = []
    for name, (kind, path) in models.items():
        loaded = tf.saved_model.load(str(path))
        for signature_name, fn in sorted(loaded.signatures.items()):
            specs = fn.structured_input_signature[1]
            for batch in args.batch_sizes:
                inputs = {k: make_inputs(kind, s, batch, args, rng) for k, s in specs.items()}
                row = {
                    "model": name,
                    "path": str(path),
                    "signature": signature_name,
                    "batch_size": batch,
                    **time_signature(fn, inputs, args.iterations, args.warmup),
                }
                print(
                    f"{name:12s} {signature_name:22s} batch {batch:3d}: "
                    f"p50 {row['p50_ms']:9.2f} ms  p95 {row['p95_ms']:9.2f} ms  "
                    f"{row['throughput_per_s']:9.1f} examples/s",
                    flush=True,
                )
                results.append(row)
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--medical", help="medical_cnn export (base path or version folder)")
    parser.add_argument("--translator", help="translator export (base path or version folder)")
    parser.add_argument(
        "--model", action="append", default=[], metavar="NAME=PATH", help="any other SavedModel"
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--iterations", type=int, default=20, help="timed calls per case")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first (tracing)")
    parser.add_argument("--image-size", type=int, default=28, help="side of generated images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serving.json"))
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0 or min(args.batch_sizes) < 1:
        parser.error("--iterations and --batch-sizes must be >= 1, --warmup >= 0")
    return parser, args


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    models: dict[str, tuple[str, Path]] = {}
    try:
        if args.medical:
            models["medical_cnn"] = ("medical", resolve_saved_model(args.medical))
        if args.translator:
            models["translator"] = ("translator", resolve_saved_model(args.translator))
        for item in args.model:
            name, sep, path = item.partition("=")
            if not sep:
                parser.error(f"--model expects NAME=PATH. Received: {item!r}")
            models[name] = ("other", resolve_saved_model(path))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not models:
        parser.error("give at least one of --medical, --translator, --model NAME=PATH")
    results = benchmark(models, args)
    report = {
        "command": " ".join(["python", sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "tensorflow": tf.__version__,
        "machine": machine_info(),
        "results": results,
    }
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

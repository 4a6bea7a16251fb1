"""Decoding speed of the translator, side by side on one trained model and the same sentences.

Four ways to translate the first test-split sentences:

1. `reference_b1`: the re-feeding reference decoder (`reference_greedy_decode`:
   the whole model re-run on the full prefix at every step, eager), batch 1;
2. `cached_b1`: the cached graph loop (`greedy_decode` in a `tf.function`), batch 1;
3. `cached_b64`: the same, batch 64 (sentences grouped by length, as
   `Translator.translate` does); `*_xla`: both again compiled with XLA;
4. `export_b1` / `export_b64`: the exported SavedModel's `serving_default`
   (strings in and out: tokenisation and detokenisation included).

The sentences are spread evenly over the test split (the corpus is sorted by
length). Token ids of 1-3 are compared sentence by sentence, and the exported
strings against `Translator.translate`; the run fails loudly if any differ.

    python benchmarks/translator_decoding.py --model runs/translator/<run>

Writes `benchmarks/results/translator_decoding.json`. Goals (issue 4): cached
batch 1 >= 20x and cached batch 64 >= 200x the reference's sentences/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from apps.common.data import find_shared_data  # noqa: E402
from apps.common.io import atomic_write_json  # noqa: E402
from apps.common.machine import machine_info  # noqa: E402
from apps.translator.data import group_references, load_splits  # noqa: E402
from apps.translator.decoding import compile_decoder, reference_greedy_decode  # noqa: E402
from apps.translator.export import write_saved_model  # noqa: E402
from apps.translator.translate import ExportedTranslator, Translator  # noqa: E402
from apps.translator.vectorization import pad_batch  # noqa: E402


def _rate(n: int, seconds: float) -> dict:
    return {
        "sentences": n,
        "seconds": round(seconds, 3),
        "sentences_per_second": round(n / seconds, 2),
    }


def _evenly_spaced(items: list, n: int) -> list:
    """`n` items spread over `items` (the corpus is sorted by length: the first are all short)."""
    step = len(items) / min(n, len(items))
    return [items[int(i * step)] for i in range(min(n, len(items)))]


def _cached_batched(
    decode, source: np.ndarray, batch_size: int, max_length: int
) -> tuple[np.ndarray, float]:
    """Decodes in batches of similar source length (as `Translator.translate` does)."""
    lengths = (source != 0).sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    output = np.zeros((len(source), max_length), "int32")
    start = time.perf_counter()
    for i in range(0, len(order), batch_size):
        rows = order[i : i + batch_size]
        width = max(1, int(lengths[rows].max()))  # Padded to the batch's longest source.
        output[rows] = np.asarray(decode(source[rows, :width]))
    return output, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="trained run directory")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--reference-sentences", type=int, default=20)
    parser.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks/results/translator_decoding.json"
    )
    args = parser.parse_args(argv)

    translator = Translator.from_run_dir(args.model)
    length = translator.sequence_length
    splits = load_splits(args.data or find_shared_data("spa-eng/spa-eng.zip"))
    sources = [english for english, _ in group_references(splits.test)]
    sentences = _evenly_spaced(sources, args.sentences)
    source = pad_batch(translator.source_vocab.encode(sentences), length).numpy()
    n = len(sentences)
    reference_rows = np.array(_evenly_spaced(list(range(n)), args.reference_sentences), dtype=int)
    tokens = translator.target_vocab.tokens  # both decoders keep byte pieces to valid UTF-8
    results = {}

    # 1. Re-feeding reference, batch 1 (eager, as the classic inference loop).
    start = time.perf_counter()
    reference = np.stack(
        [
            reference_greedy_decode(translator.model, source[i : i + 1], target_tokens=tokens)[0]
            for i in reference_rows
        ]
    )
    results["reference_b1"] = _rate(len(reference_rows), time.perf_counter() - start)

    # 2-3. The cached graph loop, without and with XLA, at batch 1 and 64 (traced first).
    outputs = {}
    for suffix, jit in (("", False), ("_xla", True)):
        decode = compile_decoder(translator.layers, jit_compile=jit, target_tokens=tokens)
        for batch_size in (1, 64):  # Untimed pass: traces (and XLA-compiles) every shape.
            _cached_batched(decode, source, batch_size, length)
        outputs["b1" + suffix], seconds = _cached_batched(decode, source, 1, length)
        results["cached_b1" + suffix] = _rate(n, seconds)
        outputs["b64" + suffix], seconds = _cached_batched(decode, source, 64, length)
        results["cached_b64" + suffix] = _rate(n, seconds)

    # 4. The exported signature (strings in, strings out), batches of similar length.
    in_memory = translator.translate(sentences)
    with tempfile.TemporaryDirectory() as tmp:
        write_saved_model(translator, Path(tmp) / "1")
        exported = ExportedTranslator(Path(tmp) / "1")
        exported.translate(sentences[:64])
        start = time.perf_counter()
        export_b1 = exported.translate(sentences, batch_size=1)
        results["export_b1"] = _rate(n, time.perf_counter() - start)
        start = time.perf_counter()
        export_b64 = exported.translate(sentences, batch_size=64)
        results["export_b64"] = _rate(n, time.perf_counter() - start)

    identical = {
        "reference_b1_vs_cached_b1": bool(np.array_equal(reference, outputs["b1"][reference_rows])),
        "cached_b1_vs_cached_b64": bool(np.array_equal(outputs["b1"], outputs["b64"])),
        "cached_vs_cached_xla": bool(np.array_equal(outputs["b64"], outputs["b64_xla"]))
        and bool(np.array_equal(outputs["b1"], outputs["b1_xla"])),
        "export_b1_vs_translate": export_b1 == in_memory,
        "export_b64_vs_translate": export_b64 == in_memory,
    }
    base = results["reference_b1"]["sentences_per_second"]
    report = {
        "command": "python benchmarks/translator_decoding.py " + " ".join(sys.argv[1:]),
        "model": str(args.model),
        "sequence_length": length,
        "backend": keras.backend.backend(),
        "machine": machine_info(),
        "mean_source_tokens": round(float((source != 0).sum(axis=1).mean()), 2),
        "mean_output_tokens": round(float((outputs["b1"] != 0).sum(axis=1).mean()), 2),
        "results": results,
        "speedup_vs_reference_b1": {
            k: round(v["sentences_per_second"] / base, 1) for k, v in results.items()
        },
        "identical": identical,
        "samples": [
            {"english": s, "spanish": t}
            for s, t in zip(sentences[::64], in_memory[::64], strict=True)
        ],
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))
    atomic_write_json(args.output, report)
    print(f"wrote {args.output}")
    if not all(identical.values()):
        raise SystemExit(f"decoders disagree: {identical}")


if __name__ == "__main__":
    main()

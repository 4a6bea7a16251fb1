"""Translation quality of a preset: train it (timed), then BLEU/chrF on the test split.

    python benchmarks/translator_quality.py --preset default
    python benchmarks/translator_quality.py --model runs/translator/<run>   # score an existing run
    python benchmarks/translator_quality.py --preset default --pairs withheld.tsv
    python benchmarks/translator_quality.py --preset default --epochs 1 \
        --set shared_vocab=False --name default-separate-1ep    # a variant of a preset

Training writes a normal run directory (default `runs/translator/quality-<preset>-<time>`),
so the model can be exported afterwards. Scores are sacreBLEU (13a, cased) and
chrF against all references of each test sentence, plus single-reference BLEU, on the
whole test split, on its rare-word slice: the test pairs whose English holds a word
seen fewer than 3 times in the training split (`evaluate.rare_word_pairs`), a proxy for
text the corpus never saw, and on its long-sentence slice: English of 10 words or more
(`evaluate.long_sentence_pairs`), a proxy for the longer sentences users write; and
the share of never-seen names and numbers copied into the translations of 200 template
sentences (`evaluate.copy_probe`).
Writes `benchmarks/results/translator_quality_<name or preset>.json`.
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

from apps.common.cli import default_run_dir  # noqa: E402
from apps.common.config import (  # noqa: E402
    add_override_argument,
    apply_overrides,
    config_to_dict,
    load_config,
)
from apps.common.data import find_shared_data  # noqa: E402
from apps.common.io import atomic_write_json  # noqa: E402
from apps.common.machine import machine_info  # noqa: E402
from apps.translator.config import TranslatorConfig, get_config  # noqa: E402
from apps.translator.data import load_splits, read_pairs  # noqa: E402
from apps.translator.evaluate import (  # noqa: E402
    copy_probe,
    copy_rate,
    english_words,
    evaluate_pairs,
    long_sentence_pairs,
    rare_word_pairs,
)
from apps.translator.train import train  # noqa: E402
from apps.translator.translate import Translator  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--model", type=Path, default=None, help="score this run, no training")
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--time-budget-minutes", type=float, default=None)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--pairs", type=Path, default=None, help="extra withheld pairs to score")
    add_override_argument(parser)
    parser.add_argument(
        "--name", default=None, help="names the run and the result file (default: the preset)"
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.model is not None and args.overrides:
        parser.error("--set changes the config of a run to train; --model scores a trained one.")

    data = args.data or find_shared_data("spa-eng/spa-eng.zip")
    splits = load_splits(data)
    train_metrics = None
    if args.model is None:
        config = apply_overrides(
            get_config(args.preset),
            epochs=args.epochs,
            time_budget_minutes=args.time_budget_minutes,
            **dict(args.overrides),
        )
        run_dir = args.run_dir or default_run_dir("translator").with_name(
            f"quality-{args.name or args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        train_metrics = train(config, run_dir=run_dir, splits=splits)
        train_metrics.pop("samples", None)
    else:
        run_dir = args.model
        config = load_config(TranslatorConfig, run_dir / "config.json")
        metrics_path = run_dir / "metrics.json"
        if metrics_path.is_file():
            train_metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
            train_metrics.pop("samples", None)

    translator = Translator.from_run_dir(run_dir)
    test = evaluate_pairs(translator, splits.test, num_samples=10)
    rare = rare_word_pairs(splits.train, splits.test, max_count=3)
    test_rare = evaluate_pairs(translator, rare, num_samples=10)
    long = long_sentence_pairs(splits.test, min_words=10)
    test_long = evaluate_pairs(translator, long, num_samples=10)
    known = {w for p in splits.train for w in english_words(p.english)}
    probes = copy_probe(200, known)
    copy_translations = translator.translate([sentence for sentence, _ in probes])
    copied = copy_rate(probes, copy_translations)
    report = {
        "command": "python benchmarks/translator_quality.py " + " ".join(sys.argv[1:]),
        "run_dir": str(run_dir),
        "machine": machine_info(),
        "config": config_to_dict(config),
        "training": train_metrics,
        "test": test,
        # Test pairs whose English holds a word seen < 3 times in training.
        "test_rare_words": {"pairs": len(rare), **test_rare},
        # Test pairs whose English has 10 words or more.
        "test_long_sentences": {"pairs": len(long), **test_long},
        # Template sentences with names, places and numbers never seen in training.
        "copy_through": {
            **copied,
            "samples": [
                {"source": sentence, "translation": t}
                for (sentence, _), t in zip(probes[:10], copy_translations[:10], strict=True)
            ],
        },
    }
    if args.pairs is not None:
        report["withheld"] = evaluate_pairs(translator, read_pairs(args.pairs), num_samples=10)
    name = args.name or (args.preset if args.model is None else run_dir.name)
    output = args.output or ROOT / "benchmarks" / "results" / f"translator_quality_{name}.json"
    atomic_write_json(output, report)
    summary = {
        "test_bleu": test["bleu"],
        "test_chrf": test["chrf"],
        "test_bleu_single_reference": test["bleu_single_reference"],
        "test_rare_words_sources": test_rare["num_sources"],
        "test_rare_words_bleu": test_rare["bleu"],
        "test_rare_words_chrf": test_rare["chrf"],
        "test_long_sentences_sources": test_long["num_sources"],
        "test_long_sentences_bleu": test_long["bleu"],
        "test_long_sentences_chrf": test_long["chrf"],
        "copy_names": copied["names_copied"],
        "copy_numbers": copied["numbers_copied"],
        "train_seconds": (train_metrics or {}).get("train_seconds"),
    }
    if "withheld" in report:
        summary.update(
            withheld_bleu=report["withheld"]["bleu"], withheld_chrf=report["withheld"]["chrf"]
        )
    print(json.dumps(summary, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()

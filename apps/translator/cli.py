"""The `translator` command: train, evaluate, translate, export.

    translator prepare --out DIR [--data PATH] [--preset default] [--max-train-pairs N]
    translator train [--data PATH | --prepared DIR] [--preset default] [--epochs N] [--run-dir DIR]
                     [--seed N] [--distribute {none,mirrored,multiworker}]
    translator evaluate --model RUN_DIR [--data PATH] [--split test] [--pairs FILE]
    translator translate --model RUN_DIR_OR_EXPORT [TEXT ...]  (or stdin, or --input/--output)
    translator translate --server http://localhost:8501 [--timeout SECONDS] [TEXT ...]
    translator translate --server grpc://localhost:8500 [--model-label canary] [TEXT ...]
    translator export --model RUN_DIR [--base saved_models/translator] [--keep K]

Also `python -m apps.translator ...`. Errors caused by the input (missing
files, bad options) print `error: ...` and exit with status 2.

`translate` reads one sentence per line (stdin or `--input`, UTF-8; lines end
at `\\n` or `\\r\\n` only) and writes exactly one line per input line, empty
for an empty or blank line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from apps.common.cli import (
    CliError,
    add_common_train_args,
    non_negative_int,
    positive_float,
    positive_int,
    run_cli,
)
from apps.common.distribute import STRATEGIES
from apps.common.errors import UserError
from apps.common.io import atomic_write_text, to_json
from apps.common.rundir import check_folder_path
from apps.common.textio import decode_utf8, join_lines, read_lines, split_lines
from apps.translator.config import APP_NAME, PRESETS, SERVING_TIMEOUT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=APP_NAME, description="English -> Spanish Transformer translator."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    prepare = sub.add_parser(
        "prepare", help="tokenise the corpus into integer arrays (train them without TensorFlow)"
    )
    prepare.add_argument("--out", type=Path, required=True, help="folder to write")
    prepare.add_argument("--data", type=Path, default=None, help="local corpus (zip or spa.txt)")
    prepare.add_argument("--preset", choices=sorted(PRESETS), default="default")
    prepare.add_argument(
        "--max-train-pairs", type=positive_int, default=None, help="keep only the first N pairs"
    )

    train = sub.add_parser("train", help="train a model into a run directory")
    add_common_train_args(train, presets=PRESETS, default_preset="default")
    # None: `default`, or with --prepared the config the data was prepared with.
    train.set_defaults(preset=None)
    train.add_argument(
        "--prepared",
        type=Path,
        default=None,
        help="train from a folder written by 'translator prepare' (no TensorFlow needed); "
        "without --preset, with the preset it was prepared with",
    )
    train.add_argument(
        "--distribute",
        choices=STRATEGIES,
        default="none",
        help="several GPUs (mirrored) or machines (multiworker, TF_CONFIG); "
        "see docs/distributed.md",
    )
    train.add_argument(
        "--max-train-pairs", type=positive_int, default=None, help="use only the first N pairs"
    )
    train.add_argument(
        "--time-budget-minutes",
        type=positive_float,
        default=None,
        help="stop training after this long",
    )

    evaluate = sub.add_parser("evaluate", help="BLEU/chrF on a split or a pairs file")
    evaluate.add_argument("--model", type=Path, required=True, help="run directory (or export)")
    evaluate.add_argument("--data", type=Path, default=None, help="local corpus (zip or spa.txt)")
    evaluate.add_argument("--split", choices=("train", "val", "test"), default="test")
    evaluate.add_argument("--pairs", type=Path, default=None, help="English<TAB>Spanish file")
    evaluate.add_argument("--output", type=Path, default=None, help="JSON path")
    evaluate.add_argument(
        "--limit", type=positive_int, default=None, help="N evenly spaced sources only"
    )
    evaluate.add_argument("--batch-size", type=positive_int, default=64)

    translate = sub.add_parser("translate", help="translate sentences")
    translate.add_argument("text", nargs="*", help="sentences (default: one per line on stdin)")
    translate.add_argument("--model", type=Path, default=None, help="run directory or export")
    translate.add_argument("--input", type=Path, default=None, help="file, one sentence per line")
    translate.add_argument("--output", type=Path, default=None, help="write translations here")
    translate.add_argument("--batch-size", type=positive_int, default=64)
    translate.add_argument(
        "--attention-plot", type=Path, default=None, help="folder for cross-attention PNGs"
    )
    translate.add_argument(
        "--server",
        default=None,
        help="TF Serving: REST http://HOST:8501 or gRPC grpc://HOST:8500",
    )
    translate.add_argument("--model-name", default=APP_NAME, help="model name on the server")
    translate.add_argument(
        "--model-version", type=non_negative_int, default=None, help="version on the server"
    )
    translate.add_argument(
        "--model-label",
        default=None,
        metavar="LABEL",
        help="version label on the server instead (version_labels in models.config), e.g. canary",
    )
    translate.add_argument(
        "--timeout",
        type=positive_float,
        default=SERVING_TIMEOUT,
        metavar="SECONDS",
        help=f"with --server: seconds to wait for each answer (default: {SERVING_TIMEOUT:g})",
    )

    export = sub.add_parser("export", help="write a versioned SavedModel for TF Serving")
    export.add_argument("--model", type=Path, required=True, help="run directory")
    export.add_argument("--base", type=Path, default=Path("saved_models") / APP_NAME)
    export.add_argument(
        "--keep", type=positive_int, default=None, help="keep the K newest versions"
    )
    return parser


def _prepare(args) -> None:
    from apps.translator.config import get_config
    from apps.translator.prepare import prepare

    config = _overrides(get_config(args.preset), max_train_pairs=args.max_train_pairs)
    manifest = prepare(config, args.out, data=args.data, preset=args.preset)
    summary = {k: manifest[k] for k in ("preset", "sequence_length", "vocab_sizes", "splits")}
    print(to_json(summary, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)


def _overrides(config, **overrides):
    """`apply_overrides`, with a value the config refuses reported as a bad option."""
    from apps.common.config import apply_overrides

    try:
        return apply_overrides(config, **overrides)
    except UserError:
        raise
    except ValueError as e:  # The config's own checks (TranslatorConfig.__post_init__).
        raise CliError(f"bad option value: {e}") from e


def _train(args) -> None:
    if args.prepared is not None and args.data is not None:
        raise CliError("pass --data CORPUS or --prepared DIR, not both")
    from apps.translator.train import base_config, resolve_run_dir, train

    prepared = None
    if args.prepared is not None:
        from apps.translator.prepared import load_prepared

        prepared = load_prepared(args.prepared)
    config = _overrides(
        base_config(args.preset, prepared),
        epochs=args.epochs,
        seed=args.seed,
        max_train_pairs=args.max_train_pairs,
        time_budget_minutes=args.time_budget_minutes,
    )
    run_dir = resolve_run_dir(args.run_dir)
    print(f"run directory: {run_dir}", file=sys.stderr)
    metrics = train(
        config, data=args.data, run_dir=run_dir, prepared=prepared, distribute=args.distribute
    )
    metrics.pop("samples", None)
    print(to_json(metrics, indent=2))


def _evaluate(args) -> None:
    from apps.translator.evaluate import evaluate

    if args.output is not None:
        _check_output_file(args.output, "--output")

    results, path = evaluate(
        args.model,
        data=args.data,
        split=args.split,
        pairs_file=args.pairs,
        output=args.output,
        limit=args.limit,
        batch_size=args.batch_size,
    )
    summary = {k: results[k] for k in ("num_sources", "bleu", "chrf", "bleu_single_reference")}
    print(to_json(summary, indent=2))
    print(f"wrote {path}", file=sys.stderr)


def _check_output_file(path: Path, option: str) -> None:
    """Raises `UserError` unless `path` can be written as a file (before any work is done)."""
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; pass a file path to write.")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{option} {path}: {parent} is a file, not a folder.")


def _read_stdin() -> bytes:
    """Standard input's bytes (decoded by `_read_sentences`, so errors name the line)."""
    stdin = sys.stdin
    if hasattr(stdin, "buffer"):
        return stdin.buffer.read()
    # A text stream without bytes beneath (tests); undecodable bytes come back as they were.
    return stdin.read().encode("utf-8", "surrogateescape")


def _read_sentences(args) -> list[str]:
    """One sentence per argument, or per line of `--input` or stdin (see the module docs)."""
    if args.text and args.input:
        raise CliError("give sentences as arguments or with --input, not both")
    if args.text:
        return list(args.text)
    if args.input:
        return read_lines(args.input, "input file")
    return split_lines(decode_utf8(_read_stdin(), "standard input"))


def _translate(args) -> None:
    from apps.translator.translate import input_warnings, load_translator, write_attention_plots

    if (args.model is None) == (args.server is None):
        raise CliError("pass exactly one of --model RUN_DIR_OR_EXPORT and --server URL")
    if args.output is not None:
        _check_output_file(args.output, "--output")
    if args.attention_plot is not None:
        check_folder_path(args.attention_plot, "--attention-plot", "the attention plots")
    if args.server is not None:
        if args.attention_plot is not None:
            raise CliError("--attention-plot needs --model RUN_DIR, not --server")
        if args.model_version is not None and args.model_label is not None:
            raise CliError("give either --model-version N or --model-label LABEL, not both")
        from apps.translator.serving import ServedTranslator

        translator = ServedTranslator(
            args.server,
            args.model_name,
            args.model_version,
            timeout=args.timeout,
            label=args.model_label,
        )
    else:
        translator = load_translator(args.model)
    sentences = _read_sentences(args)
    if args.attention_plot is not None and not hasattr(translator, "cross_attention"):
        raise CliError(
            "--attention-plot needs a run directory (the model's layers); an export only translates"
        )
    for warning in input_warnings(translator.source_stats(sentences)):
        print(warning, file=sys.stderr)
    translations = translator.translate(sentences, batch_size=args.batch_size)
    if len(translations) != len(sentences):  # One output line per input line, always.
        raise RuntimeError(f"{len(translations)} translations for {len(sentences)} sentences")
    text = join_lines(translations)
    if args.output is not None:
        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    if args.attention_plot is not None:
        paths = write_attention_plots(translator, sentences, args.attention_plot)
        print(f"wrote {len(paths)} attention plot(s) to {args.attention_plot}", file=sys.stderr)


def _export(args) -> None:
    from apps.translator.export import export

    path = export(args.model, base=args.base, keep=args.keep)
    print(path)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "prepare": _prepare,
        "train": _train,
        "evaluate": _evaluate,
        "translate": _translate,
        "export": _export,
    }
    commands[args.command](args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

"""`medical-cnn`: train, evaluate, predict and export the chest X-ray classifier.

```
medical-cnn train [--data PATH | --dataset tfds:NAME] [--preset default|best|tiny] [--epochs N]
                  [--run-dir DIR] [--seed N] [--learning-rate LR] [--max-train-examples N]
                  [--folds K] [--tta | --no-tta] [--threshold-method youden|sensitivity]
                  [--target-sensitivity S]
medical-cnn evaluate --model RUN_DIR_OR_MODEL [--data PATH] [--split val] [--out FILE]
medical-cnn predict --model RUN_DIR_OR_MODEL IMAGE... [--explain OUT_DIR]
medical-cnn predict --server URL [--model-name medical_cnn]
                    [--model-version N | --model-label LABEL] [--timeout SECONDS] IMAGE...
medical-cnn export --model RUN_DIR_OR_MODEL [--base saved_models/medical_cnn] [--keep K]
```

Errors in the input (missing files, malformed data, unsafe or corrupt models,
another app's run directory, output paths that are files, a training run whose
loss diverged) print `error: ...` and exit with status 2, as do TF Serving
failures (server unreachable or too slow, model or version not loaded);
`predict` exits with 1 when some files could not be read (the others are still
predicted). `predict --server` prints the same lines as `predict --model`.
"""

from __future__ import annotations

import argparse
import os
import sys

from apps.common.cli import (
    CliError,
    add_common_train_args,
    non_negative_int,
    positive_float,
    positive_int,
    run_cli,
)
from apps.common.io import to_json
from apps.common.rundir import default_run_dir

APP_NAME = "medical_cnn"
# Seconds `predict --server` waits for each answer (`serving.predict_files_served`'s default).
SERVER_TIMEOUT_S = 30.0


def _parser() -> argparse.ArgumentParser:
    from apps.medical_cnn.config import PRESETS

    parser = argparse.ArgumentParser(
        prog="medical-cnn", description="Chest X-ray classifier (PneumoniaMNIST and more)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model into a run directory")
    add_common_train_args(train, presets=PRESETS)
    train.add_argument(
        "--dataset",
        default=None,
        help="'pneumoniamnist' (default; downloaded unless --data), 'npz' or 'tfds:NAME'",
    )
    train.add_argument(
        "--max-train-examples", type=positive_int, default=None, help="subsample train"
    )
    train.add_argument(
        "--learning-rate",
        type=positive_float,
        default=None,
        help="override the preset's learning rate (lower it if training diverges)",
    )
    train.add_argument(
        "--folds",
        type=positive_int,
        default=None,
        help="K >= 2: K-fold cross-validation over train+val; threshold and figures from the "
        "out-of-fold predictions, and the K fold models saved as one ensemble model "
        "(1: one model, threshold on val; default: the preset's)",
    )
    train.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the ensemble also averages over the image shifted a few pixels "
        "(test-time augmentation; needs --folds >= 2; default: the preset's)",
    )
    train.add_argument(
        "--threshold-method",
        default=None,
        choices=("youden", "sensitivity"),
        help="decision threshold: maximise Youden's J, or keep --target-sensitivity",
    )
    train.add_argument(
        "--target-sensitivity",
        type=positive_float,
        default=None,
        help="with --threshold-method sensitivity: the sensitivity to keep (e.g. 0.95)",
    )
    train.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    train.add_argument(
        "--distribute",
        default="none",
        choices=("none", "mirrored", "multiworker"),
        help="several GPUs of this machine (mirrored) or a TF_CONFIG cluster (multiworker); "
        "see docs/distributed.md",
    )

    evaluate = sub.add_parser("evaluate", help="measure a model on one split")
    evaluate.add_argument("--model", required=True, help="run directory or .keras file")
    evaluate.add_argument("--data", default=None, help=".npz holding the split (default: run's)")
    evaluate.add_argument("--split", default="val", choices=("train", "val", "test"))
    evaluate.add_argument("--out", default=None, help="JSON report path")

    predict = sub.add_parser("predict", help="classify image files (one JSON line each)")
    predict.add_argument("--model", default=None, help="run directory or .keras file")
    predict.add_argument(
        "--server",
        default=None,
        help="TF Serving instead: REST http://HOST:8501 or gRPC grpc://HOST:8500",
    )
    predict.add_argument(
        "--model-name", default=None, help=f"model name on the server (default: {APP_NAME})"
    )
    predict.add_argument(
        "--model-version",
        type=non_negative_int,
        default=None,
        help="version on the server (default: the latest it serves)",
    )
    predict.add_argument(
        "--model-label",
        default=None,
        metavar="LABEL",
        help="version label on the server instead (version_labels in models.config), e.g. canary",
    )
    predict.add_argument(
        "--timeout",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help=f"with --server: seconds to wait for each answer (default: {SERVER_TIMEOUT_S:g})",
    )
    predict.add_argument("images", nargs="+", help="PNG/JPEG files")
    predict.add_argument("--explain", default=None, help="write Grad-CAM overlays to this folder")

    export = sub.add_parser("export", help="write a versioned SavedModel for TF Serving")
    export.add_argument("--model", required=True, help="run directory or .keras file")
    export.add_argument("--base", default=os.path.join("saved_models", APP_NAME))
    export.add_argument(
        "--keep", type=positive_int, default=None, help="keep only the K newest versions"
    )
    return parser


def _train(args) -> int:
    from apps.common.config import apply_overrides
    from apps.medical_cnn.config import get_config
    from apps.medical_cnn.crossval import train_folds
    from apps.medical_cnn.train import train

    dataset = args.dataset
    if dataset is None:
        dataset = "pneumoniamnist"
    if dataset.startswith("tfds:") and args.data is not None:
        raise CliError("give either --data PATH or --dataset tfds:NAME, not both.")
    if args.data is not None and args.data.is_dir():
        raise CliError(f"--data {args.data} is a folder, not an .npz file; pass the file itself.")
    if args.data is not None and not args.data.is_file():
        raise CliError(f"data file not found: {args.data}")
    cfg = apply_overrides(
        get_config(args.preset),
        dataset=dataset,
        data_path=None if args.data is None else str(args.data),
        epochs=args.epochs,
        seed=args.seed,
        max_train_examples=args.max_train_examples,
        learning_rate=args.learning_rate,
        folds=args.folds,
        tta=args.tta,
        threshold_method=args.threshold_method,
        target_sensitivity=args.target_sensitivity,
    )
    if args.target_sensitivity is not None and cfg.threshold_method != "sensitivity":
        raise CliError("--target-sensitivity needs --threshold-method sensitivity.")
    run_dir = args.run_dir if args.run_dir is not None else default_run_dir(APP_NAME)
    print(f"run directory: {run_dir}", file=sys.stderr)
    fit = train_folds if cfg.folds > 1 else train
    report = fit(cfg, run_dir, verbose=0 if args.quiet else 2, distribute=args.distribute)
    if "worker" in report:  # A non-chief worker: the chief writes the run directory.
        print(to_json({"run_dir": str(run_dir), "worker": report["worker"]}))
        return 0
    summary = {k: report.get(k) for k in ("auc", "threshold", "train_seconds", "ece")}
    if report.get("ece") is None:
        del summary["ece"]
    if "at_threshold" in report:
        summary.update(
            {k: report["at_threshold"][k] for k in ("accuracy", "sensitivity", "specificity")}
        )
    if "intervals_95" in report:
        summary["intervals_95"] = report["intervals_95"]
    # Cross-validated runs report out-of-fold figures, single runs validation ones.
    print(to_json({"run_dir": str(run_dir), report["split"]: summary}))
    return 0


def _evaluate(args) -> int:
    from apps.medical_cnn.evaluate import evaluate

    report = evaluate(args.model, args.data, args.split, args.out)
    print(to_json(report, indent=2))
    return 0


def _predict(args) -> int:
    if args.model is not None and args.server is not None:
        raise CliError("give either --model RUN_DIR_OR_MODEL or --server URL, not both.")
    if args.model is None and args.server is None:
        raise CliError(
            "predict needs --model RUN_DIR_OR_MODEL (a local model) or --server URL (TF Serving)."
        )
    if args.server is not None:
        if args.explain is not None:
            raise CliError(
                "--explain needs the Keras model for Grad-CAM: use --model RUN_DIR, not --server."
            )
        if args.model_version is not None and args.model_label is not None:
            raise CliError("give either --model-version N or --model-label LABEL, not both.")
        from apps.medical_cnn.serving import predict_files_served

        records = predict_files_served(
            args.server,
            args.images,
            args.model_name or APP_NAME,
            version=args.model_version,
            timeout=SERVER_TIMEOUT_S if args.timeout is None else args.timeout,
            label=args.model_label,
        )
    else:
        if (args.model_name, args.model_version, args.model_label) != (None, None, None):
            raise CliError(
                "--model-name, --model-version and --model-label address a server: "
                "add --server URL."
            )
        if args.timeout is not None:
            raise CliError("--timeout is for a server: add --server URL.")
        from apps.medical_cnn.predict import predict_files

        records = predict_files(args.model, args.images, explain_dir=args.explain)
    failed = 0
    for record in records:
        print(to_json(record), flush=True)
        if "error" in record:
            failed += 1
            print(f"error: {record['error']}", file=sys.stderr)
    return 1 if failed else 0


def _export(args) -> int:
    from apps.medical_cnn.export import export

    path = export(args.model, args.base, keep=args.keep)
    print(to_json({"export": str(path), "version": int(path.name)}))
    return 0


def _main(argv) -> int:
    args = _parser().parse_args(argv)
    return {"train": _train, "evaluate": _evaluate, "predict": _predict, "export": _export}[
        args.command
    ](args)


def main(argv=None) -> int:
    """Console-script entry point; returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

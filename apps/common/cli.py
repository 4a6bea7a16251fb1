"""Command-line plumbing shared by the apps: error handling, common flags, run dirs.

A user who mistypes a path should see one line saying what is wrong, not a
traceback: `run_cli` turns the project's user errors (`UserError` and its
subclasses, `apps.common.errors`) into `error: <message>` on stderr and exit
status 2 (argparse's own status for bad usage). TF Serving failures
(`ServingError`: server unreachable, model or version not loaded, the server's
own error) are reported the same way: they come from the URL and names the
user gave. Anything else is a bug (in this project, Keras or TensorFlow) and
keeps its traceback, exit status 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from apps.common.errors import UserError
from apps.common.rundir import default_run_dir  # noqa: F401  (re-exported for old imports)

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(UserError):
    """A bad combination of command-line options; shown without a traceback."""


# Errors that come from what the user passed (paths, files, values, server URLs);
# `apps.common.serving.ServingError` is one of them.
USER_ERRORS = (UserError,)


def run_cli(main_fn: Callable[[Sequence[str] | None], int | None], argv=None) -> int:
    """Runs `main_fn(argv)` and returns its exit status.

    User errors (`UserError` and its subclasses, `ServingError` among them) print
    `error: <message>` to stderr and return 2; Ctrl-C returns 130. Other
    exceptions (bugs) keep their traceback and exit with status 1. argparse's
    own `SystemExit` passes through unchanged.
    """
    try:
        status = main_fn(argv)
    except USER_ERRORS as e:
        message = str(e) or type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if status is None else int(status)


def add_common_train_args(
    parser: argparse.ArgumentParser,
    presets: Iterable[str] | None = None,
    default_preset: str = "default",
) -> argparse.ArgumentParser:
    """Adds `--data --preset --epochs --run-dir --seed` to a training parser.

    Flags the user leaves out are `None` (except `--preset`), so that
    `apply_overrides(cfg, epochs=args.epochs, ...)` keeps the preset's values.
    """
    parser.add_argument("--data", type=Path, default=None, help="local data file (offline use)")
    parser.add_argument(
        "--preset",
        default=default_preset,
        choices=sorted(presets) if presets is not None else None,
        help=f"named configuration (default: {default_preset})",
    )
    parser.add_argument("--epochs", type=positive_int, default=None, help="override epochs")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="output folder for this run (default: runs/<app>/<timestamp>)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (override)")
    return parser


def _number_type(convert, accept, expected: str, name: str):
    """An argparse `type`: `convert(text)`, refused with "expected ..." unless `accept`ed."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


positive_int = _number_type(int, lambda v: v >= 1, "a positive integer", "positive_int")
positive_float = _number_type(
    float, lambda v: math.isfinite(v) and v > 0, "a positive number", "positive_float"
)
# A model version, say.
non_negative_int = _number_type(int, lambda v: v >= 0, "an integer >= 0", "non_negative_int")

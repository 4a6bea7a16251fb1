"""Command-line plumbing shared by the apps: error handling, common flags, run dirs.

A user who mistypes a path should see one line saying what is wrong, not a
traceback: `run_cli` turns the errors that come from user input into
`error: <message>` on stderr and exit status 2 (argparse's own status for bad
usage). TF Serving failures (`ServingError`: server unreachable, model or
version not loaded, the server's own error) are reported the same way: they
come from the URL and names the user gave.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from apps.common.model_io import ModelLoadError
from apps.common.serving import ServingError  # Standard library only; no import cycle.

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
RUNS_ROOT_ENV = "APPS_RUNS_DIR"


class CliError(Exception):
    """An error caused by the user's input; shown without a traceback."""


# Errors that come from what the user passed (paths, files, values, server URLs).
USER_ERRORS = (
    CliError,
    ModelLoadError,
    ServingError,
    FileNotFoundError,
    ValueError,
    ConnectionError,
)


def run_cli(main_fn: Callable[[Sequence[str] | None], int | None], argv=None) -> int:
    """Runs `main_fn(argv)` and returns its exit status.

    User-input errors (`CliError`, `ModelLoadError`, `ServingError`,
    `FileNotFoundError`, `ValueError`, `ConnectionError`) print
    `error: <message>` to stderr and return 2; Ctrl-C returns 130. Other
    exceptions (bugs) keep their traceback. argparse's own `SystemExit` passes
    through unchanged.
    """
    try:
        status = main_fn(argv)
    except USER_ERRORS as e:
        message = str(e) or type(e).__name__
        if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in message:
            message = f"{message}: {e.filename}"
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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def default_run_dir(app_name: str, root: str | os.PathLike | None = None) -> Path:
    """A fresh `runs/<app_name>/<YYYYmmdd-HHMMSS>` folder path (not created).

    `root` defaults to `$APPS_RUNS_DIR` or `runs` (relative to the working
    directory; `runs/` is git-ignored). A numeric suffix keeps two runs started
    in the same second apart.
    """
    root = Path(root if root is not None else os.environ.get(RUNS_ROOT_ENV, "runs"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = root / app_name / stamp
    n = 1
    while candidate.exists():
        candidate = root / app_name / f"{stamp}-{n}"
        n += 1
    return candidate

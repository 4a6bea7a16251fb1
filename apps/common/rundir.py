"""Run directories: their layout, the default name, the app that wrote one, and their checks.

A run directory is the folder `train` writes and that `evaluate`, `predict`,
`translate` and `export` read. Both apps lay it out alike:

```
config.json    the resolved config, with the app that wrote it ("app": "medical_cnn")
model.keras    the best model so far, written atomically while training
history.csv    one row per finished epoch, with its epoch_seconds
backup/        the last finished epoch's state, only while a run is unfinished
metrics.json   the final figures: written last, so its presence means "finished"
```

Its `config.json` records which app wrote it, so that each CLI can say "this
is a translator run, not a medical-cnn run" instead of failing somewhere inside
the model; `run_state` tells a fresh, unfinished or finished run apart, and
`check_same_config` refuses to resume a run with other options.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

from apps.common.errors import RunDirError, UserError

RUNS_ROOT_ENV = "APPS_RUNS_DIR"
CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
BACKUP_DIR = "backup"
APP_KEY = "app"

# The app names as they appear in run directories, and the command each is run with.
APP_COMMANDS = {"medical_cnn": "medical-cnn", "translator": "translator"}
# Config keys only one app has: how a run directory written before the `app`
# key existed is recognised.
_SIGNATURE_KEYS = {
    "medical_cnn": {"pixel_mean", "class_names", "convs_per_stage"},
    "translator": {"source_vocab_size", "target_vocab_size", "sequence_length"},
}


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


def check_folder_path(path: str | os.PathLike, option: str, purpose: str = "the output") -> Path:
    """Returns `path` as a path that can be (or already is) a folder; creates nothing.

    For output folders named on a command line (`--run-dir`, `--explain`,
    `--base`): checked before any work starts, so a mistyped path fails at
    once and leaves nothing behind.

    Raises:
        UserError: the path, or one of its parents, is an existing file.
    """
    path = Path(path).expanduser()
    for candidate in (path, *path.parents):
        if candidate.exists() and not candidate.is_dir():
            raise UserError(
                f"{option} {path}: {candidate} is a file, not a folder; pass a new or "
                f"existing folder for {purpose}."
            )
    return path


def check_run_dir_path(run_dir: str | os.PathLike, option: str = "--run-dir") -> Path:
    """Returns `run_dir` as a path that can be (or already is) a folder.

    Raises:
        RunDirError: the path, or one of its parents, is an existing file.
    """
    try:
        return check_folder_path(run_dir, option, "the run")
    except UserError as e:
        raise RunDirError(str(e)) from None


def app_of_run(run_dir: str | os.PathLike) -> str | None:
    """The app that wrote `run_dir` (`"medical_cnn"`, `"translator"`), or None if unknown.

    Reads the `app` key of its `config.json`; for runs written before that
    key existed, recognises the app by the config keys only it has.
    """
    path = Path(run_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    app = config.get(APP_KEY)
    if isinstance(app, str):
        return app
    for name, keys in _SIGNATURE_KEYS.items():
        if keys <= config.keys():
            return name
    return None


def check_run_app(run_dir: str | os.PathLike, app: str, option: str = "--model") -> None:
    """Raises `RunDirError` when `run_dir` was written by another app than `app`.

    A folder whose app cannot be told (no `config.json`, a foreign one) passes:
    the model file itself is checked when it is loaded.
    """
    found = app_of_run(run_dir)
    if found is None or found == app:
        return
    found_cmd = APP_COMMANDS.get(found, found)
    cmd = APP_COMMANDS.get(app, app)
    raise RunDirError(
        f"{option} {run_dir}: this is a {found_cmd} run, not a {cmd} run; pass a run directory "
        f"written by '{cmd} train' (or use '{found_cmd}' for this one)."
    )


def run_state(run_dir: str | os.PathLike) -> str:
    """What `train` finds in `run_dir`.

    Returns:
        `"done"` (`metrics.json` exists: a finished run), `"resume"` (a
        `backup/` exists: training was interrupted), `"finalize"` (training
        ended, the final figures were not written yet: a history and a model,
        no backup) or `"fresh"`.
    """
    run_dir = Path(run_dir)
    if (run_dir / METRICS_FILE).is_file():
        return "done"
    if (run_dir / BACKUP_DIR).is_dir():
        return "resume"
    if (run_dir / HISTORY_FILE).is_file() and (run_dir / MODEL_FILE).is_file():
        return "finalize"
    return "fresh"


def check_same_config(
    run_dir: str | os.PathLike, config, app: str, ignore: Iterable[str] = ()
) -> None:
    """Raises `RunDirError` if `run_dir` holds a run started with another config.

    The saved `config.json` (if any) and `config` are compared in their JSON
    forms (tuples and lists alike), leaving out the fields in `ignore` (e.g.
    where the data was read from, which may move between calls); the message
    names the fields that differ.
    """
    from apps.common.config import config_to_dict, load_config
    from apps.common.io import to_json

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return
    saved = load_config(type(config), path, app=app)
    old = json.loads(to_json(config_to_dict(saved)))
    new = json.loads(to_json(config_to_dict(config)))
    ignored = set(ignore)
    changed = sorted(
        k for k in new.keys() | old.keys() if k not in ignored and old.get(k) != new.get(k)
    )
    if changed:
        raise RunDirError(
            f"run directory {run_dir} was started with a different config (differs in: "
            f"{', '.join(changed)}); use the same options to resume, or another --run-dir."
        )

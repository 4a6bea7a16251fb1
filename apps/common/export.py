"""Versioned SavedModel exports that TensorFlow Serving can always load.

TF Serving watches a model's *base path* and serves the highest version folder
it finds there: `base/1/`, `base/2/`, ... (folder names that are not integers
are ignored). It polls every second or so, so a version folder that appears
while its files are still being written is picked up half-written and fails to
load (tensorflow/serving#1086, #572). `export_versioned` avoids that:

1. `write_fn(tmp)` writes the SavedModel into `base/.tmp-export-<pid>-<hex>/`,
   a name TF Serving never treats as a version;
2. the folder is checked (a `saved_model.pb` is there) and flushed to disk;
3. it is renamed to `base/<N>` with `N` = highest existing version + 1. A
   rename within one file system is atomic: a reader sees either no `N` or the
   complete folder. Exporters on the same base path take an exclusive lock
   (`base/.export.lock`) to pick `N`, and an existing folder is never replaced.

A process killed while writing leaves only a `.tmp-export-*` folder; the next
export removes such leftovers once their process is gone. Pruning (`keep=K`)
first renames an old version to a `.tmp-prune-*` name, then deletes it, so a
half-deleted version never looks like one either.

Example:

```python
def write(path):
    tf.saved_model.save(module, str(path), signatures={"serving_default": fn})

export_versioned("saved_models/medical_cnn", write, keep=3)  # -> .../medical_cnn/4
```
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from apps.common.errors import MissingFileError, UserError

logger = logging.getLogger(__name__)

LOCK_NAME = ".export.lock"
TMP_EXPORT_PREFIX = ".tmp-export-"
TMP_PRUNE_PREFIX = ".tmp-prune-"
_VERSION_RE = re.compile(r"[0-9]+")
_TMP_RE = re.compile(r"\.tmp-(?:export|prune)-(\d+)-[0-9a-f]+")
_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


class ExportError(RuntimeError):
    """`write_fn` did not leave a complete SavedModel in the temporary folder."""


def _numeric_folders(base_dir: str | os.PathLike) -> list[int]:
    """Every folder of `base_dir` whose whole name is an integer, sorted ascending."""
    base = Path(base_dir)
    if not base.is_dir():
        return []
    return sorted(
        int(entry.name)
        for entry in base.iterdir()
        if _VERSION_RE.fullmatch(entry.name) and entry.is_dir()
    )


def list_versions(base_dir: str | os.PathLike) -> list[int]:
    """Returns the versions of `base_dir`: its complete SavedModel folders, sorted ascending.

    Only folders whose whole name is an integer count (as for TF Serving), and
    only those that hold a complete SavedModel (`is_complete_saved_model`): an
    empty or half-copied `3/` is no version (see `incomplete_versions`). A
    missing `base_dir` has no versions.
    """
    base = Path(base_dir)
    return [v for v in _numeric_folders(base) if is_complete_saved_model(base / str(v))]


def incomplete_versions(base_dir: str | os.PathLike) -> list[int]:
    """Integer folders of `base_dir` that hold no complete SavedModel (TF Serving fails on them)."""
    base = Path(base_dir)
    return [v for v in _numeric_folders(base) if not is_complete_saved_model(base / str(v))]


def next_version(base_dir: str | os.PathLike) -> int:
    """Returns the version number the next export gets: highest integer folder + 1, or 1.

    Incomplete integer folders count here, so that a number is never reused.
    """
    numbers = _numeric_folders(base_dir)
    return numbers[-1] + 1 if numbers else 1


def _incomplete_message(base: Path, numbers: list[int]) -> str:
    folders = ", ".join(str(base / str(v)) for v in numbers)
    return (
        f"{folders} hold{'s' if len(numbers) == 1 else ''} no complete SavedModel "
        f"(saved_model.pb and variables/): TF Serving would fail to load "
        f"{'it' if len(numbers) == 1 else 'them'}. Remove "
        f"{'it' if len(numbers) == 1 else 'them'}, or export again."
    )


def latest_version_path(base_dir: str | os.PathLike) -> Path:
    """Returns `base_dir/<highest version>`, the folder TF Serving serves by default.

    Raises:
        MissingFileError: `base_dir` holds no integer version folder.
        UserError: the highest integer folder is not a complete SavedModel
            (TF Serving would try to serve it and fail).
    """
    base = Path(base_dir)
    numbers = _numeric_folders(base)
    if not numbers:
        raise MissingFileError(
            f"no exported version under {base_dir}: expected integer folders such as "
            f"{base / '1'}; run the app's `export` command first."
        )
    if not is_complete_saved_model(base / str(numbers[-1])):
        raise UserError(_incomplete_message(base, [numbers[-1]]))
    return base / str(numbers[-1])


def is_complete_saved_model(path: str | os.PathLike) -> bool:
    """True when `path` holds a non-empty `saved_model.pb(txt)` and, if it has a
    `variables/` folder, its `variables.index`."""
    path = Path(path)
    has_graph = any(
        (path / name).is_file() and (path / name).stat().st_size > 0 for name in _SAVED_MODEL_FILES
    )
    variables = path / "variables"
    return has_graph and (not variables.exists() or (variables / "variables.index").is_file())


def check_base_dir(base_dir: str | os.PathLike) -> Path:
    """Returns `base_dir` as a `Path` if versions can be exported into it; creates nothing.

    Call it before any slow work (loading a model) so that a wrong path fails
    at once and leaves nothing behind.

    Raises:
        UserError: `base_dir` or one of its parents is a file, or `base_dir`
            is itself a SavedModel (its parent is the base path).
    """
    base = Path(base_dir)
    for candidate in (base, *base.parents):
        if candidate.exists() and not candidate.is_dir():
            raise UserError(
                f"base_dir must be a folder, but {candidate} is a file; pass a new or existing "
                f"folder for the exported versions."
            )
    if any((base / name).exists() for name in _SAVED_MODEL_FILES):
        raise UserError(
            f"base_dir {base} is itself a SavedModel; pass the model's base path "
            f"(the folder that holds the integer versions), e.g. {base.parent}."
        )
    return base


def export_versioned(
    base_dir: str | os.PathLike,
    write_fn: Callable[[Path], object],
    keep: int | None = None,
) -> Path:
    """Writes a SavedModel as the next integer version of `base_dir`, atomically.

    Args:
        base_dir: the model's base path (TF Serving's `base_path`), for example
            `saved_models/medical_cnn`. Created if missing.
        write_fn: called once with a fresh, empty temporary folder (a `Path`
            inside `base_dir`); must write the SavedModel there (e.g.
            `tf.saved_model.save(obj, str(path), ...)` or `model.export(str(path))`).
            Its return value is ignored.
        keep: if given, after a successful export only the `keep` highest
            versions are kept (the new one always is); older ones are deleted.

    Returns:
        The new version folder, `base_dir/<N>`.

    Raises:
        ValueError: bad `keep`.
        UserError: `base_dir` (or a parent) is a file, or `base_dir` is
            itself a SavedModel (pass its parent); see `check_base_dir`.
        ExportError: `write_fn` returned without writing a `saved_model.pb`.
        Any exception from `write_fn`, after its temporary folder is removed;
        no version folder is created in that case.
    """
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise UserError(f"keep must be a positive integer or None. Received: keep={keep!r}")
    base = check_base_dir(base_dir)
    base.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(base)
    incomplete = incomplete_versions(base)
    if incomplete:
        # The export itself can go on (it takes the next number, above these).
        warnings.warn(_incomplete_message(base, incomplete), stacklevel=2)

    tmp = base / f"{TMP_EXPORT_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        write_fn(tmp)
        if not is_complete_saved_model(tmp):
            found = sorted(p.name for p in tmp.iterdir())
            raise ExportError(
                f"write_fn did not write a complete SavedModel into {tmp}: expected "
                f"saved_model.pb (and variables/variables.index if variables/ exists); "
                f"found {found}."
            )
        _fsync_tree(tmp)
        with _export_lock(base):
            final = _rename_to_next_version(tmp, base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %s", final)
    if keep is not None:
        try:
            with _export_lock(base):
                prune_versions(base, keep, protect=[int(final.name)])
        except OSError as e:  # The export itself succeeded; say so rather than fail.
            logger.warning("exported %s but could not prune old versions: %s", final, e)
    return final


def prune_versions(
    base_dir: str | os.PathLike, keep: int, protect: Iterable[int] = ()
) -> list[int]:
    """Deletes all but the `keep` highest versions (never those in `protect`).

    Each version is first renamed to a non-integer name, then deleted, so an
    interrupted prune never leaves a partial version folder. Returns the
    versions removed. Note that a version pinned in `models.config`
    (`model_version_policy { specific { ... } }`) is not known here.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise UserError(f"keep must be a positive integer. Received: keep={keep!r}")
    base = Path(base_dir)
    protected = set(protect)
    removed = []
    for version in list_versions(base)[:-keep]:
        if version in protected:
            continue
        doomed = base / f"{TMP_PRUNE_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
        try:
            os.rename(base / str(version), doomed)
        except FileNotFoundError:  # Pruned by a concurrent exporter.
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(version)
    if removed:
        logger.info("pruned versions %s from %s", removed, base)
    return removed


def remove_stale_temporaries(base_dir: str | os.PathLike) -> list[Path]:
    """Removes `.tmp-export-*` / `.tmp-prune-*` folders whose process has exited.

    Folders of live processes (an export in progress, maybe in another
    process) are left alone. Returns the folders removed. The process check is
    per machine: do not share one base path between exporters on several hosts.
    On Windows processes are not probed, so nothing is removed there.
    """
    removed = []
    if not Path(base_dir).is_dir():
        return removed
    for entry in Path(base_dir).iterdir():
        match = _TMP_RE.fullmatch(entry.name)
        if match and entry.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    if removed:
        logger.info("removed leftovers of interrupted exports: %s", [p.name for p in removed])
    return removed


def _rename_to_next_version(tmp: Path, base: Path) -> Path:
    # Called under the export lock; the checks below also guard against
    # writers that do not take it (a folder made by hand, a stale listing).
    version = next_version(base)
    while True:
        target = base / str(version)
        if os.path.lexists(target):
            version += 1
            continue
        try:
            # POSIX rename fails on a non-empty target; Windows on any target.
            os.rename(tmp, target)
        except OSError as e:
            if isinstance(e, FileExistsError) or e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                version += 1
                continue
            raise
        _fsync_dir(base)
        return target


@contextlib.contextmanager
def _export_lock(base: Path) -> Iterator[None]:
    """Exclusive lock on `base/.export.lock` while a version number is chosen.

    `flock` locks belong to the open file, so threads of one process exclude
    each other too. Without `fcntl` (Windows) the rename itself refuses any
    existing target, which is enough.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(base / LOCK_NAME, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":
        # os.kill(pid, 0) would terminate the process on Windows: never probe there.
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Exists, owned by someone else.
        return True
    return True


def _fsync_tree(root: Path) -> None:
    # The rename must not become durable before the files it publishes.
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; nothing to do there.
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

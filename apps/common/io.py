"""Atomic file writes: a reader never sees a half-written file.

Each helper writes to a temporary file in the destination's folder and then
renames it over the destination with `os.replace`, which is atomic on POSIX and
Windows when source and destination are on the same file system (hence the
temporary file lives beside the destination, not in `/tmp`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes `data` to `path` atomically and returns the path.

    Missing parent folders are created. On any error the temporary file is
    removed and `path` keeps its previous content (or stays absent).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the file the mode a plain open() would
        # (readers such as TF Serving may run as another user).
        os.chmod(tmp_name, 0o666 & ~_current_umask())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Writes `text` to `path` atomically (see `atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def _json_default(obj: Any) -> Any:
    # NumPy scalars and arrays, and paths, are common in metrics and configs.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable: {obj!r}")


def _finite_or_none(obj: Any) -> Any:
    """`obj` with every NaN or infinite float (NumPy ones too) replaced by None."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return _finite_or_none(obj.tolist())
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def to_json(obj: Any, indent: int | None = None) -> str:
    """Standard JSON text for `obj`: NumPy values and paths converted, NaN and infinities as null.

    Python's `json` writes `NaN`, which is not JSON (other readers reject it);
    an undefined figure (an AUC on one class, say) is written `null` instead.
    """
    return json.dumps(_finite_or_none(obj), indent=indent, default=_json_default, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Writes `obj` as JSON (see `to_json`) to `path` atomically.

    The object is serialized before anything touches the disk, so an object
    that is not JSON-serializable raises `TypeError` and leaves `path` as it was.
    """
    return atomic_write_text(path, to_json(obj, indent=indent) + "\n")

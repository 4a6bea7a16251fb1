"""Where data lives: the shared local copies and verified downloads.

Tests, CI and benchmarks run offline on the real data sets kept beside the
checkout (`../shared/data`, or the folder named by the `SHARED_DATA_DIR`
environment variable). Users online get the same files from their official
URLs through `fetch_file`, which verifies the checksum.
"""

from __future__ import annotations

import os
from pathlib import Path

from apps.common.errors import DataError, DownloadError, MissingFileError

SHARED_DATA_ENV = "SHARED_DATA_DIR"
# apps/common/data.py -> parents[2] is the project root; the data sits beside it.
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """The shared data folder: `$SHARED_DATA_DIR`, else `<project root>/../shared/data`."""
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env)
    return _PROJECT_ROOT.parent / "shared" / "data"


def find_shared_data(relative: str | os.PathLike, must_exist: bool = True) -> Path:
    """Returns the path of `relative` inside the shared data folder.

    Args:
        relative: path inside the shared data folder, e.g.
            `"pneumoniamnist/pneumoniamnist.npz"`.
        must_exist: if True (default), raise when the file is missing.

    Raises:
        FileNotFoundError: the file is missing (the message says where it
            looked and how to point elsewhere).
    """
    path = shared_data_dir() / relative
    if must_exist and not path.exists():
        raise MissingFileError(
            f"shared data file not found: {path}. Put the shared data beside the checkout "
            f"(../shared/data), set {SHARED_DATA_ENV} to the folder holding '{relative}', "
            f"or pass --data PATH to a local copy."
        )
    return path


def fetch_file(
    url: str,
    sha256: str | None,
    fname: str,
    local_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Returns a local path to a data file: the given local copy, or a verified download.

    Args:
        url: official download URL.
        sha256: expected hex digest of the downloaded file. Where a publisher
            gives only an MD5 (32 hex digits), pass it: `keras.utils.get_file`
            picks the algorithm from the digest's length. `None` skips the check
            (avoid it).
        fname: file name in the Keras cache (`~/.keras/datasets` by default).
        local_path: a local copy to use instead of downloading; it is not
            checked against the digest, so that subsets and re-packagings of the
            official file can be used.
        cache_dir: cache root passed to `keras.utils.get_file`.

    Raises:
        FileNotFoundError: `local_path` is given but does not exist.
        ConnectionError: the download failed (offline, URL gone).
        ValueError: the downloaded file does not match the digest.
    """
    if local_path is not None:
        path = Path(local_path).expanduser()
        if not path.is_file():
            raise MissingFileError(f"data file not found: {path}")
        return path

    import keras  # Imported here: finding a local file should not need Keras.

    if cache_dir is not None:
        # get_file silently falls back to /tmp/.keras when the folder is missing.
        Path(cache_dir).expanduser().mkdir(parents=True, exist_ok=True)

    try:
        downloaded = keras.utils.get_file(
            fname,
            origin=url,
            file_hash=sha256,
            cache_dir=None if cache_dir is None else os.fspath(cache_dir),
        )
    except ValueError as e:  # Checksum mismatch.
        raise DataError(f"downloaded file from {url} failed verification: {e}") from e
    except Exception as e:  # get_file raises a bare Exception for URL errors.
        raise DownloadError(
            f"could not download {url} ({e}); offline? pass --data PATH to a local copy."
        ) from e
    return Path(downloaded)

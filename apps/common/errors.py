"""The errors a user can fix, as one family.

The CLIs print these as one line (`error: <message>`, exit status 2) and let
every other exception keep its traceback (exit status 1): a bug inside Keras
or this project must not read like a user's mistake. Raise a `UserError` (or a
subclass) only where the message tells the user what to change: a path, a
file's contents, an option, a run directory.

`UserError` subclasses `ValueError`, so code written against the usual Python
contract (`except ValueError`) keeps working. Standard library only: the
serving client and the CLIs import it without TensorFlow.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user gave (a path, a value, a file) is wrong; the message says what to do."""


class DataError(UserError):
    """A data file is missing, unreadable, or holds the wrong keys, shapes or values."""


class RunDirError(UserError):
    """A run directory cannot be used: it is a file, another app's run, finished, or differs."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (also a `FileNotFoundError`)."""


class DownloadError(UserError, ConnectionError):
    """An official file could not be downloaded (offline, URL gone): pass a local copy."""


class TrainingDivergedError(UserError):
    """Training stopped on a non-finite loss; the run is left unfinished (lower the learning rate)."""

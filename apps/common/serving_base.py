"""What the TF Serving clients share: the `ServingError` family and the argument checks.

`apps.common.serving` (REST, and `connect`) and `apps.common.serving_grpc`
(gRPC) both build on this module, so that both raise the same errors with the
same words; `apps.common.serving` re-exports everything here. Standard library
only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from apps.common.errors import UserError

_MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------


class ServingError(UserError):
    """Base class of every error raised by `ServingClient` and `GrpcServingClient`.

    A `UserError`: each comes from the URL, model name or version the user gave
    (or the server they pointed at), so the CLIs report it in one line.

    Attributes:
        url: the URL that was requested.
        status: the HTTP status code, or `None` when no response came.
        server_message: the server's own `{"error": ...}` text, if any.
    """

    def __init__(self, message, *, url=None, status=None, server_message=None):
        super().__init__(message)
        self.url = url
        self.status = status
        self.server_message = server_message


class ServerUnreachableError(ServingError, ConnectionError):
    """No connection could be made, after all retries. `attempts` says how many."""

    def __init__(self, message, *, attempts, **kwargs):
        super().__init__(message, **kwargs)
        self.attempts = attempts


class ServingTimeoutError(ServingError, TimeoutError):
    """The server accepted the request but did not answer within the timeout."""


class ModelNotFoundError(ServingError):
    """The server has no model of that name (or no version of it loaded yet)."""


class VersionNotLoadedError(ServingError):
    """The model exists but the requested version is not loaded.

    `available` lists the versions the server reports as AVAILABLE (may be empty
    when they could not be fetched).
    """

    def __init__(self, message, *, available=(), **kwargs):
        super().__init__(message, **kwargs)
        self.available = list(available)


class MalformedResponseError(ServingError):
    """The server answered, but not with the JSON this API returns."""


class LabelNotFoundError(ServingError):
    """The model has no version with that label (`version_labels` in models.config)."""


class ServerError(ServingError):
    """The server refused or failed the request; its `{"error": ...}` is passed through.

    Over gRPC, `status` is the HTTP status TF Serving's REST API gives for the
    same gRPC code (INVALID_ARGUMENT -> 400, RESOURCE_EXHAUSTED -> 429, ...)
    and `code` the gRPC code's name; over REST `code` is `None`.
    """

    def __init__(self, message, *, code=None, **kwargs):
        super().__init__(message, **kwargs)
        self.code = code


_LABEL_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
# TF Serving's words when a request names a label the model does not have.
UNKNOWN_LABEL_TEXT = "Unrecognized servable version label"


def check_client_args(model_name, version, label, timeout, retries, backoff) -> None:
    """The argument checks both clients share; raises `UserError` naming the bad one."""
    if not isinstance(model_name, str) or not _MODEL_NAME_RE.fullmatch(model_name):
        raise UserError(
            f"model_name must be a TF Serving model name (letters, digits, '_', '.', '-'). "
            f"Received: model_name={model_name!r}"
        )
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or version < 0
    ):
        raise UserError(
            f"version must be a non-negative integer or None. Received: version={version!r}"
        )
    if label is not None and (not isinstance(label, str) or not _LABEL_RE.fullmatch(label)):
        raise UserError(
            f"label must be a version label such as 'stable' (a letter, then letters, digits, "
            f"'_', '-'). Received: label={label!r}"
        )
    if version is not None and label is not None:
        raise UserError(
            f"address a version or a label, not both. Received: version={version!r}, "
            f"label={label!r}"
        )
    if not timeout or timeout <= 0:
        raise UserError(f"timeout must be a positive number of seconds. Received: {timeout=}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise UserError(f"retries must be a non-negative integer. Received: {retries=}")
    if backoff < 0:
        raise UserError(f"backoff must be >= 0 seconds. Received: {backoff=}")


def check_instances(instances: Any) -> list:
    """`instances` as a non-empty list (NumPy arrays accepted), or a `UserError`."""
    if hasattr(instances, "tolist"):
        instances = instances.tolist()
    if isinstance(instances, (str, bytes, Mapping)) or not isinstance(instances, Sequence):
        raise UserError(
            f"instances must be a list with one entry per example. "
            f"Received: instances of type {type(instances).__name__}"
        )
    if not instances:
        raise UserError("instances is empty: pass at least one example.")
    return list(instances)


def label_not_found(client, url: str, message: str, status) -> LabelNotFoundError:
    """The error for a label the server does not know (both clients)."""
    return LabelNotFoundError(
        f"model {client.model_name!r} has no version labelled {client.label!r} on TF Serving "
        f"at {client.base_url} (server said: {message}). Labels come from version_labels in "
        f"models.config: python -m apps.common.models_config config --label "
        f"{client.model_name}:{client.label}=VERSION",
        url=url,
        status=status,
        server_message=message,
    )


def not_found_error(client, url: str, message: str) -> ServingError:
    """The error for a NOT_FOUND answer (HTTP 404): an unknown model, or a version
    that is not loaded (both clients; `client.available_versions()` tells which)."""
    model = f"model {client.model_name!r}"
    if client.version is not None:
        # A 404 on a versioned URL: tell a missing version from a missing model.
        try:
            available = client.available_versions()
            model_exists = True
        except ModelNotFoundError:
            model_exists = False
        except ServingError:  # Cannot tell; the version is what was asked for.
            available, model_exists = [], True
        if model_exists:
            return VersionNotLoadedError(
                f"version {client.version} of {model} is not loaded on TF Serving at "
                f"{client.base_url} (loaded: {available or 'none'}; server said: {message}). "
                f"Address a loaded version, or load it with model_version_policy in "
                f"models.config.",
                url=url,
                status=404,
                server_message=message,
                available=available,
            )
    return ModelNotFoundError(
        f"{model} not found on TF Serving at {client.base_url} (server said: {message}). "
        f"Check the name (MODEL_NAME, or the names in models.config) and that its base "
        f"path holds an integer version folder (<base_path>/1/saved_model.pb).",
        url=url,
        status=404,
        server_message=message,
    )


def available_versions_of(status: Any, url: str) -> list[int]:
    try:
        entries = status["model_version_status"]
        return sorted(int(e["version"]) for e in entries if e.get("state") == "AVAILABLE")
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        raise MalformedResponseError(
            f"the status response of {url} has no valid 'model_version_status' list: "
            f"{json.dumps(status)[:200]}",
            url=url,
            status=200,
        ) from e

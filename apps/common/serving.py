"""TensorFlow Serving: a small REST client and the `models.config` generator.

The client speaks TF Serving's REST API (port 8501 by default):

- `GET  /v1/models/{name}[/versions/{v}]`            model status
- `GET  /v1/models/{name}[/versions/{v}]/metadata`   signatures (names, dtypes, shapes)
- `POST /v1/models/{name}[/versions/{v}]:predict`    `{"instances": [...]}` -> `{"predictions": [...]}`

It uses only the standard library (`urllib`), so calling a server adds no
dependency. Connection failures (refused, reset, connect timeout) are retried a
bounded number of times with exponential backoff; HTTP errors are not (a 4xx
will not change on retry). Every failure is a `ServingError` subclass whose
message says what happened and what to check.

Binary inputs (encoded images) travel as `{"b64": "<base64>"}`, which TF Serving
decodes into the string tensor; text inputs travel as plain JSON strings.

Example:

```python
client = ServingClient("http://localhost:8501", "medical_cnn")
client.predict([{"image_bytes": encode_file_b64("xray.png")}])
# -> [{"probability": 0.93, "label": 1, "class_name": "pneumonia", "threshold": 0.55}]
ServingClient("http://localhost:8501", "translator").predict(["How are you?"])
```

`python -m apps.common.serving config --base-path /models` writes
`saved_models/models.config` (TF Serving's `--model_config_file`) for both apps.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from apps.common.errors import UserError

MODEL_NAMES = ("medical_cnn", "translator")
DEFAULT_BASE_PATH = "/models"  # Where the tensorflow/serving image expects models.
DEFAULT_CONFIG_PATH = Path("saved_models") / "models.config"
_MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------


class ServingError(UserError):
    """Base class of every error raised by `ServingClient`.

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


class ServerError(ServingError):
    """The server refused or failed the request; its `{"error": ...}` is passed through."""


# ----------------------------------------------------------------------------
# Encoding helpers
# ----------------------------------------------------------------------------


def encode_b64(data: bytes) -> dict[str, str]:
    """Wraps raw bytes (an encoded image, say) as TF Serving's `{"b64": ...}` value."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"encode_b64 expects bytes (e.g. the content of a PNG file). "
            f"Received: data of type {type(data).__name__}"
        )
    return {"b64": base64.b64encode(bytes(data)).decode("ascii")}


def encode_file_b64(path: str | os.PathLike) -> dict[str, str]:
    """Reads a file (an image) and returns it as `{"b64": ...}`."""
    return encode_b64(Path(path).read_bytes())


def decode_b64(value: Mapping[str, str]) -> bytes:
    """Inverse of `encode_b64` (TF Serving returns outputs named `*_bytes` this way)."""
    if not isinstance(value, Mapping) or set(value) != {"b64"}:
        raise ValueError(f'expected a {{"b64": ...}} object. Received: {value!r:.80}')
    return base64.b64decode(value["b64"], validate=True)


def _json_default(obj: Any) -> Any:
    # NumPy arrays and scalars without importing NumPy here.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (bytes, bytearray)):
        raise TypeError(
            "raw bytes cannot go into JSON: wrap binary values (encoded images) with "
            "encode_b64(data), which gives TF Serving's {'b64': ...} form."
        )
    raise TypeError(f"cannot send a value of type {type(obj).__name__} as JSON: {obj!r:.80}")


# ----------------------------------------------------------------------------
# Client
# ----------------------------------------------------------------------------


class ServingClient:
    """A TF Serving REST client for one model (and optionally one version).

    Args:
        base_url: the server's REST address, e.g. `http://localhost:8501`.
        model_name: the served model's name (`MODEL_NAME`, or a `name` in
            `models.config`), e.g. `"medical_cnn"`.
        version: an integer version to address; `None` (default) lets the server
            choose its latest loaded version.
        timeout: seconds to wait for the connection and for the answer.
        retries: how many times to retry after a connection failure (so at
            most `retries + 1` attempts). HTTP errors and timeouts waiting for
            an answer are not retried.
        backoff: seconds before the first retry; doubled before each next one.

    Raises:
        ValueError: a bad argument (named in the message).
    """

    def __init__(
        self,
        base_url: str,
        model_name: str,
        version: int | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
    ):
        parsed = urllib.parse.urlsplit(str(base_url))
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UserError(
                f"base_url must be an http(s) URL such as http://localhost:8501. "
                f"Received: base_url={base_url!r}"
            )
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
        if not timeout or timeout <= 0:
            raise UserError(f"timeout must be a positive number of seconds. Received: {timeout=}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise UserError(f"retries must be a non-negative integer. Received: {retries=}")
        if backoff < 0:
            raise UserError(f"backoff must be >= 0 seconds. Received: {backoff=}")
        self.base_url = str(base_url).rstrip("/")
        self.model_name = model_name
        self.version = version
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self._sleep = time.sleep  # Replaceable in tests.
        # Environment proxies (http_proxy) apply, except to this machine's own server.
        local = parsed.hostname in ("localhost", "127.0.0.1", "::1")
        handlers = [urllib.request.ProxyHandler({})] if local else []
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self):
        return (
            f"ServingClient({self.base_url!r}, {self.model_name!r}, version={self.version!r}, "
            f"timeout={self.timeout}, retries={self.retries})"
        )

    @property
    def model_url(self) -> str:
        """`{base_url}/v1/models/{name}[/versions/{v}]`."""
        url = f"{self.base_url}/v1/models/{urllib.parse.quote(self.model_name, safe='')}"
        return url if self.version is None else f"{url}/versions/{self.version}"

    # -- public API -----------------------------------------------------------

    def status(self) -> dict:
        """Returns the model status, `{"model_version_status": [{"version": "1",
        "state": "AVAILABLE", ...}]}`."""
        return self._call("GET", self.model_url)

    def available_versions(self) -> list[int]:
        """Versions of the model the server reports as AVAILABLE (all of them,
        whatever `version` this client addresses)."""
        unversioned = self._with(version=None)
        return _available_versions(unversioned.status(), unversioned.model_url)

    def metadata(self) -> dict:
        """Returns the model metadata: `{"model_spec": ..., "metadata":
        {"signature_def": {"signature_def": {name: {"inputs": ..., "outputs": ...}}}}}`."""
        return self._call("GET", f"{self.model_url}/metadata")

    def predict(self, instances: Sequence[Any], signature_name: str | None = None) -> list:
        """Runs the model on `instances` (TF Serving's row format) and returns `predictions`.

        Args:
            instances: one entry per example: a bare value when the signature has
                one input (`"How are you?"`, `encode_b64(png)`), or a dict
                `{input_name: value}`. NumPy arrays are accepted.
            signature_name: the signature to call; default `serving_default`.

        Returns:
            One prediction per instance: a value for a one-output signature,
            otherwise a dict `{output_name: value}`.
        """
        if hasattr(instances, "tolist"):
            instances = instances.tolist()
        if isinstance(instances, (str, bytes, Mapping)) or not isinstance(instances, Sequence):
            raise UserError(
                f"instances must be a list with one entry per example. "
                f"Received: instances of type {type(instances).__name__}"
            )
        if not instances:
            raise UserError("instances is empty: pass at least one example.")
        body: dict[str, Any] = {"instances": list(instances)}
        if signature_name:
            body["signature_name"] = signature_name
        try:
            data = json.dumps(body, default=_json_default, allow_nan=False).encode("utf-8")
        except ValueError as e:  # NaN or infinity: not valid JSON.
            raise UserError(f"instances hold a value JSON cannot carry ({e}).") from None
        url = f"{self.model_url}:predict"
        payload = self._call("POST", url, data)
        predictions = payload.get("predictions") if isinstance(payload, dict) else None
        if not isinstance(predictions, list):
            raise MalformedResponseError(
                f"the predict response of {url} has no 'predictions' list (keys: "
                f"{sorted(payload) if isinstance(payload, dict) else type(payload).__name__}); "
                f"is {self.base_url} a TF Serving REST endpoint?",
                url=url,
                status=200,
            )
        if len(predictions) != len(instances):
            raise MalformedResponseError(
                f"{url} returned {len(predictions)} predictions for {len(instances)} instances.",
                url=url,
                status=200,
            )
        return predictions

    # -- plumbing -------------------------------------------------------------

    def _with(self, **changes) -> ServingClient:
        kwargs = dict(
            base_url=self.base_url,
            model_name=self.model_name,
            version=self.version,
            timeout=self.timeout,
            retries=self.retries,
            backoff=self.backoff,
        )
        kwargs.update(changes)
        client = ServingClient(**kwargs)
        client._sleep = self._sleep
        return client

    def _call(self, method: str, url: str, data: bytes | None = None) -> Any:
        status, body = self._send(method, url, data)
        text = body.decode("utf-8", errors="replace")
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
            parsed = False
        else:
            parsed = True
        if 200 <= status < 300:
            if not parsed:
                raise MalformedResponseError(
                    f"{url} answered HTTP {status} with a body that is not JSON: {text[:200]!r}; "
                    f"is {self.base_url} a TF Serving REST endpoint (port 8501, not gRPC 8500)?",
                    url=url,
                    status=status,
                )
            return payload
        message = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(message, str):
            message = text.strip()[:500] or f"HTTP {status} with an empty body"
        if status == 404:
            raise self._not_found(url, message)
        raise ServerError(
            f"TF Serving at {url} returned HTTP {status}: {message}",
            url=url,
            status=status,
            server_message=message,
        )

    def _not_found(self, url: str, message: str) -> ServingError:
        model = f"model {self.model_name!r}"
        if self.version is not None:
            # A 404 on a versioned URL: tell a missing version from a missing model.
            try:
                available = self.available_versions()
                model_exists = True
            except ModelNotFoundError:
                model_exists = False
            except ServingError:  # Cannot tell; the version is what was asked for.
                available, model_exists = [], True
            if model_exists:
                return VersionNotLoadedError(
                    f"version {self.version} of {model} is not loaded on TF Serving at "
                    f"{self.base_url} (loaded: {available or 'none'}; server said: {message}). "
                    f"Address a loaded version, or load it with model_version_policy in "
                    f"models.config.",
                    url=url,
                    status=404,
                    server_message=message,
                    available=available,
                )
        return ModelNotFoundError(
            f"{model} not found on TF Serving at {self.base_url} (server said: {message}). "
            f"Check the name (MODEL_NAME, or the names in models.config) and that its base "
            f"path holds an integer version folder (<base_path>/1/saved_model.pb).",
            url=url,
            status=404,
            server_message=message,
        )

    def _send(self, method: str, url: str, data: bytes | None) -> tuple[int, bytes]:
        """One request with bounded retries on connection failures -> (status, body)."""
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as e:  # An answer, just not a 2xx one.
                with e:
                    return e.code, e.read()
            except TimeoutError as e:
                # Raised bare only once connected, while waiting for the answer
                # (a connect timeout comes wrapped in URLError, below).
                raise ServingTimeoutError(
                    f"TF Serving at {url} did not answer within {self.timeout:g} s; the server "
                    f"may be overloaded or the batch too large (raise the timeout).",
                    url=url,
                ) from e
            except (urllib.error.URLError, ConnectionError) as e:
                reason = getattr(e, "reason", e)
                if attempt < attempts:
                    self._sleep(self.backoff * 2 ** (attempt - 1))
                    continue
                raise ServerUnreachableError(
                    f"could not reach TF Serving at {url} after {attempts} attempt"
                    f"{'s' if attempts > 1 else ''} ({reason}). Is the server running and "
                    f"its REST port published (docker run -p 8501:8501 ...)?",
                    url=url,
                    attempts=attempts,
                ) from e
            except http.client.HTTPException as e:  # Garbled status line, cut-off body.
                raise MalformedResponseError(
                    f"broken HTTP response from {url}: {type(e).__name__}: {e}", url=url
                ) from e
        raise AssertionError("unreachable")  # pragma: no cover


def _available_versions(status: Any, url: str) -> list[int]:
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


# ----------------------------------------------------------------------------
# models.config
# ----------------------------------------------------------------------------


def _text_format_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def model_base_path(base_path: str, name: str) -> str:
    """`base_path/name`, keeping `/models`-style and `gs://` paths as written.

    A relative local path is made absolute (TF Serving would resolve it against
    its own working directory).
    """
    base = str(base_path)
    if "://" in base or base.startswith("/"):
        return f"{base.rstrip('/')}/{name}"
    return os.path.join(os.path.abspath(base), name)


def format_models_config(
    models: Mapping[str, str], versions: Mapping[str, Sequence[int]] | None = None
) -> str:
    """TF Serving's `--model_config_file` text for `models` (`{name: base_path}`).

    `versions` optionally pins models to specific versions
    (`model_version_policy { specific { versions: N } }`); unpinned models
    follow TF Serving's default, the latest version.
    """
    if not models:
        raise UserError("models is empty: give at least one {name: base_path}.")
    versions = dict(versions or {})
    unknown = sorted(set(versions) - set(models))
    if unknown:
        raise UserError(f"versions given for unknown models {unknown}; models: {sorted(models)}")
    lines = [
        "# TensorFlow Serving model config (--model_config_file). Generated by",
        "# `python -m apps.common.serving config`; regenerate rather than edit.",
        "model_config_list {",
    ]
    for name, base_path in models.items():
        if not isinstance(name, str) or not _MODEL_NAME_RE.fullmatch(name):
            raise UserError(
                f"model names may hold letters, digits, '_', '.', '-'. Received: name={name!r}"
            )
        if not str(base_path):
            raise UserError(f"empty base_path for model {name!r}")
        lines += [
            "  config {",
            f"    name: {_text_format_string(name)}",
            f"    base_path: {_text_format_string(str(base_path))}",
            '    model_platform: "tensorflow"',
        ]
        if name in versions:
            pinned = sorted(set(versions[name]))
            if not pinned or any(isinstance(v, bool) or not isinstance(v, int) for v in pinned):
                raise UserError(f"versions[{name!r}] must be integers. Received: {pinned!r}")
            lines += ["    model_version_policy {", "      specific {"]
            lines += [f"        versions: {v}" for v in pinned]
            lines += ["      }", "    }"]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_models_config(
    path: str | os.PathLike,
    models: Mapping[str, str],
    versions: Mapping[str, Sequence[int]] | None = None,
) -> Path:
    """Writes `format_models_config(models, versions)` to `path`, atomically.

    TF Serving re-reads the file every `--model_config_file_poll_wait_seconds`,
    so it must never see it half-written.
    """
    from apps.common.io import atomic_write_text

    return atomic_write_text(path, format_models_config(models, versions))


# ----------------------------------------------------------------------------
# Command line: python -m apps.common.serving config --base-path /models
# ----------------------------------------------------------------------------


def _parse_pin(text: str) -> tuple[str, list[int]]:
    name, sep, numbers = text.partition("=")
    try:
        if not sep:
            raise UserError
        return name, [int(v) for v in numbers.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME=VERSION[,VERSION...], e.g. medical_cnn=3. Received: {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m apps.common.serving", description="TensorFlow Serving helpers."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    config = sub.add_parser(
        "config", help="write models.config (TF Serving --model_config_file) for the apps"
    )
    config.add_argument(
        "--base-path",
        default=DEFAULT_BASE_PATH,
        help="folder that holds one base path per model, as the server sees it "
        f"(default: {DEFAULT_BASE_PATH}, the Docker mount point; use $PWD/saved_models "
        "for a local tensorflow_model_server)",
    )
    config.add_argument(
        "--out", type=Path, default=DEFAULT_CONFIG_PATH, help=f"default: {DEFAULT_CONFIG_PATH}"
    )
    config.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help=f"model to list (repeatable; default: {' '.join(MODEL_NAMES)})",
    )
    config.add_argument(
        "--pin",
        action="append",
        type=_parse_pin,
        default=[],
        metavar="NAME=V[,V]",
        help="serve only these versions of NAME (roll back); repeatable",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from apps.common.cli import run_cli

    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    names = args.models or list(MODEL_NAMES)
    models = {name: model_base_path(args.base_path, name) for name in names}
    path = write_models_config(args.out, models, dict(args.pin))
    print(f"wrote {path}:")
    for name, base in models.items():
        print(f"  {name} -> {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

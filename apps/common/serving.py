"""TensorFlow Serving: a small REST client, and `connect` for REST or gRPC.

The client speaks TF Serving's REST API (port 8501 by default):

- `GET  /v1/models/{name}[/versions/{v}]`            model status
- `GET  /v1/models/{name}[/versions/{v}]/metadata`   signatures (names, dtypes, shapes)
- `POST /v1/models/{name}[/versions/{v}]:predict`    `{"instances": [...]}` -> `{"predictions": [...]}`

(`/labels/{label}` in place of `/versions/{v}` addresses a version label.)
`connect(server, ...)` returns this client for `http(s)://HOST:8501` and
`apps.common.serving_grpc.GrpcServingClient` (same interface, same errors;
needs `tensorflow-serving-api`) for `grpc://HOST:8500`.

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

The `models.config` generator (TF Serving's `--model_config_file`) lives in
`apps.common.models_config`; `python -m apps.common.serving config ...` still
runs its command line.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from apps.common.errors import UserError
from apps.common.serving_base import (
    UNKNOWN_LABEL_TEXT,
    LabelNotFoundError,
    MalformedResponseError,
    ModelNotFoundError,
    ServerError,
    ServerUnreachableError,
    ServingError,
    ServingTimeoutError,
    VersionNotLoadedError,
    available_versions_of,
    check_client_args,
    check_instances,
    label_not_found,
    not_found_error,
)

__all__ = [  # The errors live in serving_base (shared with the gRPC client); import them here.
    "LabelNotFoundError",
    "MalformedResponseError",
    "ModelNotFoundError",
    "ServerError",
    "ServerUnreachableError",
    "ServingClient",
    "ServingError",
    "ServingTimeoutError",
    "VersionNotLoadedError",
    "connect",
    "decode_b64",
    "encode_b64",
    "encode_file_b64",
]


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


def connect(
    server: str,
    model_name: str,
    version: int | None = None,
    label: str | None = None,
    timeout: float = 10.0,
    retries: int = 3,
    backoff: float = 0.5,
):
    """A client for `server`: REST for `http(s)://HOST:PORT`, gRPC for `grpc://HOST:PORT`.

    Both clients have the same methods (`status`, `available_versions`,
    `metadata`, `predict`), return the same values and raise the same
    `ServingError` subclasses, so callers need not know which one they hold.

    Raises:
        UserError: `server` has another scheme, or a bad argument (named).
    """
    scheme = urllib.parse.urlsplit(str(server)).scheme
    if scheme == "grpc":
        from apps.common.serving_grpc import GrpcServingClient

        cls = GrpcServingClient
    elif scheme in ("http", "https"):
        cls = ServingClient
    else:
        raise UserError(
            f"the server must be a REST URL such as http://localhost:8501 or a gRPC address "
            f"such as grpc://localhost:8500. Received: {server!r}"
        )
    return cls(
        server,
        model_name,
        version=version,
        label=label,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
    )


class ServingClient:
    """A TF Serving REST client for one model (and optionally one version).

    Args:
        base_url: the server's REST address, e.g. `http://localhost:8501`.
        model_name: the served model's name (`MODEL_NAME`, or a `name` in
            `models.config`), e.g. `"medical_cnn"`.
        version: an integer version to address; `None` (default) lets the server
            choose its latest loaded version.
        label: a version label to address instead (`version_labels` in
            models.config, e.g. `"canary"`); not with `version`.
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
        label: str | None = None,
    ):
        parsed = urllib.parse.urlsplit(str(base_url))
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UserError(
                f"base_url must be an http(s) URL such as http://localhost:8501. "
                f"Received: base_url={base_url!r}"
            )
        check_client_args(model_name, version, label, timeout, retries, backoff)
        self.base_url = str(base_url).rstrip("/")
        self.model_name = model_name
        self.version = version
        self.label = label
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
            f"label={self.label!r}, timeout={self.timeout}, retries={self.retries})"
        )

    @property
    def model_url(self) -> str:
        """`{base_url}/v1/models/{name}[/versions/{v} | /labels/{label}]`."""
        url = f"{self.base_url}/v1/models/{urllib.parse.quote(self.model_name, safe='')}"
        if self.label is not None:
            return f"{url}/labels/{self.label}"
        return url if self.version is None else f"{url}/versions/{self.version}"

    # -- public API -----------------------------------------------------------

    def status(self) -> dict:
        """Returns the model status, `{"model_version_status": [{"version": "1",
        "state": "AVAILABLE", ...}]}`."""
        return self._call("GET", self.model_url)

    def available_versions(self) -> list[int]:
        """Versions of the model the server reports as AVAILABLE (all of them,
        whatever `version` this client addresses)."""
        unversioned = self._with(version=None, label=None)
        return available_versions_of(unversioned.status(), unversioned.model_url)

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
        instances = check_instances(instances)
        body: dict[str, Any] = {"instances": instances}
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
            label=self.label,
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
        if self.label is not None and UNKNOWN_LABEL_TEXT in message:
            raise label_not_found(self, url, message, status)
        if status == 404:
            raise self._not_found(url, message)
        raise ServerError(
            f"TF Serving at {url} returned HTTP {status}: {message}",
            url=url,
            status=status,
            server_message=message,
        )

    def _not_found(self, url: str, message: str) -> ServingError:
        return not_found_error(self, url, message)

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
                    f"TF Serving at {url} did not answer within {self.timeout:g} s "
                    f"(--timeout); the server may be overloaded or the request too large: "
                    f"raise --timeout SECONDS, or check the server.",
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


# ----------------------------------------------------------------------------
# models.config
# ----------------------------------------------------------------------------


if __name__ == "__main__":
    # `python -m apps.common.serving config ...`, as documented before the split.
    from apps.common.models_config import main

    sys.exit(main())

"""TensorFlow Serving: a gRPC client with the REST client's interface.

TF Serving's main API is gRPC on port 8500: `tensorflow.serving.PredictionService`
(`Predict`, `GetModelMetadata`) and `tensorflow.serving.ModelService`
(`GetModelStatus`). `GrpcServingClient` calls them through the official
`tensorflow-serving-api` package (its generated `*_pb2` messages and
`*_pb2_grpc` stubs) and offers what `apps.common.serving.ServingClient` offers,
with the same values and errors:

- `status()` / `available_versions()` / `metadata()` return the dicts the REST
  API returns (the protos through `json_format`, field names as in the protos);
- `predict(instances, signature_name)` takes and returns TF Serving's row
  format: `{"b64": ...}` values become bytes, string outputs come back as text
  (`{"b64": ...}` for outputs named `*_bytes`), numbers as Python numbers, so a
  caller gets the very values the REST client gives;
- failures raise the same `ServingError` subclasses: UNAVAILABLE is retried
  (bounded, exponential backoff) and then `ServerUnreachableError`;
  DEADLINE_EXCEEDED is `ServingTimeoutError` (not retried); NOT_FOUND is
  `ModelNotFoundError` / `VersionNotLoadedError`; any other code is a
  `ServerError` whose `status` is the HTTP status REST would have given.

gRPC has no URLs; the errors' `url` is `grpc://HOST:PORT/models/NAME[/versions/V
| /labels/L]:Method`, which names the server, the model and the call.

Example:

```python
from apps.common.serving import connect, encode_file_b64

client = connect("grpc://localhost:8500", "medical_cnn")  # or http://localhost:8501
client.predict([{"image_bytes": encode_file_b64("xray.png")}])
```

Importing this module is cheap; the first client imports `grpc` and
`tensorflow_serving.apis` (whose protos import TensorFlow's).
"""

from __future__ import annotations

import base64
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from apps.common.errors import UserError
from apps.common.serving_base import (
    UNKNOWN_LABEL_TEXT,
    MalformedResponseError,
    ServerError,
    ServerUnreachableError,
    ServingTimeoutError,
    available_versions_of,
    check_client_args,
    check_instances,
    label_not_found,
    not_found_error,
)

DEFAULT_SIGNATURE = "serving_default"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # A batch of images is larger than gRPC's 4 MiB default.

# The HTTP status TF Serving's REST API answers for each gRPC code (google.rpc's mapping).
HTTP_STATUS = {
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


def _apis():
    """`(grpc, tf, modules)`, imported on first use with a clear error when missing."""
    try:
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import (
            get_model_metadata_pb2,
            get_model_status_pb2,
            model_service_pb2_grpc,
            predict_pb2,
            prediction_service_pb2_grpc,
        )
    except ImportError as e:
        raise UserError(
            f"grpc:// needs the tensorflow-serving-api package ({e}): pip install "
            f"tensorflow-serving-api with the version of your TensorFlow, or use the REST API "
            f"(http://HOST:8501)."
        ) from None
    return (
        grpc,
        tf,
        {
            "metadata": get_model_metadata_pb2,
            "status": get_model_status_pb2,
            "model_service": model_service_pb2_grpc,
            "predict": predict_pb2,
            "prediction_service": prediction_service_pb2_grpc,
        },
    )


class GrpcServingClient:
    """A TF Serving gRPC client for one model (and optionally one version or label).

    Args:
        address: the server's gRPC address, `grpc://HOST:PORT` (TF Serving's
            default port is 8500).
        model_name: the served model's name, e.g. `"translator"`.
        version: an integer version to address; `None` lets the server choose
            its latest loaded version.
        label: a version label to address instead (`model_spec.version_label`).
        timeout: seconds to wait for each call (the gRPC deadline).
        retries: retries after UNAVAILABLE (no connection, or the server is
            shutting down): at most `retries + 1` attempts.
        backoff: seconds before the first retry; doubled before each next one.

    Raises:
        UserError: a bad argument (named in the message), or
            `tensorflow-serving-api` is not installed.
    """

    def __init__(
        self,
        address: str,
        model_name: str,
        version: int | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        label: str | None = None,
    ):
        parsed = urllib.parse.urlsplit(str(address))
        if parsed.scheme != "grpc" or not parsed.hostname or parsed.path.strip("/"):
            raise UserError(
                f"address must be grpc://HOST:PORT such as grpc://localhost:8500. "
                f"Received: address={address!r}"
            )
        try:
            port = parsed.port or 8500
        except ValueError:
            raise UserError(
                f"address must be grpc://HOST:PORT such as grpc://localhost:8500. "
                f"Received: address={address!r}"
            ) from None
        check_client_args(model_name, version, label, timeout, retries, backoff)
        self._grpc, self._tf, self._pb = _apis()
        host = parsed.hostname
        self.target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.base_url = f"grpc://{self.target}"
        self.model_name = model_name
        self.version = version
        self.label = label
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self._sleep = time.sleep  # Replaceable in tests.
        self._signatures: dict | None = None  # SignatureDef protos, from the first metadata call.
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # Reconnect soon after a refused connection, so that a retry can succeed.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if host in ("localhost", "127.0.0.1", "::1"):
            # Environment proxies (http_proxy, grpc_proxy) apply, except to this machine.
            options.append(("grpc.enable_http_proxy", 0))
        self._channel = self._grpc.insecure_channel(self.target, options=options)
        self._predictions = self._pb["prediction_service"].PredictionServiceStub(self._channel)
        self._models = self._pb["model_service"].ModelServiceStub(self._channel)

    def __repr__(self):
        return (
            f"GrpcServingClient({self.base_url!r}, {self.model_name!r}, version={self.version!r}, "
            f"label={self.label!r}, timeout={self.timeout}, retries={self.retries})"
        )

    def close(self) -> None:
        """Closes the channel (also done when the client is garbage-collected)."""
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def model_url(self) -> str:
        """`grpc://HOST:PORT/models/{name}[/versions/{v} | /labels/{label}]`, for messages."""
        url = f"{self.base_url}/models/{self.model_name}"
        if self.label is not None:
            return f"{url}/labels/{self.label}"
        return url if self.version is None else f"{url}/versions/{self.version}"

    # -- public API -----------------------------------------------------------

    def status(self) -> dict:
        """The model status, as REST gives it: `{"model_version_status": [{"version": "1",
        "state": "AVAILABLE", "status": {...}}]}`."""
        request = self._pb["status"].GetModelStatusRequest()
        self._fill_spec(request.model_spec)
        response = self._call("GetModelStatus", self._models.GetModelStatus, request)
        return _to_dict(response, defaults=True)

    def available_versions(self) -> list[int]:
        """Versions of the model the server reports as AVAILABLE (all of them)."""
        unversioned = self._with(version=None, label=None)
        return available_versions_of(unversioned.status(), unversioned.model_url)

    def metadata(self) -> dict:
        """The model metadata, as REST gives it: `{"model_spec": ..., "metadata":
        {"signature_def": {"signature_def": {name: {"inputs": ..., "outputs": ...}}}}}`."""
        signatures, spec = self._fetch_signatures()
        return {
            "model_spec": {
                "name": spec.name,
                "signature_name": spec.signature_name,
                "version": str(spec.version.value) if spec.HasField("version") else "",
            },
            "metadata": {
                "signature_def": {
                    "signature_def": {name: _to_dict(sig) for name, sig in signatures.items()}
                }
            },
        }

    def predict(self, instances: Sequence[Any], signature_name: str | None = None) -> list:
        """Runs the model on `instances` (TF Serving's row format); returns the predictions.

        The same contract as `ServingClient.predict`. The signature's input
        names and dtypes come from the model's metadata (fetched once).
        """
        instances = check_instances(instances)
        name = signature_name or DEFAULT_SIGNATURE
        url = f"{self.model_url}:Predict"
        signature = self._signature(name, url)
        columns = _columns(instances, list(signature.inputs))
        request = self._pb["predict"].PredictRequest()
        self._fill_spec(request.model_spec, name)
        tf = self._tf
        for key, values in columns.items():
            dtype = tf.dtypes.as_dtype(signature.inputs[key].dtype)
            try:
                array = _array(values, dtype.as_numpy_dtype if dtype != tf.string else object)
                request.inputs[key].CopyFrom(tf.make_tensor_proto(array, dtype=dtype))
            except (TypeError, ValueError) as e:
                raise UserError(
                    f"instances hold a value input '{key}' cannot take ({e})."
                ) from None
        response = self._call("Predict", self._predictions.Predict, request)
        return _rows(response, len(instances), url, tf)

    # -- plumbing -------------------------------------------------------------

    def _with(self, **changes) -> GrpcServingClient:
        kwargs = dict(
            address=self.base_url,
            model_name=self.model_name,
            version=self.version,
            label=self.label,
            timeout=self.timeout,
            retries=self.retries,
            backoff=self.backoff,
        )
        kwargs.update(changes)
        client = GrpcServingClient(**kwargs)
        client._sleep = self._sleep
        return client

    def _fill_spec(self, spec, signature_name: str | None = None) -> None:
        spec.name = self.model_name
        if signature_name:
            spec.signature_name = signature_name
        if self.version is not None:
            spec.version.value = self.version
        elif self.label is not None:
            spec.version_label = self.label

    def _fetch_signatures(self):
        request = self._pb["metadata"].GetModelMetadataRequest()
        self._fill_spec(request.model_spec)
        request.metadata_field.append("signature_def")
        response = self._call("GetModelMetadata", self._predictions.GetModelMetadata, request)
        signature_map = self._pb["metadata"].SignatureDefMap()
        packed = response.metadata.get("signature_def")
        if packed is None or not packed.Unpack(signature_map):
            raise MalformedResponseError(
                f"the metadata of {self.model_url} holds no signature_def map; is "
                f"{self.base_url} a TF Serving gRPC endpoint?",
                url=f"{self.model_url}:GetModelMetadata",
            )
        self._signatures = dict(signature_map.signature_def)
        return self._signatures, response.model_spec

    def _signature(self, name: str, url: str):
        if self._signatures is None:
            self._fetch_signatures()
        if name not in self._signatures:
            # The words TF Serving uses for an unknown signature (REST: HTTP 400).
            message = f'Serving signature name: "{name}" not found in signature def'
            raise ServerError(
                f"TF Serving at {url} returned INVALID_ARGUMENT: {message}",
                url=url,
                status=400,
                code="INVALID_ARGUMENT",
                server_message=message,
            )
        return self._signatures[name]

    def _call(self, method: str, rpc, request):
        """One call with bounded retries on UNAVAILABLE; errors become `ServingError`s."""
        grpc = self._grpc
        url = f"{self.model_url}:{method}"
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return rpc(request, timeout=self.timeout)
            except grpc.RpcError as e:
                code = e.code() if callable(getattr(e, "code", None)) else None
                details = (e.details() if callable(getattr(e, "details", None)) else "") or ""
                if code == grpc.StatusCode.UNAVAILABLE and not _speaks_http1(details):
                    if attempt < attempts:
                        self._sleep(self.backoff * 2 ** (attempt - 1))
                        continue
                    raise ServerUnreachableError(
                        f"could not reach TF Serving at {url} after {attempts} attempt"
                        f"{'s' if attempts > 1 else ''} ({details}). Is the server running "
                        f"and its gRPC port published (docker run -p 8500:8500 ...)?",
                        url=url,
                        attempts=attempts,
                    ) from None
                raise self._error(code, details, url) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, code, details: str, url: str):
        grpc = self._grpc
        name = code.name if code is not None else "UNKNOWN"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ServingTimeoutError(
                f"TF Serving at {url} did not answer within {self.timeout:g} s "
                f"(--timeout); the server may be overloaded or the request too large: "
                f"raise --timeout SECONDS, or check the server.",
                url=url,
            )
        if _speaks_http1(details):
            return MalformedResponseError(
                f"{self.base_url} does not speak gRPC ({details}); is it a TF Serving gRPC "
                f"endpoint (port 8500, not REST 8501)?",
                url=url,
            )
        status = HTTP_STATUS.get(name, 500)
        if self.label is not None and UNKNOWN_LABEL_TEXT in details:
            return label_not_found(self, url, details, status)
        if code == grpc.StatusCode.NOT_FOUND:
            return not_found_error(self, url, details)
        return ServerError(
            f"TF Serving at {url} returned {name}: {details or 'no details'}",
            url=url,
            status=status,
            code=name,
            server_message=details,
        )


def _speaks_http1(details: str) -> bool:
    # gRPC's words when the port answers HTTP/1.x (a REST port, a web server).
    text = details.lower()
    return "http1" in text or "http/1" in text or "failed parsing http/2" in text


def _to_dict(message, defaults: bool = False) -> dict:
    """A proto as TF Serving's REST API writes it (`defaults`: also fields left at 0/"")."""
    from google.protobuf import json_format

    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=defaults
    )


def _decode_b64(value, i: int):
    if isinstance(value, Mapping) and set(value) == {"b64"}:
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (ValueError, TypeError) as e:
            raise UserError(
                f"instance {i} holds a {{'b64': ...}} value that is not base64 ({e})."
            ) from None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (list, tuple)):
        return [_decode_b64(v, i) for v in value]
    return value


def _columns(instances: list, names: list[str]) -> dict[str, list]:
    """Row format -> one list per input (as TF Serving's REST front end does)."""
    columns: dict[str, list] = {key: [] for key in names}
    for i, row in enumerate(instances):
        if not (isinstance(row, Mapping) and "b64" not in row):
            if len(names) != 1:
                raise UserError(
                    f"instance {i} must be a dict with keys {sorted(names)} (the signature has "
                    f"several inputs). Received: {row!r:.80}"
                )
            row = {names[0]: row}
        if set(row) != set(names):
            raise UserError(
                f"instance {i} has keys {sorted(row)}; the signature's inputs are {sorted(names)}"
            )
        for key in names:
            columns[key].append(_decode_b64(row[key], i))
    return columns


def _array(values: list, dtype):
    import numpy as np

    if dtype is object:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        if all(isinstance(v, bytes) for v in values):
            return array
        return np.array(values, dtype=object)  # Nested string lists (a rank-2 input).
    return np.asarray(values, dtype=dtype)


def _rows(response, count: int, url: str, tf) -> list:
    """PredictResponse -> row format: one value, or `{output: value}`, per instance."""
    import numpy as np

    values = {}
    for key in sorted(response.outputs):
        array = tf.make_ndarray(response.outputs[key])
        if array.dtype.kind in "OS":
            if key.endswith("_bytes"):
                encode = lambda b: {"b64": base64.b64encode(b).decode("ascii")}  # noqa: E731
            else:
                encode = lambda b: b.decode("utf-8")  # noqa: E731
            values[key] = np.vectorize(encode, otypes=[object])(array).tolist()
        else:
            values[key] = array.tolist()
        if not isinstance(values[key], list) or len(values[key]) != count:
            raise MalformedResponseError(
                f"{url} returned output '{key}' of shape {list(array.shape)} for {count} "
                f"instances.",
                url=url,
            )
    if not values:
        raise MalformedResponseError(f"{url} returned no outputs.", url=url)
    if len(values) == 1:
        return next(iter(values.values()))
    return [dict(zip(values, row, strict=True)) for row in zip(*values.values(), strict=True)]

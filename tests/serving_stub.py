"""A stand-in for TensorFlow Serving's REST API, for tests only.

The real model server (`tensorflow/serving`) cannot be installed where these
tests run (no Docker, no network), so `ServingStub` plays its part: an
`http.server` on 127.0.0.1 (a free port, in a thread) that loads REAL
SavedModels from TF Serving-style base paths (`<base>/<integer version>/`) with
`tf.saved_model.load` and answers the REST routes the project's client uses:

- `GET  /v1/models/{name}[/versions/{v}]`            status
- `GET  /v1/models/{name}[/versions/{v}]/metadata`   signature defs from saved_model.pb
- `POST /v1/models/{name}[/versions/{v}]:predict`    row format (`instances` -> `predictions`),
  `{"b64": ...}` values decoded to bytes, optional `signature_name`

Like TF Serving it serves the highest version by default (`version_policy=
"latest"` loads only that one; `"all"` or a list of versions load more), and
its errors are `{"error": "..."}` JSON with TF Serving's codes: 404 for an
unknown model or version, 400 for a bad request or input. The error texts are
modelled on TF Serving's but are not guaranteed to match them word for word.

Knobs for failure tests, settable while running: `delay` (seconds to wait
before answering), `drop_connections` (close the next N connections without an
answer) and `raw_response` (`(status, body_bytes)` returned to every request).

This is test code: it is not a model server and must not be used as one.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import tensorflow as tf

# Registers the TF Text ops (SentencePiece) that subword translator exports
# hold, as the real model server, which links them, has them.
import tensorflow_text  # noqa: F401
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2

_ROUTE = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]+))?(?P<verb>/metadata|:predict)?"
)


class _BadRequest(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class _Servable:
    """One loaded version: the restored object and its signature defs."""

    def __init__(self, path: Path):
        self.path = path
        self.loaded = tf.saved_model.load(str(path))
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
        self.signature_defs = {
            key: json_format.MessageToDict(sig, preserving_proto_field_name=True)
            for key, sig in proto.meta_graphs[0].signature_def.items()
        }


class ServingStub:
    """TF Serving REST stand-in over real SavedModels (see the module docstring).

    Args:
        models: `{model_name: base_path}`; each base path holds integer version folders.
        version_policy: `"latest"` (TF Serving's default: only the highest
            version is loaded), `"all"`, or `{model_name: [versions]}`.
        delay: seconds to sleep before answering any request.

    Use as a context manager; `url` is `http://127.0.0.1:<port>`, `requests`
    lists the `(method, path)` of every request received.
    """

    def __init__(self, models, version_policy="latest", delay=0.0):
        self.delay = delay
        self.drop_connections = 0
        self.raw_response = None
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._servables: dict[str, dict[int, _Servable]] = {}
        for name, base in models.items():
            versions = sorted(
                int(p.name) for p in Path(base).iterdir() if p.name.isdigit() and p.is_dir()
            )
            if version_policy == "latest":
                versions = versions[-1:]
            elif version_policy != "all":
                versions = [v for v in versions if v in version_policy.get(name, versions)]
            self._servables[name] = {v: _Servable(Path(base) / str(v)) for v in versions}
        self._server = None
        self._thread = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> ServingStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                stub._handle(self, "GET")

            def do_POST(self):
                stub._handle(self, "POST")

            def log_message(self, *args):  # Keep test output quiet.
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- request handling ---------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append((method, handler.path))
            drop = self.drop_connections > 0
            if drop:
                self.drop_connections -= 1
        if drop:  # Hang up without a word: the client sees a reset connection.
            handler.close_connection = True
            return
        if self.delay:
            time.sleep(self.delay)
        if self.raw_response is not None:
            status, payload = self.raw_response
        else:
            try:
                status, payload = 200, self._route(method, handler.path, body)
                payload = json.dumps(payload).encode()
            except _BadRequest as e:
                status, payload = e.status, json.dumps({"error": str(e)}).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # Client gave up (timeout test).
            pass

    def _route(self, method, path, body):
        match = _ROUTE.fullmatch(path)
        if not match or (method == "POST") != (match["verb"] == ":predict"):
            raise _BadRequest(400, f"Malformed request: {method} {path}")
        name, verb = match["name"], match["verb"]
        version = int(match["version"]) if match["version"] else None
        if verb is None:
            return self._status(name, version)
        if verb == "/metadata":
            servable, version = self._servable(name, version)
            return {
                "model_spec": {"name": name, "signature_name": "", "version": str(version)},
                "metadata": {"signature_def": {"signature_def": servable.signature_defs}},
            }
        servable, _ = self._servable(name, version)
        return self._predict(servable, body)

    def _status(self, name, version):
        versions = self._servables.get(name)
        if not versions:
            raise _BadRequest(404, f"Could not find any versions of model {name}")
        if version is not None:
            if version not in versions:
                raise _BadRequest(404, f"Could not find version {version} of model {name}")
            versions = {version: versions[version]}
        return {
            "model_version_status": [
                {
                    "version": str(v),
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
                for v in sorted(versions, reverse=True)
            ]
        }

    def _servable(self, name, version):
        versions = self._servables.get(name)
        if version is None:
            if not versions:
                raise _BadRequest(404, f"Servable not found for request: Latest({name})")
            version = max(versions)
        elif not versions or version not in versions:
            raise _BadRequest(404, f"Servable not found for request: Specific({name}, {version})")
        return versions[version], version

    def _predict(self, servable: _Servable, body: bytes):
        try:
            request = json.loads(body)
        except ValueError as e:
            raise _BadRequest(400, f"JSON Parse error: {e}") from None
        if not isinstance(request, dict) or "instances" not in request:
            raise _BadRequest(400, "Missing 'inputs' or 'instances' key")
        signature_name = request.get("signature_name") or "serving_default"
        fn = servable.loaded.signatures.get(signature_name)
        if fn is None:
            raise _BadRequest(
                400, f'Serving signature name: "{signature_name}" not found in signature def'
            )
        rows = request["instances"]
        if not isinstance(rows, list) or not rows:
            raise _BadRequest(400, "'instances' must be a non-empty list")
        specs = fn.structured_input_signature[1]
        columns = _columns(rows, specs)
        inputs = {}
        for key, spec in specs.items():
            try:
                tensor = tf.constant(columns[key], dtype=spec.dtype)
            except (TypeError, ValueError) as e:
                raise _BadRequest(400, f"Failed to convert input '{key}': {e}") from None
            if not spec.shape.is_compatible_with(tensor.shape):
                raise _BadRequest(
                    400,
                    f"input '{key}' has shape {tensor.shape.as_list()}, signature expects "
                    f"{spec.shape.as_list()}",
                )
            inputs[key] = tensor
        try:
            with self._lock:
                outputs = fn(**inputs)
        except tf.errors.OpError as e:
            raise _BadRequest(400, e.message) from None
        values = {key: _to_json(key, t.numpy()) for key, t in outputs.items()}
        if len(values) == 1:
            return {"predictions": next(iter(values.values()))}
        if len({len(v) for v in values.values()}) != 1:  # TF Serving's row-format rule.
            raise _BadRequest(400, "output tensors must have the same batch size (row format)")
        rows = zip(*values.values(), strict=True)
        return {"predictions": [dict(zip(values, row, strict=True)) for row in rows]}


def _decode_b64(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, TypeError) as e:
            raise _BadRequest(400, f"Unable to base64 decode: {e}") from None
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    return value


def _columns(rows, specs):
    names = list(specs)
    columns = {key: [] for key in names}
    for i, row in enumerate(rows):
        if not (isinstance(row, dict) and "b64" not in row):
            if len(names) != 1:
                raise _BadRequest(
                    400, f"instance {i} must be an object with keys {names} (several inputs)"
                )
            row = {names[0]: row}
        if set(row) != set(names):
            raise _BadRequest(
                400, f"instance {i} has keys {sorted(row)}; the signature's inputs are {names}"
            )
        for key in names:
            columns[key].append(_decode_b64(row[key]))
    return columns


def _to_json(key, array: np.ndarray):
    if array.dtype.kind in "OS":  # Strings: text, or base64 for outputs named *_bytes.
        if key.endswith("_bytes"):
            return np.vectorize(lambda b: {"b64": base64.b64encode(b).decode()}, otypes=[object])(
                array
            ).tolist()
        return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array).tolist()
    return array.tolist()


# ----------------------------------------------------------------------------
# A toy SavedModel shaped like the apps' exports (string in, several outputs).
# ----------------------------------------------------------------------------


class _ToyModule(tf.Module):
    def __init__(self, offset: float):
        super().__init__()
        self.offset = tf.Variable(offset, dtype=tf.float32, name="offset")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def classify(self, image_bytes):
        def brightness(encoded):
            image = tf.io.decode_image(encoded, channels=1, expand_animations=False)
            return tf.reduce_mean(tf.cast(image, tf.float32)) / 255.0

        probability = tf.map_fn(brightness, image_bytes, fn_output_signature=tf.float32)
        label = tf.cast(probability >= 0.5, tf.int64)
        return {
            "probability": probability,
            "label": label,
            "label_name": tf.where(label == 1, "bright", "dark"),
        }

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="pixels")])
    def score(self, pixels):
        return {"score": tf.reduce_sum(pixels, axis=1) + self.offset}


def write_toy_saved_model(path: str | os.PathLike, offset: float = 0.0) -> None:
    """Writes a small real SavedModel to `path` (test fixture).

    Signatures:
        serving_default: `image_bytes` (string [batch], encoded PNG/JPEG) ->
            `probability` (float32: mean brightness in [0, 1]), `label` (int64:
            probability >= 0.5), `label_name` (string: "bright" / "dark").
        score_pixels: `pixels` (float32 [batch, 4]) -> `score` (float32:
            row sum + `offset`, a variable, so versions can differ).
    """
    module = _ToyModule(offset)
    tf.saved_model.save(
        module,
        str(path),
        signatures={"serving_default": module.classify, "score_pixels": module.score},
    )

"""Stand-ins for TensorFlow Serving's REST and gRPC APIs, for tests only.

The real model server (`tensorflow/serving`) cannot be installed where these
tests run (no Docker, no network), so `ServingStub` plays its part: an
`http.server` on 127.0.0.1 (a free port, in a thread) that loads REAL
SavedModels from TF Serving-style base paths (`<base>/<integer version>/`) with
`tf.saved_model.load` and answers the REST routes the project's client uses:

- `GET  /v1/models/{name}[/versions/{v}]`            status
- `GET  /v1/models/{name}[/versions/{v}]/metadata`   signature defs from saved_model.pb
- `POST /v1/models/{name}[/versions/{v}]:predict`    row format (`instances` -> `predictions`),
  `{"b64": ...}` values decoded to bytes, optional `signature_name`
- `/labels/{label}` in place of `/versions/{v}` (version labels, `labels=`)

`GrpcServingStub` serves the same models over gRPC on 127.0.0.1: it is built
from the official `tensorflow-serving-api` servicer base classes
(`PredictionServiceServicer` for `Predict` / `GetModelMetadata`,
`ModelServiceServicer` for `GetModelStatus`) and answers with TF Serving's
status codes (NOT_FOUND, INVALID_ARGUMENT, RESOURCE_EXHAUSTED beyond
`max_threads` concurrent calls). Both load the SavedModels through one
`ModelStore`, so a REST and a gRPC stub over the same base paths compute the
same values.

Like TF Serving it serves the highest version by default (`version_policy=
"latest"` loads only that one; `"all"` or a list of versions load more), and
its errors are `{"error": "..."}` JSON with TF Serving's codes: 404 for an
unknown model or version, 400 for a bad request or input. The error texts are
modelled on TF Serving's but are not guaranteed to match them word for word.

Knobs for failure tests, settable while running: `delay` (seconds to wait
before answering), `drop_connections` (close the next N connections without an
answer) and `raw_response` (`(status, body_bytes)` returned to every request);
`max_threads` bounds the requests served at once (the REST stub answers 503,
the gRPC stub RESOURCE_EXHAUSTED, to any beyond it), as a real server's
thread pool does, for overload runs.

Translator exports may hold TensorFlow Text ops (which the stock model server
links in): `tensorflow_text` is imported before any SavedModel is loaded.

This is test code: it is not a model server and must not be used as one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2

try:  # Registers the TF Text ops (SentencePiece) of subword translator exports, as
    # the real model server, which links them, has them.
    import tensorflow_text  # noqa: F401
except ImportError as e:  # pragma: no cover
    raise ImportError(
        f"the serving stand-ins need tensorflow-text to load translator exports ({e}): "
        "pip install tensorflow-text with the version of your TensorFlow."
    ) from e

_ROUTE = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<verb>/metadata|:predict)?"
)
UNKNOWN_LABEL = "Unrecognized servable version label: {}"  # TF Serving's words (INVALID_ARGUMENT).
OVERLOADED = "Server overloaded: more than {} requests in flight"


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


class ModelStore:
    """The loaded versions of each model, as a TF Serving server holds them.

    Args:
        models: `{model_name: base_path}`; each base path holds integer version folders.
        version_policy: `"latest"` (TF Serving's default: only the highest
            version is loaded), `"all"`, or `{model_name: [versions]}`.
        labels: `{model_name: {label: version}}` (`version_labels`).
    """

    def __init__(self, models, version_policy="latest", labels=None):
        self.servables: dict[str, dict[int, _Servable]] = {}
        self.labels = {name: dict(v) for name, v in (labels or {}).items()}
        self.lock = threading.Lock()  # One signature call at a time, as before.
        for name, base in models.items():
            versions = sorted(
                int(p.name) for p in Path(base).iterdir() if p.name.isdigit() and p.is_dir()
            )
            if version_policy == "latest":
                versions = versions[-1:]
            elif version_policy != "all":
                versions = [v for v in versions if v in version_policy.get(name, versions)]
            self.servables[name] = {v: _Servable(Path(base) / str(v)) for v in versions}

    def status(self, name, version=None, label=None):
        """`[(version, "AVAILABLE")]`, highest first; raises `_BadRequest` (404) when unknown."""
        versions = self.servables.get(name)
        if not versions:
            raise _BadRequest(404, f"Could not find any versions of model {name}")
        if label is not None:
            version = self._version_of_label(name, label)
        if version is not None:
            if version not in versions:
                raise _BadRequest(404, f"Could not find version {version} of model {name}")
            versions = {version: versions[version]}
        return [(v, "AVAILABLE") for v in sorted(versions, reverse=True)]

    def _version_of_label(self, name, label):
        version = self.labels.get(name, {}).get(label)
        if version is None:
            raise _BadRequest(400, UNKNOWN_LABEL.format(label))
        return version

    def servable(self, name, version=None, label=None):
        """`(servable, version)`, or `_BadRequest` with TF Serving's code and words."""
        versions = self.servables.get(name)
        if label is not None:
            version = self._version_of_label(name, label)
        if version is None:
            if not versions:
                raise _BadRequest(404, f"Servable not found for request: Latest({name})")
            version = max(versions)
        elif not versions or version not in versions:
            raise _BadRequest(404, f"Servable not found for request: Specific({name}, {version})")
        return versions[version], version

    def run(self, servable, signature_name, columns):
        """Runs a signature on `{input: list of values}`; returns `{output: ndarray}`."""
        fn = servable.loaded.signatures.get(signature_name or "serving_default")
        if fn is None:
            raise _BadRequest(
                400, f'Serving signature name: "{signature_name}" not found in signature def'
            )
        specs = fn.structured_input_signature[1]
        if set(columns) != set(specs):
            raise _BadRequest(
                400, f"inputs {sorted(columns)} do not match the signature's {sorted(specs)}"
            )
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
            with self.lock:
                outputs = fn(**inputs)
        except tf.errors.OpError as e:
            raise _BadRequest(400, e.message) from None
        return {key: t.numpy() for key, t in outputs.items()}


class _Slots:
    """At most `limit` requests at once (`None`: no limit); the others are refused."""

    def __init__(self, limit):
        self.limit = limit
        self._semaphore = threading.BoundedSemaphore(limit) if limit else None

    @contextlib.contextmanager
    def take(self):
        if self._semaphore is None:
            yield True
            return
        acquired = self._semaphore.acquire(blocking=False)
        try:
            yield acquired
        finally:
            if acquired:
                self._semaphore.release()


class ServingStub:
    """TF Serving REST stand-in over real SavedModels (see the module docstring).

    Args:
        models: `{model_name: base_path}`; each base path holds integer version folders.
        version_policy: `"latest"` (TF Serving's default: only the highest
            version is loaded), `"all"`, or `{model_name: [versions]}`.
        delay: seconds to sleep before answering any request.
        labels: `{model_name: {label: version}}`, TF Serving's `version_labels`.
        max_threads: requests served at once; any beyond get HTTP 503 (`None`: no limit).
        store: a `ModelStore` to share with a `GrpcServingStub` (then `models`,
            `version_policy` and `labels` are ignored).

    Use as a context manager; `url` is `http://127.0.0.1:<port>`, `requests`
    lists the `(method, path)` of every request received.
    """

    def __init__(
        self,
        models=None,
        version_policy="latest",
        delay=0.0,
        labels=None,
        max_threads=None,
        store=None,
    ):
        self.delay = delay
        self.drop_connections = 0
        self.raw_response = None
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.store = store or ModelStore(models, version_policy, labels)
        self._slots = _Slots(max_threads)
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
        with self._slots.take() as admitted:
            if not admitted:
                status = 503
                payload = json.dumps({"error": OVERLOADED.format(self._slots.limit)}).encode()
            else:
                status, payload = self._answer(method, handler.path, body)
            try:
                handler.send_response(status)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(payload)))
                handler.end_headers()
                handler.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # Client gave up (timeout test).
                pass

    def _answer(self, method, path, body):
        if self.delay:
            time.sleep(self.delay)
        if self.raw_response is not None:
            return self.raw_response
        try:
            return 200, json.dumps(self._route(method, path, body)).encode()
        except _BadRequest as e:
            return e.status, json.dumps({"error": str(e)}).encode()

    def _route(self, method, path, body):
        match = _ROUTE.fullmatch(path)
        if not match or (method == "POST") != (match["verb"] == ":predict"):
            raise _BadRequest(400, f"Malformed request: {method} {path}")
        name, verb, label = match["name"], match["verb"], match["label"]
        version = int(match["version"]) if match["version"] else None
        if verb is None:
            return {
                "model_version_status": [
                    {
                        "version": str(v),
                        "state": state,
                        "status": {"error_code": "OK", "error_message": ""},
                    }
                    for v, state in self.store.status(name, version, label)
                ]
            }
        servable, version = self.store.servable(name, version, label)
        if verb == "/metadata":
            return {
                "model_spec": {"name": name, "signature_name": "", "version": str(version)},
                "metadata": {"signature_def": {"signature_def": servable.signature_defs}},
            }
        return self._predict(servable, body)

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
        columns = _columns(rows, fn.structured_input_signature[1])
        outputs = self.store.run(servable, signature_name, columns)
        values = {key: _to_json(key, array) for key, array in outputs.items()}
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
# gRPC: the official servicer base classes over the same ModelStore.
# ----------------------------------------------------------------------------


class GrpcServingStub:
    """TF Serving gRPC stand-in over real SavedModels, on 127.0.0.1 (a free port).

    A `grpc.server` with TF Serving's services, implemented by subclassing the
    official `prediction_service_pb2_grpc.PredictionServiceServicer` (`Predict`,
    `GetModelMetadata`) and `model_service_pb2_grpc.ModelServiceServicer`
    (`GetModelStatus`) and registered with their `add_*_to_server` functions.
    Errors are TF Serving's status codes: NOT_FOUND (unknown model or version),
    INVALID_ARGUMENT (bad input, unknown signature or label),
    RESOURCE_EXHAUSTED (more than `max_threads` calls at once).

    Args: as `ServingStub` (`models`, `version_policy`, `labels`, `delay`,
        `store`), and `max_threads`: the server's worker threads and the most
        concurrent calls it accepts (`maximum_concurrent_rpcs`).

    Use as a context manager; `url` is `grpc://127.0.0.1:<port>`, `requests`
    lists `(method, model_name, version_or_label, signature_name)` per call.
    """

    def __init__(
        self,
        models=None,
        version_policy="latest",
        delay=0.0,
        labels=None,
        max_threads=8,
        store=None,
    ):
        self.delay = delay
        self.max_threads = max_threads
        self.requests: list[tuple] = []
        self.store = store or ModelStore(models, version_policy, labels)
        self._server = None
        self._port = None

    def start(self) -> GrpcServingStub:
        from concurrent import futures

        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        stub = self

        class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):
                return stub._guard(context, "Predict", request.model_spec, stub._predict, request)

            def GetModelMetadata(self, request, context):
                return stub._guard(
                    context, "GetModelMetadata", request.model_spec, stub._metadata, request
                )

        class ModelService(model_service_pb2_grpc.ModelServiceServicer):
            def GetModelStatus(self, request, context):
                return stub._guard(
                    context, "GetModelStatus", request.model_spec, stub._status, request
                )

        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.max_threads),
            maximum_concurrent_rpcs=self.max_threads,
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(), self._server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), self._server)
        self._port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self._port}"

    # -- request handling ---------------------------------------------------

    def _guard(self, context, method, spec, handler, request):
        import grpc

        which = spec.version.value if spec.HasField("version") else (spec.version_label or None)
        self.requests.append((method, spec.name, which, spec.signature_name))
        if self.delay:
            time.sleep(self.delay)
        try:
            return handler(request)
        except _BadRequest as e:
            code = (
                grpc.StatusCode.NOT_FOUND if e.status == 404 else grpc.StatusCode.INVALID_ARGUMENT
            )
            context.abort(code, str(e))

    @staticmethod
    def _spec(spec):
        version = spec.version.value if spec.HasField("version") else None
        return spec.name, version, spec.version_label or None

    def _status(self, request):
        from tensorflow_serving.apis import get_model_status_pb2

        response = get_model_status_pb2.GetModelStatusResponse()
        for version, _ in self.store.status(*self._spec(request.model_spec)):
            entry = response.model_version_status.add(version=version)
            entry.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
            entry.status.SetInParent()  # error_code OK, as TF Serving sends it.
        return response

    def _metadata(self, request):
        from tensorflow_serving.apis import get_model_metadata_pb2

        name, version, label = self._spec(request.model_spec)
        servable, version = self.store.servable(name, version, label)
        if list(request.metadata_field) != ["signature_def"]:
            raise _BadRequest(400, "Metadata field(s) other than signature_def not supported")
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in servable.signature_defs.items():
            json_format.ParseDict(sig, signatures.signature_def[key])
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = version
        response.metadata["signature_def"].Pack(signatures)
        return response

    def _predict(self, request):
        from tensorflow_serving.apis import predict_pb2

        name, version, label = self._spec(request.model_spec)
        servable, version = self.store.servable(name, version, label)
        columns = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        outputs = self.store.run(servable, request.model_spec.signature_name, columns)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        response.model_spec.version.value = version
        response.model_spec.signature_name = request.model_spec.signature_name or "serving_default"
        for key, array in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(array))
        return response


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


# ----------------------------------------------------------------------------
# Warm-up files, read back as TF Serving reads them.
# ----------------------------------------------------------------------------


def replay_warmup_requests(saved_model_dir) -> list[tuple[str, dict, dict]]:
    """Reads `assets.extra/tf_serving_warmup_requests` with the official protos and runs
    each request through the SavedModel, as TF Serving does when it loads a version.

    Returns `[(signature_name, inputs, outputs)]` (NumPy arrays), in file order.
    Any request the SavedModel cannot run raises.
    """
    from tensorflow_serving.apis import prediction_log_pb2

    path = Path(saved_model_dir) / "assets.extra" / "tf_serving_warmup_requests"
    loaded = tf.saved_model.load(str(saved_model_dir))
    replayed = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        assert log.WhichOneof("log_type") == "predict_log", log
        request = log.predict_log.request
        name = request.model_spec.signature_name or "serving_default"
        inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        outputs = loaded.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
        replayed.append((name, inputs, {k: t.numpy() for k, t in outputs.items()}))
    return replayed

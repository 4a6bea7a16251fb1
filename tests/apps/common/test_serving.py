"""Tests for `apps.common.serving`: the REST and gRPC clients and the models.config generator.

The clients talk to `tests.serving_stub.ServingStub` and `GrpcServingStub`,
stand-ins for TF Serving's REST and gRPC APIs (test code) that serve real
SavedModels on 127.0.0.1.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from apps.common import models_config
from apps.common.errors import UserError
from apps.common.export import export_versioned
from apps.common.models_config import format_models_config, model_base_path, write_models_config
from apps.common.serving import (
    LabelNotFoundError,
    MalformedResponseError,
    ModelNotFoundError,
    ServerError,
    ServerUnreachableError,
    ServingClient,
    ServingError,
    ServingTimeoutError,
    VersionNotLoadedError,
    connect,
    decode_b64,
    encode_b64,
    encode_file_b64,
)
from apps.common.serving_grpc import GrpcServingClient
from tests.serving_stub import GrpcServingStub, ModelStore, ServingStub, write_toy_saved_model

PROJECT_ROOT = Path(__file__).resolve().parents[3]
OFFSETS = {1: 0.0, 2: 10.0}  # The toy model's `score_pixels` adds its version's offset.


@pytest.fixture(scope="module")
def toy_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("serving") / "toy"
    for offset in OFFSETS.values():
        export_versioned(base, lambda p, o=offset: write_toy_saved_model(p, o))
    return base


@pytest.fixture(scope="module")
def _latest_stub(toy_base):
    with ServingStub({"toy": toy_base}) as stub:  # TF Serving's default: latest version only.
        yield stub


@pytest.fixture
def stub(_latest_stub):
    def reset():
        _latest_stub.delay, _latest_stub.drop_connections = 0.0, 0
        _latest_stub.raw_response = None
        _latest_stub.requests.clear()

    reset()
    yield _latest_stub
    reset()


@pytest.fixture(scope="module")
def all_versions_stub(toy_base):
    with ServingStub({"toy": toy_base}, version_policy="all") as stub:
        yield stub


def _client(url, name="toy", **kwargs):
    kwargs.setdefault("timeout", 30.0)
    kwargs.setdefault("backoff", 0.01)
    return ServingClient(url, name, **kwargs)


def _png(value, shape):
    return tf.io.encode_png(np.full((*shape, 1), value, np.uint8)).numpy()


# -- status and metadata -----------------------------------------------------


def test_status_reports_the_served_version(stub):
    client = _client(stub.url)
    assert client.status() == {
        "model_version_status": [
            {
                "version": "2",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert client.available_versions() == [2]
    assert stub.requests == [("GET", "/v1/models/toy")] * 2


def test_status_of_one_version(all_versions_stub):
    client = _client(all_versions_stub.url, version=1)
    assert [s["version"] for s in client.status()["model_version_status"]] == ["1"]
    assert client.available_versions() == [1, 2]  # All versions, whatever this client addresses.


def test_metadata_describes_the_signatures(stub):
    metadata = _client(stub.url).metadata()
    assert metadata["model_spec"] == {"name": "toy", "signature_name": "", "version": "2"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    default = signatures["serving_default"]
    assert default["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert default["inputs"]["image_bytes"]["tensor_shape"] == {"dim": [{"size": "-1"}]}
    assert {k: v["dtype"] for k, v in default["outputs"].items()} == {
        "probability": "DT_FLOAT",
        "label": "DT_INT64",
        "label_name": "DT_STRING",
    }
    assert signatures["score_pixels"]["inputs"]["pixels"]["tensor_shape"] == {
        "dim": [{"size": "-1"}, {"size": "4"}]
    }
    assert stub.requests == [("GET", "/v1/models/toy/metadata")]


# -- predict -----------------------------------------------------------------


def test_predict_sends_images_as_b64(stub, tmp_path):
    bright, dark = _png(200, (5, 7)), _png(30, (12, 3))
    (tmp_path / "dark.png").write_bytes(dark)
    predictions = _client(stub.url).predict(
        [encode_b64(bright), {"image_bytes": encode_file_b64(tmp_path / "dark.png")}]
    )
    assert [(p["label"], p["label_name"]) for p in predictions] == [(1, "bright"), (0, "dark")]
    np.testing.assert_allclose(
        [p["probability"] for p in predictions], [200 / 255, 30 / 255], rtol=1e-6
    )
    body_check = stub.requests[-1]
    assert body_check == ("POST", "/v1/models/toy:predict")


def test_predict_float_rows_with_signature_name(stub):
    pixels = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    predictions = _client(stub.url).predict(pixels, signature_name="score_pixels")
    np.testing.assert_allclose(predictions, pixels.sum(axis=1) + OFFSETS[2], rtol=1e-6)


def test_version_routing(all_versions_stub):
    rows = [[1.0, 2.0, 3.0, 4.0]]
    for version in (1, 2):
        client = _client(all_versions_stub.url, version=version)
        assert client.predict(rows, signature_name="score_pixels") == [10.0 + OFFSETS[version]]
    assert _client(all_versions_stub.url).predict(rows, "score_pixels") == [10.0 + OFFSETS[2]]
    assert [path for _, path in all_versions_stub.requests[-3:]] == [
        "/v1/models/toy/versions/1:predict",
        "/v1/models/toy/versions/2:predict",
        "/v1/models/toy:predict",
    ]


# -- errors from the server ------------------------------------------------------


@pytest.mark.parametrize("call", ["status", "metadata", "predict"])
def test_unknown_model(stub, call):
    client = _client(stub.url, "no_such_model")
    with pytest.raises(ModelNotFoundError, match="model 'no_such_model' not found") as info:
        getattr(client, call)(*([[1]] if call == "predict" else []))
    assert stub.url in str(info.value) and info.value.status == 404
    assert "no_such_model" in info.value.server_message
    assert len(stub.requests) == 1  # A 404 is not retried.


def test_version_not_loaded(stub):
    client = _client(stub.url, version=1)  # Only the latest version, 2, is loaded.
    with pytest.raises(VersionNotLoadedError, match=r"version 1 of model 'toy' is not loaded") as e:
        client.predict([[0, 0, 0, 0]], signature_name="score_pixels")
    assert e.value.available == [2] and "loaded: [2]" in str(e.value)
    assert e.value.server_message == "Servable not found for request: Specific(toy, 1)"
    with pytest.raises(VersionNotLoadedError, match="version 1 of model 'toy'"):
        client.status()


def test_version_of_unknown_model_is_model_not_found(stub):
    with pytest.raises(ModelNotFoundError, match="model 'other' not found"):
        _client(stub.url, "other", version=3).predict(["x"])


def test_server_error_message_is_passed_through(stub):
    client = _client(stub.url)
    with pytest.raises(ServerError) as e:
        client.predict(["x"], signature_name="nope")
    assert e.value.status == 400
    assert e.value.server_message == 'Serving signature name: "nope" not found in signature def'
    assert e.value.server_message in str(e.value)
    # A failure inside the model's graph: TensorFlow's own message comes through.
    with pytest.raises(ServerError, match="Unknown image file format"):
        client.predict([encode_b64(b"not an image")])
    assert len(stub.requests) == 2  # HTTP errors are not retried.


def test_server_error_json_with_other_status(stub):
    stub.raw_response = (503, b'{"error": "Model is being reloaded"}')
    with pytest.raises(ServerError, match="HTTP 503: Model is being reloaded") as e:
        _client(stub.url).status()
    assert (e.value.status, e.value.server_message) == (503, "Model is being reloaded")
    assert len(stub.requests) == 1


@pytest.mark.parametrize(
    "body, match",
    [
        (b"<html>Bad gateway</html>", "body that is not JSON: '<html>Bad gateway</html>'"),
        (b'{"outputs": [1]}', r"has no 'predictions' list \(keys: \['outputs'\]\)"),
        (b'{"predictions": [1, 2, 3]}', "returned 3 predictions for 1 instances"),
        (b'{"predictions": 5}', "has no 'predictions' list"),
    ],
)
def test_malformed_response(stub, body, match):
    stub.raw_response = (200, body)
    with pytest.raises(MalformedResponseError, match=match):
        _client(stub.url).predict([[1, 2, 3, 4]])


def test_malformed_status_response(stub):
    stub.raw_response = (200, b'{"model_version_status": "nope"}')
    with pytest.raises(MalformedResponseError, match="no valid 'model_version_status'"):
        _client(stub.url).available_versions()


# -- connection failures, timeouts, retries ----------------------------------------


def test_slow_response_times_out_without_retry(stub):
    stub.delay = 3.0
    client = _client(stub.url, timeout=0.3, retries=3)
    start = time.monotonic()
    with pytest.raises(ServingTimeoutError, match=r"did not answer within 0.3 s") as e:
        client.status()
    assert time.monotonic() - start < 2.0
    assert isinstance(e.value, TimeoutError) and e.value.url == f"{stub.url}/v1/models/toy"
    assert len(stub.requests) == 1


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_connection_retries_with_backoff_then_fails():
    url = f"http://127.0.0.1:{_closed_port()}"
    client = ServingClient(url, "toy", retries=3, backoff=0.05)
    sleeps = []
    client._sleep = sleeps.append
    with pytest.raises(ServerUnreachableError) as e:
        client.predict(["x"])
    assert e.value.attempts == 4
    assert sleeps == [0.05, 0.1, 0.2]  # Exponential backoff between the 4 attempts.
    assert f"could not reach TF Serving at {url}/v1/models/toy:predict after 4 attempts" in str(
        e.value
    )
    assert isinstance(e.value, ConnectionError)


def test_dropped_connections_are_retried_until_an_answer(stub):
    stub.drop_connections = 2
    client = _client(stub.url, retries=3)
    sleeps = []
    client._sleep = sleeps.append
    assert client.predict([[1, 1, 1, 1]], signature_name="score_pixels") == [4.0 + OFFSETS[2]]
    assert len(stub.requests) == 3 and sleeps == [0.01, 0.02]


def test_retries_are_bounded(stub):
    stub.drop_connections = 10
    client = _client(stub.url, retries=1)
    client._sleep = lambda s: None
    with pytest.raises(ServerUnreachableError, match="after 2 attempts") as e:
        client.status()
    assert e.value.attempts == 2 and len(stub.requests) == 2


def test_environment_proxy_is_bypassed_for_a_local_server(stub, monkeypatch):
    dead_proxy = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("http_proxy", dead_proxy)
    monkeypatch.setenv("HTTP_PROXY", dead_proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert _client(stub.url, retries=0).available_versions() == [2]


def test_every_error_is_a_serving_error():
    for cls in (
        ServerUnreachableError,
        ServingTimeoutError,
        ModelNotFoundError,
        VersionNotLoadedError,
        MalformedResponseError,
        ServerError,
    ):
        assert issubclass(cls, ServingError)


# -- arguments and encoding ------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"base_url": "localhost:8501"}, "base_url must be an http"),
        ({"model_name": "a/b"}, "Received: model_name='a/b'"),
        ({"model_name": ""}, "Received: model_name=''"),
        ({"version": -1}, "Received: version=-1"),
        ({"version": "2"}, "Received: version='2'"),
        ({"timeout": 0}, "Received: timeout=0"),
        ({"retries": -1}, "Received: retries=-1"),
        ({"backoff": -0.1}, "Received: backoff=-0.1"),
    ],
)
def test_bad_client_arguments(kwargs, match):
    args = {"base_url": "http://localhost:8501", "model_name": "toy", **kwargs}
    with pytest.raises(ValueError, match=re.escape(match)):
        ServingClient(**args)


def test_model_url():
    assert ServingClient("http://h:8501/", "m").model_url == "http://h:8501/v1/models/m"
    assert ServingClient("https://h", "m", 3).model_url == "https://h/v1/models/m/versions/3"


@pytest.mark.parametrize(
    "instances, error, match",
    [
        ([], ValueError, "instances is empty"),
        ("How are you?", ValueError, "instances must be a list"),
        ({"a": 1}, ValueError, "instances must be a list"),
        ([b"\x89PNG"], TypeError, "wrap binary values .* with encode_b64"),
        ([[float("nan")]], ValueError, "a value JSON cannot carry"),
    ],
)
def test_bad_instances_fail_before_any_request(stub, instances, error, match):
    with pytest.raises(error, match=match):
        _client(stub.url).predict(instances)
    assert stub.requests == []


def test_b64_round_trip():
    data = bytes(range(256))
    value = encode_b64(data)
    assert set(value) == {"b64"} and decode_b64(value) == data
    assert json.loads(json.dumps(value)) == value
    with pytest.raises(TypeError, match="expects bytes"):
        encode_b64("text")
    with pytest.raises(ValueError, match="expected a"):
        decode_b64({"data": "AA=="})


# -- models.config ---------------------------------------------------------------

EXPECTED_CONFIG = """\
# TensorFlow Serving model config (--model_config_file). Generated by
# `python -m apps.common.models_config config`; regenerate rather than edit.
model_config_list {
  config {
    name: "medical_cnn"
    base_path: "/models/medical_cnn"
    model_platform: "tensorflow"
  }
  config {
    name: "translator"
    base_path: "/models/translator"
    model_platform: "tensorflow"
    model_version_policy {
      specific {
        versions: 2
        versions: 3
      }
    }
  }
}
"""


def _model_server_config_class():
    """ModelServerConfig, the message TF Serving parses `--model_config_file` into
    (the official proto from tensorflow-serving-api)."""
    from tensorflow_serving.config import model_server_config_pb2

    return model_server_config_pb2.ModelServerConfig


def test_models_config_text():
    models = {name: model_base_path("/models", name) for name in models_config.MODEL_NAMES}
    assert format_models_config(models, {"translator": [3, 2]}) == EXPECTED_CONFIG


def test_models_config_parses_as_tf_serving_model_server_config():
    text = format_models_config(
        {"medical_cnn": "/models/medical_cnn", "translator": 'C:\\odd "path"'},
        {"medical_cnn": [4]},
    )
    config = text_format.Parse(text, _model_server_config_class()())
    first, second = config.model_config_list.config
    assert (first.name, first.base_path, first.model_platform) == (
        "medical_cnn",
        "/models/medical_cnn",
        "tensorflow",
    )
    assert list(first.model_version_policy.specific.versions) == [4]
    assert second.base_path == 'C:\\odd "path"'  # Escaped and read back intact.
    assert not second.HasField("model_version_policy")  # TF Serving's default: latest.


def test_committed_models_config_matches_the_generator():
    committed = (PROJECT_ROOT / "saved_models" / "models.config").read_text()
    models = {name: model_base_path("/models", name) for name in models_config.MODEL_NAMES}
    assert committed == format_models_config(models), (
        "saved_models/models.config is stale: run "
        "`python -m apps.common.models_config config --base-path /models`"
    )


def test_model_base_path():
    assert model_base_path("/models/", "m") == "/models/m"
    assert model_base_path("gs://bucket/models", "m") == "gs://bucket/models/m"
    assert model_base_path("saved_models", "m") == os.path.join(
        os.path.abspath("saved_models"), "m"
    )


@pytest.mark.parametrize(
    "models, versions, match",
    [
        ({}, None, "models is empty"),
        ({"bad name": "/m"}, None, "Received: name='bad name'"),
        ({"m": "/m"}, {"other": [1]}, r"versions given for unknown models \['other'\]"),
        ({"m": "/m"}, {"m": ["1"]}, "must be integers"),
    ],
)
def test_bad_models_config_arguments(tmp_path, models, versions, match):
    out = tmp_path / "models.config"
    with pytest.raises(ValueError, match=match):
        write_models_config(out, models, versions)
    assert not out.exists()


def test_config_command_writes_the_file(tmp_path, capsys):
    out = tmp_path / "sub" / "models.config"
    argv = ["config", "--base-path", "/srv/models", "--out", str(out), "--pin", "translator=2"]
    assert models_config.main(argv) == 0
    config = text_format.Parse(out.read_text(), _model_server_config_class()())
    assert [(c.name, c.base_path) for c in config.model_config_list.config] == [
        ("medical_cnn", "/srv/models/medical_cnn"),
        ("translator", "/srv/models/translator"),
    ]
    assert list(config.model_config_list.config[1].model_version_policy.specific.versions) == [2]
    assert "translator -> /srv/models/translator" in capsys.readouterr().out


def test_config_command_reports_bad_input(tmp_path, capsys):
    out = tmp_path / "models.config"
    assert models_config.main(["config", "--out", str(out), "--model", "bad/name"]) == 2
    assert "error: model names may hold" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        models_config.main(["config", "--pin", "translator"])
    assert "expected NAME=VERSION" in capsys.readouterr().err


def test_the_old_serving_module_command_still_writes_models_config(tmp_path):
    # Documented before the generator moved to apps.common.models_config.
    out = tmp_path / "models.config"
    result = subprocess.run(
        [sys.executable, "-m", "apps.common.serving", "config", "--out", str(out)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text() == format_models_config(
        {name: model_base_path("/models", name) for name in models_config.MODEL_NAMES}
    )


# -- gRPC: the same interface, values and errors as REST ---------------------------

LABELS = {"toy": {"stable": 1, "canary": 2}}


@pytest.fixture(scope="module")
def both(toy_base):
    """A REST and a gRPC stand-in over one `ModelStore` (all versions, labels)."""
    store = ModelStore({"toy": toy_base}, version_policy="all", labels=LABELS)
    with ServingStub(store=store) as rest, GrpcServingStub(store=store) as grpc_stub:
        yield {"rest": rest, "grpc": grpc_stub}


@pytest.fixture(params=["rest", "grpc"])
def transport(request, both):
    stub = both[request.param]
    stub.delay = 0.0
    stub.requests.clear()
    return stub


def _connect(url, name="toy", **kwargs):
    kwargs.setdefault("timeout", 30.0)
    kwargs.setdefault("backoff", 0.01)
    return connect(url, name, **kwargs)


def test_connect_picks_the_client_by_scheme(both):
    assert type(_connect(both["rest"].url)) is ServingClient
    client = _connect(both["grpc"].url, version=2)
    assert type(client) is GrpcServingClient
    assert client.model_url == f"{both['grpc'].url}/models/toy/versions/2"
    assert _connect(both["rest"].url, label="canary").model_url == (
        f"{both['rest'].url}/v1/models/toy/labels/canary"
    )
    with pytest.raises(UserError, match=re.escape("or a gRPC address such as grpc://localhost")):
        connect("localhost:8500", "toy")


def test_grpc_and_rest_answer_alike(both, tmp_path):
    rest, grpc_client = _connect(both["rest"].url), _connect(both["grpc"].url)
    assert grpc_client.status() == rest.status()
    assert grpc_client.available_versions() == rest.available_versions() == [1, 2]
    assert grpc_client.metadata() == rest.metadata()
    images = [encode_b64(_png(200, (5, 7))), {"image_bytes": encode_b64(_png(30, (12, 3)))}]
    assert grpc_client.predict(images) == rest.predict(images)  # Identical floats, labels, text.
    pixels = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    assert grpc_client.predict(pixels, "score_pixels") == rest.predict(pixels, "score_pixels")
    assert both["grpc"].requests[-1] == ("Predict", "toy", None, "score_pixels")


@pytest.mark.parametrize(
    "kwargs, offset",
    [({"version": 1}, 0.0), ({"label": "stable"}, 0.0), ({"label": "canary"}, 10.0), ({}, 10.0)],
)
def test_versions_and_labels_route_alike(transport, kwargs, offset):
    client = _connect(transport.url, **kwargs)
    assert client.predict([[1.0, 2.0, 3.0, 4.0]], "score_pixels") == [10.0 + offset]


def test_grpc_request_names_the_label(both):
    _connect(both["grpc"].url, label="canary").predict([[0, 0, 0, 0]], "score_pixels")
    assert both["grpc"].requests[-1] == ("Predict", "toy", "canary", "score_pixels")


def test_unknown_model_is_the_same_error(transport):
    with pytest.raises(ModelNotFoundError) as e:
        _connect(transport.url, "no_such_model").predict([[1, 2, 3, 4]], "score_pixels")
    assert str(e.value) == (
        f"model 'no_such_model' not found on TF Serving at {transport.url} (server said: "
        f"Servable not found for request: Latest(no_such_model)). Check the name (MODEL_NAME, "
        f"or the names in models.config) and that its base path holds an integer version "
        f"folder (<base_path>/1/saved_model.pb)."
    )
    assert e.value.status == 404


def test_unknown_version_is_the_same_error(transport):
    with pytest.raises(VersionNotLoadedError) as e:
        _connect(transport.url, version=7).predict([[1, 2, 3, 4]], "score_pixels")
    assert e.value.available == [1, 2]
    assert str(e.value) == (
        f"version 7 of model 'toy' is not loaded on TF Serving at {transport.url} (loaded: "
        f"[1, 2]; server said: Servable not found for request: Specific(toy, 7)). Address a "
        f"loaded version, or load it with model_version_policy in models.config."
    )


def test_unknown_label_is_the_same_error(transport):
    with pytest.raises(LabelNotFoundError) as e:
        _connect(transport.url, label="beta").predict([[1, 2, 3, 4]], "score_pixels")
    assert str(e.value) == (
        f"model 'toy' has no version labelled 'beta' on TF Serving at {transport.url} (server "
        f"said: Unrecognized servable version label: beta). Labels come from version_labels in "
        f"models.config: python -m apps.common.models_config config --label toy:beta=VERSION"
    )
    assert e.value.status == 400


def test_bad_input_is_a_server_error_with_tensorflows_words(transport):
    client = _connect(transport.url)
    with pytest.raises(ServerError, match="Unknown image file format") as e:
        client.predict([encode_b64(b"not an image")])
    assert e.value.status == 400  # gRPC's INVALID_ARGUMENT reads as REST's 400.
    with pytest.raises(ServerError) as e:
        client.predict(["x"], signature_name="nope")
    assert e.value.server_message == 'Serving signature name: "nope" not found in signature def'


def test_grpc_timeout_is_a_timeout_error_without_retry(both):
    stub = both["grpc"]
    stub.requests.clear()
    stub.delay = 3.0
    try:
        client = _connect(stub.url, timeout=0.5, retries=3)
        start = time.monotonic()
        with pytest.raises(ServingTimeoutError) as e:
            client.status()
        assert time.monotonic() - start < 2.0
    finally:
        stub.delay = 0.0
    assert str(e.value) == (
        f"TF Serving at {stub.url}/models/toy:GetModelStatus did not answer within 0.5 s "
        f"(--timeout); the server may be overloaded or the request too large: raise --timeout "
        f"SECONDS, or check the server."
    )
    assert isinstance(e.value, TimeoutError) and len(stub.requests) == 1


def test_grpc_unreachable_server_retries_with_backoff_then_fails():
    url = f"grpc://127.0.0.1:{_closed_port()}"
    client = GrpcServingClient(url, "toy", retries=3, backoff=0.05)
    sleeps = []
    client._sleep = sleeps.append
    with pytest.raises(ServerUnreachableError) as e:
        client.predict(["x"])
    assert e.value.attempts == 4 and sleeps == [0.05, 0.1, 0.2]
    message = str(e.value)
    assert message.startswith(
        f"could not reach TF Serving at {url}/models/toy:GetModelMetadata after 4 attempts ("
    )
    assert message.endswith(
        "Is the server running and its gRPC port published (docker run -p 8500:8500 ...)?"
    )
    assert isinstance(e.value, ConnectionError)


def test_grpc_client_pointed_at_the_rest_port_says_so(both):
    url = both["rest"].url.replace("http://", "grpc://")
    with pytest.raises(MalformedResponseError, match=r"port 8500, not REST 8501"):
        _connect(url, retries=0).status()


def test_overload_is_a_clean_error_on_both(toy_base):
    """Beyond `max_threads` calls in flight: REST 503, gRPC RESOURCE_EXHAUSTED (429)."""
    import threading

    store = ModelStore({"toy": toy_base})
    with (
        ServingStub(store=store, max_threads=1, delay=1.0) as rest,
        GrpcServingStub(store=store, max_threads=1, delay=1.0) as grpc_stub,
    ):
        cases = (
            (rest, 503, None, "HTTP 503: Server overloaded: more than 1 requests in flight"),
            (
                grpc_stub,
                429,
                "RESOURCE_EXHAUSTED",
                "Concurrent RPC limit exceeded!",
            ),  # grpc's words
        )
        for stub, status, code, words in cases:
            busy = threading.Thread(target=_connect(stub.url).status)
            busy.start()
            time.sleep(0.3)  # The first call holds the only thread.
            with pytest.raises(ServerError) as e:
                _connect(stub.url).status()
            busy.join()
            assert (e.value.status, e.value.code) == (status, code)
            assert words in str(e.value)


@pytest.mark.parametrize(
    "address",
    ["grpc://", "grpc://host:port", "grpc://localhost:8500/v1/models"],
)
def test_bad_grpc_address(address):
    with pytest.raises(UserError, match=re.escape(f"Received: address={address!r}")):
        GrpcServingClient(address, "toy")


def test_version_and_label_together_are_refused():
    with pytest.raises(UserError, match="address a version or a label, not both"):
        ServingClient("http://localhost:8501", "toy", version=1, label="stable")
    with pytest.raises(UserError, match=r"Received: label='1st'"):
        connect("grpc://localhost:8500", "toy", label="1st")


# -- models.config: version labels ----------------------------------------------------


def _fake_versions(base, *versions):
    for v in versions:
        (base / str(v) / "variables").mkdir(parents=True)
        (base / str(v) / "variables" / "variables.index").write_text("index")
        (base / str(v) / "saved_model.pb").write_text("graph")


def test_labels_round_trip_through_the_official_parser():
    text = format_models_config(
        {"medical_cnn": "/models/medical_cnn", "translator": "/models/translator"},
        {"medical_cnn": [2]},
        {"translator": {"stable": 3, "canary": 4}},
    )
    config = text_format.Parse(text, _model_server_config_class()())
    medical, translator = config.model_config_list.config
    assert list(medical.model_version_policy.specific.versions) == [2]
    assert not medical.version_labels
    assert list(translator.model_version_policy.specific.versions) == [3, 4]
    assert dict(translator.version_labels) == {"stable": 3, "canary": 4}
    # Printed back by protobuf and parsed again: the same message.
    again = text_format.Parse(text_format.MessageToString(config), _model_server_config_class()())
    assert again == config


def test_config_command_writes_labels_for_versions_found_here(tmp_path, capsys):
    saved = tmp_path / "saved_models"  # Mounted at /models in the container.
    _fake_versions(saved / "translator", 3, 4)
    out = saved / "models.config"
    argv = ["config", "--base-path", "/models", "--out", str(out)]
    argv += ["--label", "translator:stable=3", "--label", "translator:canary=4"]
    assert models_config.main(argv) == 0
    config = text_format.Parse(out.read_text(), _model_server_config_class()())
    translator = config.model_config_list.config[1]
    assert (translator.name, translator.base_path) == ("translator", "/models/translator")
    assert list(translator.model_version_policy.specific.versions) == [3, 4]
    assert dict(translator.version_labels) == {"stable": 3, "canary": 4}
    assert (
        "translator -> /models/translator (labels: stable=3, canary=4)" in capsys.readouterr().out
    )

    # Promote: stable moves to 4, version 3 is unloaded.
    argv = ["config", "--base-path", "/models", "--out", str(out), "--label", "translator:stable=4"]
    assert models_config.main(argv) == 0
    translator = text_format.Parse(out.read_text(), _model_server_config_class()())
    translator = translator.model_config_list.config[1]
    assert list(translator.model_version_policy.specific.versions) == [4]
    assert dict(translator.version_labels) == {"stable": 4}


def test_a_label_must_name_a_version_found_here(tmp_path, capsys):
    saved = tmp_path / "saved_models"
    _fake_versions(saved / "translator", 1, 2)
    (saved / "translator" / "5").mkdir()  # Empty: no version.
    out = saved / "models.config"
    for flag in (["--label", "translator:canary=5"], ["--pin", "translator=2,7"]):
        argv = ["config", "--base-path", str(saved), "--out", str(out), *flag]
        assert models_config.main(argv) == 2
        err = capsys.readouterr().err.strip()
        missing = 5 if flag[0] == "--label" else 7
        assert err == (
            f"error: {flag[0]} {flag[1]}: {saved / 'translator'} holds no version {missing} of "
            f"'translator' (versions there: [1, 2]). Export it first, or name one of those."
        )
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--label", "translator=3"], "expected MODEL:LABEL=VERSION"),
        (["--label", "translator:stable"], "expected MODEL:LABEL=VERSION"),
        (["--label", "translator:1st=3"], "Received: 'translator:1st=3'"),
        (["--label", "translator:stable=-3"], "e.g. translator:stable=3"),
    ],
)
def test_bad_label_syntax_is_a_usage_error(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        models_config.main(["config", "--out", str(tmp_path / "m.config"), *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.config").exists()


def test_conflicting_or_unknown_labels_are_clear_errors(tmp_path, capsys):
    out = tmp_path / "m.config"
    argv = ["config", "--out", str(out), "--label", "translator:stable=3"]
    assert models_config.main([*argv, "--label", "translator:stable=4"]) == 2
    assert "given twice, for versions 3 and 4" in capsys.readouterr().err
    assert models_config.main([*argv, "--model", "medical_cnn"]) == 2
    assert "--label names models ['translator'] that models.config does not list" in (
        capsys.readouterr().err
    )
    assert not out.exists()


# -- saved_models/batching_parameters.txt ----------------------------------------------


def _batching_parameters_class():
    """tensorflow.serving.BatchingParameters, which `--batching_parameters_file` is parsed into.

    The pip package tensorflow-serving-api does not ship
    `tensorflow_serving/servables/tensorflow/session_bundle_config_pb2`, so the
    message is declared here from session_bundle_config.proto: the published
    names, numbers and types of the fields this project sets (and the rest of
    the scheduler fields, so that a typo cannot parse as one of them).
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    f = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving",
        dependency=["google/protobuf/wrappers.proto"],
        syntax="proto3",
    )
    message = fdp.message_type.add(name="BatchingParameters")
    int64 = (f.TYPE_MESSAGE, ".google.protobuf.Int64Value")
    for name, number, (ftype, type_name) in [
        ("max_batch_size", 1, int64),
        ("batch_timeout_micros", 2, int64),
        ("max_enqueued_batches", 3, int64),
        ("num_batch_threads", 4, int64),
        ("thread_pool_name", 5, (f.TYPE_MESSAGE, ".google.protobuf.StringValue")),
        ("pad_variable_length_inputs", 7, (f.TYPE_BOOL, None)),
    ]:
        field = message.field.add(name=name, number=number, type=ftype, label=f.LABEL_OPTIONAL)
        if type_name:
            field.type_name = type_name
    message.field.add(
        name="allowed_batch_sizes", number=6, type=f.TYPE_INT64, label=f.LABEL_REPEATED
    )
    pool.Add(fdp)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    )


def test_committed_batching_parameters_parse_as_tf_serving_reads_them():
    text = (PROJECT_ROOT / "saved_models" / "batching_parameters.txt").read_text()
    params = text_format.Parse(text, _batching_parameters_class()())
    assert params.max_batch_size.value == 32
    assert params.batch_timeout_micros.value == 2000
    assert params.num_batch_threads.value == 2
    assert params.max_enqueued_batches.value == 8
    assert params.pad_variable_length_inputs is False
    assert not params.allowed_batch_sizes  # Any batch size up to max_batch_size.
    # The docs' docker line enables exactly this file.
    docs = (PROJECT_ROOT / "docs" / "serving.md").read_text()
    assert "--enable_batching" in docs
    assert "--batching_parameters_file=/models/batching_parameters.txt" in docs


def test_the_batching_parameters_file_is_committed():
    result = subprocess.run(
        ["git", "check-ignore", "-q", "saved_models/batching_parameters.txt"],
        cwd=PROJECT_ROOT,
        capture_output=True,
    )
    assert result.returncode == 1  # Not ignored.

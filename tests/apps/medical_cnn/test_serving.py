"""`medical-cnn predict --server`: the served answers print exactly what local prediction prints.

The servers are `tests.serving_stub.ServingStub` and `GrpcServingStub` (stand-ins
for TF Serving's REST and gRPC APIs over the real SavedModels exported from the
tiny trained run).
"""

import json
import shutil
import socket

import numpy as np
import pytest
from PIL import Image

from apps.medical_cnn.cli import main
from apps.medical_cnn.export import export
from apps.medical_cnn.serving import decode_error_reason
from tests.serving_stub import GrpcServingStub, ServingStub, write_toy_saved_model


def _run(capsys, *argv):
    status = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.strip().splitlines()], err


@pytest.fixture(scope="module")
def images(pneumoniamnist_npz, tmp_path_factory):
    """Good PNG/JPEG files of several sizes and modes, and three bad files among them."""
    folder = tmp_path_factory.mktemp("images")
    val = np.load(pneumoniamnist_npz)["val_images"][:6]
    good = []
    for i, image in enumerate(val[:4]):
        good.append(folder / f"val{i}.png")
        Image.fromarray(image).save(good[-1])
    good.append(folder / "wide_rgb.jpg")
    Image.fromarray(val[4]).resize((300, 200)).convert("RGB").save(good[-1], quality=92)
    good.append(folder / "rgba.png")
    Image.fromarray(val[5]).resize((64, 64)).convert("RGBA").save(good[-1])
    not_image = folder / "notes.png"
    not_image.write_text("this is not an image")
    broken = folder / "broken.jpg"  # Starts like a JPEG: only decoding finds the fault.
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    missing = folder / "missing.png"
    mixed = [good[0], not_image, good[1], broken, *good[2:], missing]
    return good, mixed


@pytest.fixture(scope="module")
def served(tiny_run, images, tmp_path_factory):
    """A stub serving the run as version 2 (the latest), the run with another threshold
    as version 1, and a toy model that is not a medical_cnn export."""
    from apps.medical_cnn.predict import predict_files

    run_dir, _ = tiny_run
    folder = tmp_path_factory.mktemp("served")
    # The same weights with another threshold, between two of the test images'
    # probabilities, so that it changes some of their labels.
    records = predict_files(run_dir, images[0])
    p = sorted(r["probability"] for r in records)
    positives = sum(r["label"] for r in records)
    midpoints = [(a + b) / 2 for a, b in zip(p[:-1], p[1:], strict=True)]
    threshold = next(t for t in midpoints if sum(q >= t for q in p) != positives)
    other_run = folder / "other_run"
    other_run.mkdir()
    for name in ("model.keras", "config.json"):
        shutil.copy(run_dir / name, other_run / name)
    (other_run / "threshold.json").write_text(json.dumps({"threshold": threshold}))
    base = folder / "medical_cnn"
    assert export(other_run, base).name == "1"
    assert export(run_dir, base).name == "2"
    write_toy_saved_model(folder / "toy" / "1")
    models = {"medical_cnn": base, "toy": folder / "toy"}
    with ServingStub(models, version_policy="all") as stub:
        yield stub, run_dir, other_run


def _assert_same_lines(served_lines, local_lines):
    assert len(served_lines) == len(local_lines)
    for served, local in zip(served_lines, local_lines, strict=True):
        assert list(served) == list(local)  # Same keys, same order.
        for key, value in local.items():
            if isinstance(value, float) or key == "probabilities":
                assert served[key] == pytest.approx(value, abs=1e-5), key
            else:
                assert served[key] == value, key


def test_served_output_equals_local_output(served, images, capsys):
    stub, run_dir, _ = served
    good, mixed = images
    status, local, _ = _run(capsys, "predict", "--model", run_dir, *mixed)
    assert status == 1
    stub.requests.clear()
    status, remote, err = _run(capsys, "predict", "--server", stub.url, *mixed)
    assert status == 1
    threshold = json.loads((run_dir / "threshold.json").read_text())["threshold"]
    assert {r["threshold"] for r in remote if "threshold" in r} == {threshold}  # exactly
    # Every line is the same, errors included: the corrupt JPEG (refused by the
    # server, not by the local check) gets the decoder's words without TF's decoration.
    _assert_same_lines(remote, local)
    broken = mixed.index(images[1][3])
    assert remote[broken]["error"] == (
        f"{mixed[broken]} is not a readable image (PNG, JPEG, BMP or GIF expected): "
        "jpeg::Uncompress failed. Invalid JPEG data or crop window."
    )
    assert remote[1]["error"].startswith(f"{mixed[1]} is not a readable image")
    assert remote[-1]["error"] == f"image file not found: {mixed[-1]}"
    assert "broken.jpg" in err and "notes.png" in err
    # One metadata check, one batch (refused because of the corrupt JPEG), then
    # each file that looked like an image alone; the non-image was never sent.
    predicts = [path for method, path in stub.requests if method == "POST"]
    assert stub.requests[0] == ("GET", "/v1/models/medical_cnn/metadata")
    assert predicts == ["/v1/models/medical_cnn:predict"] * (1 + len(good) + 1)

    stub.requests.clear()
    status, remote, _ = _run(capsys, "predict", "--server", stub.url, *good)
    assert status == 0
    assert [m for m, _ in stub.requests].count("POST") == 1  # All files in one request.
    _assert_same_lines(remote, [local[mixed.index(path)] for path in good])


def test_model_version_routing(served, images, capsys):
    stub, run_dir, other_run = served
    good = images[0]
    _, by_run, _ = _run(capsys, "predict", "--model", run_dir, *good)
    _, by_other_run, _ = _run(capsys, "predict", "--model", other_run, *good)
    assert [r["label"] for r in by_run] != [r["label"] for r in by_other_run]

    stub.requests.clear()
    status, v1, _ = _run(capsys, "predict", "--server", stub.url, "--model-version", 1, *good)
    assert status == 0
    _assert_same_lines(v1, by_other_run)
    assert ("POST", "/v1/models/medical_cnn/versions/1:predict") in stub.requests
    _, v2, _ = _run(capsys, "predict", "--server", stub.url, "--model-version", "2", *good)
    _assert_same_lines(v2, by_run)
    _, latest, _ = _run(capsys, "predict", "--server", stub.url, *good)
    _assert_same_lines(latest, by_run)

    status, lines, err = _run(capsys, "predict", "--server", stub.url, "--model-version", 7, *good)
    assert (status, lines) == (2, [])
    assert err.strip() == (
        f"error: version 7 of model 'medical_cnn' is not loaded on TF Serving at {stub.url} "
        f"(loaded: [1, 2]; server said: Servable not found for request: "
        f"Specific(medical_cnn, 7)). Address a loaded version, or load it with "
        f"model_version_policy in models.config."
    )


def test_unknown_model_and_foreign_model_are_clear_errors(served, images, capsys):
    stub, _, _ = served
    argv = ["predict", "--server", stub.url, images[0][0]]
    status, lines, err = _run(capsys, *argv, "--model-name", "chest_xray")
    assert (status, lines) == (2, [])
    assert err.startswith(f"error: model 'chest_xray' not found on TF Serving at {stub.url}")
    assert "Traceback" not in err
    status, _, err = _run(capsys, *argv, "--model-name", "toy")
    assert status == 2
    assert err.startswith(
        f"error: model 'toy' on {stub.url} returns ['label', 'label_name', 'probability'], "
        "not the outputs of a medical_cnn export"
    )


def test_multiclass_served_output_equals_local_output(tmp_path, capsys):
    # An untrained 3-class RGB model: records carry `probabilities` and no threshold.
    import dataclasses

    from apps.common.config import save_config
    from apps.medical_cnn.config import get_config
    from apps.medical_cnn.model import build_model

    cfg = dataclasses.replace(
        get_config("tiny"),
        input_size=16,
        input_shape=(16, 16, 3),
        num_classes=3,
        class_names=("red", "green", "blue"),
        pixel_mean=(128.0, 128.0, 128.0),
        pixel_variance=(4000.0, 4000.0, 4000.0),
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    build_model(cfg).save(run_dir / "model.keras")
    save_config(cfg, run_dir / "config.json")
    rng = np.random.default_rng(0)
    files = []
    for i, mode in enumerate(("RGB", "L", "RGB")):
        files.append(tmp_path / f"c{i}.png")
        pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(files[-1])
    export(run_dir, tmp_path / "medical_cnn")
    status, local, _ = _run(capsys, "predict", "--model", run_dir, *files)
    assert status == 0
    assert list(local[0]) == ["file", "probabilities", "probability", "label", "class_name"]
    with ServingStub({"medical_cnn": tmp_path / "medical_cnn"}) as stub:
        status, remote, _ = _run(capsys, "predict", "--server", stub.url, *files)
    assert status == 0
    _assert_same_lines(remote, local)


def test_decode_error_reason_strips_tensorflow_decoration():
    message = (
        "Graph execution error:\n\nDetected at node map/while/DecodeImage defined at (most "
        "recent call last):\n<stack traces unavailable>\nInput is empty.\n\t "
        "[[{{node map/while/DecodeImage}}]] [Op:__inference_signature_wrapper_11077]"
    )
    assert decode_error_reason(message) == "Input is empty."
    assert decode_error_reason("Unknown image file format.") == "Unknown image file format."
    assert decode_error_reason("[[{{node x}}]]") == "[[{{node x}}]]"
    assert decode_error_reason(None) == "TF Serving could not decode it"


def test_unreachable_server_exits_2_without_traceback(images, capsys):
    with socket.socket() as s:  # A port nothing listens on.
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    status, lines, err = _run(capsys, "predict", "--server", url, images[0][0])
    assert (status, lines) == (2, [])
    assert err.startswith(
        f"error: could not reach TF Serving at {url}/v1/models/medical_cnn/metadata "
        "after 4 attempts (["
    )
    assert "Is the server running" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--model", "run", "--server", "http://localhost:8501"],
            "error: give either --model RUN_DIR_OR_MODEL or --server URL, not both.",
        ),
        ([], "error: predict needs --model RUN_DIR_OR_MODEL (a local model) or --server URL"),
        (
            ["--server", "http://localhost:8501", "--explain", "cams"],
            "error: --explain needs the Keras model for Grad-CAM: use --model RUN_DIR",
        ),
        (
            ["--model", "run", "--model-version", "3"],
            "error: --model-name, --model-version and --model-label address a server: "
            "add --server URL.",
        ),
        (
            ["--model", "run", "--model-label", "canary"],
            "error: --model-name, --model-version and --model-label address a server: "
            "add --server URL.",
        ),
        (
            ["--server", "localhost:8501"],
            "error: the server must be a REST URL such as http://localhost:8501 or a gRPC "
            "address such as grpc://localhost:8500. Received: 'localhost:8501'",
        ),
    ],
)
def test_conflicting_predict_flags(capsys, argv, message):
    status, lines, err = _run(capsys, "predict", *argv, "x.png")
    assert (status, lines) == (2, [])
    assert err.strip().startswith(message)


def test_bad_model_version_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["predict", "--server", "http://localhost:8501", "--model-version", "-1", "x.png"])
    assert info.value.code == 2
    assert "expected an integer >= 0, got '-1'" in capsys.readouterr().err


def test_grpc_output_equals_rest_and_local_output(served, images, capsys):
    stub, run_dir, other_run = served
    good, mixed = images
    _, local, _ = _run(capsys, "predict", "--model", run_dir, *mixed)
    _, by_other_run, _ = _run(capsys, "predict", "--model", other_run, *good)
    _, rest, _ = _run(capsys, "predict", "--server", stub.url, *mixed)
    stub.store.labels["medical_cnn"] = {"stable": 1, "canary": 2}
    try:
        with GrpcServingStub(store=stub.store) as grpc_stub:
            status, remote, err = _run(capsys, "predict", "--server", grpc_stub.url, *mixed)
            assert status == 1
            assert remote == rest  # The very same lines as REST, errors included.
            _assert_same_lines(remote, local)
            assert "broken.jpg" in err
            methods = [m for m, *_ in grpc_stub.requests]
            assert methods == ["GetModelMetadata"] + ["Predict"] * (1 + len(good) + 1)

            argv = ["predict", "--server", grpc_stub.url]
            _, v1, _ = _run(capsys, *argv, "--model-version", 1, *good)
            _assert_same_lines(v1, by_other_run)
            _, stable, _ = _run(capsys, *argv, "--model-label", "stable", *good)
            _assert_same_lines(stable, by_other_run)
            assert grpc_stub.requests[-1] == ("Predict", "medical_cnn", "stable", "serving_default")
            _, canary, _ = _run(capsys, *argv, "--model-label", "canary", *good)
            _assert_same_lines(canary, [local[mixed.index(path)] for path in good])

            status, lines, err = _run(capsys, *argv, "--model-version", 7, *good)
            assert (status, lines) == (2, [])
            assert err.strip() == (
                f"error: version 7 of model 'medical_cnn' is not loaded on TF Serving at "
                f"{grpc_stub.url} (loaded: [1, 2]; server said: Servable not found for request: "
                f"Specific(medical_cnn, 7)). Address a loaded version, or load it with "
                f"model_version_policy in models.config."
            )
            status, _, err = _run(capsys, *argv, "--model-name", "chest_xray", good[0])
            assert status == 2
            assert err.startswith(
                f"error: model 'chest_xray' not found on TF Serving at {grpc_stub.url}"
            )
            status, _, err = _run(capsys, *argv, "--model-label", "beta", good[0])
            assert status == 2
            assert err.startswith(
                "error: model 'medical_cnn' has no version labelled 'beta' on TF Serving at "
                f"{grpc_stub.url}"
            )
        # The same label over REST.
        _, stable, _ = _run(
            capsys, "predict", "--server", stub.url, "--model-label", "stable", *good
        )
        _assert_same_lines(stable, by_other_run)
        assert ("POST", "/v1/models/medical_cnn/labels/stable:predict") in stub.requests
    finally:
        stub.store.labels.pop("medical_cnn")


def test_unreachable_grpc_server_exits_2_without_traceback(images, capsys):
    with socket.socket() as s:  # A port nothing listens on.
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"grpc://127.0.0.1:{port}"
    status, lines, err = _run(capsys, "predict", "--server", url, images[0][0])
    assert (status, lines) == (2, [])
    assert err.startswith(
        f"error: could not reach TF Serving at {url}/models/medical_cnn:GetModelMetadata "
        "after 4 attempts ("
    )
    assert "its gRPC port published" in err and "Traceback" not in err


def test_model_version_and_label_together_are_refused(capsys):
    argv = ["predict", "--server", "grpc://127.0.0.1:1", "--model-version", "1"]
    status, lines, err = _run(capsys, *argv, "--model-label", "stable", "x.png")
    assert (status, lines) == (2, [])
    assert err.strip() == "error: give either --model-version N or --model-label LABEL, not both."

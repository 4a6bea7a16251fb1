"""`medical-cnn` with bad inputs: one clear line on stderr, exit status 2, nothing left behind.

Every case here is something a new user can type; each asserts the exact
message (or its essential part), the exit status and the files written or not.
The data are tiny synthetic `.npz` files, the models untrained or trained for
one or two epochs on 32 images, and the only server is a socket on 127.0.0.1.
"""

import dataclasses
import inspect
import json
import re

import keras
import numpy as np
import pytest
from PIL import Image

from apps.common.config import save_config
from apps.common.errors import TrainingDivergedError
from apps.medical_cnn.cli import SERVER_TIMEOUT_S, main
from apps.medical_cnn.config import get_config
from apps.medical_cnn.model import build_model
from apps.medical_cnn.serving import predict_files_served
from apps.medical_cnn.train import train
from tests.backend_utils import NaNWeightsAtEpoch, call_bounded, silent_server


def _run(capsys, *argv):
    status = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return status, out, err


def _error(err):
    """The last stderr line, which must be the one `error: ...` line (no traceback)."""
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def _images(n, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def _npz(path, train_labels=None, val_labels=None, train_images=None):
    train_labels = np.arange(32) % 2 if train_labels is None else np.asarray(train_labels)
    val_labels = np.arange(8) % 2 if val_labels is None else np.asarray(val_labels)
    np.savez(
        path,
        train_images=_images(len(train_labels)) if train_images is None else train_images,
        train_labels=train_labels,
        val_images=_images(len(val_labels), seed=1),
        val_labels=val_labels,
    )
    return path


def _train_argv(data, run_dir, *extra, epochs=1):
    options = ["--preset", "tiny", "--epochs", epochs, "--run-dir", run_dir, "--quiet"]
    return ["train", "--dataset", "npz", "--data", data, *options, *extra]


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory):
    """A medical-cnn run directory holding an untrained tiny model (no training needed)."""
    run_dir = tmp_path_factory.mktemp("untrained") / "run"
    run_dir.mkdir()
    cfg = dataclasses.replace(
        get_config("tiny"),
        input_shape=(16, 16, 1),
        num_classes=2,
        class_names=("normal", "pneumonia"),
        pixel_mean=(128.0,),
        pixel_variance=(4000.0,),
    )
    build_model(cfg).save(run_dir / "model.keras")
    save_config(cfg, run_dir / "config.json", app="medical_cnn")
    return run_dir


@pytest.fixture(scope="module")
def translator_run(tmp_path_factory):
    """What `translator train` leaves, as far as medical-cnn can tell: its config keys and a
    two-input sequence model (`translator.keras` is the same model as a bare file)."""
    root = tmp_path_factory.mktemp("translator")
    run_dir = root / "run"
    run_dir.mkdir()
    source = keras.Input((5,), dtype="int32", name="source")
    target = keras.Input((5,), dtype="int32", name="target")
    merged = keras.layers.Concatenate()(
        [keras.layers.Embedding(10, 4)(source), keras.layers.Embedding(10, 4)(target)]
    )
    model = keras.Model([source, target], keras.layers.Dense(10)(merged))
    model.save(run_dir / "model.keras")
    model.save(root / "translator.keras")
    config = {"source_vocab_size": 10, "target_vocab_size": 10, "sequence_length": 5}
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(_images(1)[0]).save(path)
    return path


# -- training data ---------------------------------------------------------------------------


def test_nan_pixels_are_refused_before_training(tmp_path, capsys):
    images = _images(32).astype("float32")
    images[3, 2, :5] = np.nan
    images[7, 0, 0] = np.inf
    data = _npz(tmp_path / "nan.npz", train_images=images)
    run_dir = tmp_path / "run"
    status, out, err = _run(capsys, *_train_argv(data, run_dir))
    assert (status, out) == (2, "")
    assert _error(err) == (
        f"error: {data}: 'train_images' holds 6 non-finite pixel value(s) (NaN or infinity) "
        f"in 2 of its 32 images; every pixel must be a number in 0..255. Repair or drop those "
        f"images."
    )
    assert not run_dir.exists()  # Nothing written: no model.keras, threshold.json or config.json.


@pytest.mark.parametrize(
    "train_labels, val_labels, message",
    [
        (
            [0, 1, 7, 1] * 8,
            None,
            "labels must be 0..7 with training examples of every class (8 classes), but labels "
            "found in train: 0, 1, 7; classes with no training example: 2, 3, 4, 5, 6. "
            "Renumber the labels 0..K-1 without gaps (K = the number of classes).",
        ),
        (
            [0] * 32,
            None,
            "labels must be 0 and 1 with training examples of every class (2 classes), but "
            "train holds only class 0; classes with no training example: 1. Add training "
            "examples of the missing class(es).",
        ),
        (
            None,
            [1] * 8,
            "the validation split holds only class 1; it needs examples of both classes, "
            "because the best model, early stopping and the decision threshold are chosen on "
            "validation AUC. Add examples of class 0 to val.",
        ),
    ],
    ids=["label_7_in_binary_data", "one_class_in_train", "one_class_in_val"],
)
def test_labels_that_cannot_train_a_classifier(tmp_path, capsys, train_labels, val_labels, message):
    data = _npz(tmp_path / "labels.npz", train_labels, val_labels)
    run_dir = tmp_path / "run"
    status, out, err = _run(capsys, *_train_argv(data, run_dir))
    assert (status, out) == (2, "")
    assert _error(err) == f"error: {data}: {message}"
    assert not run_dir.exists()


def test_label_7_in_pneumoniamnist_names_the_classes(tmp_path, capsys):
    data = _npz(tmp_path / "p.npz", [0, 1, 7, 1] * 8)
    status, _, err = _run(capsys, "train", "--data", data, "--run-dir", tmp_path / "run")
    assert status == 2 and not (tmp_path / "run").exists()
    assert _error(err) == (
        f"error: {data}: 'train_labels' holds label 7 (8 images), but PneumoniaMNIST has 2 "
        f"classes, 0 (normal) and 1 (pneumonia), so this is not PneumoniaMNIST. Correct those "
        f"labels, or for a MedMNIST-style file with more classes use --dataset npz --data PATH."
    )


def test_one_class_pneumoniamnist_names_the_missing_class(tmp_path, capsys):
    data = _npz(tmp_path / "p.npz", [1] * 32)
    status, _, err = _run(capsys, "train", "--data", data, "--run-dir", tmp_path / "run")
    assert status == 2 and not (tmp_path / "run").exists()
    assert _error(err).endswith(
        "train holds only class 1 (pneumonia); classes with no training example: 0 (normal). "
        "Add training examples of the missing class(es)."
    )


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda p: p.write_text("hello\n"),
            "{p} is not an .npz (zip) archive: another kind of file, or a truncated or corrupt "
            "copy. MedMNIST-style files are written by numpy.savez(path, train_images=..., "
            "train_labels=..., val_images=..., val_labels=...).",
        ),
        (
            lambda p: p.write_bytes(b""),
            "{p} is empty (0 bytes), not an .npz archive; written by numpy.savez(path, "
            "train_images=..., train_labels=..., val_images=..., val_labels=...).",
        ),
        (
            lambda p: p.mkdir(),
            "--data {p} is a folder, not an .npz file; pass the file itself.",
        ),
        (
            lambda p: np.savez(p, x_train=_images(4), y_train=np.zeros(4)),
            "{p}: missing train_images, train_labels, val_images, val_labels for split(s) "
            "train, val. Keys found: x_train, y_train. Keys needed: train_images, train_labels, "
            "val_images, val_labels. MedMNIST-style files are written by numpy.savez(path, "
            "train_images=..., train_labels=..., val_images=..., val_labels=...).",
        ),
    ],
    ids=["text_file", "empty_file", "folder", "wrong_keys"],
)
def test_unreadable_training_files(tmp_path, capsys, make, message):
    path = tmp_path / "data.npz"
    make(path)
    status, out, err = _run(capsys, *_train_argv(path, tmp_path / "run"))
    assert (status, out) == (2, "")
    assert _error(err) == "error: " + message.format(p=path)
    assert "allow_pickle" not in err and "unsafe" not in err


# -- run directories and training that diverges ----------------------------------------------


@pytest.mark.parametrize("sub", ["", "sub"])
def test_run_dir_that_is_a_file(tmp_path, capsys, sub):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    run_dir = blocker / sub if sub else blocker
    status, _, err = _run(capsys, *_train_argv(_npz(tmp_path / "d.npz"), run_dir))
    assert status == 2
    assert _error(err) == (
        f"error: --run-dir {run_dir}: {blocker} is a file, not a folder; pass a new or existing "
        f"folder for the run."
    )
    assert blocker.read_text() == "a file"


def test_train_into_a_translator_run_is_refused(tmp_path, capsys, translator_run):
    before = sorted(p.name for p in translator_run.iterdir())
    status, _, err = _run(capsys, *_train_argv(_npz(tmp_path / "d.npz"), translator_run))
    assert status == 2
    assert _error(err) == (
        f"error: --run-dir {translator_run}: this is a translator run, not a medical-cnn run; "
        f"pass a run directory written by 'medical-cnn train' (or use 'translator' for this one)."
    )
    assert sorted(p.name for p in translator_run.iterdir()) == before


def test_diverged_training_raises_and_leaves_the_run_unfinished(tmp_path):
    cfg = dataclasses.replace(
        get_config("tiny"), dataset="npz", data_path=str(_npz(tmp_path / "d.npz")), epochs=2
    )
    run_dir = tmp_path / "run"
    with pytest.raises(
        TrainingDivergedError,
        match=r"training diverged: the loss became nan in epoch 1 .*left unfinished \(no "
        r"threshold.json, no metrics.json\)\. Lower the learning rate \(now 0.003, e.g. "
        r"--learning-rate 0.0003\) and train into a new --run-dir\.",
    ):
        train(cfg, run_dir, callbacks=[NaNWeightsAtEpoch()], verbose=0, tensorboard=False)
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "threshold.json").exists()
    # Running the same command again finds the divergence in the history and still
    # does not finish the run.
    with pytest.raises(TrainingDivergedError, match="the loss became nan in epoch 1"):
        train(cfg, run_dir, verbose=0, tensorboard=False)
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "threshold.json").exists()


def test_a_run_that_diverged_after_a_good_epoch_is_not_finished_by_a_rerun(tmp_path):
    # Epoch 1 trains and saves a good model.keras, epoch 2 diverges: the run dir then
    # holds a history and a sound model but no backup, which a rerun could finalise.
    cfg = dataclasses.replace(
        get_config("tiny"), dataset="npz", data_path=str(_npz(tmp_path / "d.npz")), epochs=3
    )
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match="the loss became nan in epoch 2"):
        train(cfg, run_dir, callbacks=[NaNWeightsAtEpoch(epoch=1)], verbose=0, tensorboard=False)
    assert (run_dir / "model.keras").is_file() and not (run_dir / "backup").exists()
    with pytest.raises(TrainingDivergedError, match="the loss became nan in epoch 2"):
        train(cfg, run_dir, verbose=0, tensorboard=False)
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "threshold.json").exists()


def test_huge_learning_rate_exits_2(tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = _train_argv(_npz(tmp_path / "d.npz"), run_dir, "--learning-rate", "1e30", epochs=3)
    status, out, err = _run(capsys, *argv)
    # Keras's TerminateOnNaN prints its own line; no summary follows it.
    assert (status, out) == (2, "Batch 0: Invalid loss, terminating training\n")
    assert re.fullmatch(
        r"error: training diverged: the loss became nan in epoch \d .*Lower the learning rate "
        r"\(now 1e\+30, e\.g\. --learning-rate 1e\+29\) and train into a new --run-dir\.",
        _error(err),
    )
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "threshold.json").exists()


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--learning-rate", "0", "argument --learning-rate: expected a positive number, got '0'"),
        (
            "--learning-rate",
            "nan",
            "argument --learning-rate: expected a positive number, got 'nan'",
        ),
        (
            "--max-train-examples",
            "0",
            "argument --max-train-examples: expected a positive integer, got '0'",
        ),
    ],
)
def test_bad_training_numbers_are_usage_errors(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", str(tmp_path / "d.npz"), flag, value])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_seed_out_of_range(tmp_path, capsys):
    argv = _train_argv(_npz(tmp_path / "d.npz"), tmp_path / "r", "--seed", "-1")
    status, _, err = _run(capsys, *argv)
    assert status == 2
    assert _error(err) == "error: seed must be an integer in 0..2**32-1. Received: seed=-1"


# -- predict, export, evaluate with the wrong model or output path ---------------------------


@pytest.mark.parametrize("command", ["predict", "export", "evaluate"])
def test_translator_run_is_named_before_loading(tmp_path, capsys, translator_run, png, command):
    base = tmp_path / "saved_models" / "medical_cnn"
    extra = {"predict": [png], "export": ["--base", base], "evaluate": []}[command]
    status, out, err = _run(capsys, command, "--model", translator_run, *extra)
    assert (status, out) == (2, "")
    assert _error(err) == (
        f"error: --model {translator_run}: this is a translator run, not a medical-cnn run; "
        f"pass a run directory written by 'medical-cnn train' (or use 'translator' for this one)."
    )
    assert not base.parent.exists()  # Export created no folder.


@pytest.mark.parametrize("command", ["predict", "export"])
def test_bare_keras_file_of_another_kind(tmp_path, capsys, translator_run, png, command):
    other = translator_run.parent / "translator.keras"
    base = tmp_path / "base"
    extra = [png] if command == "predict" else ["--base", base]
    status, _, err = _run(capsys, command, "--model", other, *extra)
    assert status == 2
    assert _error(err) == (
        f"error: {other} is not a medical-cnn image classifier: it takes 2 inputs; its output "
        f"has shape (None, 5, 10), not (batch, classes). Pass a run directory written by "
        f"'medical-cnn train' (or its model.keras)."
    )
    assert not base.exists()


def test_export_base_that_is_a_file(tmp_path, capsys, untrained_run):
    blocker = tmp_path / "sm"
    blocker.write_text("x")
    status, _, err = _run(capsys, "export", "--model", untrained_run, "--base", blocker / "m")
    assert status == 2
    assert _error(err) == (
        f"error: --base {blocker / 'm'}: {blocker} is a file, not a folder; pass a new or "
        f"existing folder for the exported versions."
    )


def test_failed_export_leaves_no_base_folder(tmp_path, monkeypatch, untrained_run):
    from apps.medical_cnn import export as export_lib

    def broken(run, path):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_lib, "write_saved_model", broken)
    base = tmp_path / "new" / "saved_models" / "medical_cnn"
    with pytest.raises(RuntimeError, match="disk full"):
        export_lib.export(untrained_run, base)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sub", ["", "sub"])
def test_explain_that_is_a_file_is_refused_before_loading(tmp_path, capsys, png, sub):
    blocker = tmp_path / "cams"
    blocker.write_text("x")
    explain = blocker / sub if sub else blocker
    # The model does not even exist: --explain is checked first.
    status, out, err = _run(
        capsys, "predict", "--model", tmp_path / "nowhere", "--explain", explain, png
    )
    assert (status, out) == (2, "")
    assert _error(err) == (
        f"error: --explain {explain}: {blocker} is a file, not a folder; pass a new or existing "
        f"folder for the Grad-CAM overlays."
    )


def test_explain_needs_a_conv_block(tmp_path, capsys, png):
    inputs = keras.Input((16, 16, 1))
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inputs))
    keras.Model(inputs, outputs).save(tmp_path / "flat.keras")
    status, out, err = _run(
        capsys, "predict", "--model", tmp_path / "flat.keras", "--explain", tmp_path / "c", png
    )
    assert (status, out) == (2, "")
    assert _error(err) == (
        f"error: --explain: {tmp_path / 'flat.keras'} has no ConvBlock layer for Grad-CAM to "
        f"explain; use a model written by 'medical-cnn train', or leave out --explain."
    )
    assert not (tmp_path / "c").exists()


def test_folder_and_text_given_as_images(tmp_path, capsys, untrained_run, png):
    folder = tmp_path / "scans.png"
    folder.mkdir()
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    status, out, err = _run(capsys, "predict", "--model", untrained_run, png, folder, text)
    assert status == 1  # The good file is still predicted.
    records = [json.loads(line) for line in out.strip().splitlines()]
    assert records[0]["file"] == str(png) and "error" not in records[0]
    assert 0.0 <= records[0]["probability"] <= 1.0
    assert records[1] == {
        "file": str(folder),
        "error": f"{folder} is a folder, not an image file; pass the image files in it.",
    }
    assert records[2]["error"] == (
        f"{text} is not a readable image (PNG, JPEG, BMP or GIF expected): its content is not "
        f"in an image format"
    )
    assert f"error: {folder} is a folder" in err


def test_evaluate_out_paths(tmp_path, capsys, untrained_run):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    status, _, err = _run(capsys, "evaluate", "--model", untrained_run, "--out", blocker / "r.json")
    assert status == 2
    assert _error(err) == (
        f"error: --out {blocker / 'r.json'}: {blocker} is a file, not a folder; pass a report "
        f"path in a new or existing folder."
    )
    status, _, err = _run(capsys, "evaluate", "--model", untrained_run, "--out", tmp_path)
    assert status == 2
    assert _error(err) == (
        f"error: --out {tmp_path} is a folder; pass a file name for the JSON report, e.g. "
        f"{tmp_path / 'evaluation_val.json'}."
    )


def test_evaluate_data_of_another_shape(tmp_path, capsys, untrained_run):
    data = tmp_path / "d.npz"
    np.savez(data, val_images=_images(4, size=20), val_labels=np.arange(4) % 2)
    status, _, err = _run(capsys, "evaluate", "--model", untrained_run, "--data", data)
    assert status == 2
    assert _error(err) == (
        f"error: {data}: 'val' images have shape (20, 20, 1) but the model takes (16, 16, 1)."
    )


# -- predict --server --timeout --------------------------------------------------------------


def test_predict_server_timeout(capsys, png):
    with silent_server() as url:
        status, seconds = call_bounded(
            lambda: main(["predict", "--server", url, "--timeout", "1", str(png)])
        )
    out, err = capsys.readouterr()
    assert (status, out) == (2, "")
    assert _error(err) == (
        f"error: TF Serving at {url}/v1/models/medical_cnn/metadata did not answer within "
        "1 s (--timeout); the server may be overloaded or the request too large: raise "
        "--timeout SECONDS, or check the server."
    )
    assert seconds < 10  # gave up after its 1 s timeout (and a retry or two), not after 30


def test_timeout_flag_help_and_misuse(capsys, png):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert f"(default: {SERVER_TIMEOUT_S:g})" in capsys.readouterr().out
    # The CLI's stated default is the serving client's own.
    default = inspect.signature(predict_files_served).parameters["timeout"].default
    assert default == SERVER_TIMEOUT_S
    status, _, err = _run(capsys, "predict", "--model", "run", "--timeout", "5", png)
    assert status == 2
    assert _error(err) == "error: --timeout is for a server: add --server URL."
    with pytest.raises(SystemExit) as info:
        main(["predict", "--server", "http://127.0.0.1:1", "--timeout", "-1", str(png)])
    assert info.value.code == 2
    assert "argument --timeout: expected a positive number, got '-1'" in capsys.readouterr().err

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from apps.medical_cnn.cli import main


def _run(capsys, *argv):
    status = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return status, out, err


def _lambda_model(path):
    inputs = keras.Input((28, 28, 1))
    outputs = keras.layers.Dense(1)(keras.layers.Lambda(lambda t: t / 255.0)(inputs))
    keras.Model(inputs, outputs).save(path)
    return path


@pytest.mark.parametrize(
    "make_argv, message",
    [
        (lambda t: ["train", "--data", t / "missing.npz"], "error: data file not found: "),
        (
            lambda t: ["train", "--data", t / "x.npz", "--dataset", "tfds:malaria"],
            "error: give either --data PATH or --dataset tfds:NAME",
        ),
        (lambda t: ["evaluate", "--model", t / "nowhere"], "error: model not found: "),
        (lambda t: ["evaluate", "--model", t], "holds no model.keras"),
        (lambda t: ["export", "--model", t / "corrupt.keras"], "not a valid .keras file"),
        (
            lambda t: ["predict", "--model", _lambda_model(t / "lambda.keras"), t / "x.png"],
            "refused to load .*lambda.keras: it carries Python code",
        ),
    ],
)
def test_bad_input_exits_2_with_message(tmp_path, capsys, make_argv, message):
    (tmp_path / "x.npz").write_bytes(b"")
    (tmp_path / "corrupt.keras").write_bytes(b"PK\x03\x04 not really")
    status, _, err = _run(capsys, *make_argv(tmp_path))
    assert status == 2
    assert err.strip().splitlines()[-1].startswith("error: ")
    assert re.search(message, err)
    assert "Traceback" not in err


def test_malformed_training_data_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_images=np.zeros((3, 8, 8), np.uint8), train_labels=np.zeros(3))
    status, _, err = _run(
        capsys, "train", "--dataset", "npz", "--data", bad, "--run-dir", tmp_path / "r"
    )
    assert status == 2
    assert "bad.npz: missing val_images, val_labels" in err
    assert "Keys found: train_images, train_labels" in err


def test_usage_errors_exit_2(capsys):
    for argv in (["train", "--preset", "huge"], ["evaluate"], ["bogus"], []):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_evaluate_on_file_with_only_the_test_split(tiny_run, tmp_path, capsys, pneumoniamnist_npz):
    run_dir, _ = tiny_run
    real = np.load(pneumoniamnist_npz)
    only_test = tmp_path / "only_test.npz"
    np.savez(only_test, test_images=real["val_images"][:80], test_labels=real["val_labels"][:80])
    out_file = tmp_path / "eval.json"
    status, out, _ = _run(
        capsys,
        "evaluate",
        "--model",
        run_dir,
        "--data",
        only_test,
        "--split",
        "test",
        "--out",
        out_file,
    )
    assert status == 0
    report = json.loads(out)
    assert report == {**json.loads(out_file.read_text()), "written_to": str(out_file)}
    assert report["split"] == "test" and report["num_examples"] == 80
    threshold = json.loads((run_dir / "threshold.json").read_text())["threshold"]
    assert report["at_threshold"]["threshold"] == pytest.approx(threshold)
    for key in ("accuracy", "sensitivity", "specificity", "precision", "f1", "confusion_matrix"):
        assert key in report["at_threshold"] and key in report["at_0.5"]
    assert sum(map(sum, report["at_0.5"]["confusion_matrix"])) == 80
    assert (tmp_path / "eval_roc.png").is_file() and (
        tmp_path / "eval_confusion_matrix.png"
    ).is_file()
    # The run's own data has no test split: the error names what is there.
    status, _, err = _run(capsys, "evaluate", "--model", run_dir, "--split", "test")
    assert status == 2 and "missing test_images, test_labels" in err


def test_predict_reports_bad_file_and_exits_1(tiny_run, tmp_path, capsys, pneumoniamnist_npz):
    run_dir, _ = tiny_run
    good = tmp_path / "good.png"
    Image.fromarray(np.load(pneumoniamnist_npz)["val_images"][0]).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 broken jpeg")
    status, out, err = _run(capsys, "predict", "--model", run_dir, good, bad)
    assert status == 1
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert lines[0]["file"] == str(good) and 0 <= lines[0]["probability"] <= 1
    assert lines[1]["file"] == str(bad) and "not a readable image" in lines[1]["error"]
    assert "bad.jpg" in err


def test_train_and_export_commands(tmp_path, capsys, pneumoniamnist_npz):
    run_dir = tmp_path / "run"
    status, out, _ = _run(
        capsys,
        "train",
        "--preset",
        "tiny",
        "--data",
        pneumoniamnist_npz,
        "--epochs",
        "1",
        "--max-train-examples",
        "300",
        "--run-dir",
        run_dir,
        "--seed",
        "3",
        "--quiet",
    )
    assert status == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["run_dir"] == str(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["epochs"], config["seed"], config["max_train_examples"]) == (1, 3, 300)
    # config.json reproduces the run: which app, which data, which strategy.
    assert (config["app"], config["dataset"], config["distribute"]) == (
        "medical_cnn",
        "pneumoniamnist",
        "none",
    )
    assert Path(config["data_path"]).resolve() == Path(pneumoniamnist_npz).resolve()
    status, out, _ = _run(capsys, "export", "--model", run_dir, "--base", tmp_path / "sm")
    assert status == 0
    assert json.loads(out) == {"export": str(tmp_path / "sm" / "1"), "version": 1}
    assert (tmp_path / "sm" / "1" / "saved_model.pb").is_file()


def test_module_entry_point(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "apps.medical_cnn", "evaluate", "--model", "nowhere.keras"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: model not found: nowhere.keras (expected a run directory or a .keras file)"
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tta"], "tta averages the fold models over shifted views; it needs folds >= 2"),
        (["--target-sensitivity", "0.9"], "--target-sensitivity needs --threshold-method"),
        (
            ["--folds", "3", "--threshold-method", "sensitivity", "--target-sensitivity", "2"],
            r"target_sensitivity must be in \(0, 1\]",
        ),
    ],
)
def test_bad_cross_validation_flags_exit_2(tmp_path, capsys, pneumoniamnist_npz, extra, message):
    argv = ["train", "--preset", "tiny", "--data", pneumoniamnist_npz, "--run-dir", tmp_path / "r"]
    status, _, err = _run(capsys, *argv, *extra)
    assert status == 2
    assert re.search(message, err.strip().splitlines()[-1])
    assert not (tmp_path / "r").exists()


def test_folds_too_many_for_a_class_exit_2(tmp_path, capsys):
    small = tmp_path / "small.npz"
    rng = np.random.default_rng(0)
    np.savez(
        small,
        train_images=rng.integers(0, 255, (12, 28, 28), dtype=np.uint8),
        train_labels=np.array([0, 0, 1] * 4),
        val_images=rng.integers(0, 255, (4, 28, 28), dtype=np.uint8),
        val_labels=np.array([0, 1, 1, 1]),
    )
    status, _, err = _run(
        capsys,
        "train",
        "--preset",
        "tiny",
        "--data",
        small,
        "--folds",
        "8",
        "--run-dir",
        tmp_path / "r",
    )
    assert status == 2
    assert "class 1 has 7 example(s), fewer than the 8 folds asked for" in err
    assert not (tmp_path / "r" / "folds").exists()


def test_train_folds_command_reports_out_of_fold_figures(tmp_path, capsys, pneumoniamnist_npz):
    run_dir = tmp_path / "cv"
    status, out, _ = _run(
        capsys,
        "train",
        "--preset",
        "tiny",
        "--data",
        pneumoniamnist_npz,
        "--epochs",
        "1",
        "--max-train-examples",
        "300",
        "--folds",
        "2",
        "--threshold-method",
        "sensitivity",
        "--target-sensitivity",
        "0.9",
        "--run-dir",
        run_dir,
        "--quiet",
    )
    assert status == 0
    summary = json.loads(out.strip().splitlines()[-1])["out_of_fold"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert summary["auc"] == metrics["auc"] and summary["ece"] == metrics["ece"]
    assert summary["sensitivity"] >= 0.9
    assert json.loads((run_dir / "threshold.json").read_text())["method"] == "sensitivity>=0.9"
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["folds"], config["tta"], config["threshold_method"]) == (2, False, "sensitivity")

import argparse

import pytest

from apps.common.cli import CliError, add_common_train_args, default_run_dir, run_cli
from apps.common.errors import DataError, DownloadError, MissingFileError, RunDirError
from apps.common.model_io import ModelLoadError
from apps.common.serving import ServerUnreachableError


@pytest.mark.parametrize(
    "exc, text",
    [
        (CliError("bad flag value"), "error: bad flag value"),
        (ModelLoadError("model not found: x.keras"), "error: model not found: x.keras"),
        (MissingFileError("data file not found: /nope/data.npz"), "/nope/data.npz"),
        (DataError("x.npz has no 'train_images'"), "error: x.npz has no 'train_images'"),
        (RunDirError("runs/x is a file"), "error: runs/x is a file"),
        (DownloadError("could not download"), "error: could not download"),
        (ServerUnreachableError("no server", attempts=3), "error: no server"),
    ],
)
def test_user_errors_exit_2_without_traceback(exc, text, capsys):
    def main(argv):
        raise exc

    assert run_cli(main, []) == 2
    err = capsys.readouterr().err
    assert text in err
    assert err.startswith("error: ")
    assert "Traceback" not in err


def test_status_passthrough_and_bugs_propagate():
    assert run_cli(lambda argv: None, []) == 0
    assert run_cli(lambda argv: 3, []) == 3

    def buggy(argv):
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        run_cli(buggy, [])


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("Invalid dtype: float99"),  # e.g. from inside Keras: a bug, not the user
        FileNotFoundError(2, "No such file", "/tmp/internal"),
        ConnectionError("socket closed"),
    ],
)
def test_errors_outside_the_user_error_family_keep_their_traceback(exc):
    # Only `UserError` (and `ServingError`) read as the user's mistake; anything
    # else propagates, so Python prints the traceback and exits with status 1.
    def main(argv):
        raise exc

    with pytest.raises(type(exc)):
        run_cli(main, [])


def test_common_train_args():
    parser = add_common_train_args(argparse.ArgumentParser(), presets=["tiny", "default"])
    args = parser.parse_args([])
    assert (args.data, args.preset, args.epochs, args.run_dir, args.seed) == (
        None,
        "default",
        None,
        None,
        None,
    )
    args = parser.parse_args(
        ["--preset", "tiny", "--epochs", "2", "--seed", "7", "--data", "d.npz"]
    )
    assert (args.preset, args.epochs, args.seed, str(args.data)) == ("tiny", 2, 7, "d.npz")
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--epochs", "0"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["--preset", "huge"])


def test_default_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("APPS_RUNS_DIR", raising=False)
    rel = default_run_dir("medical_cnn")
    assert rel.parts[:2] == ("runs", "medical_cnn")
    first = default_run_dir("app", root=tmp_path)
    first.mkdir(parents=True)
    second = default_run_dir("app", root=tmp_path)
    assert second != first and second.parent == tmp_path / "app"
    assert not second.exists()

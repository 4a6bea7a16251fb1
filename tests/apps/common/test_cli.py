import argparse

import pytest

from apps.common.cli import CliError, add_common_train_args, default_run_dir, run_cli
from apps.common.model_io import ModelLoadError


@pytest.mark.parametrize(
    "exc, text",
    [
        (CliError("bad flag value"), "error: bad flag value"),
        (ModelLoadError("model not found: x.keras"), "error: model not found: x.keras"),
        (FileNotFoundError(2, "No such file", "/nope/data.npz"), "/nope/data.npz"),
        (ValueError("Unknown preset 'huge'"), "error: Unknown preset 'huge'"),
        (ConnectionError("could not download"), "error: could not download"),
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

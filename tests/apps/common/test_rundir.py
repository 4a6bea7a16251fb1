"""`apps.common.rundir`: the run directory's layout, its app, its state and its checks."""

import dataclasses
import json
import re

import pytest

from apps.common.config import save_config
from apps.common.errors import RunDirError, UserError
from apps.common.rundir import (
    BACKUP_DIR,
    CONFIG_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_FILE,
    app_of_run,
    check_folder_path,
    check_run_app,
    check_run_dir_path,
    check_same_config,
    default_run_dir,
    run_state,
)


@dataclasses.dataclass
class Cfg:
    epochs: int = 3
    filters: tuple[int, ...] = (8, 16)
    rate: float = 0.1


def test_run_state_follows_the_files_training_leaves(tmp_path):
    assert run_state(tmp_path / "new") == "fresh"
    (tmp_path / CONFIG_FILE).write_text("{}")
    assert run_state(tmp_path) == "fresh"
    (tmp_path / BACKUP_DIR).mkdir()
    (tmp_path / HISTORY_FILE).write_text("epoch,loss\n0,1.0\n")
    (tmp_path / MODEL_FILE).write_bytes(b"zip")
    assert run_state(tmp_path) == "resume"  # a backup wins: training was interrupted
    (tmp_path / BACKUP_DIR).rmdir()
    assert run_state(tmp_path) == "finalize"  # trained, the final figures not written yet
    (tmp_path / METRICS_FILE).write_text("{}")
    assert run_state(tmp_path) == "done"


def test_check_same_config_names_the_fields_that_differ(tmp_path):
    check_same_config(tmp_path, Cfg(), "medical_cnn")  # nothing saved yet: fine
    save_config(Cfg(), tmp_path / CONFIG_FILE, app="medical_cnn")
    check_same_config(tmp_path, Cfg(), "medical_cnn")  # tuples and lists compare alike
    with pytest.raises(RunDirError, match=r"differs in: epochs, rate\); use the same options"):
        check_same_config(tmp_path, Cfg(epochs=4, rate=0.2), "medical_cnn")
    with pytest.raises(RunDirError, match="written by the 'medical_cnn' app, not 'translator'"):
        check_same_config(tmp_path, Cfg(), "translator")


def test_the_app_of_a_run_comes_from_its_config(tmp_path):
    medical, translator, old, unknown = (tmp_path / n for n in ("m", "t", "old", "unknown"))
    save_config(Cfg(), medical / CONFIG_FILE, app="medical_cnn")
    save_config(Cfg(), translator / CONFIG_FILE, app="translator")
    old.mkdir()  # written before the "app" key: recognised by keys only the translator has
    (old / CONFIG_FILE).write_text(
        json.dumps({"source_vocab_size": 10, "target_vocab_size": 12, "sequence_length": 8})
    )
    unknown.mkdir()
    assert [app_of_run(d) for d in (medical, translator, old, unknown)] == [
        "medical_cnn",
        "translator",
        "translator",
        None,
    ]
    check_run_app(medical, "medical_cnn")
    check_run_app(unknown, "medical_cnn")  # undecidable: the model file is checked later
    message = (
        f"--model {old}: this is a translator run, not a medical-cnn run; pass a run directory "
        "written by 'medical-cnn train' (or use 'translator' for this one)."
    )
    with pytest.raises(RunDirError, match=re.escape(message)):
        check_run_app(old, "medical_cnn")


def test_output_folders_under_a_file_are_refused_before_anything_is_made(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    for path in (file, file / "sub" / "deeper"):
        with pytest.raises(RunDirError, match=f"{re.escape(str(file))} is a file, not a folder"):
            check_run_dir_path(path)
        with pytest.raises(UserError, match="pass a new or existing folder for the overlays"):
            check_folder_path(path, "--explain", "the overlays")
    assert check_run_dir_path(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()


def test_default_run_dirs_are_new_and_distinct(tmp_path, monkeypatch):
    monkeypatch.setenv("APPS_RUNS_DIR", str(tmp_path))
    first = default_run_dir("medical_cnn")
    assert first.parent == tmp_path / "medical_cnn" and not first.exists()
    first.mkdir(parents=True)
    second = default_run_dir("medical_cnn")
    assert second != first and not second.exists()

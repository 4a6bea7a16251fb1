"""The `translator` command: input forms, awkward input (empty, over-long, not English), errors."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apps.translator.cli import main
from apps.translator.translate import Translator

PROJECT_ROOT = Path(__file__).resolve().parents[3]
LONG = " ".join(["word"] * 45) + "."


@pytest.fixture(scope="module")
def translator(tiny_run):
    return Translator.from_run_dir(tiny_run[0])


def _run(argv, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_translate_arguments_print_one_line_each(tiny_run, translator, capsys):
    status, out, err = _run(["translate", "--model", tiny_run[0], "Where is Tom?", "Go."], capsys)
    assert status == 0
    assert out.splitlines() == translator.translate(["Where is Tom?", "Go."])
    assert err == ""


def test_stdin_keeps_empty_lines_empty(tiny_run, translator, capsys, monkeypatch):
    stdin = "Where is Tom?\n\n   \nI am happy.\n"
    status, out, _ = _run(["translate", "--model", tiny_run[0]], capsys, stdin, monkeypatch)
    lines = out.splitlines()
    assert status == 0 and len(lines) == 4
    assert lines[1] == "" and lines[2] == ""
    assert lines[0] and lines[3]
    assert lines == translator.translate(["Where is Tom?", "", "", "I am happy."])


def test_over_long_sentence_is_truncated_with_a_warning(tiny_run, translator, capsys):
    status, out, err = _run(["translate", "--model", tiny_run[0], "Go.", LONG], capsys)
    assert status == 0
    assert out.splitlines() == translator.translate(["Go.", LONG])
    assert "warning: line 2 has 46 tokens, more than the model's limit of 10" in err
    assert "line 1" not in err
    # Truncation means: the same as translating the first 10 tokens.
    assert out.splitlines()[1] == translator.translate([" ".join(["word"] * 10)])[0]


def test_non_english_input_is_translated_with_a_warning(tiny_run, capsys):
    status, out, err = _run(["translate", "--model", tiny_run[0], "Где находится вокзал?"], capsys)
    assert status == 0
    assert len(out.splitlines()) == 1 and out.strip()
    assert "warning: line 1: 3 of 4 tokens are not in the English vocabulary" in err


def test_input_and_output_files(tiny_run, translator, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text("Where is Tom?\n\nGo.\n", encoding="utf-8")
    target = tmp_path / "out" / "es.txt"
    status, out, _ = _run(
        ["translate", "--model", tiny_run[0], "--input", source, "--output", target], capsys
    )
    assert status == 0 and out == ""
    expected = translator.translate(["Where is Tom?", "", "Go."])
    assert target.read_text(encoding="utf-8") == "\n".join(expected) + "\n"


def test_attention_plots_are_pngs_one_per_non_empty_line(tiny_run, tmp_path, capsys):
    plots = tmp_path / "plots"
    status, _, err = _run(
        [
            "translate",
            "--model",
            tiny_run[0],
            "--attention-plot",
            plots,
            "Where is Tom?",
            "",
            "Go.",
        ],
        capsys,
    )
    assert status == 0
    files = sorted(p.name for p in plots.iterdir())
    assert files == ["line_0001.png", "line_0003.png"]
    assert (plots / files[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote 2 attention plot(s)" in err


def test_cross_attention_weights_are_distributions_over_real_source_tokens(translator):
    source, output, weights = translator.cross_attention("Where is Tom?")
    assert source == ["Where", "is", "Tom", "?"]
    assert weights.shape == (len(output), len(source))
    assert (weights >= 0).all()
    assert abs(weights.sum(axis=1) - 1).max() < 1e-5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["translate", "--model", "{missing}", "Hi."], "error: model not found"),
        (["translate", "Hi."], "error: pass exactly one of --model"),
        (["translate", "--model", "{run}", "--input", "{missing}", "Hi."], "not both"),
        (["translate", "--model", "{run}", "--input", "{missing}"], "input file not found"),
        (["evaluate", "--model", "{run}", "--pairs", "{missing}"], "pairs file not found"),
        (["export", "--model", "{missing}"], "error: model not found"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, message, tiny_run, tmp_path, capsys):
    argv = [a.format(missing=tmp_path / "missing", run=tiny_run[0]) for a in argv]
    status, out, err = _run(argv, capsys)
    assert status == 2
    assert message in err and "Traceback" not in err
    assert out == ""


def test_evaluate_pairs_file_writes_json(tiny_run, tmp_path, capsys, spa_splits):
    pairs = tmp_path / "withheld.tsv"
    pairs.write_text(
        "".join(f"{p.english}\t{p.spanish}\n" for p in spa_splits.test[:60]), encoding="utf-8"
    )
    output = tmp_path / "eval.json"
    status, out, _ = _run(
        ["evaluate", "--model", tiny_run[0], "--pairs", pairs, "--output", output], capsys
    )
    assert status == 0
    summary = json.loads(out)
    saved = json.loads(output.read_text(encoding="utf-8"))
    assert summary["bleu"] == saved["bleu"] and saved["split"] == "withheld"
    assert saved["num_pairs"] == 60 and saved["num_sources"] < 60  # Grouped references.
    assert len(saved["samples"]) == 20
    assert "13a" in saved["bleu_signature"] and "case:mixed" in saved["bleu_signature"]


def test_export_command_prints_the_version_folder(tiny_run, tmp_path, capsys):
    status, out, _ = _run(["export", "--model", tiny_run[0], "--base", tmp_path / "tr"], capsys)
    assert status == 0 and Path(out.strip()) == tmp_path / "tr" / "1"


def test_train_command_writes_a_run_directory(spa_eng_zip, tmp_path, capsys):
    run_dir = tmp_path / "run"
    status, out, err = _run(
        [
            "train",
            "--data",
            spa_eng_zip,
            "--preset",
            "tiny",
            "--epochs",
            "1",
            "--max-train-pairs",
            "300",
            "--run-dir",
            run_dir,
            "--seed",
            "3",
        ],
        capsys,
    )
    assert status == 0
    metrics = json.loads(out[out.rindex("\n{") :])  # After the Keras progress bar.
    assert metrics["epochs_run"] == 1 and metrics["train_pairs"] == 300
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 3
    assert f"run directory: {run_dir}" in err
    # 300 pairs hold fewer words than the tiny preset's 300-entry caps: the model
    # is sized to the vocabularies actually built, and translates.
    translator = Translator.from_run_dir(run_dir)
    assert translator.source_vocab.size < 300
    assert translator.layers.target_vocab_size == translator.target_vocab.size
    assert len(translator.translate(["Go.", "Where is Tom?"])) == 2


def test_python_dash_m_entry_point_reads_stdin(tiny_run, translator):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "apps.translator", "translate", "--model", str(tiny_run[0])],
        input="Go.\n\nWhere is Tom?\n",
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == translator.translate(["Go.", "", "Where is Tom?"])


def test_translate_through_a_serving_server_prints_the_same(tiny_run, translator, tmp_path, capsys):
    from apps.translator.export import export
    from tests.serving_stub import ServingStub

    base = tmp_path / "translator"
    export(tiny_run[0], base=base)
    sentences = ["Where is Tom?", "", LONG]
    with ServingStub({"translator": base}) as stub:
        status, out, err = _run(["translate", "--server", stub.url, *sentences], capsys)
        assert status == 0, err
        assert out.splitlines() == translator.translate(sentences)
        assert "warning: line 3 has 46 tokens" in err
        status, _, err = _run(
            ["translate", "--server", stub.url, "--model-name", "nope", "Hi."], capsys
        )
    assert status == 2 and err.startswith("error: ") and "nope" in err


def test_corrupt_model_file_is_a_clear_error(tiny_run, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_run[0], broken)
    data = (broken / "model.keras").read_bytes()
    (broken / "model.keras").write_bytes(data[: len(data) // 2])  # Truncated.
    status, out, err = _run(["translate", "--model", broken, "Hi."], capsys)
    assert status == 2 and out == ""
    assert "error: " in err and "model.keras" in err and "Traceback" not in err

"""The `translator` command: input forms, awkward input (empty, over-long, not English), errors."""

import inspect
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apps.translator.cli import main
from apps.translator.config import SERVING_TIMEOUT
from apps.translator.serving import ServedTranslator
from apps.translator.translate import Translator
from tests.backend_utils import call_bounded, silent_server

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


def test_cross_attention_of_each_head_averages_to_the_mean(translator):
    assert translator.num_heads == 2  # The `tiny` preset.
    source, output, mean = translator.cross_attention("Where is Tom?")
    heads = [translator.cross_attention("Where is Tom?", head=h) for h in range(2)]
    assert all(h[:2] == (source, output) for h in heads)
    assert abs(heads[0][2].sum(axis=1) - 1).max() < 1e-5  # Each head's rows: distributions.
    assert abs((heads[0][2] + heads[1][2]) / 2 - mean).max() < 1e-6
    assert abs(heads[0][2] - heads[1][2]).max() > 1e-3  # The heads differ.
    for bad in (2, -1, True, 0.5):
        with pytest.raises(
            ValueError, match=rf"head must be None .* 0\.\.1\. Received: head={bad}"
        ):
            translator.cross_attention("Where is Tom?", head=bad)


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
    from tests.serving_stub import GrpcServingStub, ServingStub

    base = tmp_path / "translator"
    export(tiny_run[0], base=base)
    sentences = ["Where is Tom?", "", LONG]
    expected = translator.translate(sentences)
    with (
        ServingStub({"translator": base}, labels={"translator": {"stable": 1}}) as stub,
        GrpcServingStub(store=stub.store) as grpc_stub,
    ):
        for url in (stub.url, grpc_stub.url):  # REST, then gRPC: the same lines.
            status, out, err = _run(["translate", "--server", url, *sentences], capsys)
            assert status == 0, err
            assert out.splitlines() == expected
            assert "warning: line 3 has 46 tokens" in err
            status, out, err = _run(
                ["translate", "--server", url, "--model-label", "stable", *sentences], capsys
            )
            assert (status, out.splitlines()) == (0, expected), err
            status, _, err = _run(
                ["translate", "--server", url, "--model-name", "nope", "Hi."], capsys
            )
            assert status == 2 and err.startswith("error: model 'nope' not found")
            status, _, err = _run(
                ["translate", "--server", url, "--model-label", "canary", "Hi."], capsys
            )
            assert status == 2
            assert err.startswith("error: model 'translator' has no version labelled 'canary'")
    assert ("Predict", "translator", "stable", "serving_default") in grpc_stub.requests
    assert ("Predict", "translator", None, "source_stats") in grpc_stub.requests


def test_corrupt_model_file_is_a_clear_error(tiny_run, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_run[0], broken)
    data = (broken / "model.keras").read_bytes()
    (broken / "model.keras").write_bytes(data[: len(data) // 2])  # Truncated.
    status, out, err = _run(["translate", "--model", broken, "Hi."], capsys)
    assert status == 2 and out == ""
    assert "error: " in err and "model.keras" in err and "Traceback" not in err


# --------------------------------------------------------------------------- bad input

THREE_PAIRS = "Go.\tVe.\nHi.\tHola.\nRun!\t¡Corre!\n"  # Splits: val, train, train.


@pytest.fixture
def bad(tmp_path, tiny_run):
    """Paths for the bad-input table: files, folders and damaged run directories."""
    import shutil

    run = tiny_run[0]
    paths = {"run": run, "new": tmp_path / "new", "dir": tmp_path / "folder"}
    paths["dir"].mkdir()
    paths["file"] = tmp_path / "a_file"
    paths["file"].write_text("not a folder\n", encoding="utf-8")
    paths["three"] = tmp_path / "three.txt"
    paths["three"].write_text(THREE_PAIRS, encoding="utf-8")
    paths["notab"] = tmp_path / "notab.txt"
    paths["notab"].write_text("Hi.\tHola.\nno tab here\n", encoding="utf-8")
    paths["latin1"] = tmp_path / "latin1.txt"
    paths["latin1"].write_bytes("Go.\nCoffee, café.\n".encode("latin-1"))
    paths["medical"] = tmp_path / "medical_run"
    paths["medical"].mkdir()
    (paths["medical"] / "config.json").write_text(
        json.dumps({"app": "medical_cnn", "image_size": 28, "epochs": 2}), encoding="utf-8"
    )
    # A medical run written before config.json recorded its app: told by its keys.
    paths["old_medical"] = tmp_path / "old_medical_run"
    paths["old_medical"].mkdir()
    (paths["old_medical"] / "config.json").write_text(
        json.dumps(
            {"pixel_mean": 0.5, "class_names": ["normal", "pneumonia"], "convs_per_stage": 2}
        ),
        encoding="utf-8",
    )
    for name, change in {
        "empty_vocab": lambda d: (d / "vocab_source.txt").write_text("", encoding="utf-8"),
        "dup_vocab": lambda d: (d / "vocab_source.txt").write_text(
            (run / "vocab_source.txt").read_text(encoding="utf-8") + "Tom\n", encoding="utf-8"
        ),
        "no_vocab": lambda d: (d / "vocab_target.txt").unlink(),
        "other_vocab": lambda d: (d / "vocab_target.txt").write_text(
            "[PAD]\n[UNK]\n[START]\n[END]\nhola\n", encoding="utf-8"
        ),
    }.items():
        paths[name] = tmp_path / name
        shutil.copytree(run, paths[name], ignore=shutil.ignore_patterns("logs"))
        change(paths[name])
    return paths


TRAIN_THREE = ["train", "--data", "{three}", "--preset", "tiny", "--run-dir", "{new}"]
MEDICAL = (
    "--model {medical}: this is a medical-cnn run, not a translator run; pass a run directory "
    "written by 'translator train' (or use 'medical-cnn' for this one)."
)
BAD_INPUTS = {
    # name: (argv, the whole message after "error: ")
    "corpus_too_small_train": (
        TRAIN_THREE,
        "data file {three} gives 2 training, 1 validation and 0 test pairs; training needs at "
        "least 32 training pairs (one batch, batch_size=32) and 1 validation pair. Pairs go to "
        "train/val/test about 90/5/5 by a hash of their English sentence: pass a larger corpus "
        "(a few hundred 'English<TAB>Spanish' lines or more).",
    ),
    "corpus_too_small_prepare": (
        ["prepare", "--data", "{three}", "--preset", "tiny", "--out", "{new}"],
        "data file {three} gives 2 training, 1 validation and 0 test pairs; training needs at "
        "least 32 training pairs (one batch, batch_size=32) and 1 validation pair.",
    ),
    "corpus_without_tab": (
        ["train", "--data", "{notab}", "--preset", "tiny", "--run-dir", "{new}"],
        "data file {notab}, line 2: expected 'English<TAB>Spanish'. Received: 'no tab here'",
    ),
    "data_is_a_folder": (
        ["train", "--data", "{dir}", "--preset", "tiny", "--run-dir", "{new}"],
        "data file {dir} is a folder, not a file; pass the file itself.",
    ),
    "run_dir_is_a_file": (
        ["train", "--data", "{three}", "--preset", "tiny", "--run-dir", "{file}"],
        "--run-dir {file}: {file} is a file, not a folder; pass a new or existing folder for "
        "the run.",
    ),
    "run_dir_is_a_medical_run": (
        ["train", "--data", "{three}", "--preset", "tiny", "--run-dir", "{medical}"],
        "--run-dir {medical}: this is a medical-cnn run, not a translator run;",
    ),
    "prepare_out_under_a_file": (
        ["prepare", "--data", "{three}", "--preset", "tiny", "--out", "{file}/prepared"],
        "--out {file}/prepared: {file} is a file, not a folder;",
    ),
    "prepared_is_a_file": (
        ["train", "--prepared", "{file}"],
        "--prepared {file} is a file; pass the folder written by 'translator prepare --out DIR'.",
    ),
    "seed_out_of_range": (
        [*TRAIN_THREE, "--seed", "-1"],
        "bad option value: seed must be an integer in [0, 2**32 - 1]. Received: seed=-1",
    ),
    "translate_medical_run": (["translate", "--model", "{medical}", "Hi."], MEDICAL),
    "translate_old_medical_run": (
        ["translate", "--model", "{old_medical}", "Hi."],
        MEDICAL.replace("{medical}", "{old_medical}"),
    ),
    "evaluate_medical_run": (["evaluate", "--model", "{medical}"], MEDICAL),
    "export_medical_run": (["export", "--model", "{medical}", "--base", "{new}"], MEDICAL),
    "model_is_config_json": (
        ["translate", "--model", "{run}/config.json", "Hi."],
        "{run}/config.json is a file; pass the run directory that holds it ({run}) or an export.",
    ),
    "empty_vocabulary": (
        ["translate", "--model", "{empty_vocab}", "Hi."],
        "vocabulary file {empty_vocab}/vocab_source.txt is invalid: A vocabulary must start with "
        "the reserved tokens ['[PAD]', '[UNK]', '[START]', '[END]']. Received: tokens[:4]=[]. It "
        "must be the file that training wrote (one token per line, line i = id i): copy the run "
        "directory again or retrain.",
    ),
    "duplicate_vocabulary_line": (
        ["translate", "--model", "{dup_vocab}", "Hi."],
        "vocabulary file {dup_vocab}/vocab_source.txt is invalid: Vocabulary tokens must be "
        "unique. Received duplicates: ['Tom'].",
    ),
    "missing_vocabulary": (
        ["translate", "--model", "{no_vocab}", "Hi."],
        "vocabulary file not found: {no_vocab}/vocab_target.txt",
    ),
    "vocabulary_of_another_run": (
        ["translate", "--model", "{other_vocab}", "Hi."],
        "the target vocabulary has 5; the model and the vocabulary come from different runs.",
    ),
    "input_not_utf8": (
        ["translate", "--model", "{run}", "--input", "{latin1}"],
        "input file {latin1}, line 2: not UTF-8 text (byte 0xe9 at column 12); the input must be "
        "UTF-8: convert it first, e.g. with iconv -f latin1 -t utf-8.",
    ),
    "input_is_a_folder": (
        ["translate", "--model", "{run}", "--input", "{dir}"],
        "input file {dir} is a folder, not a file; pass the file itself.",
    ),
    "output_is_a_folder": (
        ["translate", "--model", "{run}", "--output", "{dir}", "Hi."],
        "--output {dir} is a folder; pass a file path to write.",
    ),
    "output_under_a_file": (
        ["translate", "--model", "{run}", "--output", "{file}/es.txt", "Hi."],
        "--output {file}/es.txt: {file} is a file, not a folder.",
    ),
    "attention_plot_is_a_file": (
        ["translate", "--model", "{run}", "--attention-plot", "{file}", "Hi."],
        "--attention-plot {file}: {file} is a file, not a folder; pass a new or existing folder "
        "for the attention plots.",
    ),
    "server_without_scheme": (
        ["translate", "--server", "localhost:8501", "Hi."],
        "the server must be a REST URL such as http://localhost:8501 or a gRPC address such as "
        "grpc://localhost:8500. Received: 'localhost:8501'",
    ),
    "evaluate_pairs_is_a_folder": (
        ["evaluate", "--model", "{run}", "--pairs", "{dir}"],
        "pairs file {dir} is a folder, not a file; pass the file itself.",
    ),
    "evaluate_pairs_without_tab": (
        ["evaluate", "--model", "{run}", "--pairs", "{notab}"],
        "pairs file {notab}, line 2: expected 'English<TAB>Spanish'. Received: 'no tab here'",
    ),
    "evaluate_empty_test_split": (
        ["evaluate", "--model", "{run}", "--data", "{three}", "--output", "{new}/eval.json"],
        "the test split of {three} is empty (2 train, 1 val, 0 test pairs): nothing to score. "
        "Pass a larger corpus with --data, another --split, or --pairs FILE.",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_error_line_and_writes_nothing(case, bad, capsys):
    argv, message = BAD_INPUTS[case]
    status, out, err = _run([a.format(**bad) for a in argv], capsys)
    assert status == 2, err[-3000:]
    assert "Traceback" not in err and out == ""
    assert err.splitlines()[-1].startswith("error: ")
    assert message.format(**bad) in err.splitlines()[-1]
    assert not bad["new"].exists()  # Nothing written: no run directory, no output.


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "--time-budget-minutes", "-1"],
            "argument --time-budget-minutes: expected a positive number, got '-1'",
        ),
        (
            ["translate", "--server", "http://127.0.0.1:1", "--timeout", "0"],
            "argument --timeout: expected a positive number, got '0'",
        ),
        (
            ["translate", "--server", "http://127.0.0.1:1", "--model-version", "-1"],
            "argument --model-version: expected an integer >= 0, got '-1'",
        ),
    ],
)
def test_bad_option_values_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_translate_help_states_the_timeout_and_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["translate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert (
        f"--timeout SECONDS with --server: seconds to wait for each answer "
        f"(default: {SERVING_TIMEOUT:g})" in help_text
    )
    # The CLI's stated default is the translator client's own.
    assert inspect.signature(ServedTranslator).parameters["timeout"].default == SERVING_TIMEOUT


def test_one_output_line_per_input_line_whatever_the_line_breaks(tiny_run, translator):
    # The input: a form feed (and U+2028, U+0085, \r\n) inside a line must not make
    # two translations of it, shifting every later line.
    stdin = "Where is Tom?\nI am here\x0cnow\r\nGood\u2028morning\nGo\x85now.\n\n \t \n".encode()
    result = subprocess.run(
        [sys.executable, "-m", "apps.translator", "translate", "--model", str(tiny_run[0])],
        input=stdin,
        cwd=PROJECT_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.decode("utf-8").split("\n")
    assert lines[-1] == "" and len(lines) - 1 == 6
    expected = translator.translate(
        ["Where is Tom?", "I am here now", "Good morning", "Go now.", "", ""]
    )
    assert lines[:-1] == expected
    assert lines[4] == lines[5] == ""


def test_stdin_that_is_not_utf8_names_the_line(tiny_run, capsys, monkeypatch):
    stdin = io.TextIOWrapper(
        io.BytesIO(b"Where is Tom?\nI am \xff here\n"), encoding="utf-8", errors="surrogateescape"
    )
    monkeypatch.setattr(sys, "stdin", stdin)
    status, out, err = _run(["translate", "--model", tiny_run[0]], capsys)
    assert status == 2 and out == ""
    assert err.splitlines()[-1] == (
        "error: standard input, line 2: not UTF-8 text (byte 0xff at column 6); the input must "
        "be UTF-8: convert it first, e.g. with iconv -f latin1 -t utf-8."
    )


def test_a_500_word_sentence_is_truncated_with_a_warning(tiny_run, translator, capsys):
    long = " ".join(["I am Tom."] * 125)  # 500 tokens, all in the vocabulary.
    status, out, err = _run(["translate", "--model", tiny_run[0], "Go.", long], capsys)
    assert status == 0
    assert out.splitlines() == translator.translate(["Go.", long])
    assert err.splitlines() == [
        "warning: line 2 has 500 tokens, more than the model's limit of 10; only the first 10 "
        "are translated."
    ]


def test_evaluate_reads_pairs_from_a_pipe(tiny_run, tmp_path, capsys):
    # `translator evaluate --pairs <(grep ... spa.txt)`: the shell passes /dev/fd/N, a pipe.
    read_end, write_end = os.pipe()
    os.write(write_end, b"Go.\tVe.\nGo.\tVete.\nHi.\tHola.\n")
    os.close(write_end)
    output = tmp_path / "eval.json"
    try:
        status, out, err = _run(
            [
                "evaluate",
                "--model",
                tiny_run[0],
                "--pairs",
                f"/dev/fd/{read_end}",
                "--output",
                output,
            ],
            capsys,
        )
    finally:
        os.close(read_end)
    assert status == 0, err
    saved = json.loads(output.read_text(encoding="utf-8"))
    assert saved["num_pairs"] == 3 and saved["num_sources"] == 2


def test_a_server_that_never_answers_times_out_after_timeout_seconds(capsys):
    with silent_server() as url:
        status, seconds = call_bounded(
            lambda: main(["translate", "--server", url, "--timeout", "1", "Hi."])
        )
    err = capsys.readouterr().err
    assert status == 2 and seconds < 10  # gave up after its 1 s timeout, not after 60
    assert err.splitlines()[-1] == (
        f"error: TF Serving at {url}/v1/models/translator:predict did not "
        "answer within 1 s (--timeout); the server may be overloaded or the request too large: "
        "raise --timeout SECONDS, or check the server."
    )

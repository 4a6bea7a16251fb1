"""The demo page's backends: the CLIs' outputs and messages, locally and through TF Serving.

No browser and no Gradio here (`test_browser.py` drives the page). Each value is
compared with what `medical-cnn predict` and `translator translate` print for
the same input, run in this process on the same tiny runs; the server is the
TF Serving stand-in (`tests/serving_stub.py`) over real exports of those runs.
"""

from __future__ import annotations

import json
import re
import tempfile

import numpy as np
import pytest
from PIL import Image

from apps.common.errors import UserError
from apps.common.io import to_json
from apps.demo.backends import (
    NO_ATTENTION_EXPORT,
    NO_ATTENTION_SERVER,
    NO_IMAGE,
    NO_TEXT,
    TranslateDemo,
    Unavailable,
    XrayDemo,
    describe_prediction,
    load_translate,
    load_xray,
)
from apps.medical_cnn.cli import main as medical_main
from apps.translator.cli import main as translator_main
from tests.serving_stub import ServingStub, write_toy_saved_model

TEXT = "Where is Tom?\n\nI like to read books."
SENTENCES = ["Where is Tom?", "", "I like to read books."]
LONG = " ".join(["word"] * 500)


def run_cli(main, argv, capsys):
    """`(status, stdout, stderr)` of a CLI run in this process."""
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def cli_error(err: str) -> str:
    """The message of the CLI's one `error: <message>` line on stderr."""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0].removeprefix("error: ")


def rgb(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def xray(medical_run, tmp_path_factory):
    demo = load_xray(medical_run, None, samples_dir=tmp_path_factory.mktemp("samples"))
    assert isinstance(demo, XrayDemo), demo
    return demo


@pytest.fixture(scope="module")
def translate(translator_run):
    demo = load_translate(translator_run, None)
    assert isinstance(demo, TranslateDemo), demo
    return demo


@pytest.fixture(scope="module")
def served(medical_run, translator_run, tmp_path_factory):
    """The TF Serving stand-in over exports of both tiny runs (REST)."""
    from apps.medical_cnn.export import export as export_medical
    from apps.translator.export import export as export_translator

    base = tmp_path_factory.mktemp("demo_served")
    export_medical(medical_run, base / "medical_cnn")
    export_translator(translator_run, base=base / "translator")
    models = {"medical_cnn": base / "medical_cnn", "translator": base / "translator"}
    with ServingStub(models) as stub:
        yield stub


@pytest.mark.parametrize("name", ["normal", "pneumonia"])
def test_xray_result_is_what_medical_cnn_predict_explain_prints_and_writes(
    name, xray, medical_run, image_files, tmp_path, capsys, monkeypatch
):
    temporary = tmp_path / "tmp"  # Where the overlay's folder goes, and must leave nothing.
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    path = image_files[name]
    status, out, _ = run_cli(
        medical_main, ["predict", "--model", medical_run, path, "--explain", tmp_path], capsys
    )
    assert status == 0
    line = json.loads(out)
    result = xray.predict(path)
    expected = {k: v for k, v in line.items() if k != "gradcam"} | {"file": path.name}
    assert result.record == expected
    assert result.json_line == to_json(expected)
    np.testing.assert_array_equal(result.overlay, rgb(line["gradcam"]))  # The CLI's own PNG.
    assert min(result.overlay.shape[:2]) >= 224  # Readable: enlarged from 28 pixels.
    np.testing.assert_array_equal(result.image, rgb(path))
    text = describe_prediction(result.record)
    assert f"{line['class_name']} (label {line['label']})" in text
    assert f"probability of label 1: **{line['probability']:.4f}**" in text
    assert f"threshold: **{line['threshold']:.4f}**" in text
    assert list(temporary.iterdir()) == []  # The overlay's folder is gone.


@pytest.mark.parametrize("name", ["notes", "empty", "broken"])
def test_xray_bad_files_get_the_cli_message_and_the_next_image_still_works(
    name, xray, medical_run, image_files, capsys
):
    path = image_files[name]
    status, _, err = run_cli(medical_main, ["predict", "--model", medical_run, path], capsys)
    assert status == 1  # The CLI's exit status for files it could not read.
    with pytest.raises(UserError) as caught:
        xray.predict(path)
    assert str(caught.value) == cli_error(err).replace(str(path), path.name)
    assert str(caught.value).startswith(f"{path.name} is not a readable image")
    good = image_files["normal"]
    assert xray.predict(good).record == xray.predict(good).record
    with pytest.raises(UserError, match=f"^{re.escape(NO_IMAGE)}$"):
        xray.predict(None)


def test_samples_are_the_runs_first_validation_images_of_each_class(xray, pneumoniamnist_npz):
    with np.load(pneumoniamnist_npz) as data:
        images, labels = data["val_images"], data["val_labels"].ravel()
    names = [p.name for p in xray.samples]
    first = [np.flatnonzero(labels == c)[:2] for c in (0, 1)]
    assert names == [f"val_{i:04d}_normal.png" for i in first[0]] + [
        f"val_{i:04d}_pneumonia.png" for i in first[1]
    ]
    for path, index in zip(xray.samples, np.concatenate(first), strict=True):
        with Image.open(path) as image:
            np.testing.assert_array_equal(np.asarray(image), images[index])
    assert xray.predict(xray.samples[0]).record["file"] == names[0]


def test_translation_is_what_translator_translate_prints(translate, translator_run, capsys):
    status, out, err = run_cli(
        translator_main, ["translate", "--model", translator_run, *SENTENCES], capsys
    )
    assert (status, err) == (0, "")
    result = translate.translate(TEXT)
    assert result.text + "\n" == out
    assert result.translations[1] == "" and result.translations[0] != ""
    assert result.warnings == []
    assert result.lines_with_text() == [1, 3]


def test_a_500_word_text_gets_the_cli_warning_and_translation(translate, translator_run, capsys):
    status, out, err = run_cli(
        translator_main, ["translate", "--model", translator_run, "Where is Tom?", LONG], capsys
    )
    assert status == 0 and err.startswith("warning: line 2 has ")
    result = translate.translate(f"Where is Tom?\n{LONG}")
    assert result.warnings == err.splitlines()
    assert result.text + "\n" == out


@pytest.mark.parametrize("text", ["", "   ", "\n \n\t\n", None])
def test_an_empty_text_is_a_clear_error(translate, text):
    with pytest.raises(UserError, match=f"^{re.escape(NO_TEXT)}$"):
        translate.translate(text)


def test_attention_plot_is_the_cli_plot_and_each_head_its_own(
    translate, translator_run, tmp_path, capsys
):
    status, _, _ = run_cli(
        translator_main,
        ["translate", "--model", translator_run, "--attention-plot", tmp_path, *SENTENCES],
        capsys,
    )
    assert status == 0
    assert translate.num_heads == 2
    mean = translate.attention_plot(SENTENCES[0])
    np.testing.assert_array_equal(mean, rgb(tmp_path / "line_0001.png"))
    np.testing.assert_array_equal(
        translate.attention_plot(SENTENCES[2]), rgb(tmp_path / "line_0003.png")
    )
    heads = [translate.attention_plot(SENTENCES[0], head=h) for h in range(2)]
    for plot in heads:
        assert plot.shape == mean.shape and not np.array_equal(plot, mean)
    assert not np.array_equal(heads[0], heads[1])
    assert translate.attention_plot("  ") is None


def test_an_export_translates_and_says_why_there_is_no_heatmap(translator_run, tmp_path):
    from apps.translator.export import export

    export(translator_run, base=tmp_path / "translator")
    exported = load_translate(tmp_path / "translator", None)
    assert exported.attention is None and exported.num_heads == 0
    assert exported.note == NO_ATTENTION_EXPORT
    local = load_translate(translator_run, None)
    assert exported.translate(TEXT).translations == local.translate(TEXT).translations
    with pytest.raises(UserError, match="needs a run directory"):
        exported.attention_plot("Where is Tom?")


def test_served_predictions_and_translations_equal_local_ones(
    served, xray, translate, medical_run, translator_run, image_files
):
    remote = load_xray(None, served.url)
    assert isinstance(remote, XrayDemo) and not remote.explains
    assert remote.source == f"model 'medical_cnn' on TF Serving at {served.url}"
    good = image_files["pneumonia"]
    local = xray.predict(good)
    result = remote.predict(good)
    assert result.overlay is None
    assert list(result.record) == list(local.record)
    assert result.record["probability"] == pytest.approx(local.record["probability"], abs=1e-5)
    for key in ("file", "label", "class_name", "threshold"):
        assert result.record[key] == local.record[key], key
    with pytest.raises(UserError) as caught:  # Checked here, never sent (as the CLI does).
        remote.predict(image_files["notes"])
    with pytest.raises(UserError) as caught_locally:
        xray.predict(image_files["notes"])
    assert str(caught.value) == str(caught_locally.value)

    both = load_xray(medical_run, served.url)  # The server predicts, the run explains.
    explained = both.predict(good)
    assert explained.record == result.record
    np.testing.assert_array_equal(explained.overlay, local.overlay)

    remote_translate = load_translate(None, served.url)
    assert remote_translate.attention is None and remote_translate.note == NO_ATTENTION_SERVER
    for text in (TEXT, f"Where is Tom?\n{LONG}"):
        served_result = remote_translate.translate(text)
        local_result = translate.translate(text)
        assert served_result.translations == local_result.translations
        assert served_result.warnings == local_result.warnings
    with pytest.raises(UserError, match=f"^{re.escape(NO_TEXT)}$"):
        remote_translate.translate(" ")
    assert load_translate(translator_run, served.url).attention is not None


def test_a_missing_or_wrong_model_turns_its_tab_off_with_the_cli_message(
    medical_run, translator_run, image_files, tmp_path, capsys
):
    assert load_xray(None, None).reason.startswith("no X-ray model: start the demo with")
    assert load_translate(None, None).reason.startswith("no translator: start the demo with")
    missing = tmp_path / "missing"
    image = image_files["normal"]
    for given, argv in (
        (missing, ["predict", "--model", missing, image]),
        (translator_run, ["predict", "--model", translator_run, image]),
    ):
        _, _, err = run_cli(medical_main, argv, capsys)
        off = load_xray(given, None)
        assert isinstance(off, Unavailable) and off.reason == cli_error(err)
    for given in (missing, medical_run):
        _, _, err = run_cli(translator_main, ["translate", "--model", given, "Hi."], capsys)
        off = load_translate(given, None)
        assert isinstance(off, Unavailable) and off.reason == cli_error(err)


def test_a_server_without_the_model_or_a_bad_url_turns_the_tab_off(
    medical_run, image_files, tmp_path, capsys
):
    write_toy_saved_model(tmp_path / "toy" / "1")
    with ServingStub({"toy": tmp_path / "toy"}) as stub:
        _, _, err = run_cli(
            medical_main, ["predict", "--server", stub.url, image_files["normal"]], capsys
        )
        off = load_xray(medical_run, stub.url)
        assert isinstance(off, Unavailable) and off.reason == cli_error(err)
        assert "model 'medical_cnn' not found" in off.reason
        _, _, err = run_cli(translator_main, ["translate", "--server", stub.url, "Hi."], capsys)
        off = load_translate(None, stub.url)
        assert isinstance(off, Unavailable) and off.reason == cli_error(err)
    no_scheme = "localhost:8501"  # No http:// or grpc://: refused before any connection.
    _, _, err = run_cli(translator_main, ["translate", "--server", no_scheme, "Hi."], capsys)
    assert load_translate(None, no_scheme).reason == cli_error(err)
    _, _, err = run_cli(
        medical_main, ["predict", "--server", no_scheme, image_files["normal"]], capsys
    )
    assert load_xray(None, no_scheme).reason == cli_error(err)

"""Tests for `apps.common.export`: atomic, versioned SavedModel exports.

The version-numbering tests write a minimal SavedModel layout (no TensorFlow
needed); the reader-race and `saved_model_cli` tests use real SavedModels.
"""

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from apps.common import export
from apps.common.errors import UserError
from apps.common.export import (
    ExportError,
    export_versioned,
    is_complete_saved_model,
    latest_version_path,
    list_versions,
    next_version,
    prune_versions,
    remove_stale_temporaries,
)
from tests.serving_stub import write_toy_saved_model

PROJECT_ROOT = Path(__file__).resolve().parents[3]
SAVED_MODEL_CLI = Path(sys.executable).with_name("saved_model_cli")


def _fake_saved_model(path, marker="x"):
    """The files TF Serving needs to see, with `marker` to tell exports apart."""
    path = Path(path)
    (path / "variables").mkdir()
    (path / "variables" / "variables.index").write_text("index")
    (path / "saved_model.pb").write_text(marker)


def _entries(base):
    return sorted(p.name for p in Path(base).iterdir() if p.name != export.LOCK_NAME)


# -- numbering ---------------------------------------------------------------


def test_versions_are_numbered_one_two_three(tmp_path):
    base = tmp_path / "model"
    assert list_versions(base) == [] and next_version(base) == 1
    paths = [export_versioned(base, lambda p, i=i: _fake_saved_model(p, f"v{i}")) for i in range(3)]
    assert paths == [base / "1", base / "2", base / "3"]
    assert [(p / "saved_model.pb").read_text() for p in paths] == ["v0", "v1", "v2"]
    assert list_versions(base) == [1, 2, 3] and next_version(base) == 4
    assert latest_version_path(base) == base / "3"
    assert _entries(base) == ["1", "2", "3"]  # No temporary folder left behind.


def test_list_versions_counts_only_integer_folders(tmp_path):
    for name in ["2", "10", "abc", "3a", ".tmp-export-1-ab"]:
        (tmp_path / name).mkdir()
        _fake_saved_model(tmp_path / name)
    (tmp_path / "7").write_text("a file, not a version")
    assert list_versions(tmp_path) == [2, 10]
    assert next_version(tmp_path) == 11


def test_an_empty_integer_folder_is_no_version(tmp_path):
    # An empty (or half-copied) `12/` is no version: it is not listed, the next
    # export warns about it and numbers past it, and reading the latest version
    # names it instead of handing TF Serving's loader an empty folder.
    (tmp_path / "2").mkdir()
    _fake_saved_model(tmp_path / "2")
    (tmp_path / "12").mkdir()
    assert list_versions(tmp_path) == [2]
    assert export.incomplete_versions(tmp_path) == [12]
    with pytest.raises(UserError, match=r"12 holds no complete SavedModel.*Remove it"):
        latest_version_path(tmp_path)
    with pytest.warns(UserWarning, match=r"12 holds no complete SavedModel"):
        new = export_versioned(tmp_path, _fake_saved_model)
    assert new == tmp_path / "13"
    assert list_versions(tmp_path) == [2, 13]
    assert latest_version_path(tmp_path) == new


def test_latest_version_path_without_versions_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "none"))):
        latest_version_path(tmp_path / "none")


def test_never_overwrites_an_existing_version(tmp_path):
    for version in ("1", "3"):
        (tmp_path / version).mkdir()
        _fake_saved_model(tmp_path / version, "old")
    new = export_versioned(tmp_path, lambda p: _fake_saved_model(p, "new"))
    assert new == tmp_path / "4"
    assert (tmp_path / "1" / "saved_model.pb").read_text() == "old"
    assert (tmp_path / "3" / "saved_model.pb").read_text() == "old"


def test_stale_version_number_skips_existing_folders(tmp_path, monkeypatch):
    # Simulates a version appearing between listing and rename (another writer):
    # the chosen number is taken, so the export moves on instead of replacing it.
    (tmp_path / "1").mkdir()
    _fake_saved_model(tmp_path / "1", "old")
    (tmp_path / "2").mkdir()  # Empty: os.rename would silently replace it.
    monkeypatch.setattr(export, "next_version", lambda base: 1)
    with pytest.warns(UserWarning, match="2 holds no complete SavedModel"):
        new = export_versioned(tmp_path, lambda p: _fake_saved_model(p, "new"))
    assert new == tmp_path / "3"
    assert (tmp_path / "1" / "saved_model.pb").read_text() == "old"
    assert list((tmp_path / "2").iterdir()) == []


def test_concurrent_exporters_get_distinct_versions(tmp_path):
    results = {}

    def run(i):
        def write(path):
            time.sleep(0.02 * (i % 2))
            _fake_saved_model(path, f"thread-{i}")

        results[i] = export_versioned(tmp_path, write)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(int(p.name) for p in results.values()) == [1, 2, 3, 4, 5, 6]
    for i, path in results.items():
        assert (path / "saved_model.pb").read_text() == f"thread-{i}"


# -- pruning -----------------------------------------------------------------


def test_keep_prunes_older_versions(tmp_path):
    for i in range(5):
        new = export_versioned(tmp_path, lambda p, i=i: _fake_saved_model(p, f"v{i}"), keep=2)
    assert new == tmp_path / "5"
    assert _entries(tmp_path) == ["4", "5"]
    assert (tmp_path / "5" / "saved_model.pb").read_text() == "v4"


def test_prune_never_removes_protected_versions(tmp_path):
    for v in range(1, 5):
        (tmp_path / str(v)).mkdir()
        _fake_saved_model(tmp_path / str(v))
    assert prune_versions(tmp_path, keep=1, protect=[2]) == [1, 3]
    assert list_versions(tmp_path) == [2, 4]
    assert _entries(tmp_path) == ["2", "4"]


@pytest.mark.parametrize("keep", [0, -1, True, 1.5, "2"])
def test_bad_keep_is_refused_before_writing(tmp_path, keep):
    with pytest.raises(ValueError, match=re.escape(f"Received: keep={keep!r}")):
        export_versioned(tmp_path, _fake_saved_model, keep=keep)
    assert list_versions(tmp_path) == []


def test_base_dir_that_is_a_file_or_a_saved_model_is_refused(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        export_versioned(file, _fake_saved_model)
    version = export_versioned(tmp_path / "m", _fake_saved_model)
    with pytest.raises(ValueError, match="is itself a SavedModel; pass the model's base path"):
        export_versioned(version, _fake_saved_model)


# -- failures ----------------------------------------------------------------


def test_write_fn_that_raises_leaves_no_version(tmp_path):
    def broken(path):
        (path / "saved_model.pb").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        export_versioned(tmp_path, broken)
    assert _entries(tmp_path) == []
    assert export_versioned(tmp_path, _fake_saved_model) == tmp_path / "1"


@pytest.mark.parametrize(
    "write",
    [
        lambda p: None,
        lambda p: (p / "saved_model.pb").write_text(""),
        lambda p: ((p / "saved_model.pb").write_text("g"), (p / "variables").mkdir()),
    ],
    ids=["nothing", "empty-graph", "variables-without-index"],
)
def test_incomplete_saved_model_is_refused(tmp_path, write):
    with pytest.raises(ExportError, match="did not write a complete SavedModel"):
        export_versioned(tmp_path, write)
    assert _entries(tmp_path) == []


_KILLED_EXPORT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from apps.common.export import export_versioned

    base, started = Path(sys.argv[1]), Path(sys.argv[2])

    def slow_write(path):
        (path / "variables").mkdir()
        (path / "saved_model.pb").write_bytes(b"partial graph")
        started.write_text(str(path))
        time.sleep(120)  # Killed here, mid-write.

    export_versioned(base, slow_write)
    """
)


def test_export_killed_mid_write_leaves_no_version(tmp_path):
    base, started = tmp_path / "model", tmp_path / "started"
    export_versioned(base, _fake_saved_model)  # Version 1 already served.
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_EXPORT, str(base), str(started)], cwd=PROJECT_ROOT
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert proc.poll() is None, "the exporting process exited early"
            assert time.monotonic() < deadline, "the exporting process never started writing"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    leftover = Path(started.read_text())
    assert leftover.parent == base and leftover.name.startswith(f".tmp-export-{proc.pid}-")
    assert list_versions(base) == [1]  # The half-written export is not a version.

    new = export_versioned(base, _fake_saved_model)
    assert new == base / "2"
    assert not leftover.exists()  # Cleaned up: its process is gone.
    assert _entries(base) == ["1", "2"]


def test_only_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".tmp-export-{dead.pid}-abc123"
    stale_prune = tmp_path / f".tmp-prune-{dead.pid}-def456"
    live = tmp_path / f".tmp-export-{os.getpid()}-abc123"  # An export running in this process.
    other = tmp_path / ".tmp-something-else"
    for path in (stale, stale_prune, live, other):
        path.mkdir()
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([stale, stale_prune])
    assert live.exists() and other.exists()


def test_concurrent_reader_never_sees_an_incomplete_version(tmp_path):
    base = tmp_path / "model"
    base.mkdir()
    seen, incomplete, polls = set(), [], [0]
    stop = threading.Event()

    def reader():  # Polls like TF Serving's file-system source, only much faster.
        while True:
            stopping = stop.is_set()  # One last poll after the final export.
            for version in list_versions(base):
                path = base / str(version)
                files = {
                    "saved_model.pb": (path / "saved_model.pb").is_file(),
                    "variables.index": (path / "variables" / "variables.index").is_file(),
                    "variables.data": any((path / "variables").glob("variables.data-*")),
                }
                if not all(files.values()):
                    incomplete.append((version, files))
                seen.add(version)
            polls[0] += 1
            if stopping:
                return

    def slow_write(path, offset):
        write_toy_saved_model(path, offset)
        time.sleep(0.2)  # Widen the window in which a careless export would be visible.

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for offset in (0.0, 1.0, 2.0):
            export_versioned(base, lambda p, o=offset: slow_write(p, o))
    finally:
        stop.set()
        thread.join(timeout=30)
    assert incomplete == []
    assert seen == {1, 2, 3} and polls[0] > 10
    assert all(is_complete_saved_model(base / str(v)) for v in (1, 2, 3))


# -- saved_model_cli on a real export -------------------------------------------


def parse_saved_model_cli_show(text):
    """`saved_model_cli show --all` output -> {signature: {"inputs"|"outputs":
    {name: (dtype, shape)}, "method": str}}."""
    signatures, current, tensor = {}, None, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Concrete Functions"):
            break
        if m := re.fullmatch(r"signature_def\['(.+)'\]:", line):
            current = signatures.setdefault(m[1], {"inputs": {}, "outputs": {}})
        elif current is None:
            continue
        elif m := re.fullmatch(r"(inputs|outputs)\['(.+)'\] tensor_info:", line):
            tensor = current[m[1]][m[2]] = ["", ""]
        elif line.startswith("dtype:"):
            tensor[0] = line.split(":", 1)[1].strip()
        elif line.startswith("shape:"):
            tensor[1] = line.split(":", 1)[1].strip()
        elif line.startswith("Method name is:"):
            current["method"] = line.split(":", 1)[1].strip()
    return {
        name: {
            "inputs": {n: tuple(t) for n, t in sig["inputs"].items()},
            "outputs": {n: tuple(t) for n, t in sig["outputs"].items()},
            "method": sig.get("method", ""),
        }
        for name, sig in signatures.items()
    }


class _SavedModelCli:
    """Runs `saved_model_cli` commands side by side and collects their output.

    Each command is a fresh process (with no PYTHONPATH, in a temporary folder)
    that spends seconds importing TensorFlow; starting them together keeps
    this file fast.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self.procs = {}

    def start(self, key, *args):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        with (
            open(self.folder / f"{key}.out", "w") as out,
            open(self.folder / f"{key}.err", "w") as err,
        ):
            self.procs[key] = subprocess.Popen(
                [str(SAVED_MODEL_CLI), *map(str, args)],
                stdout=out,
                stderr=err,
                cwd=self.folder,
                env=env,
            )

    def output(self, key):
        returncode = self.procs[key].wait(timeout=300)
        assert returncode == 0, (self.folder / f"{key}.err").read_text()[-3000:]
        return (self.folder / f"{key}.out").read_text()

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _run_args(path, signature, input_key, npy, outdir):
    return ("run", "--dir", path, "--tag_set", "serve", "--signature_def", signature,
            "--inputs", f"{input_key}={npy}", "--outdir", outdir)  # fmt: skip


def _toy_images():
    images = [np.full((5, 7, 1), 200, np.uint8), np.full((3, 2, 1), 10, np.uint8)]
    return images, np.array([tf.io.encode_png(im).numpy() for im in images])


@pytest.fixture(scope="module")
def toy_cli(tmp_path_factory):
    """A real toy export (string input) and `saved_model_cli` show/run on it."""
    folder = tmp_path_factory.mktemp("toy_cli")
    path = export_versioned(folder / "toy", write_toy_saved_model)
    np.save(folder / "images.npy", _toy_images()[1])
    cli = _SavedModelCli(folder)
    cli.start("show", "show", "--dir", path, "--all")
    cli.start("run", *_run_args(path, "serving_default", "image_bytes", "images.npy", "out"))
    yield cli
    cli.stop()


def test_saved_model_cli_show_lists_the_serving_signatures(toy_cli):
    shown = parse_saved_model_cli_show(toy_cli.output("show"))
    predict = "tensorflow/serving/predict"
    assert shown["serving_default"] == {
        "inputs": {"image_bytes": ("DT_STRING", "(-1)")},
        "outputs": {
            "label": ("DT_INT64", "(-1)"),
            "label_name": ("DT_STRING", "(-1)"),
            "probability": ("DT_FLOAT", "(-1)"),
        },
        "method": predict,
    }
    assert shown["score_pixels"] == {
        "inputs": {"pixels": ("DT_FLOAT", "(-1, 4)")},
        "outputs": {"score": ("DT_FLOAT", "(-1)")},
        "method": predict,
    }


def test_saved_model_cli_run_decodes_string_input(toy_cli):
    toy_cli.output("run")
    out = toy_cli.folder / "out"
    images, _ = _toy_images()
    expected = np.array([im.mean() / 255.0 for im in images], np.float32)
    np.testing.assert_allclose(np.load(out / "probability.npy"), expected, rtol=1e-6)
    np.testing.assert_array_equal(np.load(out / "label.npy"), [1, 0])
    # saved_model_cli writes string outputs as object arrays (our own file: safe to unpickle).
    names = np.load(out / "label_name.npy", allow_pickle=True)
    np.testing.assert_array_equal(names, [b"bright", b"dark"])


# -- the apps' exports: the signatures TF Serving clients rely on -------------------
# Untrained `tiny` models: these tests pin the serving contract (names, dtypes,
# shapes, in-graph pre/postprocessing), not accuracy (the apps' tests do that).

MEDICAL_OUTPUTS = {
    "probability": ("DT_FLOAT", "(-1)"),
    "label": ("DT_INT64", "(-1)"),
    "class_name": ("DT_STRING", "(-1)"),
    "threshold": ("DT_DOUBLE", "(-1)"),
}
PREDICT = "tensorflow/serving/predict"
SENTENCES = ["How are you?", "I like books.", "Zebras?"]


def _gray_images():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (28, 28, 1), dtype=np.uint8) for _ in range(3)]
    images[0][:] = 0  # A black and a white image pull the untrained model apart.
    images[1][:] = 255
    return images, [tf.io.encode_png(im).numpy() for im in images]


def _medical_export(folder):
    import dataclasses

    from apps.medical_cnn import export as medical_export
    from apps.medical_cnn.artifacts import LoadedRun
    from apps.medical_cnn.config import get_config
    from apps.medical_cnn.model import build_model

    cfg = dataclasses.replace(
        get_config("tiny"),
        input_shape=(28, 28, 1),
        num_classes=2,
        class_names=("normal", "pneumonia"),
        pixel_mean=(128.0,),
        pixel_variance=(4000.0,),
    )
    run = LoadedRun(
        model=build_model(cfg),
        model_path=folder / "model.keras",
        config=cfg,
        threshold=0.5,
        threshold_source="test",
        class_names=cfg.class_names,
    )
    path = export_versioned(
        folder / "medical_cnn", lambda p: medical_export.write_saved_model(run, p)
    )
    return path, run


def _translator_export(folder):
    import dataclasses

    from apps.translator import config as translator_config
    from apps.translator import export as translator_export
    from apps.translator.model import build_model
    from apps.translator.translate import Translator
    from apps.translator.vectorization import RESERVED_TOKENS, Vocabulary

    source = Vocabulary([*RESERVED_TOKENS, *"how are you ? i like books .".split()], "source")
    target = Vocabulary([*RESERVED_TOKENS, *"¿ cómo estás ? me gustan los libros .".split()], "t")
    cfg = dataclasses.replace(
        translator_config.tiny(), source_vocab_size=source.size, target_vocab_size=target.size
    )
    translator = Translator(build_model(cfg), source, target, cfg.sequence_length)
    path = export_versioned(
        folder / "translator", lambda p: translator_export.write_saved_model(translator, p)
    )
    return path, translator


@pytest.fixture(scope="module")
def medical_cli(tmp_path_factory):
    folder = tmp_path_factory.mktemp("medical_cli")
    path, run = _medical_export(folder)
    np.save(folder / "images.npy", np.array(_gray_images()[1]))
    cli = _SavedModelCli(folder)
    cli.start("show", "show", "--dir", path, "--all")
    cli.start("run", *_run_args(path, "serving_default", "image_bytes", "images.npy", "out"))
    yield path, run, cli
    cli.stop()


@pytest.fixture(scope="module")
def translator_cli(tmp_path_factory):
    folder = tmp_path_factory.mktemp("translator_cli")
    path, translator = _translator_export(folder)
    np.save(folder / "sentences.npy", np.array([s.encode() for s in SENTENCES]))
    cli = _SavedModelCli(folder)
    cli.start("show", "show", "--dir", path, "--all")
    cli.start("run", *_run_args(path, "serving_default", "sentences", "sentences.npy", "out"))
    yield path, translator, cli
    cli.stop()


def test_medical_export_signatures(medical_cli):
    shown = parse_saved_model_cli_show(medical_cli[2].output("show"))
    assert shown["serving_default"] == {
        "inputs": {"image_bytes": ("DT_STRING", "(-1)")},
        "outputs": MEDICAL_OUTPUTS,
        "method": PREDICT,
    }
    assert shown["predict_pixels"] == {
        "inputs": {"pixels": ("DT_FLOAT", "(-1, 28, 28, 1)")},
        "outputs": MEDICAL_OUTPUTS,
        "method": PREDICT,
    }


def test_translator_export_signatures(translator_cli):
    shown = parse_saved_model_cli_show(translator_cli[2].output("show"))
    assert shown["serving_default"] == {
        "inputs": {"sentences": ("DT_STRING", "(-1)")},
        "outputs": {"translations": ("DT_STRING", "(-1)")},
        "method": PREDICT,
    }
    stats = {k: ("DT_INT32", "(-1)") for k in ("num_words", "num_unknown", "max_words")}
    assert shown["source_stats"]["inputs"] == {"sentences": ("DT_STRING", "(-1)")}
    assert shown["source_stats"]["outputs"] == stats


def _medical_reference(run, images):
    return np.asarray(run.model(np.stack(images).astype("float32"), training=False))[:, 0]


def test_saved_model_cli_run_on_medical_export(medical_cli):
    _, run, cli = medical_cli
    cli.output("run")
    out = cli.folder / "out"
    # A 28x28 grayscale PNG decodes to exactly the model's input: compare with Keras.
    expected = _medical_reference(run, _gray_images()[0])
    np.testing.assert_allclose(np.load(out / "probability.npy"), expected, atol=1e-5)
    np.testing.assert_array_equal(np.load(out / "label.npy"), (expected >= 0.5).astype(int))
    names = np.load(out / "class_name.npy", allow_pickle=True)  # Our own file.
    assert [n.decode() for n in names] == [run.class_names[int(p >= 0.5)] for p in expected]


def test_saved_model_cli_run_on_translator_export(translator_cli):
    _, translator, cli = translator_cli
    cli.output("run")
    translations = np.load(cli.folder / "out" / "translations.npy", allow_pickle=True)
    assert [t.decode("utf-8") for t in translations] == translator.translate(SENTENCES)


def test_client_and_stub_serve_the_apps_exports(medical_cli, translator_cli):
    from apps.common.serving import ServingClient, encode_b64
    from tests.serving_stub import ServingStub

    (medical, run, _), (translation, translator, _) = medical_cli, translator_cli
    images, encoded = _gray_images()
    models = {"medical_cnn": medical.parent, "translator": translation.parent}
    with ServingStub(models) as stub:
        xray = ServingClient(stub.url, "medical_cnn", timeout=60)
        by_bytes = xray.predict([{"image_bytes": encode_b64(e)} for e in encoded])
        by_pixels = xray.predict(
            np.stack(images).astype("float32"), signature_name="predict_pixels"
        )
        translated = ServingClient(stub.url, "translator", timeout=60).predict(SENTENCES)
    expected = _medical_reference(run, images)
    for rows in (by_bytes, by_pixels):
        np.testing.assert_allclose([r["probability"] for r in rows], expected, atol=1e-5)
        assert [r["class_name"] for r in rows] == [run.class_names[r["label"]] for r in rows]
    assert translated == translator.translate(SENTENCES)

"""Export: a versioned string-in/string-out SavedModel that a bare TensorFlow process reproduces."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from apps.translator.export import export
from apps.translator.translate import ExportedTranslator, Translator, load_translator

SENTENCES = [
    "Where is Tom?",
    "",
    "I don't know what you're talking about.",
    "Это предложение не на английском языке.",
    " ".join(["very"] * 40) + " long.",
    "Tom bought 3 apples at 10:30, didn't he?",
    "Zyxwvut qwerty!",
]

# Runs in a fresh interpreter, in a temporary folder, whose imports of this project fail.
FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("apps", "custom_layers"):
                raise ImportError(f"blocked import of {name}")

    sys.meta_path.insert(0, Blocker())
    try:
        import apps  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the project is importable")

    import tensorflow as tf

    export_dir, sentences = sys.argv[1], json.loads(sys.argv[2])
    loaded = tf.saved_model.load(export_dir)
    serve = loaded.signatures["serving_default"]
    out = serve(sentences=tf.constant(sentences))["translations"].numpy()
    print(json.dumps([t.decode("utf-8") for t in out]))
    """
)


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("saved_models") / "translator"
    first = export(tiny_run[0], base=base)
    return base, first


def test_export_writes_next_integer_versions(tiny_run, exported, tmp_path):
    base, first = exported
    assert first == base / "1" and (first / "saved_model.pb").is_file()
    other_base = tmp_path / "translator"
    shutil.copytree(first, other_base / "1")
    assert export(tiny_run[0], base=other_base, keep=1) == other_base / "2"
    assert [p.name for p in other_base.iterdir() if p.name.isdigit()] == ["2"]


def test_serving_signature_is_strings_in_strings_out(exported):
    loaded = tf.saved_model.load(str(exported[1]))
    signature = loaded.signatures["serving_default"]
    _, inputs = signature.structured_input_signature
    assert list(inputs) == ["sentences"]
    assert inputs["sentences"].dtype == tf.string and inputs["sentences"].shape.as_list() == [None]
    outputs = signature.structured_outputs
    assert list(outputs) == ["translations"] and outputs["translations"].dtype == tf.string
    stats = loaded.signatures["source_stats"].structured_outputs
    assert sorted(stats) == ["max_words", "num_unknown", "num_words"]


def test_fresh_process_without_the_project_returns_the_same_strings(tiny_run, exported, tmp_path):
    expected = Translator.from_run_dir(tiny_run[0]).translate(SENTENCES)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(exported[1]), json.dumps(SENTENCES)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected
    assert expected[1] == "" and all(expected[i] for i in (0, 2, 3, 4, 5, 6))


def test_exported_translator_matches_in_memory_translator(tiny_run, exported):
    in_memory = Translator.from_run_dir(tiny_run[0])
    from_export = load_translator(exported[0])  # The base folder: highest version.
    assert isinstance(from_export, ExportedTranslator)
    assert from_export.translate(SENTENCES, batch_size=3) == in_memory.translate(SENTENCES)
    in_stats, out_stats = in_memory.source_stats(SENTENCES), from_export.source_stats(SENTENCES)
    for key in ("num_words", "num_unknown", "max_words"):
        assert out_stats[key].tolist() == in_stats[key].tolist()
    assert in_stats["num_words"].tolist()[:2] == [4, 0]
    # Russian: every word is unknown, only the final "." is in the vocabulary.
    assert (in_stats["num_words"][3], in_stats["num_unknown"][3]) == (7, 6)


def test_export_of_a_non_run_directory_fails_clearly(tmp_path):
    from apps.common.model_io import ModelLoadError

    with pytest.raises(ModelLoadError, match="holds no config.json"):
        export(tmp_path, base=tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_export_carries_warmup_requests_that_replay(tiny_run, exported):
    from apps.translator.export import WARMUP_SENTENCES
    from tests.serving_stub import replay_warmup_requests

    replayed = replay_warmup_requests(exported[1])
    assert [(name, len(inputs["sentences"])) for name, inputs, _ in replayed] == [
        ("serving_default", 1),
        ("serving_default", len(WARMUP_SENTENCES)),
        ("source_stats", 1),
        ("source_stats", len(WARMUP_SENTENCES)),
    ]
    expected = Translator.from_run_dir(tiny_run[0]).translate(list(WARMUP_SENTENCES))
    translations = [t.decode("utf-8") for t in replayed[1][2]["translations"]]
    assert translations == expected
    assert sorted(replayed[3][2]) == ["max_words", "num_unknown", "num_words"]

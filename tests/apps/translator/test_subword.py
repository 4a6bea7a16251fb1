"""Subword tokens: SentencePiece vocabularies, their Python twin, tied embeddings, and a subword
run through translate, attention plots, prepared ids, export and serving."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from apps.translator.config import (
    SOURCE_SUBWORD_FILE,
    TARGET_SUBWORD_FILE,
    TranslatorConfig,
    get_config,
    tiny_subword,
)
from apps.translator.data import Splits
from apps.translator.decoding import greedy_decode, reference_greedy_decode
from apps.translator.model import DECODER_INPUT, SOURCE_INPUT, TranslatorLayers, build_model
from apps.translator.subword import SubwordVocabulary, train_sentencepiece
from apps.translator.tokens import (
    END_ID,
    SPACE_MARK,
    UNK_ID,
    group_pieces,
    ids_to_text,
    join_pieces,
)
from apps.translator.translate import Translator, merge_attention

ROUND_TRIP = [
    "¿Dónde está Tom?",
    "¡Qué día más bonito!",
    'Él dijo: "No sé", y se fue...',
    "Tom bought 37 kumquats for $12.50 at 10:30, didn't he?",
    "Straße, façade, naïve, Ærøskøbing, Łódź, İstanbul, Čapek, coöperate.",
    "1,000,000 (one million) — «comillas» [x] {y} ½ ° % & @ # * + = / \\ | ~ ^ _",
    "I ❤️ sushi 🍣 and 😀!",
    "寿司が好きです。我喜欢寿司。",
    "Это предложение не на английском языке.",
    "UPPER lower MiXeD",
]
# Every letter of the Latin script in Unicode's Latin-1 Supplement and Latin Extended-A.
LATIN_LETTERS = "".join(
    chr(c) for c in range(0x00C0, 0x0180) if chr(c).isalpha() and chr(c) not in "×÷"
)


@pytest.fixture(scope="module")
def shared_vocab(spa_splits):
    """A shared 2000-piece vocabulary of 8000 real training pairs."""
    pairs = spa_splits.train[::10][:8000]
    return SubwordVocabulary.from_texts(
        [p.english for p in pairs] + [p.spanish for p in pairs], 2000, "shared"
    )


def _texts(tensor) -> list[str]:
    return [t.decode("utf-8") for t in tensor.numpy()]


# --------------------------------------------------------------------------- the vocabulary


def test_vocabulary_layout_reserved_then_bytes(shared_vocab):
    tokens = shared_vocab.tokens
    assert shared_vocab.size == len(tokens) == 2000
    assert tokens[:4] == ("[PAD]", "[UNK]", "[START]", "[END]")
    assert tokens[4:260] == tuple(f"<0x{b:02X}>" for b in range(256))
    # Digits are single pieces (split_digits): any number can be spelled.
    assert all(d in tokens for d in "0123456789")


def test_text_to_ids_to_text_round_trips_exactly(shared_vocab):
    ids = shared_vocab.encode(ROUND_TRIP)
    assert _texts(shared_vocab.decode(ids)) == ROUND_TRIP
    # The Python twin (NumPy-only processes) writes the same strings.
    assert [ids_to_text(row, shared_vocab.tokens, "subword") for row in ids.to_list()] == ROUND_TRIP
    # No [UNK] anywhere: what the vocabulary lacks is spelled in bytes.
    assert UNK_ID not in ids.flat_values.numpy()
    bytes_per_sentence = shared_vocab.count_unknown(ids).numpy().tolist()
    # Corpus characters are pieces; rare letters (Ł, İ), emoji and CJK are bytes.
    assert bytes_per_sentence[:4] == [0] * 4 and min(bytes_per_sentence[4:9]) > 0


def test_whitespace_is_normalised_as_one_space(shared_vocab):
    texts = ["  Where\u00a0is\t\tTom? ", "a\u2028b\u3000c", "   "]
    ids = shared_vocab.encode(texts)
    assert _texts(shared_vocab.decode(ids)) == ["Where is Tom?", "a b c", ""]
    assert ids.row_lengths().numpy()[2] == 0


def test_no_unknown_id_for_latin_script_text(shared_vocab):
    words = [LATIN_LETTERS[i : i + 7] for i in range(0, len(LATIN_LETTERS), 7)]
    texts = [" ".join(words), LATIN_LETTERS.upper(), LATIN_LETTERS.lower(), "Xanthippe Zyxwvut"]
    ids = shared_vocab.encode(texts)
    assert UNK_ID not in ids.flat_values.numpy()
    assert _texts(shared_vocab.decode(ids)) == texts


def test_decode_stops_at_end_and_drops_pad_and_start(shared_vocab):
    hola = shared_vocab.encode(["Hola."]).to_list()[0]
    row = [2, *hola, END_ID, *hola, 0, 0]
    assert _texts(shared_vocab.decode([row])) == ["Hola."]
    assert ids_to_text(row, shared_vocab.tokens, "subword") == "Hola."


def test_python_detokeniser_equals_the_graph_on_random_rows(shared_vocab):
    # Arbitrary rows, also what an untrained model emits: leading spaces, stray or
    # invalid UTF-8 byte pieces. `join_pieces` must write what SentencePiece writes.
    rng = np.random.default_rng(0)
    rows = rng.integers(4, shared_vocab.size, (600, 6)).astype("int32")
    rows[:200, :3] = shared_vocab.tokens.index(SPACE_MARK)
    rows[200:400] = rng.integers(4, 260, (200, 6))
    graph = _texts(shared_vocab.decode(rows))
    python = [ids_to_text(row, shared_vocab.tokens, "subword") for row in rows]
    assert python == graph
    assert sum("\ufffd" in t for t in graph) > 50  # invalid byte runs were exercised


def test_join_pieces_values():
    assert join_pieces(["▁¿D", "ónde", "▁está", "▁Tom", "?"]) == "¿Dónde está Tom?"
    assert join_pieces(["▁", "▁", "▁a"]) == "a"  # leading spaces dropped, as SentencePiece
    assert join_pieces(["▁I", "▁", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]) == "I 😀"
    assert join_pieces(["<0xF0>", "<0x9F>", "▁x"]) == "\ufffd\ufffd x"


def test_training_is_deterministic_and_checks_the_size(spa_splits):
    texts = [p.english for p in spa_splits.train[:500]]
    assert train_sentencepiece(texts, 400) == train_sentencepiece(list(texts), 400)
    with pytest.raises(ValueError, match=r"needs at least \d+ pieces .* Received: vocab_size=270"):
        train_sentencepiece(texts, 270)


def test_save_and_load(shared_vocab, tmp_path):
    from apps.common.errors import DataError, MissingFileError

    path = shared_vocab.save(tmp_path / "v.model")
    assert SubwordVocabulary.load(path).tokens == shared_vocab.tokens
    with pytest.raises(MissingFileError, match="subword model file not found"):
        SubwordVocabulary.load(tmp_path / "missing.model")
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match="bad.model is invalid"):
        SubwordVocabulary.load(tmp_path / "bad.model")


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"tokenizer": "bpe"}, "tokenizer must be one of word, subword. Received: tokenizer='bpe'"),
        ({"shared_vocab": True}, "shared_vocab needs tokenizer='subword'"),
        (
            {"tokenizer": "subword", "shared_vocab": True, "target_vocab_size": 999},
            "source_vocab_size and target_vocab_size must be equal",
        ),
        (
            {"tokenizer": "subword", "source_vocab_size": 260},
            "must exceed the 260 fixed pieces",
        ),
    ],
)
def test_config_rejects_bad_tokenizer_settings(changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        TranslatorConfig(**changes)


def test_default_preset_is_shared_subword():
    config = get_config("default")
    assert (config.tokenizer, config.shared_vocab) == ("subword", True)
    assert config.jit_compile and config.copy_augmentation > 0
    assert TranslatorConfig().tokenizer == "word"  # what an old config.json without it means


# --------------------------------------------------------------------------- tied embeddings


def test_shared_vocab_model_ties_one_matrix_and_reloads(tmp_path):
    config = tiny_subword()
    model = build_model(config)
    vocab, dim = config.source_vocab_size, config.embed_dim
    matrices = [w for w in model.weights if tuple(w.shape) in ((vocab, dim), (dim, vocab))]
    assert [w.path for w in matrices] == ["shared_embedding/embeddings"]
    assert not any("logits" in w.path for w in model.weights)
    rng = np.random.default_rng(0)
    source = rng.integers(4, vocab, (3, 7)).astype("int32")
    target = rng.integers(4, vocab, (3, 5)).astype("int32")
    inputs = {SOURCE_INPUT: source, DECODER_INPUT: target}
    logits = keras.ops.convert_to_numpy(model(inputs))
    # The output projection is the embedding matrix, transposed.
    layers = TranslatorLayers(model)
    encoded, mask = layers.encode(source)
    matrix = keras.ops.convert_to_numpy(layers.shared_embedding.embeddings)
    y = layers._embed_target(target)
    for block in layers.decoders:
        y = block(y, encoded, decoder_padding_mask=target != 0, encoder_padding_mask=mask)
    np.testing.assert_allclose(logits, keras.ops.convert_to_numpy(y) @ matrix.T, atol=1e-5)
    # A training step moves the one matrix; the .keras file reloads it with identical outputs.
    from apps.translator.train import compile_model

    compile_model(model, config, total_steps=10)
    model.fit(inputs, target, batch_size=1, epochs=1, verbose=0)  # 3 steps: past lr 0
    assert not np.allclose(keras.ops.convert_to_numpy(layers.shared_embedding.embeddings), matrix)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(inputs)), keras.ops.convert_to_numpy(model(inputs))
    )
    cached = np.asarray(greedy_decode(TranslatorLayers(loaded), source))
    np.testing.assert_array_equal(cached, reference_greedy_decode(loaded, source))


# --------------------------------------------------------------------------- attention labels


def test_merge_attention_sums_source_pieces_and_averages_output_pieces():
    source = ["▁Where", "▁is", "▁To", "m", "?"]
    output = ["▁¿D", "ónde", "▁está", "[END]"]
    weights = np.array(
        [
            [0.5, 0.1, 0.2, 0.1, 0.1],
            [0.3, 0.3, 0.2, 0.1, 0.1],
            [0.1, 0.6, 0.1, 0.1, 0.1],
            [0.2, 0.2, 0.2, 0.2, 0.2],
        ]
    )
    words, out_words, merged = merge_attention(source, output, weights)
    assert words == ["Where", "is", "Tom?"] and out_words == ["¿Dónde", "está", "[END]"]
    np.testing.assert_allclose(
        merged, [[0.4, 0.2, 0.4], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]], atol=1e-12
    )
    assert group_pieces(["▁I", "▁", "<0xF0>", "<0x9F>", "▁x", "y"]) == [[0], [1, 2, 3], [4, 5]]


# --------------------------------------------------------------------------- a trained subword run


SENTENCES = ["Where is Tom?", "", "Xanthippe bought 37 kumquats.", "I ❤️ 寿司.", "Tom is happy."]


@pytest.fixture(scope="module")
def subword_translator(tiny_subword_run):
    return Translator.from_run_dir(tiny_subword_run[0])


def test_subword_run_directory_holds_the_models(tiny_subword_run):
    run_dir, metrics = tiny_subword_run
    source, target = run_dir / SOURCE_SUBWORD_FILE, run_dir / TARGET_SUBWORD_FILE
    assert source.read_bytes() == target.read_bytes()  # shared: one model, twice
    assert (run_dir / "data" / SOURCE_SUBWORD_FILE).read_bytes() == source.read_bytes()
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    assert {SOURCE_SUBWORD_FILE, TARGET_SUBWORD_FILE} <= set(manifest["files"])
    assert manifest["config"]["tokenizer"] == "subword" and metrics["val_subset_sources"] == 40


def test_prepared_ids_decode_to_what_the_translator_writes(tiny_subword_run, subword_translator):
    # Training scores validation ids without TensorFlow's tokeniser (`ids_to_text`);
    # it must give the strings that translating the text gives.
    from apps.translator.evaluate import translate_ids
    from apps.translator.prepared import load_prepared

    prepared = load_prepared(tiny_subword_run[0] / "data")
    references = prepared.references("val")[:30]
    sources = prepared.split("val").sources[:30]
    from_ids = translate_ids(
        subword_translator.model, sources, prepared.target_tokens, tokenizer="subword"
    )
    assert from_ids == subword_translator.translate([english for english, _ in references])


def test_source_stats_count_pieces_and_bytes(subword_translator):
    stats = subword_translator.source_stats(SENTENCES)
    ids = subword_translator.source_vocab.encode(SENTENCES)
    assert stats["num_words"].tolist() == ids.row_lengths().numpy().tolist()
    byte_pieces = [sum(4 <= i < 260 for i in row) for row in ids.to_list()]
    assert stats["num_unknown"].tolist() == byte_pieces
    assert byte_pieces[:2] == [0, 0] and byte_pieces[3] >= 9  # emoji and CJK are bytes
    assert stats["max_words"].tolist() == [20] * 5


def test_attention_plot_labels_are_words(subword_translator, tmp_path):
    from apps.translator.translate import write_attention_plots

    translation = subword_translator.translate(["Where is Tom?"])[0]
    words, out_words, weights = subword_translator.cross_attention("Where is Tom?")
    assert words == ["Where", "is", "Tom?"]
    body = out_words[:-1] if out_words[-1] == "[END]" else out_words
    assert " ".join(body) == translation
    assert weights.shape == (len(out_words), 3)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    paths = write_attention_plots(subword_translator, ["Where is Tom?"], tmp_path)
    assert [p.name for p in paths] == ["line_0001.png"]


# Runs in a fresh interpreter whose imports of this project fail; `import tensorflow_text`
# (argv[3] == "1") registers the SentencePiece ops before loading.
FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("apps", "custom_layers"):
                raise ImportError(f"blocked import of {name}")

    sys.meta_path.insert(0, Blocker())
    import tensorflow as tf
    if sys.argv[3] == "1":
        import tensorflow_text  # noqa: F401

    export_dir, sentences = sys.argv[1], json.loads(sys.argv[2])
    try:
        loaded = tf.saved_model.load(export_dir)
    except Exception as e:
        print(json.dumps({"error": str(e)[:2000]}))
        raise SystemExit(0)
    out = loaded.signatures["serving_default"](sentences=tf.constant(sentences))
    stats = loaded.signatures["source_stats"](sentences=tf.constant(sentences))
    print(json.dumps({
        "translations": [t.decode("utf-8") for t in out["translations"].numpy()],
        "num_words": stats["num_words"].numpy().tolist(),
    }))
    """
)


def _fresh_process(export_dir, sentences, with_tf_text, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(export_dir), json.dumps(sentences)]
        + ["1" if with_tf_text else "0"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_export_reloaded_in_a_fresh_process_equals_the_cli(tiny_subword_run, tmp_path, capsys):
    from apps.translator.cli import main
    from apps.translator.export import export

    exported = export(tiny_subword_run[0], base=tmp_path / "translator")
    status = main(["translate", "--model", str(tiny_subword_run[0]), *SENTENCES])
    out = capsys.readouterr().out
    assert status == 0
    cli_lines = out.split("\n")[: len(SENTENCES)]
    result = _fresh_process(exported, SENTENCES, True, tmp_path)
    assert result["translations"] == cli_lines
    assert cli_lines[1] == "" and all(cli_lines[i] for i in (0, 2, 3, 4))
    num_words = Translator.from_run_dir(tiny_subword_run[0]).source_stats(SENTENCES)["num_words"]
    assert result["num_words"] == num_words.tolist()
    # Without `import tensorflow_text` the SentencePiece ops are unknown (docs/serving.md).
    failed = _fresh_process(exported, SENTENCES, False, tmp_path)
    assert "Sentencepiece" in failed["error"] or "SentencePiece" in failed["error"]


def test_translate_through_a_serving_server_equals_local(
    tiny_subword_run, subword_translator, tmp_path, capsys
):
    from apps.translator.cli import main
    from apps.translator.export import export
    from tests.serving_stub import ServingStub

    base = tmp_path / "translator"
    export(tiny_subword_run[0], base=base)
    with ServingStub({"translator": base}) as stub:
        status = main(["translate", "--server", stub.url, *SENTENCES])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.out.split("\n")[: len(SENTENCES)] == subword_translator.translate(SENTENCES)


# --------------------------------------------------------------------------- old word-level runs


def test_word_level_run_without_tokenizer_field_still_translates(tiny_run, tmp_path):
    # A run directory written before `tokenizer` / `shared_vocab` existed.
    old = tmp_path / "old_run"
    shutil.copytree(tiny_run[0], old, ignore=shutil.ignore_patterns("data"))
    config_path = old / "config.json"
    config = json.loads(config_path.read_text())
    fields = config.get("config", config)
    for key in ("tokenizer", "shared_vocab"):
        fields.pop(key, None)
    config_path.write_text(json.dumps(config))
    assert "tokenizer" not in config_path.read_text()
    sentences = ["Where is Tom?", "Xanthippe bought 37 kumquats."]
    expected = Translator.from_run_dir(tiny_run[0]).translate(sentences)
    old_translator = Translator.from_run_dir(old)
    assert not old_translator.subword
    assert old_translator.translate(sentences) == expected
    assert old_translator.source_stats(sentences)["num_unknown"][1] >= 2  # [UNK] words


# --------------------------------------------------------------------------- copy-through


@pytest.mark.slow
def test_names_and_numbers_copy_through(spa_splits, tmp_path):
    """A small shared-vocabulary model keeps a name and a number it never saw in training.

    `default`'s pipeline (8k shared pieces, copy augmentation) with a 128-wide
    model, 5 epochs over the whole training split: about 16 minutes on 2 cores.
    (3 epochs over 60k pairs were too few: "Xanipp le compró 33333mmmmmm.")
    """
    from apps.translator.train import train

    english = "Xanthippe bought 37 kumquats."
    assert not any("Xanthippe" in p.english or "kumquat" in p.english for p in spa_splits.train)
    config = dataclasses.replace(
        get_config("default"),
        embed_dim=128,
        intermediate_dim=512,
        source_vocab_size=8000,
        target_vocab_size=8000,
        epochs=5,
        warmup_steps=400,
        eval_sentences=0,
        time_budget_minutes=None,
    )
    small = Splits(spa_splits.train, spa_splits.val[:500], spa_splits.test[:10])
    train(config, run_dir=tmp_path / "run", splits=small, verbose=0)
    translation = Translator.from_run_dir(tmp_path / "run").translate([english])[0]
    assert "Xanthippe" in translation and "37" in translation, translation


_TEMPLATES = [
    ("{name} bought {number} apples.", "{name} compró {number} manzanas."),
    ("My name is {name}.", "Me llamo {name}."),
    ("{name} is {number} years old.", "{name} tiene {number} años."),
    ("I saw {name} in {place}.", "Vi a {name} en {place}."),
    ("{name} lives in {place}.", "{name} vive en {place}."),
    ("There are {number} books.", "Hay {number} libros."),
]
_LETTERS = list("abcdefghijklmnopqrstuvwxyz")


def _copy_pairs(n: int, seed: int):
    """Template pairs whose names, places and numbers are random: only copying translates them."""
    from apps.translator.data import Pair

    rng = np.random.default_rng(seed)

    def word():
        return "".join(rng.choice(_LETTERS, rng.integers(3, 10))).capitalize()

    pairs = []
    for _ in range(n):
        english, spanish = _TEMPLATES[rng.integers(len(_TEMPLATES))]
        fill = {"name": word(), "place": word(), "number": str(rng.integers(2, 1000))}
        pairs.append(Pair(english.format(**fill), spanish.format(**fill)))
    return pairs


def test_unseen_names_and_numbers_copy_through_a_shared_vocabulary(tmp_path):
    """Trained on templates with random names and numbers, the shared-vocabulary model copies
    names and numbers it never saw (through subword pieces and tied embeddings)."""
    from apps.translator.train import train

    training = _copy_pairs(4000, seed=0)
    config = dataclasses.replace(
        tiny_subword(),
        sequence_length=32,
        source_vocab_size=400,
        target_vocab_size=400,
        embed_dim=64,
        intermediate_dim=128,
        epochs=16,
        batch_size=64,
        learning_rate=3e-3,
        warmup_steps=50,
        eval_sentences=0,
        seed=3,
    )
    held_out = _copy_pairs(64, seed=1)
    train(config, run_dir=tmp_path / "run", splits=Splits(training, held_out, held_out), verbose=0)
    seen = {w for p in training for w in p.english.split()}
    sentences = [
        "Xanthippe bought 37 apples.",
        "My name is Quzorudro.",
        "Bikalo is 58 years old.",
        "I saw Thipne in Mizoka.",
    ]
    assert not {"Xanthippe", "Quzorudro.", "Bikalo", "Thipne", "Mizoka."} & seen
    translations = Translator.from_run_dir(tmp_path / "run").translate(sentences)
    assert translations == [
        "Xanthippe compró 37 manzanas.",
        "Me llamo Quzorudro.",
        "Bikalo tiene 58 años.",
        "Vi a Thipne en Mizoka.",
    ]

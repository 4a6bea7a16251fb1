"""Tokenisation: what readers need survives (case, accents, ¿ ¡, numbers), unknown words never crash."""

import zipfile

import numpy as np
import pytest
import tensorflow as tf

from apps.common.errors import DataError
from apps.translator.tokens import ids_to_text
from apps.translator.vectorization import (
    END_ID,
    PAD_ID,
    RESERVED_TOKENS,
    START_ID,
    UNK,
    UNK_ID,
    Vocabulary,
    count_words,
    join_words,
    pad_batch,
    split_words,
)


def _words(text):
    return [w.decode("utf-8") for w in split_words([text]).to_list()[0]]


def _round_trip(texts):
    return [t.decode("utf-8") for t in join_words(split_words(texts)).numpy()]


@pytest.mark.parametrize(
    "text, words",
    [
        ("¿Por qué no cogemos un taxi?", ["¿", "Por", "qué", "no", "cogemos", "un", "taxi", "?"]),
        ("¡Qué día!", ["¡", "Qué", "día", "!"]),
        ('Él dijo: "Hola."', ["Él", "dijo", ":", '"', "Hola", ".", '"']),
        ("I don't know Tom's dog.", ["I", "don't", "know", "Tom's", "dog", "."]),
        (
            "Tengo 3.5 euros, 1,000 libros y salgo a las 10:30.",
            [
                "Tengo",
                "3.5",
                "euros",
                ",",
                "1,000",
                "libros",
                "y",
                "salgo",
                "a",
                "las",
                "10:30",
                ".",
            ],
        ),
        ("It's 2:00 p.m. in the U.S.", ["It's", "2:00", "p.m", ".", "in", "the", "U.S", "."]),
        (
            "«Sí», dijo (al final)...",
            ["«", "Sí", "»", ",", "dijo", "(", "al", "final", ")", ".", ".", "."],
        ),
        ("  NIÑO   ñandú\u00a0Ñ ", ["NIÑO", "ñandú", "Ñ"]),
        ("", []),
    ],
)
def test_split_words_separates_punctuation_and_keeps_case_accents_numbers(text, words):
    assert _words(text) == words


@pytest.mark.parametrize(
    "text",
    [
        "¿Por qué no cogemos un taxi?",
        "¡Hola! ¿Cómo estás?",
        'Él dijo: "Hola."',
        "«Sí», dijo ella; luego (en voz baja) añadió: ¿de verdad?",
        "Tengo 3.5 euros, 1,000 libros y salgo a las 10:30.",
        "It's 2:00 p.m. in the U.S., isn't it?",
        "Espera... ¡ya voy!",
        "Güero, pingüino, cañón, acción, Über.",
    ],
)
def test_join_words_round_trips_written_text(text):
    assert _round_trip([text]) == [text]


def test_join_words_normalises_spacing_around_punctuation():
    assert _round_trip(["¿ Dónde está el martillo ?", "Hola , amigo ."]) == [
        "¿Dónde está el martillo?",
        "Hola, amigo.",
    ]


def test_round_trip_holds_for_nearly_all_corpus_sentences(spa_eng_zip):
    with zipfile.ZipFile(spa_eng_zip) as zf:
        lines = zf.read("spa-eng/spa.txt").decode("utf-8").splitlines()[::10]
    for side in (0, 1):
        texts = [line.split("\t")[side] for line in lines]
        same = np.mean([a == b for a, b in zip(texts, _round_trip(texts), strict=True)])
        # Measured: 99.997% (English), 99.98% (Spanish); the rest are typos such as "área ."
        assert same > 0.999


def test_count_words_counts_tokens():
    np.testing.assert_array_equal(count_words(["¿Qué?", "", "a b c"]).numpy(), [3, 0, 3])


@pytest.fixture
def vocab():
    texts = ["¿Dónde está Tom?", "Tom está aquí.", "¿Dónde?", "Aquí está."]
    return Vocabulary.from_texts(texts, max_size=50)


def test_from_texts_orders_by_frequency_then_word(vocab):
    assert vocab.tokens[:4] == RESERVED_TOKENS
    # está x3; ¿ ? Dónde Tom . x2 (ties sorted by the word); Aquí aquí x1.
    assert vocab.tokens[4:] == ("está", ".", "?", "Dónde", "Tom", "¿", "Aquí", "aquí")


def test_from_texts_respects_max_size_and_min_count():
    texts = ["a a a b b c"]
    assert Vocabulary.from_texts(texts, max_size=6).tokens[4:] == ("a", "b")
    assert Vocabulary.from_texts(texts, max_size=50, min_count=2).tokens[4:] == ("a", "b")
    with pytest.raises(ValueError, match="max_size"):
        Vocabulary.from_texts(texts, max_size=4)


def test_unknown_words_map_to_unk_and_never_crash(vocab):
    ids = vocab.encode(["¿Dónde está Zyxwv?", "[END] [UNK] 你好"]).to_list()
    assert ids[0] == [vocab.tokens.index(t) for t in ("¿", "Dónde", "está")] + [
        UNK_ID,
        vocab.tokens.index("?"),
    ]
    # User text cannot inject reserved tokens: brackets are split off.
    assert END_ID not in ids[1] and START_ID not in ids[1] and PAD_ID not in ids[1]
    assert set(ids[1]) <= {UNK_ID}


def test_decode_stops_at_end_and_drops_pad_and_start(vocab):
    ids = [
        [START_ID]
        + [vocab.tokens.index(t) for t in ("¿", "Dónde", "está", "Tom", "?")]
        + [END_ID, vocab.tokens.index("Tom"), PAD_ID],
        [
            vocab.tokens.index("Tom"),
            UNK_ID,
            vocab.tokens.index("."),
            PAD_ID,
            PAD_ID,
            PAD_ID,
            PAD_ID,
            PAD_ID,
            PAD_ID,
        ],
    ]
    texts = [t.decode("utf-8") for t in vocab.decode(ids).numpy()]
    assert texts == ["¿Dónde está Tom?", f"Tom {UNK}."]


def test_encode_decode_round_trip(vocab):
    texts = ["¿Dónde está Tom?", "Tom está aquí."]
    ids = pad_batch(vocab.encode(texts), 12)
    assert ids.shape == (2, 5)  # Padded to the longest sentence, not to 12.
    assert [t.decode("utf-8") for t in vocab.decode(ids).numpy()] == texts


def test_pad_batch_truncates_and_pads_to_the_longest_row():
    ragged = tf.ragged.constant([[5, 6, 7, 8], [9]])
    np.testing.assert_array_equal(pad_batch(ragged, 3).numpy(), [[5, 6, 7], [9, 0, 0]])
    np.testing.assert_array_equal(pad_batch(ragged, 10).numpy(), [[5, 6, 7, 8], [9, 0, 0, 0]])
    empty = tf.ragged.constant([[], []], dtype=tf.int32)
    assert pad_batch(empty, 10).shape == (2, 1)


def test_save_and_load_round_trip(vocab, tmp_path):
    path = vocab.save(tmp_path / "vocab.txt")
    loaded = Vocabulary.load(path)
    assert loaded.tokens == vocab.tokens
    assert path.read_text(encoding="utf-8").splitlines()[: len(RESERVED_TOKENS)] == list(
        RESERVED_TOKENS
    )


def test_invalid_vocabularies_raise(tmp_path):
    with pytest.raises(ValueError, match="reserved tokens"):
        Vocabulary(["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        Vocabulary([*RESERVED_TOKENS, "a", "a"])
    with pytest.raises(ValueError, match="without spaces"):
        Vocabulary([*RESERVED_TOKENS, "a b"])
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        Vocabulary.load(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("hello\nworld\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.txt is invalid"):
        Vocabulary.load(bad)


def test_every_unicode_space_separates_words_so_vocabularies_stay_valid():
    # Sentences are no longer cut at U+2028, U+0085 & co. (only at \n), so these
    # reach the tokenizer; no token may hold one (`check_tokens` refuses spaces).
    spaces = [chr(c) for c in range(0x3001) if chr(c).isspace()]
    assert _words("a" + "a".join(spaces) + "a") == ["a"] * (len(spaces) + 1)
    vocab = Vocabulary.from_texts(["Estoy\u2028aquí.", "Go\x85now\x0cplease"], max_size=20)
    assert set(vocab.tokens[4:]) == {"Estoy", "aquí", ".", "Go", "now", "please"}


def test_damaged_vocabulary_files_say_what_is_wrong(tmp_path):
    path = tmp_path / "vocab_source.txt"
    path.write_text("", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"vocab_source.txt is invalid: A vocabulary must start with the reserved"
    ) as info:
        Vocabulary.load(path)
    assert "copy the run directory again or retrain" in str(info.value)
    path.write_text("\n".join([*RESERVED_TOKENS, "Tom", "Go", "Tom"]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"unique. Received duplicates: \['Tom'\]"):
        Vocabulary.load(path)
    # A form feed inside a line must not split it (that would shift every later id).
    path.write_text("\n".join([*RESERVED_TOKENS, "a\x0cb", "c"]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="without spaces"):
        Vocabulary.load(path)
    path.write_bytes("\r\n".join([*RESERVED_TOKENS, "café"]).encode() + b"\r\n")
    assert Vocabulary.load(path).tokens[4:] == ("café",)
    path.write_bytes("\n".join([*RESERVED_TOKENS, "café"]).encode("latin-1"))
    with pytest.raises(DataError, match="line 5: not UTF-8 text"):
        Vocabulary.load(path)


def test_python_detokeniser_matches_the_graph_one(spa_eng_zip):
    # `tokens.ids_to_text` (NumPy-only processes, e.g. training under JAX) and
    # `Vocabulary.decode` (the exported graph) must write the same strings.
    with zipfile.ZipFile(spa_eng_zip) as zf:
        lines = zf.read("spa-eng/spa.txt").decode("utf-8").splitlines()[::60]
    spanish = [line.split("\t")[1] for line in lines]
    vocab = Vocabulary.from_texts(spanish, max_size=3000)
    ids = pad_batch(vocab.encode(spanish), 40).numpy()
    # Also random rows: marks in every order, [UNK], and [END]/[START]/[PAD] anywhere.
    rng = np.random.default_rng(0)
    marks = [
        vocab.tokens.index(m) for m in ("¿", "?", "¡", "!", '"', ",", ".") if m in vocab.tokens
    ]
    noise = rng.choice([PAD_ID, UNK_ID, START_ID, END_ID, *marks, *range(4, 60)], (500, 12))
    for batch in (ids, noise.astype("int32")):
        expected = [t.decode("utf-8") for t in vocab.decode(batch).numpy()]
        assert [ids_to_text(row, vocab.tokens) for row in batch] == expected
    assert len(marks) == 7 and len(set(expected)) > 400

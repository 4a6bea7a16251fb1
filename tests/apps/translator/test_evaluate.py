"""BLEU/chrF against all references, single-reference BLEU, and the evaluation JSON."""

import json
import re

import numpy as np
import pytest
import sacrebleu

from apps.translator.evaluate import corpus_scores, evaluate

REFERENCES = [
    ["Ve.", "Vete.", "Vaya."],
    ["¿Dónde está Tom?"],
    ["Tengo hambre.", "Estoy hambriento."],
]


def test_perfect_translations_score_100():
    scores = corpus_scores([r[0] for r in REFERENCES], REFERENCES)
    assert scores["bleu"] == 100.0 and scores["chrf"] == 100.0
    assert scores["bleu_single_reference"] == 100.0


def test_any_reference_counts_for_multi_reference_scores():
    hypotheses = ["Vaya.", "¿Dónde está Tom?", "Estoy hambriento."]  # Not the first references.
    scores = corpus_scores(hypotheses, REFERENCES)
    assert scores["bleu"] == 100.0
    assert scores["bleu_single_reference"] < 100.0
    single = sacrebleu.corpus_bleu(hypotheses, [[r[0] for r in REFERENCES]])
    assert scores["bleu_single_reference"] == round(single.score, 2)


def test_scores_equal_sacrebleu_with_padded_reference_streams():
    hypotheses = ["Ve ya.", "¿Dónde está Tom ahora?", "Tengo mucha hambre."]
    scores = corpus_scores(hypotheses, REFERENCES)
    streams = [
        ["Ve.", "¿Dónde está Tom?", "Tengo hambre."],
        ["Vete.", None, "Estoy hambriento."],
        ["Vaya.", None, None],
    ]
    assert scores["bleu"] == round(sacrebleu.corpus_bleu(hypotheses, streams).score, 2)
    assert scores["chrf"] == round(sacrebleu.corpus_chrf(hypotheses, streams).score, 2)
    # Case counts (cased BLEU): lower-cased output scores lower.
    lowered = corpus_scores([h.lower() for h in hypotheses], REFERENCES)
    assert lowered["bleu"] < scores["bleu"]
    assert "tok:13a" in scores["bleu_signature"] and "case:mixed" in scores["bleu_signature"]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="one hypothesis per source"):
        corpus_scores(["a"], REFERENCES)
    with pytest.raises(ValueError, match="at least one reference"):
        corpus_scores(["a"], [[]])


def test_evaluate_on_the_test_split_writes_json_in_the_run_dir(tiny_run, spa_eng_zip):
    run_dir, _ = tiny_run
    results, path = evaluate(run_dir, data=spa_eng_zip, split="test", limit=30)
    assert path == run_dir / "evaluation_test.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(results))
    assert saved["num_sources"] == 30 and saved["num_pairs"] >= 30
    assert len(saved["samples"]) == 20
    assert all(s["references"] and isinstance(s["translation"], str) for s in saved["samples"])
    for key in ("bleu", "chrf", "bleu_single_reference"):
        assert 0.0 <= saved[key] <= 100.0


def test_unknown_split_is_rejected(tiny_run, spa_eng_zip):
    with pytest.raises(ValueError, match="split must be one of train, val, test"):
        evaluate(tiny_run[0], data=spa_eng_zip, split="dev")


@pytest.mark.parametrize("batch_size", [0, -1, True, 2.0])
def test_translate_ids_refuses_a_bad_batch_size(batch_size):
    # Checked before any work (0 used to fail inside range(), -1 to score BLEU 0 silently).
    from apps.common.errors import UserError
    from apps.translator.evaluate import translate_ids

    with pytest.raises(UserError, match=re.escape(f"Received: batch_size={batch_size!r}")):
        translate_ids(None, np.zeros((2, 4), "int32"), [], batch_size=batch_size)


def test_rare_word_pairs_holds_sentences_with_a_word_seen_under_three_times():
    from apps.translator.data import Pair
    from apps.translator.evaluate import english_words, rare_word_pairs

    train = [Pair("Tom is here.", "a"), Pair("Tom is tall.", "b"), Pair("Tom is here!", "c")]
    test = [
        Pair("Tom is here.", "x"),  # Tom 3, is 3, here 2: rare
        Pair("Tom is.", "y"),  # Tom 3, is 3: not rare
        Pair("Xanthippe is.", "z"),  # unseen: rare
        Pair("tom is.", "w"),  # case-sensitive: "tom" unseen
    ]
    assert english_words("Don't stop, well-known 37!") == ["Don't", "stop", "well-known", "37"]
    assert [p.spanish for p in rare_word_pairs(train, test)] == ["x", "z", "w"]
    assert [p.spanish for p in rare_word_pairs(train, test, max_count=2)] == ["z", "w"]


def test_long_sentence_pairs_counts_space_separated_words():
    from apps.translator.data import Pair
    from apps.translator.evaluate import long_sentence_pairs

    pairs = [
        Pair("One two three four five six seven eight nine ten.", "a"),  # 10 words
        Pair("One two three four five six seven eight nine.", "b"),  # 9
        Pair("¿Is it,really?  A  b c d e f g h", "c"),  # 10: punctuation is not a word
    ]
    assert [p.spanish for p in long_sentence_pairs(pairs)] == ["a", "c"]
    assert [p.spanish for p in long_sentence_pairs(pairs, min_words=9)] == ["a", "b", "c"]


def test_copy_probe_holds_unseen_names_and_numbers_and_copy_rate_counts_them():
    from apps.translator.evaluate import copy_probe, copy_rate

    known = {"Tom", "boston", "Mary"}
    probes = copy_probe(200, known, seed=1)
    assert len(probes) == 200 and probes == copy_probe(200, known, seed=1)
    for sentence, tokens in probes:
        assert tokens and all(t in sentence for t in tokens)
        for token in tokens:
            assert (
                token.isdigit()
                and 10 <= int(token) < 10_000
                or (
                    token.isalpha()
                    and token[0].isupper()
                    and token.lower() not in {"tom", "boston", "mary"}
                )
            )
    probes = [("Zorba has 37 cats.", ["Zorba", "37"]), ("My name is Quil.", ["Quil"])]
    rate = copy_rate(probes, ["Zorba tiene 370 gatos.", "Me llamo Quil."])
    assert rate == {
        "sentences": 2,
        "names": 2,
        "names_copied": 1.0,
        "numbers": 1,
        "numbers_copied": 0.0,
    }

"""Copy augmentation: which tokens count as names and numbers, and how pairs are rewritten."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from apps.translator.augment import copy_augment, copyable_tokens, word_counts
from apps.translator.config import TranslatorConfig, tiny_subword
from apps.translator.data import Pair, Splits
from apps.translator.prepare import prepare

PAIRS = [
    Pair("Tom lives in Boston.", "Tom vive en Boston."),
    Pair("No, I don't.", "No, no lo hago."),
    Pair("I have 3 cats and 12 dogs.", "Tengo 3 gatos y 12 perros."),
    Pair("Mary is here.", "María está aquí."),  # Written differently: not copied.
    Pair("I'm tired.", "Estoy cansado."),
    Pair("Tom saw Mary in 1999.", "Tom vio a Mary en 1999."),
]


def test_copyable_tokens_are_names_and_numbers_written_the_same_on_both_sides():
    counts = word_counts(PAIRS)
    assert (counts["Tom"], counts["tom"], counts["No"], counts["no"]) == (4, 0, 2, 1)
    assert [copyable_tokens(p, counts) for p in PAIRS] == [
        ["Tom", "Boston"],
        [],  # "No" is a word ("no" is as frequent), not a name.
        ["3", "12"],
        [],
        [],
        ["Tom", "Mary", "1999"],
    ]


def test_every_eligible_pair_is_rewritten_consistently_at_fraction_one():
    out, rewritten = copy_augment(PAIRS, 1.0, seed=0)
    assert rewritten == 3 and len(out) == len(PAIRS)
    counts = word_counts(PAIRS)
    for before, after in zip(PAIRS, out, strict=True):
        tokens = copyable_tokens(before, counts)
        if not tokens:
            assert after == before
            continue
        # The same new token on both sides, everywhere the old one was; the rest unchanged.
        new = [t for t in re.findall(r"\w+", after.english) if t not in before.english.split()]
        assert new, after
        pattern = r"\w+"
        old_words, new_words = (re.findall(pattern, p.english) for p in (before, after))
        mapping = {o: n for o, n in zip(old_words, new_words, strict=True) if o != n}
        assert set(mapping) == set(tokens)
        for old, replacement in mapping.items():
            assert replacement not in before.english
            assert replacement.isdigit() == old.isdigit()
            if old.isdigit():
                assert len(replacement) == len(old)
            else:
                assert replacement[0].isupper() and replacement[1:].islower()
        restored = [after.english, after.spanish]
        for old, replacement in mapping.items():
            restored = [re.sub(rf"\b{replacement}\b", old, t) for t in restored]
        assert Pair(*restored) == before


def test_fraction_zero_is_the_identity_and_the_seed_decides():
    assert copy_augment(PAIRS, 0.0, seed=0) == (PAIRS, 0)
    many = PAIRS * 200
    first, n = copy_augment(many, 0.5, seed=0)
    assert copy_augment(many, 0.5, seed=0) == (first, n)
    assert copy_augment(many, 0.5, seed=1)[0] != first
    # 600 eligible pairs, half chosen: a binomial count within 4 standard deviations.
    assert abs(n - 300) <= 4 * np.sqrt(600 * 0.25)
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
        copy_augment(PAIRS, 1.5, seed=0)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"copy_augmentation": 1.2}, r"copy_augmentation must be a fraction in \[0, 1\]"),
        ({"copy_augmentation": True}, r"copy_augmentation must be a fraction"),
        ({"copy_augmentation": 0.5, "tokenizer": "word"}, "copy_augmentation needs tokenizer"),
    ],
)
def test_config_checks_copy_augmentation(changes, message):
    fields = {**dataclasses.asdict(tiny_subword()), "shared_vocab": False, **changes}
    with pytest.raises(ValueError, match=message):
        TranslatorConfig(**fields)


def test_prepare_rewrites_training_pairs_only_and_learns_the_vocabulary_first(spa_splits, tmp_path):
    splits = Splits(spa_splits.train[:3000], spa_splits.val[:200], spa_splits.test[:50])
    plain_dir, augmented_dir = tmp_path / "plain", tmp_path / "augmented"
    prepare(tiny_subword(), plain_dir, splits=splits)
    config = dataclasses.replace(tiny_subword(), copy_augmentation=0.5)
    manifest = prepare(config, augmented_dir, splits=splits)
    eligible = sum(bool(copyable_tokens(p, word_counts(splits.train))) for p in splits.train)
    assert eligible > 300  # Tom alone is in many of them.
    assert abs(manifest["splits"]["train"]["copy_augmented_pairs"] - eligible / 2) <= 4 * np.sqrt(
        eligible / 4
    )
    for name in ("vocab_source.txt", "subword_source.model", "val.npz", "test.npz"):
        assert (augmented_dir / name).read_bytes() == (plain_dir / name).read_bytes(), name
    assert (augmented_dir / "train.npz").read_bytes() != (plain_dir / "train.npz").read_bytes()
    plain_manifest = json.loads((plain_dir / "manifest.json").read_text())
    assert plain_manifest["splits"]["train"]["copy_augmented_pairs"] == 0

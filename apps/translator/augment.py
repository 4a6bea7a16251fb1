"""Copy augmentation: teach the model to copy names and numbers it has never seen.

The corpus names few people (mostly Tom and Mary) and few places, so a model
trained on it learns "Tom" → "Tom", not "copy the name". A user's name,
number or city then comes out as some other word, even though subword pieces
can spell it and a shared vocabulary gives it the same ids on both sides.

`copy_augment` rewrites a seeded fraction of the training pairs that hold a
*copyable* token — one written identically in the English and the Spanish
sentence that is

- a name: a capitalised word (`Tom`, not `OK`) whose lower-case form is
  rare in the training split, under 1/20 of its capitalised uses (so "Tom",
  "Boston", "Mary" qualify; "No", "El", "Hola" do not), or
- a number: a run of digits,

and replaces every occurrence of each such token, on both sides, with a
random one (names: 3-10 random Latin letters or 2-3 fragments of corpus
words, capitalised; numbers: as many random digits). The rest of each sentence is kept,
so the pair stays a correct translation. Only the training split is
rewritten, after the vocabulary is learned from the original text, and the
same seed gives the same pairs (a resumed or repeated preparation is
identical). See "copy_augmentation" in `config.py`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from apps.translator.data import Pair

_TOKEN = re.compile(r"\w+")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_ACCENTED = "áéíóúñüçàèëïöåøäšžł"
# A capitalised word is a name when its lower-case form is written less often
# than this share of its capitalised uses ("Tom" 35,844 vs "tom" 2; "No" 8,626
# vs "no" 10,999).
_NAME_LOWER_SHARE = 1 / 20


def word_counts(pairs: Sequence[Pair]) -> Counter:
    r"""How often each word (`\w+`, case kept) is written in `pairs`, both sides."""
    counts = Counter()
    for pair in pairs:
        for text in pair:
            counts.update(_TOKEN.findall(text))
    return counts


def copyable_tokens(pair: Pair, counts: Counter) -> list[str]:
    """The names and numbers written identically in both sentences of `pair`, in English order.

    `counts` is `word_counts` of the training split.
    """
    spanish = set(_TOKEN.findall(pair.spanish))
    found = []
    for token in _TOKEN.findall(pair.english):
        if token in found or token not in spanish:
            continue
        is_number = token.isdigit() and token.isascii()
        is_name = (
            len(token) >= 2
            and token.isalpha()
            and token[0].isupper()
            and token[1:].islower()
            and counts[token.lower()] < _NAME_LOWER_SHARE * counts[token]
        )
        if is_number or is_name:
            found.append(token)
    return found


def _random_name(rng: np.random.Generator, words: Sequence[str]) -> str:
    """Half the time 3-10 random letters (now and then accented), else 2-3 fragments of
    corpus words ("Xanthippe"-like: its pieces are the vocabulary's), capitalised."""
    if rng.random() < 0.5:
        letters = [
            rng.choice(list(_ACCENTED if rng.random() < 0.05 else _LETTERS))
            for _ in range(int(rng.integers(3, 11)))
        ]
        return "".join(letters).capitalize()
    fragments = []
    for _ in range(int(rng.integers(2, 4))):
        word = words[int(rng.integers(len(words)))]
        start = int(rng.integers(0, len(word) - 1))
        fragments.append(word[start : start + int(rng.integers(2, 5))])
    return "".join(fragments).capitalize()


def _random_number(rng: np.random.Generator, digits: int) -> str:
    """A random number of `digits` digits (no leading zero unless one digit)."""
    low = 10 ** (digits - 1) if digits > 1 else 0
    return str(int(rng.integers(low, 10**digits)))


def _replace(text: str, mapping: dict[str, str]) -> str:
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, mapping)) + r")\b")
    return pattern.sub(lambda m: mapping[m.group(1)], text)


def copy_augment(pairs: Sequence[Pair], fraction: float, seed: int) -> tuple[list[Pair], int]:
    """Replaces the names and numbers of a `fraction` of the pairs that hold any.

    Args:
        pairs: the training pairs.
        fraction: in [0, 1]: the share of the pairs with copyable tokens
            that are rewritten (0 returns `pairs` unchanged).
        seed: seeds which pairs are chosen and the new names and numbers.

    Returns:
        `(pairs, rewritten)`: the pairs in the same order, and how many were
        rewritten.

    Raises:
        ValueError: `fraction` is outside [0, 1].
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1]. Received: fraction={fraction!r}")
    if fraction == 0.0:
        return list(pairs), 0
    rng = np.random.default_rng([seed, 0xC0B1])
    counts = word_counts(pairs)
    words = sorted(w for w in counts if w.isalpha() and w.islower() and len(w) >= 4)
    out, rewritten = [], 0
    for pair in pairs:
        tokens = copyable_tokens(pair, counts)
        if tokens and rng.random() < fraction:
            mapping = {
                t: (_random_number(rng, len(t)) if t.isdigit() else _random_name(rng, words))
                for t in tokens
            }
            pair = Pair(_replace(pair.english, mapping), _replace(pair.spanish, mapping))
            rewritten += 1
        out.append(pair)
    return out, rewritten

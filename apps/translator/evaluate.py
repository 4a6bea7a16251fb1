"""Evaluation: sacreBLEU and chrF against every reference of each source sentence.

Scores (sacreBLEU defaults: BLEU with the `13a` tokenisation, cased; chrF2):

- `bleu`, `chrf`: multi-reference, each English source once, scored against
  all its Spanish translations in the corpus (the split keeps them together);
- `bleu_single_reference`: each source against its first translation only
  (in file order), for comparison with single-reference figures.

The JSON also holds 20 sample translations (a fixed pseudo-random choice).
`--pairs FILE` scores any external `English<TAB>Spanish` file the same way.
"""

from __future__ import annotations

import collections
import os
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import sacrebleu

from apps.common.errors import DataError, UserError
from apps.common.io import atomic_write_json
from apps.translator.batches import length_buckets
from apps.translator.data import Pair, Splits, group_references, load_splits, read_pairs
from apps.translator.prepared import Prepared
from apps.translator.tokens import ids_to_text


def corpus_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Multi-reference BLEU and chrF plus single-reference BLEU (first reference).

    Args:
        hypotheses: one translation per source.
        references: for each source, its list of reference translations (>= 1).
    """
    if len(hypotheses) != len(references):
        raise ValueError(
            f"Expected one hypothesis per source. Received: {len(hypotheses)} hypotheses "
            f"for {len(references)} sources."
        )
    if not hypotheses or any(not refs for refs in references):
        raise ValueError("Every source needs at least one reference, and there must be sources.")
    width = max(len(refs) for refs in references)
    # sacreBLEU takes reference *streams*; None pads sources with fewer references.
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    bleu_score = bleu.corpus_score(list(hypotheses), streams)
    chrf_score = chrf.corpus_score(list(hypotheses), streams)
    single = sacrebleu.metrics.BLEU().corpus_score(list(hypotheses), [streams[0]])
    return {
        "bleu": round(bleu_score.score, 2),
        "chrf": round(chrf_score.score, 2),
        "bleu_single_reference": round(single.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "bleu_detail": str(bleu_score),
    }


def evaluate_pairs(
    translator,
    pairs: Sequence[Pair],
    limit: int | None = None,
    num_samples: int = 20,
    batch_size: int = 64,
    seed: int = 0,
) -> dict:
    """Translates each distinct English sentence of `pairs` once and scores it.

    Args:
        translator: a `Translator` or `ExportedTranslator`.
        pairs: sentence pairs; lines sharing an English sentence are references of one source.
        limit: score only `limit` sources, evenly spaced over `pairs` (the corpus
            is sorted by length, so the first ones would all be short).
        num_samples: sample translations to include.
    """
    grouped = select_evenly(group_references(pairs), limit)
    sources = [english for english, _ in grouped]
    references = [refs for _, refs in grouped]
    start = time.perf_counter()
    hypotheses = translator.translate(sources, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return score_translations(sources, references, hypotheses, seconds, num_samples, seed)


# Words for counting rarity: letters/digits, with inner apostrophes or hyphens (don't, well-known).
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


def english_words(text: str) -> list[str]:
    """The words of an English sentence, case kept (punctuation left out), for rarity counts."""
    return _WORD.findall(text)


def rare_word_pairs(train_pairs: Sequence[Pair], pairs: Sequence[Pair], max_count: int = 3):
    """The pairs whose English holds a word seen fewer than `max_count` times in `train_pairs`.

    A proxy for text the corpus never saw: with word tokens such a word is
    `[UNK]` or barely learnt. Words are `english_words` (case-sensitive, as
    the word vocabularies are); unseen words count 0 times.
    """
    counts = collections.Counter(w for p in train_pairs for w in english_words(p.english))
    return [p for p in pairs if any(counts[w] < max_count for w in english_words(p.english))]


def long_sentence_pairs(pairs: Sequence[Pair], min_words: int = 10) -> list[Pair]:
    """The pairs whose English has at least `min_words` space-separated words.

    A proxy for the longer sentences users write (the Tatoeba sentences newer
    than the corpus average more words than it): subword pieces outnumber words,
    so these are the ones that come nearest the model's `sequence_length`.
    """
    return [p for p in pairs if len(p.english.split()) >= min_words]


# English sentences in the corpus's style, each with a slot for a name, a place or a number.
_COPY_TEMPLATES = (
    "{name} bought {number} books.",
    "My name is {name}.",
    "{name} is {number} years old.",
    "I met {name} in {place}.",
    "{name} lives in {place}.",
    "There are {number} students in the class.",
    "{name} has {number} cats.",
    "Tell {name} that I called.",
)


def copy_probe(n: int, known_words: set[str], seed: int = 0) -> list[tuple[str, list[str]]]:
    """`n` template sentences holding names, places and numbers never seen in training.

    Names and places are 4-9 random lower-case letters, capitalised, that are
    not in `known_words` (the training split's `english_words`, any case);
    numbers have 2-4 digits. Returns `(sentence, tokens to copy)` pairs: a
    translation should hold each token exactly as written.
    """
    rng = np.random.default_rng([seed, 37])
    known = {w.lower() for w in known_words}
    letters = list("abcdefghijklmnopqrstuvwxyz")

    def name():
        while True:
            word = "".join(rng.choice(letters, int(rng.integers(4, 10))))
            if word not in known:
                return word.capitalize()

    probes = []
    for _ in range(n):
        template = _COPY_TEMPLATES[int(rng.integers(len(_COPY_TEMPLATES)))]
        fill = {
            "name": name(),
            "place": name(),
            "number": str(int(rng.integers(10, 10_000))),
        }
        tokens = [fill[key] for key in ("name", "place", "number") if "{" + key + "}" in template]
        probes.append((template.format(**fill), tokens))
    return probes


def copy_rate(probes: Sequence[tuple[str, list[str]]], translations: Sequence[str]) -> dict:
    """The share of `copy_probe` tokens found, as written, in their sentence's translation."""
    found = {"name": [], "number": []}
    for (_, tokens), translation in zip(probes, translations, strict=True):
        words = set(re.findall(r"\w+", translation))
        for token in tokens:
            found["number" if token.isdigit() else "name"].append(token in words)
    return {
        "sentences": len(probes),
        "names": len(found["name"]),
        "names_copied": round(float(np.mean(found["name"])), 4) if found["name"] else None,
        "numbers": len(found["number"]),
        "numbers_copied": round(float(np.mean(found["number"])), 4) if found["number"] else None,
    }


def select_evenly(items: Sequence, limit: int | None) -> list:
    """`limit` items evenly spaced over `items` (all of them if `limit` is None or larger)."""
    items = list(items)
    if limit is None or limit >= len(items):
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def score_translations(
    sources: Sequence[str],
    references: Sequence[Sequence[str]],
    hypotheses: Sequence[str],
    seconds: float,
    num_samples: int = 20,
    seed: int = 0,
) -> dict:
    """The result of `evaluate_pairs` for translations already made (see there)."""
    result = {
        "num_sources": len(sources),
        "num_pairs": sum(len(r) for r in references),
        **corpus_scores(hypotheses, references),
        "translate_seconds": round(seconds, 2),
        "sentences_per_second": round(len(sources) / seconds, 1) if seconds > 0 else None,
    }
    picks = sorted(random.Random(seed).sample(range(len(sources)), min(num_samples, len(sources))))
    result["samples"] = [
        {"english": sources[i], "translation": hypotheses[i], "references": references[i]}
        for i in picks
    ]
    return result


def evaluate(
    model: str | os.PathLike,
    data: str | os.PathLike | None = None,
    split: str = "test",
    pairs_file: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    limit: int | None = None,
    batch_size: int = 64,
) -> tuple[dict, Path]:
    """Scores a run directory (or export) on a split of the corpus or on `pairs_file`.

    Writes the JSON to `output`, by default `<run dir>/evaluation_<split or file stem>.json`
    (for an export: the working directory's `runs/translator/`).

    Returns:
        (the results, the JSON path).

    Raises:
        DataError: the chosen split of `data` is empty; `pairs_file` or `data`
            cannot be read (see `data.read_pairs`).
    """
    from apps.translator.translate import load_translator

    translator = load_translator(model)
    if pairs_file is not None:
        pairs = read_pairs(pairs_file)
        name = Path(pairs_file).stem
    else:
        if split not in Splits._fields:
            raise UserError(
                f"split must be one of {', '.join(Splits._fields)}. Received: split={split!r}"
            )
        splits = load_splits(data)
        pairs = getattr(splits, split)
        name = split
        if not pairs:
            counts = ", ".join(f"{len(getattr(splits, k))} {k}" for k in Splits._fields)
            raise DataError(
                f"the {split} split of {data or 'the corpus'} is empty ({counts} pairs): "
                "nothing to score. Pass a larger corpus with --data, another --split, or "
                "--pairs FILE."
            )
    results = {"model": str(model), "data": str(pairs_file or data or "download"), "split": name}
    results.update(evaluate_pairs(translator, pairs, limit=limit, batch_size=batch_size))
    if output is None:
        base = Path(model) if Path(model, "config.json").is_file() else Path("runs", "translator")
        output = base / f"evaluation_{name}.json"
    return results, atomic_write_json(output, results)


def translate_ids(
    model: keras.Model,
    sources: np.ndarray,
    target_tokens: Sequence[str],
    batch_size: int = 64,
    tokenizer: str = "word",
) -> list[str]:
    """Translates rows of source ids with cached greedy decoding; no TensorFlow needed.

    The text is what `Translator.translate` returns for the same sentences
    (`tokens.ids_to_text` is the Python twin of the graph's detokeniser); an
    all-padding row translates to `""`. Rows are batched by length; each batch
    is cut to its bucket width and filled up to `batch_size` rows, so the
    decoder compiles once per bucket width. `tokenizer` is the run's
    (`"word"` or `"subword"`: how `ids_to_text` joins the tokens).
    """
    from apps.translator.decoding import compile_decoder
    from apps.translator.model import TranslatorLayers

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(
            f"batch_size must be a positive integer. Received: batch_size={batch_size!r}"
        )
    layers = TranslatorLayers(model)
    decode = compile_decoder(layers, target_tokens=target_tokens)
    sources = np.asarray(sources, "int32")
    lengths = np.count_nonzero(sources, axis=1)
    bucket, bucket_widths = length_buckets(np.maximum(lengths, 1), sources.shape[1])
    widths = bucket_widths[bucket]
    out = [""] * len(sources)
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = np.zeros((batch_size, int(widths[rows].max())), "int32")
        batch[: len(rows)] = sources[rows, : batch.shape[1]]
        ids = np.asarray(decode(batch))
        for row, output in zip(rows, ids, strict=False):
            if lengths[row]:
                out[row] = ids_to_text(output, target_tokens, tokenizer)
    return out


def evaluate_ids(
    model: keras.Model,
    prepared: Prepared,
    split: str = "val",
    limit: int | None = None,
    num_samples: int = 20,
    batch_size: int = 64,
    seed: int = 0,
) -> dict:
    """BLEU/chrF of `model` on a prepared split, as `evaluate.evaluate_pairs` computes them.

    The same sources (all, or `limit` evenly spaced ones), references, scores
    and samples as `evaluate_pairs` on the split's text pairs, without
    tokenising text (so without TensorFlow). Training scores its best
    checkpoint with it, on every backend.
    """
    references = prepared.references(split)
    sources = prepared.split(split).sources
    if sources is None or len(sources) != len(references):
        raise DataError(
            f"{prepared.path}: {split}.npz and {split}_references.json do not match; "
            "re-run translator prepare."
        )
    picks = select_evenly(range(len(references)), limit)
    start = time.perf_counter()
    hypotheses = translate_ids(
        model, sources[picks], prepared.target_tokens, batch_size, prepared.config.tokenizer
    )
    seconds = time.perf_counter() - start
    return score_translations(
        [references[i][0] for i in picks],
        [references[i][1] for i in picks],
        hypotheses,
        seconds,
        num_samples,
        seed,
    )

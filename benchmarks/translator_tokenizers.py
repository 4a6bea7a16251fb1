"""Tokenizers for the translator, measured on the real corpus: why SentencePiece.

For each candidate, learned from the training split only:

- `word`: the word-level vocabularies (12k English / 16k Spanish words);
- `sentencepiece`: SentencePiece unigram (`apps/translator/subword.py`), shared
  English+Spanish vocabularies of 8k and 16k pieces, and separate 8k + 8k;
- `fast_wordpiece` (English only): TF Text's `FastWordpieceTokenizer` over a
  WordPiece vocabulary of 8k made by TF Text's `bert_vocab_from_dataset`
  (the TF text tutorial's recipe; case kept), for comparison with
  SentencePiece on the same side and size.

it reports, on the test split: the share of sentences whose text -> ids -> text
round trip is exact, unknown tokens (`[UNK]`; byte-fallback pieces are
counted apart), tokens per sentence (mean, 99th percentile), the share of
training pairs that fit `sequence_length` 24, vocabulary learning seconds and
in-graph tokenisation throughput (sentences/s, one `tf.function` over batches
of 256).

    python benchmarks/translator_tokenizers.py [--data spa-eng.zip] [--no-wordpiece]

Writes `benchmarks/results/translator_tokenizers.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from apps.common.data import find_shared_data  # noqa: E402
from apps.common.io import atomic_write_json  # noqa: E402
from apps.common.machine import machine_info  # noqa: E402
from apps.translator.config import TranslatorConfig  # noqa: E402
from apps.translator.data import load_splits  # noqa: E402
from apps.translator.subword import SubwordVocabulary, python_normalize_spaces  # noqa: E402
from apps.translator.tokens import UNK_ID, byte_piece_value  # noqa: E402
from apps.translator.vectorization import build_vocabularies  # noqa: E402

SEQUENCE_LENGTH = 24


def _throughput(encode, texts, batch=256, repeats=2) -> float:
    fn = tf.function(lambda t: encode(t).flat_values)
    fn(tf.constant(texts[:batch]))  # trace
    start = time.perf_counter()
    for _ in range(repeats):
        for i in range(0, len(texts), batch):
            fn(tf.constant(texts[i : i + batch]))
    return round(repeats * len(texts) / (time.perf_counter() - start), 1)


def _side(vocab, texts, decode=None) -> dict:
    ids = vocab.encode(texts)
    lengths = ids.row_lengths().numpy()
    flat = ids.flat_values.numpy()
    decoded = [t.decode("utf-8") for t in (decode or vocab.decode)(ids).numpy()]
    expected = [python_normalize_spaces(t) for t in texts]
    tokens = getattr(vocab, "tokens", None)
    byte_ids = (
        {i for i, t in enumerate(tokens) if byte_piece_value(t) is not None} if tokens else set()
    )
    return {
        "round_trip_exact": round(
            float(np.mean([a == b for a, b in zip(decoded, expected, strict=True)])), 4
        ),
        "round_trip_failures": [[b, a] for a, b in zip(decoded, expected, strict=True) if a != b][
            :3
        ],
        "unknown_token_rate": round(float(np.mean(flat == UNK_ID)), 5),
        "sentences_with_unknown": round(float(np.mean([UNK_ID in r for r in ids.to_list()])), 4),
        "byte_piece_rate": round(float(np.mean([i in byte_ids for i in flat])), 5),
        "tokens_per_sentence": round(float(lengths.mean()), 2),
        "tokens_p99": int(np.percentile(lengths, 99)),
    }


def _fits(source_vocab, target_vocab, pairs) -> float:
    src = source_vocab.encode([p.english for p in pairs]).row_lengths().numpy()
    tgt = target_vocab.encode([p.spanish for p in pairs]).row_lengths().numpy()
    return round(float(np.mean((src <= SEQUENCE_LENGTH) & (tgt + 1 <= SEQUENCE_LENGTH))), 4)


def measure_config(name, config, splits) -> dict:
    start = time.perf_counter()
    source_vocab, target_vocab = build_vocabularies(splits.train, config)
    learn_seconds = round(time.perf_counter() - start, 1)
    english = [p.english for p in splits.test]
    spanish = [p.spanish for p in splits.test]
    result = {
        "name": name,
        "tokenizer": config.tokenizer,
        "shared_vocab": config.shared_vocab,
        "vocab_sizes": [source_vocab.size, target_vocab.size],
        "learn_seconds": learn_seconds,
        "english": _side(source_vocab, english),
        "spanish": _side(target_vocab, spanish),
        "train_pairs_fitting_24": _fits(source_vocab, target_vocab, splits.train),
        "english_sentences_per_second": _throughput(source_vocab.encode, english),
    }
    print(name, {k: result[k] for k in ("vocab_sizes", "learn_seconds")}, flush=True)
    print("  english", result["english"], flush=True)
    print("  spanish", result["spanish"], flush=True)
    return result


def measure_wordpiece(splits, vocab_size=8000) -> dict:
    """FastWordpiece over a WordPiece vocabulary learned by TF Text's tutorial recipe."""
    import tensorflow_text as tf_text
    from tensorflow_text.tools.wordpiece_vocab import bert_vocab_from_dataset as bert_vocab

    english = [p.english for p in splits.train]
    start = time.perf_counter()
    vocab = bert_vocab.bert_vocab_from_dataset(
        tf.data.Dataset.from_tensor_slices(english).batch(1000).prefetch(2),
        vocab_size=vocab_size,
        reserved_tokens=["[PAD]", "[UNK]", "[START]", "[END]"],
        bert_tokenizer_params={"lower_case": False},
        learn_params={},
    )
    learn_seconds = round(time.perf_counter() - start, 1)
    tokenizer = tf_text.FastWordpieceTokenizer(
        vocab=vocab, token_out_type=tf.int32, unknown_token="[UNK]", support_detokenization=True
    )

    class WordPieces:
        tokens = None

        @staticmethod
        def encode(text):
            return tokenizer.tokenize(tf.convert_to_tensor(text))

        @staticmethod
        def decode(ids):
            return tokenizer.detokenize(ids)

    test = [p.english for p in splits.test]
    result = {
        "name": f"fast_wordpiece_english_{vocab_size // 1000}k",
        "vocab_sizes": [len(vocab)],
        "learn_seconds": learn_seconds,
        "english": _side(WordPieces, test),
        "english_sentences_per_second": _throughput(WordPieces.encode, test),
    }
    print(result["name"], result["english"], flush=True)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--no-wordpiece", action="store_true", help="skip FastWordpiece")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    splits = load_splits(args.data or find_shared_data("spa-eng/spa-eng.zip"))
    word = TranslatorConfig()
    subword = dataclasses.replace(word, tokenizer="subword")
    candidates = [
        ("word_12k_16k", word),
        (
            "sentencepiece_shared_16k",
            dataclasses.replace(
                subword, shared_vocab=True, source_vocab_size=16000, target_vocab_size=16000
            ),
        ),
        (
            "sentencepiece_shared_8k",
            dataclasses.replace(
                subword, shared_vocab=True, source_vocab_size=8000, target_vocab_size=8000
            ),
        ),
        (
            "sentencepiece_separate_8k_8k",
            dataclasses.replace(subword, source_vocab_size=8000, target_vocab_size=8000),
        ),
    ]
    results = [measure_config(name, config, splits) for name, config in candidates]
    english_8k = SubwordVocabulary.from_texts([p.english for p in splits.train], 8000)
    test = [p.english for p in splits.test]
    results.append(
        {
            "name": "sentencepiece_english_8k",
            "vocab_sizes": [english_8k.size],
            "english": _side(english_8k, test),
            "english_sentences_per_second": _throughput(english_8k.encode, test),
        }
    )
    if not args.no_wordpiece:
        results.append(measure_wordpiece(splits))
    output = args.output or ROOT / "benchmarks" / "results" / "translator_tokenizers.json"
    atomic_write_json(
        output,
        {
            "command": "python benchmarks/translator_tokenizers.py " + " ".join(sys.argv[1:]),
            "machine": machine_info(),
            "test_sentences": len(splits.test),
            "results": results,
        },
    )
    print(f"wrote {output}")


if __name__ == "__main__":
    main()

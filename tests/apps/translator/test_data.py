"""Reading, splitting and batching the real spa-eng corpus."""

import os
import threading
import warnings
import zipfile

import numpy as np
import pytest

from apps.common.errors import DataError, MissingFileError
from apps.translator.batches import bucket_boundaries, make_dataset
from apps.translator.data import (
    SPA_ENG_SHA256,
    Pair,
    check_split_sizes,
    group_references,
    load_pairs,
    parse_pairs,
    read_pairs,
    split_of,
    split_pairs,
)
from apps.translator.vectorization import END_ID, PAD_ID, START_ID, Vocabulary


def test_load_pairs_reads_the_whole_real_archive(spa_eng_zip):
    pairs = load_pairs(spa_eng_zip)
    assert len(pairs) == 118964
    assert pairs[0] == Pair("Go.", "Ve.")
    assert Pair("Run!", "¡Corre!") in pairs[:10]


def test_text_file_and_zip_give_the_same_pairs(spa_eng_zip, tmp_path):
    text = zipfile.ZipFile(spa_eng_zip).read("spa-eng/spa.txt")
    path = tmp_path / "spa.txt"
    path.write_bytes(text[:5000].rsplit(b"\n", 1)[0] + b"\n")
    from_text = read_pairs(path)
    assert from_text == load_pairs(spa_eng_zip)[: len(from_text)]


def test_parse_pairs_ignores_blank_lines_and_extra_columns():
    text = "Hi.\tHola.\tCC-BY 2.0 (France) Attribution\n\n  \nGo.\t Ve. \n"
    assert parse_pairs(text) == [Pair("Hi.", "Hola."), Pair("Go.", "Ve.")]


@pytest.mark.parametrize("line", ["no tab here", "Hi.\t", "\tHola."])
def test_parse_pairs_rejects_malformed_lines_naming_the_line(line):
    with pytest.raises(ValueError, match=r"pairs.txt, line 2: expected 'English<TAB>Spanish'"):
        parse_pairs("Hi.\tHola.\n" + line, "pairs.txt")


def test_missing_and_empty_files_raise_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found"):
        load_pairs(tmp_path / "nope.zip")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no sentence pairs"):
        read_pairs(empty)
    assert len(SPA_ENG_SHA256) == 64


def test_a_truncated_or_damaged_zip_says_so_and_how_to_get_a_good_copy(spa_eng_zip, tmp_path):
    data = spa_eng_zip.read_bytes()
    half = tmp_path / "half.zip"
    half.write_bytes(data[: len(data) // 2])
    damaged = tmp_path / "damaged.zip"  # Complete, but with bytes of the pairs file changed.
    damaged.write_bytes(
        data[:200_000] + bytes(b ^ 0x55 for b in data[200_000:200_100]) + data[200_100:]
    )
    for path in (half, damaged):
        with pytest.raises(DataError, match="is a truncated or corrupt zip archive") as info:
            load_pairs(path)
        assert "download http://storage.googleapis.com" in str(info.value)
        assert "pass --data a complete file" in str(info.value)
    not_a_zip = tmp_path / "spa-eng.zip"
    not_a_zip.write_text("Hi.\tHola.\n", encoding="utf-8")
    with pytest.raises(DataError, match="spa-eng.zip is not a zip archive"):
        load_pairs(not_a_zip)


def test_pairs_are_read_from_a_pipe(tmp_path):
    # `--pairs <(...)` hands over /dev/fd/N: a pipe, which is no regular file.
    read_end, write_end = os.pipe()
    writer = threading.Thread(
        target=lambda: (os.write(write_end, b"Hi.\tHola.\nGo.\tVe.\n"), os.close(write_end))
    )
    writer.start()
    try:
        assert read_pairs(f"/dev/fd/{read_end}") == [Pair("Hi.", "Hola."), Pair("Go.", "Ve.")]
    finally:
        writer.join(5)
        os.close(read_end)


def test_unreadable_inputs_name_the_file_and_the_line(tmp_path):
    with pytest.raises(DataError, match="data file .* is a folder, not a file"):
        load_pairs(tmp_path)
    with pytest.raises(MissingFileError, match="pairs file not found"):
        read_pairs(tmp_path / "nope.tsv")
    latin1 = tmp_path / "latin1.tsv"
    latin1.write_bytes("Hi.\tHola.\nCoffee.\tCafé.\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.tsv, line 2: not UTF-8 text \(byte 0xe9"):
        read_pairs(latin1)


def test_only_newlines_end_a_pair_line(tmp_path):
    # A form feed or U+2028 inside a sentence stays inside it (str.splitlines would
    # cut the line in two, and report a line without a tab); \r\n ends a line.
    path = tmp_path / "pairs.tsv"
    path.write_bytes("Hi.\tHola.\r\nI am\x0chere.\tEstoy\u2028aquí.\r\nGo.\tVe.\n".encode())
    assert read_pairs(path) == [
        Pair("Hi.", "Hola."),
        Pair("I am\x0chere.", "Estoy\u2028aquí."),
        Pair("Go.", "Ve."),
    ]
    with pytest.raises(DataError, match=r"pairs.tsv, line 3: expected 'English<TAB>Spanish'"):
        parse_pairs("Hi.\tHola.\r\nGo.\x85\tVe.\nno tab\n", "pairs.tsv")


def test_split_sizes_below_the_minimum_raise_and_an_empty_test_split_warns():
    with pytest.raises(
        DataError,
        match=r"^data file x.txt gives 2 training, 1 validation and 0 test pairs; training "
        r"needs at least 32 training pairs \(one batch, batch_size=32\) and 1 validation pair",
    ):
        check_split_sizes(2, 1, 0, 32, "data file x.txt")
    with pytest.raises(DataError, match="0 validation"):
        check_split_sizes(100, 0, 5, 32, "data file x.txt")
    with pytest.raises(DataError, match=r"Raise --max-train-pairs \(now 10\) to 32 or more"):
        check_split_sizes(10, 5, 5, 32, "data file x.txt", max_train_pairs=10)
    with pytest.warns(UserWarning, match="'translator evaluate --split test' will have nothing"):
        check_split_sizes(32, 1, 0, 32, "data file x.txt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_split_sizes(32, 1, 1, 32, "data file x.txt")  # The minimum: no error, no warning.


def test_split_is_deterministic_and_pinned():
    # Fixed by SHA-256 of the case-folded sentence: these never change between versions.
    assert [split_of(s) for s in ("Go.", "Hi.", "Run!", "Who?", "Fire!", "Help!")] == [
        split_of(s) for s in ("go.", "HI.", "run!", "  Who?", "fire!", "help!")
    ]
    pinned = {s: split_of(s) for s in ("Go.", "Hi.", "Run!", "Wait.", "I try.", "I know.")}
    assert pinned == {
        "Go.": "val",
        "Hi.": "train",
        "Run!": "train",
        "Wait.": "test",
        "I try.": "test",
        "I know.": "test",
    }


def test_real_split_is_about_90_5_5_and_grouped_by_english(spa_splits):
    sizes = {name: len(getattr(spa_splits, name)) for name in ("train", "val", "test")}
    total = sum(sizes.values())
    assert total == 118964
    assert 0.88 < sizes["train"] / total < 0.92
    assert 0.04 < sizes["val"] / total < 0.06
    assert 0.04 < sizes["test"] / total < 0.06
    keys = {
        name: {" ".join(p.english.split()).casefold() for p in getattr(spa_splits, name)}
        for name in ("train", "val", "test")
    }
    assert not keys["train"] & keys["val"]
    assert not keys["train"] & keys["test"]
    assert not keys["val"] & keys["test"]


def test_split_pairs_is_independent_of_order(spa_splits):
    pairs = spa_splits.test[:300] + spa_splits.train[:300]
    forward = split_pairs(pairs)
    backward = split_pairs(pairs[::-1])
    for name in ("train", "val", "test"):
        assert sorted(getattr(forward, name)) == sorted(getattr(backward, name))


def test_group_references_keeps_every_translation(spa_eng_zip):
    grouped = dict(group_references(load_pairs(spa_eng_zip)[:30]))
    assert grouped["Go."] == ["Ve.", "Vete.", "Vaya.", "Váyase."]
    assert grouped["Fire!"] == ["¡Fuego!", "¡Incendio!", "¡Disparad!"]


@pytest.fixture(scope="module")
def vocabs(spa_splits):
    train = spa_splits.train[:3000]
    return (
        Vocabulary.from_texts([p.english for p in train], 500),
        Vocabulary.from_texts([p.spanish for p in train], 500),
    )


def test_make_dataset_teacher_forcing_shift_and_padding(spa_splits, vocabs):
    pairs = spa_splits.train[:500]
    ds, num_batches = make_dataset(
        pairs, *vocabs, sequence_length=12, batch_size=32, bucket_by_length=False
    )
    batches = list(ds)
    assert len(batches) == num_batches
    inputs, labels = batches[0]
    source, decoder = inputs["source_tokens"].numpy(), inputs["decoder_tokens"].numpy()
    labels = labels.numpy()
    assert source.shape == decoder.shape == labels.shape == (32, 12)
    assert (decoder[:, 0] == START_ID).all()
    # Shift by one: decoder input = [START] + target, labels = target + [END].
    np.testing.assert_array_equal(
        decoder[:, 1:], np.where(labels[:, :-1] == END_ID, PAD_ID, labels[:, :-1])
    )
    assert ((labels == END_ID).sum(axis=1) == 1).all()
    first_target = vocabs[1].encode([pairs[0].spanish]).to_list()[0]
    np.testing.assert_array_equal(labels[0, : len(first_target) + 1], first_target + [END_ID])


def test_make_dataset_drops_pairs_that_do_not_fit(spa_splits, vocabs):
    pairs = [Pair("Hi.", "Hola."), Pair("one two three four five six", "Hola.")]
    ds, num_batches = make_dataset(
        pairs, *vocabs, sequence_length=4, batch_size=8, bucket_by_length=False
    )
    ((inputs, _),) = list(ds)
    assert num_batches == 1 and inputs["source_tokens"].shape[0] == 1
    with pytest.raises(ValueError, match="fits sequence_length=1"):
        make_dataset(pairs, *vocabs, sequence_length=1, batch_size=8)


def test_bucketing_counts_batches_exactly_and_pads_less(spa_splits, vocabs):
    pairs = spa_splits.train[:3000]
    ds, num_batches = make_dataset(
        pairs, *vocabs, sequence_length=24, batch_size=64, shuffle=True, seed=3
    )
    batches = list(ds)
    assert len(batches) == num_batches
    assert sum(int(y.shape[0]) for _, y in batches) == sum(
        1
        for _ in make_dataset(
            pairs, *vocabs, sequence_length=24, batch_size=1, bucket_by_length=False
        )[0]
    )
    widths = {int(y.shape[1]) for _, y in batches}
    assert widths <= {b - 1 for b in bucket_boundaries(24)}
    real = sum(int((y.numpy() != PAD_ID).sum()) for _, y in batches)
    padded = sum(int(np.prod(y.shape)) for _, y in batches)
    assert real / padded > 0.75  # Fixed padding to 24 would give about 0.35.


def test_shuffling_is_seeded(spa_splits, vocabs):
    pairs = spa_splits.train[:400]
    first = [
        x["source_tokens"].numpy()
        for x, _ in make_dataset(
            pairs, *vocabs, sequence_length=24, batch_size=64, shuffle=True, seed=5
        )[0]
    ]
    second = [
        x["source_tokens"].numpy()
        for x, _ in make_dataset(
            pairs, *vocabs, sequence_length=24, batch_size=64, shuffle=True, seed=5
        )[0]
    ]
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))

import io

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from apps.common.errors import DataError, MissingFileError, UserError
from apps.medical_cnn import data as data_lib


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _images(n, h=8, w=8, c=None, seed=0):
    shape = (n, h, w) if c is None else (n, h, w, c)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_real_pneumoniamnist(pneumoniamnist_npz):
    data = data_lib.load_pneumoniamnist(pneumoniamnist_npz)
    assert data.class_names == ("normal", "pneumonia")
    assert data["train"].images.shape == (4708, 28, 28, 1)
    assert data["val"].images.shape == (524, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(data["train"].labels), [1214, 3494])
    np.testing.assert_array_equal(np.bincount(data["val"].labels), [135, 389])
    # The withheld file has no test split: asking for it names what is there.
    with pytest.raises(ValueError, match="missing test_images, test_labels") as info:
        data_lib.load_npz(pneumoniamnist_npz, ("test",))
    assert "train_images" in str(info.value) and "pneumoniamnist.npz" in str(info.value)


def test_only_requested_split_needed_and_formats(tmp_path):
    path = _write_npz(
        tmp_path / "t.npz",
        test_images=_images(5, c=3),
        test_labels=np.array([[0], [2], [1], [0], [2]]),
    )
    loaded = data_lib.load_npz(path, ("test",))
    assert loaded["test"].images.shape == (5, 8, 8, 3)
    np.testing.assert_array_equal(loaded["test"].labels, [0, 2, 1, 0, 2])
    data = data_lib.load_npz_data(path, ("test",))
    assert data.num_classes == 3 and data.class_names == ("0", "1", "2")


@pytest.mark.parametrize(
    "arrays, splits, pattern",
    [
        (
            {"train_images": _images(4), "train_labels": np.zeros(4)},
            ("train", "val"),
            r"bad.npz: missing val_images, val_labels for split\(s\) train, val\. "
            r"Keys found: train_images, train_labels\. Keys needed: train_images, "
            r"train_labels, val_images, val_labels\.",
        ),
        (
            {"train_images": _images(4), "train_labels": np.zeros(3)},
            ("train",),
            r"bad.npz: mismatched counts: 4 images but 3 labels in 'train_labels'",
        ),
        (
            {"train_images": np.zeros((0, 8, 8), np.uint8), "train_labels": np.zeros(0)},
            ("train",),
            r"bad.npz: 'train_images' holds no images",
        ),
        (
            {"train_images": np.zeros((4, 8), np.uint8), "train_labels": np.zeros(4)},
            ("train",),
            r"'train_images' has shape \(4, 8\); expected grayscale \(N, H, W\) or RGB",
        ),
        (
            {"train_images": _images(4, c=2), "train_labels": np.zeros(4)},
            ("train",),
            r"'train_images' has shape \(4, 8, 8, 2\)",
        ),
        (
            {"train_images": _images(4), "train_labels": np.zeros((4, 3))},
            ("train",),
            r"multi-label data is not supported",
        ),
        (
            {"train_images": _images(4), "train_labels": np.array([0, 1, -1, 0])},
            ("train",),
            r"non-negative integer class indices",
        ),
        (
            {
                "train_images": np.random.default_rng(0).random((4, 8, 8)),
                "train_labels": np.zeros(4),
            },
            ("train",),
            r"looks scaled to \[0, 1\]",
        ),
        (
            {
                "train_images": _images(4),
                "train_labels": np.zeros(4),
                "val_images": _images(4, h=9),
                "val_labels": np.zeros(4),
            },
            ("train", "val"),
            r"splits have different image shapes",
        ),
    ],
)
def test_malformed_npz(tmp_path, arrays, splits, pattern):
    path = _write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=pattern):
        data_lib.load_npz(path, splits)


def test_not_an_npz_and_missing_file(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match=r"junk.npz is not an .npz \(zip\) archive") as info:
        data_lib.load_npz(junk)
    assert "pickle" not in str(info.value) and "unsafe" not in str(info.value)
    with pytest.raises(MissingFileError, match="data file not found: .*nope.npz"):
        data_lib.load_npz(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError):  # The old contract holds.
        data_lib.load_npz(tmp_path / "nope.npz")
    with pytest.raises(DataError, match=r"is a folder, not an .npz file"):
        data_lib.load_npz(tmp_path)
    with pytest.raises(ValueError, match="splits must be a non-empty subset"):
        data_lib.load_npz(junk, ("training",))


def _save_npy(path, array):
    """A single-array .npy file under the name `path` (np.save would append .npy)."""
    with path.open("wb") as f:
        np.save(f, array)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _corrupt_member(path):
    """Flips bytes inside the first array of an (uncompressed) .npz: a CRC error on reading."""
    raw = bytearray(path.read_bytes())
    raw[200:210] = bytes(255 - b for b in raw[200:210])
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda p: p.write_bytes(b""), r"t.npz is empty \(0 bytes\), not an .npz archive"),
        (
            lambda p: _truncate(_write_npz(p, train_images=_images(9), train_labels=np.zeros(9))),
            r"t.npz is not an .npz \(zip\) archive: another kind of file, or a truncated",
        ),
        (
            lambda p: _save_npy(p, _images(3)),
            r"t.npz holds a single array \(.npy format\), not an .npz archive of named arrays",
        ),
        (
            lambda p: _corrupt_member(
                _write_npz(p, train_images=_images(300), train_labels=np.zeros(300))
            ),
            r"t.npz: could not read 'train_images', the archive is corrupt \(BadZipFile: Bad "
            r"CRC-32",
        ),
        (
            lambda p: _write_npz(
                p, train_images=np.array([[1], [2, 3]], dtype=object), train_labels=np.zeros(2)
            ),
            r"t.npz: 'train_images' holds Python objects \(a NumPy object array\), which are "
            r"never loaded because loading them could run code",
        ),
        (
            lambda p: _write_npz(p, train_images=_images(2), train_labels=np.array(["a", "b"])),
            r"t.npz: 'train_labels' has dtype <U1; expected integer class indices",
        ),
        (
            lambda p: _write_npz(p, train_images=_images(2), train_labels=np.array([0.5, 1])),
            r"'train_labels' must hold non-negative integer class indices; found 0.5 \(1 such",
        ),
        (
            lambda p: _write_npz(p, train_images=_images(2, c=4), train_labels=np.zeros(2)),
            r"has shape \(2, 8, 8, 4\); expected .* images \(RGBA\? drop the alpha channel",
        ),
    ],
    ids=[
        "empty",
        "truncated_zip",
        "npy",
        "corrupt_member",
        "objects",
        "text_labels",
        "fractional_labels",
        "rgba",
    ],
)
def test_unreadable_npz_says_what_it_is(tmp_path, make, pattern):
    path = tmp_path / "t.npz"
    make(path)
    with pytest.raises(DataError, match=pattern) as info:
        data_lib.load_npz(path, ("train",))
    assert "allow_pickle" not in str(info.value)


def test_non_finite_pixels_are_counted(tmp_path):
    images = np.full((5, 4, 4), 100.0)
    images[1, 0, :3] = np.nan
    images[4, 3, 3] = -np.inf
    path = _write_npz(tmp_path / "f.npz", val_images=images, val_labels=np.zeros(5))
    with pytest.raises(
        DataError,
        match=r"f.npz: 'val_images' holds 4 non-finite pixel value\(s\) \(NaN or infinity\) in "
        r"2 of its 5 images; every pixel must be a number in 0..255",
    ):
        data_lib.load_npz(path, ("val",))


def _image_data(train, val, names=None):
    k = max(2, max(max(train), max(val)) + 1)
    splits = {
        "train": data_lib.ImageSplit(_images(len(train)), np.array(train)),
        "val": data_lib.ImageSplit(_images(len(val)), np.array(val)),
    }
    return data_lib.ImageData(splits, k, names or tuple(map(str, range(k))), "d.npz")


def test_check_training_labels():
    data_lib.check_training_labels(_image_data([0, 1, 2, 1], [2, 1, 0]))
    with pytest.raises(
        DataError,
        match=r"d.npz: labels must be 0..4 .* labels found in train: 0, 1, 4; classes with no "
        r"training example: 2, 3. Renumber the labels 0..K-1 without gaps",
    ):
        data_lib.check_training_labels(_image_data([0, 1, 4], [0, 1]))
    # A class found only in val has no training example either.
    with pytest.raises(DataError, match=r"classes with no training example: 2\. Add training"):
        data_lib.check_training_labels(_image_data([0, 1, 0], [0, 1, 2]))
    with pytest.raises(DataError, match=r"the validation split holds only class 0 \(normal\)"):
        data_lib.check_training_labels(_image_data([0, 1], [0, 0], ("normal", "pneumonia")))
    # Multi-class: a class missing from val only warns; training can go on.
    with pytest.warns(UserWarning, match=r"the validation split has no example of class\(es\) 2"):
        data_lib.check_training_labels(_image_data([0, 1, 2], [0, 1, 1]))


def test_unknown_tfds_name():
    with pytest.raises(DataError, match=r"tfds:no_such_data_set is not a TensorFlow Datasets "):
        data_lib.load_tfds("no_such_data_set")


def test_make_dataset_batches_and_shuffles_reproducibly():
    split = data_lib.ImageSplit(_images(10, c=1), np.arange(10) % 3)
    ds = data_lib.make_dataset(split, num_classes=3, batch_size=4)
    batches = list(ds.as_numpy_iterator())
    assert [b[0].shape for b in batches] == [(4, 8, 8, 1), (4, 8, 8, 1), (2, 8, 8, 1)]
    assert batches[0][0].dtype == np.float32
    np.testing.assert_array_equal(batches[0][1], np.eye(3)[[0, 1, 2, 0]])
    np.testing.assert_array_equal(batches[0][0], split.images[:4].astype("float32"))

    binary = data_lib.ImageSplit(split.images, np.arange(10) % 2)

    def order(seed):
        ds = data_lib.make_dataset(binary, 2, batch_size=10, shuffle=True, seed=seed)
        x, y = next(ds.as_numpy_iterator())
        assert y.shape == (10, 1)
        return x[:, 0, 0, 0]

    assert np.array_equal(order(1), order(1))
    assert not np.array_equal(order(1), split.images[:, 0, 0, 0])
    assert sorted(order(1)) == sorted(split.images[:, 0, 0, 0].astype("float32"))


def test_class_weights_statistics_subsample():
    labels = np.array([0] * 25 + [1] * 75)
    np.testing.assert_allclose(data_lib.balanced_class_weights(labels, 2), [2.0, 2 / 3])
    images = np.stack([np.full((2, 2, 1), v, np.uint8) for v in (0, 10, 20, 30)])
    mean, var = data_lib.pixel_statistics(images)
    np.testing.assert_allclose(mean, [15.0])
    np.testing.assert_allclose(var, [125.0])
    split = data_lib.ImageSplit(np.zeros((100, 2, 2, 1), np.uint8), labels)
    sub = data_lib.subsample(split, 20, seed=0)
    np.testing.assert_array_equal(np.bincount(sub.labels), [5, 15])  # proportions kept
    assert np.array_equal(data_lib.subsample(split, 20, seed=0).labels, sub.labels)


def _png(array, mode=None):
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_decode_image_conversions():
    gray = _images(1, 28, 28)[0]
    out = data_lib.decode_image(tf.constant(_png(gray)), 28, 28, 1).numpy()
    np.testing.assert_array_equal(out[..., 0], gray)  # same size: unchanged
    # RGBA -> luminance with ITU-R 601 weights, alpha dropped.
    rgba = np.random.default_rng(1).integers(0, 256, (28, 28, 4), dtype=np.uint8)
    out = data_lib.decode_image(tf.constant(_png(rgba)), 28, 28, 1).numpy()[..., 0]
    expected = rgba[..., :3].astype("float32") @ np.array([0.2989, 0.587, 0.114], "float32")
    np.testing.assert_allclose(out, expected, atol=0.05)
    # Grey -> RGB replicates the channel.
    out = data_lib.decode_image(tf.constant(_png(gray)), 28, 28, 3).numpy()
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, -1))
    # 16-bit PNG scaled to 8-bit range.
    wide = (gray.astype("uint16") * 257).astype("uint16")
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="PNG")
    out = data_lib.decode_image(tf.constant(buffer.getvalue()), 28, 28, 1).numpy()[..., 0]
    np.testing.assert_allclose(out, gray, atol=1.0)


def test_crop_and_resize_keeps_centre():
    image = np.zeros((40, 28, 1), "float32")
    image[6:34] = np.arange(28 * 28, dtype="float32").reshape(28, 28, 1)
    out = data_lib.crop_and_resize(image, 28, 28).numpy()
    np.testing.assert_array_equal(out, image[6:34])  # central square, no resampling
    big = np.full((100, 50, 1), 7.0, "float32")
    out = data_lib.crop_and_resize(big, 20, 20).numpy()
    assert out.shape == (20, 20, 1)
    np.testing.assert_allclose(out, 7.0, atol=1e-4)
    with pytest.raises(ValueError, match="Received: channels=2"):
        data_lib.decode_image(tf.constant(b""), 28, 28, 2)


def test_tfds_path_with_mock_data():
    with tfds.testing.mock_data(num_examples=12):
        data = data_lib.load_data("tfds:malaria", splits=("train", "val"), tfds_image_size=16)
    assert data.source == "tfds:malaria"
    assert data.class_names == ("parasitized", "uninfected") and data.num_classes == 2
    for split in ("train", "val"):
        assert data[split].images.shape == (12, 16, 16, 3)
        assert data[split].images.dtype == np.uint8
        assert set(np.unique(data[split].labels)) <= {0, 1}
    with tfds.testing.mock_data(num_examples=4):
        with pytest.raises(ValueError, match="tfds:imdb_reviews has features .*expected 'image'"):
            data_lib.load_tfds("imdb_reviews")
        multi = data_lib.load_tfds("colorectal_histology", ("train",), image_size=8)
    assert multi.num_classes == 8 and multi["train"].images.shape == (4, 8, 8, 3)


def test_load_data_dispatch_errors(tmp_path):
    with pytest.raises(UserError, match="needs a file: pass --data PATH"):
        data_lib.load_data("npz")
    with pytest.raises(UserError, match="unknown dataset 'cifar'"):
        data_lib.load_data("cifar")

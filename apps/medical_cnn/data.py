"""Data for the chest X-ray classifier: MedMNIST-style `.npz` files, TFDS, batches.

Every source ends as an `ImageData`: NumPy splits of `uint8`-range images
`(N, H, W, C)` with integer labels `(N,)`, plus the class names. Pixels stay
in their 0..255 scale here; the model normalises them itself (a
`Normalization` layer), so training, prediction and serving cannot drift
apart.

`make_batches` turns a split into batches for `model.fit` on the current Keras
backend: `ArrayBatches`, a `keras.utils.PyDataset` over the NumPy arrays that
needs no TensorFlow, shuffled per epoch as a pure function of (seed, epoch) so
that a resumed run sees the batches an uninterrupted one sees (on TensorFlow
`fit` gets them as a `tf.data.Dataset`, `ArrayBatches.as_tf_dataset`); batches
in order on TensorFlow come from `make_dataset`'s batched, prefetched
`tf.data.Dataset`. Reading
an `.npz` file needs only NumPy, so `medical-cnn train --data FILE.npz` runs on
a machine that has JAX but not TensorFlow (TFDS and image decoding do need it).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from apps.common.batches import EpochBatches
from apps.common.data import fetch_file
from apps.common.errors import DataError, MissingFileError, UserError

SPLITS = ("train", "val", "test")

# Official MedMNIST v2 release (Zenodo record 10519652). MedMNIST publishes an
# MD5 for each file (medmnist/info.py: INFO["pneumoniamnist"]["MD5"]), not a
# sha256; keras.utils.get_file verifies either, picking MD5 from the length.
PNEUMONIAMNIST_URL = "https://zenodo.org/records/10519652/files/pneumoniamnist.npz?download=1"
PNEUMONIAMNIST_MD5 = "28209eda62fecd6e6a2d98b1501bb15f"
PNEUMONIAMNIST_CLASSES = ("normal", "pneumonia")


@dataclasses.dataclass(frozen=True)
class ImageSplit:
    """One split: `images` `(N, H, W, C)` in 0..255, `labels` `(N,)` int64."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return len(self.labels)


@dataclasses.dataclass
class ImageData:
    """Loaded splits plus what the model needs to know about them."""

    splits: dict[str, ImageSplit]
    num_classes: int
    class_names: tuple[str, ...]
    source: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return next(iter(self.splits.values())).images.shape[1:]

    def __getitem__(self, split: str) -> ImageSplit:
        return self.splits[split]


# How MedMNIST-style files are written; quoted in the errors about their format.
_NPZ_HOW = "numpy.savez(path, train_images=..., train_labels=..., val_images=..., val_labels=...)"
# The first bytes of a single-array `.npy` file.
_NPY_MAGIC = b"\x93NUMPY"


def _npz_error(path, message, found, needed):
    found_text = ", ".join(sorted(found)) if found else "(none)"
    return DataError(
        f"{path}: {message}. Keys found: {found_text}. Keys needed: {', '.join(needed)}. "
        f"MedMNIST-style files are written by {_NPZ_HOW}."
    )


def _check_images(path, key, images):
    if images.ndim == 4 and images.shape[-1] == 1:
        pass
    elif images.ndim == 3:
        images = images[..., None]
    elif not (images.ndim == 4 and images.shape[-1] == 3):
        hint = ""
        if images.ndim == 4 and images.shape[-1] == 4:
            hint = " (RGBA? drop the alpha channel: images[..., :3])"
        raise DataError(
            f"{path}: '{key}' has shape {images.shape}; expected grayscale (N, H, W) or "
            f"RGB (N, H, W, 3) images{hint}."
        )
    if images.shape[0] == 0:
        raise DataError(f"{path}: '{key}' holds no images (shape {images.shape}).")
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise DataError(f"{path}: '{key}' has dtype {images.dtype}; expected pixel numbers.")
    if np.issubdtype(images.dtype, np.floating):
        finite = np.isfinite(images)
        bad = int(finite.size - np.count_nonzero(finite))
        if bad:
            bad_images = int(np.count_nonzero(~finite.reshape(len(images), -1).all(axis=1)))
            raise DataError(
                f"{path}: '{key}' holds {bad} non-finite pixel value(s) (NaN or infinity) in "
                f"{bad_images} of its {len(images)} images; every pixel must be a number in "
                f"0..255. Repair or drop those images."
            )
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 255:
        raise DataError(
            f"{path}: '{key}' pixel values span [{lo}, {hi}]; expected 0..255 like MedMNIST."
        )
    if np.issubdtype(images.dtype, np.floating) and hi <= 1.0:
        raise DataError(
            f"{path}: '{key}' looks scaled to [0, 1]; store pixels in 0..255 (uint8) so that "
            f"image files converted for prediction match the training data."
        )
    return images


def _check_labels(path, key, labels, count):
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    elif labels.ndim != 1:
        raise DataError(
            f"{path}: '{key}' has shape {labels.shape}; expected one class index per image, "
            f"(N,) or (N, 1) (multi-label data is not supported)."
        )
    if len(labels) != count:
        raise DataError(
            f"{path}: mismatched counts: {count} images but {len(labels)} labels in '{key}'."
        )
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise DataError(
            f"{path}: '{key}' has dtype {labels.dtype}; expected integer class indices "
            f"0, 1, ... (one per image)."
        )
    values = labels.astype("float64")
    bad = ~(np.isfinite(values) & (values >= 0) & (np.mod(values, 1) == 0))
    if bad.any():
        raise DataError(
            f"{path}: '{key}' must hold non-negative integer class indices; found "
            f"{labels[bad][0].item()!r} ({int(bad.sum())} such label(s))."
        )
    return labels.astype("int64")


def _open_npz(path: Path):
    """`np.load(path)` for an `.npz` archive, with errors that say what the file is instead.

    Never pickles, and never repeats NumPy's advice to load a file unsafely.
    """
    try:
        with path.open("rb") as f:
            head = f.read(len(_NPY_MAGIC))
    except OSError as e:
        raise DataError(f"could not read data file {path}: {e.strerror or e}.") from e
    if not head:
        raise DataError(f"{path} is empty (0 bytes), not an .npz archive; written by {_NPZ_HOW}.")
    if head == _NPY_MAGIC:
        raise DataError(
            f"{path} holds a single array (.npy format), not an .npz archive of named arrays; "
            f"write the splits with {_NPZ_HOW}."
        )
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"{path} is not an .npz (zip) archive: another kind of file, or a truncated or "
            f"corrupt copy. MedMNIST-style files are written by {_NPZ_HOW}."
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(
            f"{path} is not a readable .npz archive (truncated or corrupt?): "
            f"{type(e).__name__}; re-create or re-download it."
        ) from e
    if not isinstance(archive, np.lib.npyio.NpzFile):  # pragma: no cover (checked above)
        raise DataError(f"{path} holds a single array, not an .npz archive of named arrays.")
    return archive


def _read_array(path: Path, archive, key: str) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as e:
        if "allow_pickle" in str(e) or "pickle" in str(e):
            raise DataError(
                f"{path}: '{key}' holds Python objects (a NumPy object array), which are never "
                f"loaded because loading them could run code; store it as a numeric array "
                f"(uint8 pixels, integer labels)."
            ) from None
        raise DataError(
            f"{path}: could not read '{key}': {e}; re-create or re-download the file."
        ) from e
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: could not read '{key}', the archive is corrupt ({type(e).__name__}: {e}); "
            f"re-create or re-download the file."
        ) from e


def load_npz(path: str | os.PathLike, splits: Sequence[str] = ("train", "val")) -> dict:
    """Loads the requested splits of a MedMNIST-style `.npz` file.

    The file holds `<split>_images` and `<split>_labels` for any subset of
    `train`, `val` and `test`; images are grayscale `(N, H, W)` (or
    `(N, H, W, 1)`) or RGB `(N, H, W, 3)` pixel numbers in 0..255, labels
    `(N,)` or `(N, 1)` non-negative integer class indices.

    Args:
        path: the `.npz` file.
        splits: the splits to load; only these must be present.

    Returns:
        A dict `split -> ImageSplit`, images as `(N, H, W, C)`.

    Raises:
        MissingFileError: the file does not exist (a `FileNotFoundError`).
        DataError: a folder, an empty file, a single `.npy` array, not a zip
            archive, a truncated or corrupt archive, object (pickled) arrays,
            a requested split missing, image and label counts that differ, a
            split without images, images of the wrong rank or dtype, pixels
            outside 0..255 or not finite (NaN, infinity), labels that are not
            non-negative integers, or splits that disagree on the image shape.
            Each message names the file (and the key, and the keys found and
            needed where keys are concerned).
        ValueError: `splits` is not a non-empty subset of `SPLITS` (a bug).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an .npz file; pass the .npz file itself.")
    if not path.is_file():
        raise MissingFileError(f"data file not found: {path}")
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}. Received: {splits!r}")
    needed = [f"{s}_{part}" for s in splits for part in ("images", "labels")]
    with _open_npz(path) as archive:
        found = set(archive.files)
        missing = [k for k in needed if k not in found]
        if missing:
            raise _npz_error(
                path,
                f"missing {', '.join(missing)} for split(s) {', '.join(splits)}",
                found,
                needed,
            )
        result = {}
        for split in splits:
            images = _read_array(path, archive, f"{split}_images")
            labels = _read_array(path, archive, f"{split}_labels")
            images = _check_images(path, f"{split}_images", images)
            labels = _check_labels(path, f"{split}_labels", labels, len(images))
            result[split] = ImageSplit(images, labels)
    shapes = {split: s.images.shape[1:] for split, s in result.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{path}: splits have different image shapes: {shapes}.")
    return result


def _num_classes(splits: dict) -> int:
    return max(2, int(max(int(s.labels.max()) for s in splits.values())) + 1)


def _listing(values) -> str:
    return ", ".join(str(v) for v in values)


def load_pneumoniamnist(
    data_path: str | os.PathLike | None = None,
    splits: Sequence[str] = ("train", "val"),
    cache_dir: str | os.PathLike | None = None,
) -> ImageData:
    """PneumoniaMNIST: the local file at `data_path`, else the verified official download.

    Raises:
        MissingFileError: `data_path` does not exist.
        DataError: the file is not a MedMNIST-style `.npz` (see `load_npz`), or
            holds labels other than 0 (normal) and 1 (pneumonia).
        DownloadError: no `data_path` and the download failed.
    """
    if data_path is not None and Path(data_path).expanduser().is_dir():
        raise DataError(f"{data_path} is a folder, not an .npz file; pass the .npz file itself.")
    path = fetch_file(
        PNEUMONIAMNIST_URL,
        PNEUMONIAMNIST_MD5,
        "pneumoniamnist.npz",
        local_path=data_path,
        cache_dir=cache_dir,
    )
    loaded = load_npz(path, splits)
    for split, s in loaded.items():
        extra = sorted(set(np.unique(s.labels).tolist()) - {0, 1})
        if extra:
            count = int(np.isin(s.labels, extra).sum())
            raise DataError(
                f"{path}: '{split}_labels' holds label {_listing(extra)} ({count} images), but "
                f"PneumoniaMNIST has 2 classes, 0 (normal) and 1 (pneumonia), so this is not "
                f"PneumoniaMNIST. Correct those labels, or for a MedMNIST-style file with more "
                f"classes use --dataset npz --data PATH."
            )
    return ImageData(loaded, 2, PNEUMONIAMNIST_CLASSES, str(path))


def load_npz_data(path: str | os.PathLike, splits: Sequence[str] = ("train", "val")) -> ImageData:
    """Any MedMNIST-style file; classes are named by their index.

    The number of classes is the largest label + 1 (at least 2); that every
    class has training examples is checked by `check_training_labels`.
    """
    loaded = load_npz(path, splits)
    k = _num_classes(loaded)
    return ImageData(loaded, k, tuple(str(i) for i in range(k)), str(path))


def _class_text(data: ImageData, classes) -> str:
    """`"2, 3"`, or `"1 (pneumonia)"` where the classes have names of their own."""
    named = data.class_names != tuple(str(i) for i in range(data.num_classes))
    return ", ".join(f"{c} ({data.class_names[c]})" if named else str(c) for c in classes)


def check_training_labels(data: ImageData) -> None:
    """Checks that the labels of `data` can train a `num_classes` classifier.

    Training refuses (`DataError`):

    - a class in 0..K-1 with no example in `train` (K = `data.num_classes`):
      labels with gaps such as 0, 1, 7 (which would build an 8-class model
      with five classes it never sees), a class found only in `val`, or a
      `train` split holding a single class (an AUC that cannot be measured
      and a meaningless threshold);
    - a binary `val` split holding a single class: the best model is chosen,
      training stopped early and the decision threshold picked on
      validation AUC / ROC, none of which is defined with one class.

    A multi-class `val` split that lacks some class (a rare class in a small
    split) only gets a warning: its AUC and accuracy are still defined and
    training goes on.

    Raises:
        DataError: see above; the message names the data, the split, the
            missing classes and the labels found.
    """
    k = data.num_classes
    if "train" in data.splits:
        present = np.unique(data["train"].labels)
        missing = sorted(set(range(k)) - set(present.tolist()))
        if missing:
            found = f"labels found in train: {_class_text(data, present)}"
            if present.size == 1:
                found = f"train holds only class {_class_text(data, present)}"
            gaps = present.size > 1 and missing[0] < int(present.max())
            advice = (
                "Renumber the labels 0..K-1 without gaps (K = the number of classes)"
                if gaps
                else "Add training examples of the missing class(es)"
            )
            span = "0 and 1" if k == 2 else f"0..{k - 1}"
            raise DataError(
                f"{data.source}: labels must be {span} with training examples of every "
                f"class ({k} classes), but {found}; classes with no training example: "
                f"{_class_text(data, missing)}. {advice}."
            )
    if "val" in data.splits:
        present = np.unique(data["val"].labels)
        missing = sorted(set(range(k)) - set(present.tolist()))
        if missing and k == 2:
            raise DataError(
                f"{data.source}: the validation split holds only class "
                f"{_class_text(data, present)}; it needs examples of both classes, because the "
                f"best model, early stopping and the decision threshold are chosen on "
                f"validation AUC. Add examples of class {_class_text(data, missing)} to val."
            )
        if missing:
            warnings.warn(
                f"{data.source}: the validation split has no example of class(es) "
                f"{_class_text(data, missing)}; validation measures leave them out.",
                stacklevel=2,
            )


def load_tfds(
    name: str,
    splits: Sequence[str] = ("train", "val"),
    image_size: int = 64,
    data_dir: str | os.PathLike | None = None,
) -> ImageData:
    """A TFDS image-classification data set with `image` and `label` features.

    Images of any size are resized (aspect ratio kept by central cropping to a
    square first, like MedMNIST) to `image_size` and kept in 0..255. `val`
    maps to TFDS's `validation` split when there is one; otherwise the last
    10% of `train` is held out as `val` (and `train` is the first 90%).

    Raises:
        DataError: no TFDS data set has that name, or it lacks `image`/`label`
            features, a split, or examples.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    except tfds.core.DatasetNotFoundError as e:
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(
            f"tfds:{name} is not a TensorFlow Datasets data set ({first_line}); see "
            f"https://www.tensorflow.org/datasets/catalog/overview for the names."
        ) from None
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DataError(
            f"tfds:{name} has features {sorted(features.keys())}; expected 'image' and 'label'."
        )
    builder.download_and_prepare()
    available = set(builder.info.splits.keys())
    if not available:
        # No split metadata (e.g. under tfds.testing.mock_data): assume train and test only.
        available = {"train", "test"}
    names = {"train": "train", "test": "test"}
    if "validation" in available:
        names["val"] = "validation"
    elif "val" in available:
        names["val"] = "val"
    elif "train" in available:
        # Deterministic hold-out: the last 10% of train (files are not shuffled).
        names["val"] = "train[90%:]"
        names["train"] = "train[:90%]"
    result = {}
    for split in splits:
        tfds_split = names.get(split)
        if tfds_split is None or tfds_split.split("[")[0] not in available:
            raise DataError(
                f"tfds:{name} has no split for '{split}'. "
                f"Splits found: {', '.join(sorted(available))}."
            )
        ds = builder.as_dataset(split=tfds_split, as_supervised=True, shuffle_files=False)

        def convert(image, label):
            return crop_and_resize(image, image_size, image_size), label

        ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE).batch(256)
        images, labels = [], []
        for x, y in ds.as_numpy_iterator():
            images.append(np.clip(np.round(x), 0, 255).astype("uint8"))
            labels.append(y.astype("int64"))
        if not images:
            raise DataError(f"tfds:{name} split '{tfds_split}' holds no examples.")
        imgs = np.concatenate(images)
        result[split] = ImageSplit(imgs, np.concatenate(labels))
    label_feature = features["label"]
    k = int(label_feature.num_classes)
    class_names = tuple(label_feature.names) if label_feature.names else tuple(map(str, range(k)))
    return ImageData(result, k, class_names, f"tfds:{name}")


def load_data(
    dataset: str,
    data_path: str | os.PathLike | None = None,
    splits: Sequence[str] = ("train", "val"),
    tfds_image_size: int = 64,
) -> ImageData:
    """Loads `dataset` (`pneumoniamnist`, `npz` or `tfds:NAME`), see the config docs.

    Raises:
        UserError: an unknown `dataset`, or `npz` without `data_path`.
        MissingFileError, DataError, DownloadError: from the loaders above.
    """
    if dataset.startswith("tfds:"):
        return load_tfds(dataset[len("tfds:") :], splits, image_size=tfds_image_size)
    if dataset == "npz":
        if data_path is None:
            raise UserError("dataset 'npz' needs a file: pass --data PATH.")
        return load_npz_data(data_path, splits)
    if dataset == "pneumoniamnist":
        return load_pneumoniamnist(data_path, splits)
    raise UserError(
        f"unknown dataset {dataset!r}; expected 'pneumoniamnist', 'npz' or 'tfds:NAME'."
    )


def subsample(split: ImageSplit, n: int | None, seed: int) -> ImageSplit:
    """A seeded random subset of `n` examples (class proportions kept), or the split."""
    if n is None or n >= len(split):
        return split
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(split.labels):
        idx = np.flatnonzero(split.labels == c)
        take = max(1, round(n * len(idx) / len(split)))
        chosen.append(rng.choice(idx, size=min(take, len(idx)), replace=False))
    idx = np.sort(np.concatenate(chosen))
    return ImageSplit(split.images[idx], split.labels[idx])


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> tuple[float, ...]:
    """`n / (k * n_c)` per class (scikit-learn's "balanced"); absent classes get 1."""
    counts = np.bincount(labels, minlength=num_classes).astype("float64")
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 1.0)
    return tuple(float(w) for w in weights)


def pixel_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and variance of the pixels (0..255 scale)."""
    x = images.reshape(-1, images.shape[-1]).astype("float64")
    return tuple(float(v) for v in x.mean(0)), tuple(float(v) for v in x.var(0))


def encode_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Binary: `(N, 1)` float 0/1; multi-class: one-hot `(N, K)` float."""
    if num_classes == 2:
        return labels.astype("float32")[:, None]
    return np.eye(num_classes, dtype="float32")[labels]


def make_dataset(
    split: ImageSplit,
    num_classes: int,
    batch_size: int,
    shuffle: bool = False,
    seed: int | None = None,
    sample_weights: Sequence[float] | None = None,
):
    """A `tf.data` pipeline over one split: (shuffle) -> batch -> prefetch.

    Yields `(images float32 (B, H, W, C) in 0..255, targets)` and, when
    `sample_weights` (one weight per class) is given, a third element with each
    example's weight.

    Training does not use `shuffle` here: `reshuffle_each_iteration` draws
    each epoch's order from a generator that starts again at epoch 0's order
    in a new process, so a resumed run would replay it; `ArrayBatches` orders
    each epoch by `(seed, epoch)` instead.
    """
    import tensorflow as tf

    targets = encode_labels(split.labels, num_classes)
    tensors = (split.images, targets)
    if sample_weights is not None:
        tensors += (np.asarray(sample_weights, "float32")[split.labels],)
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)

    def to_float(images, *rest):
        return (tf.cast(images, tf.float32), *rest)

    return (
        ds.batch(batch_size)
        .map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


class ArrayBatches(EpochBatches):
    """Batches of one split from its NumPy arrays, for any Keras backend.

    Yields `(images float32 (B, H, W, C) in 0..255, targets)`, plus each
    example's weight when `sample_weights` (one weight per class) is given or
    when padding adds examples. The same batches as `make_dataset`, without
    TensorFlow.

    Shuffled, epoch `e` takes the examples in the order
    `default_rng([seed, e]).permutation(n)` (`apps.common.batches.EpochBatches`):
    a pure function of the seed and the epoch, so a run resumed at epoch `e`
    sees the batches an uninterrupted run sees. Keep it on Keras's epoch with
    `apps.common.batches.FollowEpochs`; on TensorFlow, `as_tf_dataset()` gives
    the same batches as a `tf.data.Dataset`.

    Args:
        split: the split.
        num_classes: number of classes (targets as in `encode_labels`).
        batch_size: examples per batch (the global batch).
        shuffle: draw a new seeded order every epoch.
        seed: the shuffling seed.
        sample_weights: optional weight per class.
        multiple_of: every batch must hold a multiple of this many examples
            (the device count of JAX data parallelism); see `remainder`.
        remainder: what to do with a last batch that is not such a multiple:
            `"trim"` drops its extra examples (for training: at most
            `multiple_of - 1` per epoch, different ones each shuffled epoch),
            `"pad"` repeats its first example with weight 0 (for evaluation
            and prediction: every real example counts, padding counts for
            nothing in weighted metrics; drop `pad_count` rows of predictions).
    """

    def __init__(
        self,
        split: ImageSplit,
        num_classes: int,
        batch_size: int,
        shuffle: bool = False,
        seed: int | None = None,
        sample_weights: Sequence[float] | None = None,
        multiple_of: int = 1,
        remainder: str = "pad",
    ):
        super().__init__(shuffle=shuffle, seed=seed)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer. Received: {batch_size!r}")
        if batch_size % multiple_of:
            raise ValueError(
                f"batch_size={batch_size} is not a multiple of multiple_of={multiple_of}."
            )
        if remainder not in ("trim", "pad"):
            raise ValueError(f"remainder must be 'trim' or 'pad'. Received: {remainder!r}")
        n = len(split)
        if remainder == "trim" and n < multiple_of:
            raise ValueError(
                f"the split holds {n} examples, fewer than the {multiple_of} devices to share them."
            )
        self.images = split.images
        self.targets = encode_labels(split.labels, num_classes)
        self.weights = None
        if sample_weights is not None:
            self.weights = np.asarray(sample_weights, "float32")[split.labels]
        self.batch_size = batch_size
        self.multiple_of = multiple_of
        self.remainder = remainder
        last = n % batch_size
        self.pad_count = 0
        if last % multiple_of and remainder == "pad":
            self.pad_count = multiple_of - last % multiple_of
            if self.weights is None:
                self.weights = np.ones(n, "float32")
        self.num_examples = n - (last % multiple_of if remainder == "trim" else 0)

    def make_plan(self, rng):
        """The epoch's batches: arrays of example indices, in order."""
        n = len(self.targets)
        order = rng.permutation(n) if rng is not None else np.arange(n)
        order = order[: self.num_examples]
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def load_batch(self, idx):
        weights = None if self.weights is None else self.weights[idx]
        if len(idx) % self.multiple_of:  # The last batch, with remainder="pad".
            idx = np.concatenate([idx, np.repeat(idx[:1], self.pad_count)])
            weights = np.concatenate([weights, np.zeros(self.pad_count, "float32")])
        batch = (self.images[idx].astype("float32"), self.targets[idx])
        return batch if weights is None else (*batch, weights)

    def tf_output_signature(self):
        import tensorflow as tf

        spec = (
            tf.TensorSpec((None, *self.images.shape[1:]), tf.float32),
            tf.TensorSpec((None, *self.targets.shape[1:]), tf.float32),
        )
        return spec if self.weights is None else (*spec, tf.TensorSpec((None,), tf.float32))


def make_batches(
    split: ImageSplit,
    num_classes: int,
    batch_size: int,
    shuffle: bool = False,
    seed: int | None = None,
    sample_weights: Sequence[float] | None = None,
    multiple_of: int = 1,
    remainder: str = "pad",
):
    """Batches of a split for the current Keras backend.

    Shuffled (for training), on every backend: an `ArrayBatches`, whose
    order is a pure function of `(seed, epoch)`; keep it on Keras's epoch
    with `apps.common.batches.FollowEpochs` and, on TensorFlow, pass its
    `as_tf_dataset()` to `fit`. In order, on TensorFlow: `make_dataset`
    (tf.data; strategies split uneven batches themselves, so `multiple_of`
    and `remainder` are not needed); on other backends: `ArrayBatches` (see
    there for `multiple_of` and `remainder`).
    """
    if keras.backend.backend() == "tensorflow" and not shuffle:
        return make_dataset(split, num_classes, batch_size, sample_weights=sample_weights)
    return ArrayBatches(
        split, num_classes, batch_size, shuffle, seed, sample_weights, multiple_of, remainder
    )


def crop_and_resize(image, height: int, width: int):
    """Central crop to the target aspect ratio, then resize to `(height, width)`.

    TensorFlow ops on one float image `(h, w, c)`; bilinear with antialiasing,
    so shrinking a large photo averages its pixels like MedMNIST's own
    down-sampling did. An image that already has the target size is returned
    unchanged. The same conversion is used for TFDS images, for image files
    given to `predict`, and inside the exported SavedModel, so all three agree.
    """
    import tensorflow as tf

    image = tf.cast(image, tf.float32)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    # Largest central window with the target aspect ratio (integer arithmetic).
    crop_h = tf.minimum(h, (w * height) // width)
    crop_w = tf.minimum(w, (h * width) // height)
    crop_h, crop_w = tf.maximum(crop_h, 1), tf.maximum(crop_w, 1)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    cropped = image[top : top + crop_h, left : left + crop_w, :]
    same = tf.logical_and(tf.equal(crop_h, height), tf.equal(crop_w, width))
    resized = tf.cond(
        same,
        lambda: cropped,
        lambda: tf.image.resize(cropped, (height, width), method="bilinear", antialias=True),
    )
    return tf.ensure_shape(tf.reshape(resized, (height, width, -1)), (height, width, None))


def decode_image(encoded, height: int, width: int, channels: int):
    """Encoded PNG/JPEG/BMP/GIF bytes -> float32 `(height, width, channels)` in 0..255.

    Any colour mode is converted the way MedMNIST-style data is stored:
    `channels=1` gives luminance (ITU-R 601 weights, alpha dropped), `channels=3`
    gives RGB (grey replicated, alpha dropped). 16-bit images are scaled to 8-bit
    range. Then `crop_and_resize`. Works eagerly and inside `tf.function`.
    """
    import tensorflow as tf

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3. Received: channels={channels!r}")
    image = tf.io.decode_image(encoded, channels=0, dtype=tf.uint8, expand_animations=False)
    image = tf.cast(image, tf.float32)
    c = tf.shape(image)[-1]
    if channels == 1:
        image = tf.cond(
            c >= 3,
            lambda: tf.image.rgb_to_grayscale(image[..., :3]),
            lambda: image[..., :1],
        )
    else:
        image = tf.cond(
            c >= 3,
            lambda: image[..., :3],
            lambda: tf.tile(image[..., :1], (1, 1, 3)),
        )
    return crop_and_resize(image, height, width)

import numpy as np
import pytest
from PIL import Image

from apps.common.errors import UserError
from apps.common.model_io import load_keras_model
from apps.medical_cnn import data as data_lib
from apps.medical_cnn.predict import image_format, load_image_file, predict_files, read_image_file


@pytest.fixture(scope="module")
def val_images(pneumoniamnist_npz):
    val = data_lib.load_npz(pneumoniamnist_npz, ("val",))["val"]
    return val.images[:4, :, :, 0]


def test_png_at_training_size_equals_model_on_npz_pixels(tiny_run, tmp_path, val_images):
    run_dir, _ = tiny_run
    paths = []
    for i, image in enumerate(val_images):
        paths.append(tmp_path / f"x{i}.png")
        Image.fromarray(image).save(paths[-1])
    records = predict_files(run_dir, paths)
    model = load_keras_model(run_dir)
    expected = model.predict(val_images[..., None].astype("float32"), verbose=0)[:, 0]
    threshold = records[0]["threshold"]
    for record, p, path in zip(records, expected, paths, strict=True):
        assert record["file"] == str(path)
        assert record["probability"] == pytest.approx(float(p), abs=1e-6)
        assert record["label"] == int(p >= threshold)
        assert record["class_name"] == ("normal", "pneumonia")[record["label"]]


def test_other_sizes_modes_and_a_non_image(tiny_run, tmp_path, val_images):
    run_dir, _ = tiny_run
    image = val_images[0]
    big = Image.fromarray(image).resize((112, 112), Image.BICUBIC)
    files = {
        "rgb.jpg": (big.convert("RGB"), {"quality": 95}),
        "rgba.png": (big.convert("RGBA"), {}),
        "palette.png": (big.convert("P"), {}),
        "wide_gray.jpg": (Image.fromarray(image).resize((300, 200)), {"quality": 95}),
    }
    paths = []
    for name, (picture, options) in files.items():
        paths.append(tmp_path / name)
        picture.save(paths[-1], **options)
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    missing = tmp_path / "missing.jpg"
    records = predict_files(run_dir, [paths[0], not_image, *paths[1:], missing])
    assert [r["file"] for r in records] == [
        str(p) for p in [paths[0], not_image, *paths[1:], missing]
    ]
    assert "notes.png is not a readable image" in records[1]["error"]
    assert "image file not found" in records[-1]["error"]
    good = [records[0], *records[2:-1]]
    assert all(0.0 < r["probability"] < 1.0 and "error" not in r for r in good)
    # A 4x enlarged copy of a 28x28 image, shrunk back with antialiasing, gives
    # nearly the original pixels, hence nearly the same probability.
    direct = predict_files(run_dir, [_save(tmp_path / "orig.png", image)])[0]["probability"]
    for r in (records[0], records[2], records[3]):
        assert r["probability"] == pytest.approx(direct, abs=0.1)


def _save(path, array):
    Image.fromarray(array).save(path)
    return path


def test_load_image_file_conversion(tmp_path, val_images):
    path = _save(tmp_path / "a.png", val_images[0])
    out = load_image_file(path, 28, 28, 1)
    np.testing.assert_array_equal(out[..., 0], val_images[0])
    rgb = load_image_file(path, 28, 28, 3)
    assert rgb.shape == (28, 28, 3)


def test_explain_writes_overlays(tiny_run, tmp_path, val_images):
    run_dir, _ = tiny_run
    paths = [_save(tmp_path / f"img{i}.png", val_images[i]) for i in range(2)]
    records = predict_files(run_dir, paths, explain_dir=tmp_path / "cams")
    for record, path in zip(records, paths, strict=True):
        out = tmp_path / "cams" / f"{path.stem}_gradcam.png"
        assert record["gradcam"] == str(out)
        assert Image.open(out).size == (224, 224)


@pytest.mark.parametrize(
    "fmt, name",
    [("PNG", "PNG"), ("JPEG", "JPEG"), ("GIF", "GIF"), ("BMP", "BMP"), ("WEBP", "WebP")],
)
def test_image_format_accepts_what_tensorflow_decodes(tmp_path, val_images, fmt, name):
    import io

    import tensorflow as tf

    buffer = io.BytesIO()
    Image.fromarray(val_images[0]).save(buffer, fmt)
    data = buffer.getvalue()
    assert image_format(data) == name
    assert tf.io.decode_image(data, expand_animations=False).shape[:2] == (28, 28)


def test_read_image_file_refuses_non_images_before_decoding(tmp_path, val_images):
    import io

    import tensorflow as tf

    tiff = io.BytesIO()
    Image.fromarray(val_images[0]).save(tiff, "TIFF")  # PIL writes it, TensorFlow cannot read it.
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        tf.io.decode_image(tiff.getvalue())
    cases = {"a.tif": tiff.getvalue(), "notes.png": b"hello", "empty.jpg": b""}
    reasons = {
        "a.tif": "its content is not in an image format",
        "notes.png": "its content is not in an image format",
        "empty.jpg": "the file is empty",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        expected = (
            f"{tmp_path / name} is not a readable image (PNG, JPEG, BMP or GIF expected): "
            f"{reasons[name]}"
        )
        with pytest.raises(ValueError) as info:
            read_image_file(tmp_path / name)
        assert str(info.value) == expected
    with pytest.raises(FileNotFoundError, match="image file not found: "):
        read_image_file(tmp_path / "missing.png")
    with pytest.raises(UserError, match=r"is a folder, not an image file; pass the image files"):
        read_image_file(tmp_path)

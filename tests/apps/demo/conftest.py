"""Fixtures of the demo page's tests: image files, good and bad, and the apps' loaded runs.

The runs are the session's tiny runs (`tests/apps/conftest.py`): a medical-cnn
`tiny` run and a translator `tiny-subword` run (the `default` preset's kind).
"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def medical_run(medical_tiny_run):
    return medical_tiny_run[0]


@pytest.fixture(scope="session")
def translator_run(translator_tiny_subword_run):
    return translator_tiny_subword_run[0]


@pytest.fixture(scope="session")
def image_files(pneumoniamnist_npz, tmp_path_factory):
    """`{"normal": png, "pneumonia": png, "notes": a text file named .txt, "empty": an empty
    .png, "broken": a .jpg that starts like a JPEG and ends there}`.

    The two X-rays are validation images, not the page's samples (the first two of each class).
    """
    from PIL import Image

    folder = tmp_path_factory.mktemp("demo_images")
    with np.load(pneumoniamnist_npz) as data:
        images, labels = data["val_images"], data["val_labels"].ravel()
    files = {}
    for name, label in (("normal", 0), ("pneumonia", 1)):
        files[name] = folder / f"xray_{name}.png"
        Image.fromarray(images[np.flatnonzero(labels == label)[2]]).save(files[name])
    files["notes"] = folder / "notes.txt"
    files["notes"].write_text("this is not an image\n")
    files["empty"] = folder / "empty.png"
    files["empty"].write_bytes(b"")
    files["broken"] = folder / "broken.jpg"
    files["broken"].write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return files

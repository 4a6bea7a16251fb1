"""Tests for `apps.common.warmup`: TF Serving's warm-up file, read back with the official protos."""

import numpy as np
import pytest
import tensorflow as tf

from apps.common.export import export_versioned
from apps.common.warmup import (
    MAX_RECORDS,
    read_warmup_requests,
    warmup_path,
    write_warmup_requests,
)
from tests.serving_stub import replay_warmup_requests, write_toy_saved_model


def _png(value):
    return tf.io.encode_png(np.full((6, 5, 1), value, np.uint8)).numpy()


def test_warmup_file_replays_through_the_saved_model(tmp_path):
    pixels = np.arange(8, dtype=np.float32).reshape(2, 4)
    requests = [
        ("serving_default", {"image_bytes": [_png(200)]}),
        ("score_pixels", {"pixels": pixels}),
    ]

    def write(path):
        write_toy_saved_model(path, offset=1.0)
        write_warmup_requests(path, requests)

    version = export_versioned(tmp_path / "toy", write)  # Written before the rename.
    assert warmup_path(version) == version / "assets.extra" / "tf_serving_warmup_requests"
    replayed = replay_warmup_requests(version)
    assert [name for name, _, _ in replayed] == ["serving_default", "score_pixels"]
    (_, inputs, outputs), (_, _, scores) = replayed
    assert inputs["image_bytes"].tolist() == [_png(200)]
    np.testing.assert_allclose(outputs["probability"], [200 / 255], rtol=1e-6)
    np.testing.assert_allclose(scores["score"], pixels.sum(axis=1) + 1.0)
    logs = read_warmup_requests(version)
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == [
        "serving_default",
        "score_pixels",
    ]
    assert logs[1].predict_log.request.inputs["pixels"].dtype == tf.float32.as_datatype_enum


@pytest.mark.parametrize("count", [0, MAX_RECORDS + 1])
def test_warmup_request_count_is_bounded(tmp_path, count):
    requests = [("serving_default", {"image_bytes": [b"x"]})] * count
    with pytest.raises(ValueError, match=f"Received: {count} requests"):
        write_warmup_requests(tmp_path, requests)
    assert not (tmp_path / "assets.extra").exists()


def test_missing_warmup_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="has no warm-up file"):
        read_warmup_requests(tmp_path)

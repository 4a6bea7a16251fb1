import json
import os

import numpy as np
import pytest

from apps.common.io import atomic_write_bytes, atomic_write_json, atomic_write_text, to_json


def test_write_text_creates_parents_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "f.txt"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    # No temporary files are left beside the destination.
    assert os.listdir(path.parent) == ["f.txt"]


def test_write_bytes_roundtrip(tmp_path):
    data = bytes(range(256))
    assert atomic_write_bytes(tmp_path / "x.bin", data).read_bytes() == data


def test_write_json_converts_numpy_and_paths(tmp_path):
    obj = {"auc": np.float32(0.5), "n": np.int64(3), "cm": np.eye(2, dtype=int), "p": tmp_path}
    path = atomic_write_json(tmp_path / "m.json", obj)
    assert json.loads(path.read_text()) == {
        "auc": 0.5,
        "n": 3,
        "cm": [[1, 0], [0, 1]],
        "p": str(tmp_path),
    }


def test_failed_json_write_keeps_old_file(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"ok": 1})
    with pytest.raises(TypeError, match="not JSON serializable"):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert sorted(os.listdir(tmp_path)) == ["m.json"]


def test_failed_write_removes_temp_file(tmp_path):
    class Boom(bytes):
        pass

    path = tmp_path / "f.bin"
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # write() of a str to a binary file fails
    assert os.listdir(tmp_path) == []


def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path):
    from apps.common.io import atomic_write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = atomic_write_text(tmp_path / "atomic.txt", "x")
    assert (written.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)


def test_json_writes_null_for_nan_and_infinities(tmp_path):
    # `NaN` is not JSON: strict readers (and `json.loads(..., parse_constant=...)`) reject it.
    obj = {
        "auc": float("nan"),
        "loss": [1.5, float("inf"), np.float32("nan")],
        "mean": np.array([0.5, -np.inf]),
        "n": np.int64(3),
    }
    path = atomic_write_json(tmp_path / "m.json", obj)

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "auc": None,
        "loss": [1.5, None, None],
        "mean": [0.5, None],
        "n": 3,
    }
    assert json.loads(to_json(obj), parse_constant=refuse)["auc"] is None

import hashlib

import pytest

from apps.common.data import fetch_file, find_shared_data, shared_data_dir


def test_shared_data_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARED_DATA_DIR", str(tmp_path))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.npz").write_bytes(b"x")
    assert shared_data_dir() == tmp_path
    assert find_shared_data("d/f.npz") == tmp_path / "d" / "f.npz"
    with pytest.raises(FileNotFoundError, match="shared data file not found.*SHARED_DATA_DIR"):
        find_shared_data("d/missing.npz")
    assert find_shared_data("d/missing.npz", must_exist=False) == tmp_path / "d" / "missing.npz"


def test_shared_data_default_finds_real_data(monkeypatch, pneumoniamnist_npz):
    monkeypatch.delenv("SHARED_DATA_DIR", raising=False)
    found = find_shared_data("pneumoniamnist/pneumoniamnist.npz")
    assert found.resolve() == pneumoniamnist_npz.resolve()


def test_fetch_file_prefers_local_path(tmp_path):
    local = tmp_path / "data.npz"
    local.write_bytes(b"abc")
    # The URL is never contacted when a local copy is given.
    assert fetch_file("http://127.0.0.1:9/x", "0" * 64, "x.npz", local_path=local) == local
    with pytest.raises(FileNotFoundError, match="data file not found: .*nope.npz"):
        fetch_file("http://127.0.0.1:9/x", "0" * 64, "x.npz", local_path=tmp_path / "nope.npz")


def test_fetch_file_downloads_and_verifies(tmp_path):
    # A file:// URL exercises the real keras.utils.get_file download path offline.
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    digest = hashlib.sha256(b"payload").hexdigest()
    got = fetch_file(src.as_uri(), digest, "copy.bin", cache_dir=tmp_path / "cache")
    assert got.read_bytes() == b"payload"
    assert got.is_relative_to(tmp_path / "cache")
    with pytest.raises(ValueError, match="failed verification"):
        fetch_file(src.as_uri(), "1" * 64, "other.bin", cache_dir=tmp_path / "cache")


def test_fetch_file_download_failure_is_clear(tmp_path):
    missing = (tmp_path / "gone.bin").as_uri()
    with pytest.raises(ConnectionError, match="could not download .*offline\\? pass --data PATH"):
        fetch_file(missing, "0" * 64, "gone.bin", cache_dir=tmp_path / "cache")

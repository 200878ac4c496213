"""The digest cache (edgefpn.digests): a digest is reused only while a stat says the file is unchanged."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from edgefpn import digests


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(digests, "_entries", {})
    monkeypatch.setattr(digests, "_dirty", False)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _age(path, seconds: float = 10.0) -> None:
    """Backdate mtime (ctime stays now: the racy rule must look at both)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def test_same_size_rewrite_is_seen_even_with_mtime_restored(tmp_path, monkeypatch):
    monkeypatch.setattr(digests, "RACY_SECONDS", 0.0)  # cache at once: the key alone must catch the edit
    f = tmp_path / "img.bin"
    f.write_bytes(b"a" * 64)
    assert digests.cached_sha256(f) == _sha(b"a" * 64)
    old = f.stat()
    f.write_bytes(b"b" * 64)  # same size, same inode
    os.utime(f, ns=(old.st_atime_ns, old.st_mtime_ns))  # `touch -r`: mtime back, ctime cannot go back
    assert digests.cached_sha256(f) == _sha(b"b" * 64)


def test_a_file_changed_moments_ago_is_not_cached(tmp_path):
    f = tmp_path / "img.bin"
    f.write_bytes(b"a" * 64)
    _age(f)
    digests.cached_sha256(f)
    assert digests._entries == {}  # ctime is now: within one clock tick a rewrite could keep every stat field
    opened = []
    real_open = open
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("builtins.open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
        digests.cached_sha256(f)
    assert opened, "a racy file must be read again"


def test_persisted_cache_is_reused_and_a_corrupt_one_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setattr(digests, "RACY_SECONDS", 0.0)
    run = tmp_path / "run"
    run.mkdir()
    f = tmp_path / "img.bin"
    f.write_bytes(b"x" * 10)
    with digests.persisted(run):
        digests.cached_sha256(f)
    store = run / digests.STORE
    assert str(f) in store.read_text()
    monkeypatch.setattr(digests, "_entries", {})
    with digests.persisted(run):
        monkeypatch.setattr(
            digests, "sha256_uncached", lambda p: pytest.fail("read despite a valid cache entry")
        )
        assert digests.cached_sha256(f) == _sha(b"x" * 10)
    monkeypatch.undo()
    monkeypatch.setattr(digests, "_entries", {})
    monkeypatch.setattr(digests, "RACY_SECONDS", 0.0)
    bad_entry = json.dumps({"schema": "edgefpn.digests/1", "entries": {str(f): [1, 2, 3, 4, 5, "0", None]}})
    for junk in ("{not json", bad_entry):
        store.write_text(junk)
        with digests.persisted(run):
            assert digests.cached_sha256(f) == _sha(b"x" * 10)
        assert f'"{f}"' in store.read_text() and _sha(b"x" * 10) in store.read_text()  # rebuilt
        monkeypatch.setattr(digests, "_entries", {})


def test_a_failed_command_writes_no_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(digests, "RACY_SECONDS", 0.0)
    run = tmp_path / "run"
    run.mkdir()
    f = tmp_path / "img.bin"
    f.write_bytes(b"x")
    with pytest.raises(RuntimeError), digests.persisted(run):
        digests.cached_sha256(f)
        raise RuntimeError("the stage failed")
    assert list(run.iterdir()) == []

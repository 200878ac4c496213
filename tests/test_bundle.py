"""edgefpn.bundle: deterministic writing, and every unsafe tar refused before anything is written."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from edgefpn import bundle
from edgefpn.errors import ModelFileError
from tests.security.harness import tar_file, tar_special


def _manifest(entries: dict[str, bytes]) -> bytes:
    import hashlib

    files = {
        n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b), "role": ["engine"]}
        for n, b in entries.items()
    }
    return json.dumps({"schema": bundle.SCHEMA, "files": files, "engines": []}).encode()


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _good_members() -> list[tuple[tarfile.TarInfo, bytes]]:
    entries = {"a/model.onnx": b"onnx-bytes", "pipeline.json": b"{}"}
    return [*(tar_file(n, b) for n, b in entries.items()), tar_file(bundle.MANIFEST, _manifest(entries))]


def test_good_tar_extracts(tmp_path):
    src = _tar(tmp_path / "b.tar", _good_members())
    manifest = bundle.extract(src, tmp_path / "out")
    assert (tmp_path / "out" / "a" / "model.onnx").read_bytes() == b"onnx-bytes"
    assert set(manifest["files"]) == {"a/model.onnx", "pipeline.json"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp folder left


def test_write_tar_is_deterministic(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\x00\x01" * 1000)
    (tmp_path / "y.txt").write_text("hello")
    files = {"z/x.bin": tmp_path / "x.bin", "y.txt": tmp_path / "y.txt"}
    manifest = {
        "schema": bundle.SCHEMA,
        "files": {n: bundle.file_entry(p, ["engine"]) for n, p in files.items()},
    }
    bundle.write_tar(tmp_path / "1.tar", files, manifest)
    (tmp_path / "x.bin").touch()  # a new mtime must not change the tar
    bundle.write_tar(tmp_path / "2.tar", files, manifest)
    assert (tmp_path / "1.tar").read_bytes() == (tmp_path / "2.tar").read_bytes()
    with tarfile.open(tmp_path / "1.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["y.txt", "z/x.bin", bundle.MANIFEST]
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.isfile() for m in members)


BAD = {
    "dotdot": ([tar_file("../evil", b"x")], "'..' path component"),
    "nested_dotdot": ([tar_file("a/../../evil", b"x")], "'..' path component"),
    "absolute": ([tar_file("/etc/evil", b"x")], "absolute path"),
    "symlink": ([tar_special("link", tarfile.SYMTYPE, "/etc/passwd")], "is a link"),
    "hardlink": ([tar_special("hard", tarfile.LNKTYPE, "pipeline.json")], "is a link"),
    "fifo": ([tar_special("fifo", tarfile.FIFOTYPE)], "device, fifo"),
    "chardev": ([tar_special("dev", tarfile.CHRTYPE)], "device, fifo"),
    "duplicate": ([tar_file("pipeline.json", b"{}")], "appears twice"),
    "unlisted": ([tar_file("extra.bin", b"x")], "not listed"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_unsafe_members_refused_before_writing(tmp_path, case):
    extra, reason = BAD[case]
    good = _good_members()
    src = _tar(tmp_path / "b.tar", [*good[:-1], *extra, good[-1]])
    dest = tmp_path / "dest" / "out"
    with pytest.raises(ModelFileError, match=reason) as err:
        bundle.extract(src, dest)
    assert "\n" not in str(err.value) and str(src) in str(err.value)
    assert not (tmp_path / "dest").exists()  # nothing written at all, not even the parent
    assert not (tmp_path / "evil").exists()


def test_limits_refused(tmp_path):
    src = _tar(tmp_path / "b.tar", _good_members())
    dest = tmp_path / "out"
    with pytest.raises(ModelFileError, match="more than the limit"):
        bundle.extract(src, dest, bundle.Limits(max_members=2))
    with pytest.raises(ModelFileError, match="above the limit"):
        bundle.extract(src, dest, bundle.Limits(max_member_bytes=4))
    with pytest.raises(ModelFileError, match="total more than"):
        bundle.extract(src, dest, bundle.Limits(max_total_bytes=12))
    assert not dest.exists()


def test_manifest_must_be_last_and_hashes_match(tmp_path):
    good = _good_members()
    with pytest.raises(ModelFileError, match="not the last member"):
        bundle.read_verified(_tar(tmp_path / "a.tar", [good[-1], *good[:-1]]))
    tampered = [tar_file("a/model.onnx", b"onnx-bytez"), good[1], good[2]]
    with pytest.raises(ModelFileError, match=r"a/model.onnx: sha256 does not match"):
        bundle.extract(_tar(tmp_path / "t.tar", tampered), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_compressed_tar_refused(tmp_path):
    path = tmp_path / "b.tar"
    with tarfile.open(path, "w:gz") as tar:
        for info, data in _good_members():
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ModelFileError, match="not a readable plain tar"):
        bundle.read_verified(path)

"""A full disk while a stage writes: one error line, and the run directory as it was.

Two ways, each asserting one line naming the artifact, exit 2, and the run directory exactly as before:

* simulated everywhere: the writer's file (or the library's writer) raises ``OSError(ENOSPC)`` part-way
  through, as ``write(2)`` does on a full disk; OpenVINO's writer raises its own untyped
  ``RuntimeError`` (as it does on a full disk) while the disk reports no free space;
* a real full disk where this machine lets the tests mount a small tmpfs (root in a container with
  CAP_SYS_ADMIN); elsewhere that test skips and says why, and the simulated ones still run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import copy_run
from tests.faults.conftest import CHECK_ONLY_ORT
from tests.security.harness import build_args, cli, leftovers, refused, snapshot, tiny_sets

NO_SPACE = r"not written: No space left on device.*; nothing partial was kept"


def _enospc(path: object = None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FillingFile:
    """A writable file that takes ``room`` bytes, then fails like a full disk."""

    def __init__(self, f, room: int) -> None:
        self._f, self._room = f, room

    def write(self, data) -> int:
        n = len(memoryview(data))
        if n > self._room:
            self._f.write(bytes(memoryview(data)[: self._room]))
            self._room = 0
            raise _enospc()
        self._room -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_checkpoint_on_a_full_disk(tiny_run, data_root, tmp_path, monkeypatch):
    """torch's zip writer turns the file's ENOSPC into 'unexpected pos'; the real error is reported."""
    from edgefpn.models import checkpoint

    _, src = tiny_run
    run = tmp_path / "run"
    run.mkdir()
    real_fdopen = os.fdopen
    monkeypatch.setattr(
        checkpoint.os,
        "fdopen",
        lambda fd, mode="r", *a, **k: _FillingFile(real_fdopen(fd, mode, *a, **k), 1 << 20),
    )
    before = snapshot(run)
    res = cli(
        "train", *tiny_sets(f"model.weights={src / 'model.pt'}", data_root=data_root), "--out", run, "--quiet"
    )
    refused(res, names=[run / "model.pt"], problem=NO_SPACE)
    assert snapshot(run) == before


def test_onnx_export_on_a_full_disk(tiny_run, data_root, tmp_path, monkeypatch):
    import onnx

    _, src = tiny_run
    run = copy_run(src, tmp_path / "run")
    for name in ("model.onnx", "model.onnx.manifest.json"):
        (run / name).unlink()

    def full_save(model, path, *a, **k):
        with _FillingFile(open(path, "wb"), 1 << 20) as f:
            f.write(model.SerializeToString())

    monkeypatch.setattr(onnx, "save", full_save)
    before = snapshot(run)
    res = cli("export", *tiny_sets(data_root=data_root), "--out", run, "--quiet")
    refused(res, names=[run / "model.onnx"], problem=NO_SPACE)
    assert snapshot(run) == before


def test_openvino_ir_on_a_full_disk(tiny_run, data_root, tmp_path, monkeypatch):
    openvino = pytest.importorskip("openvino", reason="needs the openvino extra")

    _, src = tiny_run
    run = copy_run(src, tmp_path / "run")

    def full_save(model, xml, *a, **k):
        # what OpenVINO does on a full disk: its own error type, no errno, its partial files removed
        monkeypatch.setattr(
            shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 4096)
        )
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(openvino, "save_model", full_save)
    before = snapshot(run)
    res = cli(*build_args(run, data_root=data_root))
    refused(res, names=[run / "openvino" / "fp32"], problem=NO_SPACE)
    assert {k: v for k, v in snapshot(run).items() if k != "openvino"} == before
    assert list((run / "openvino").iterdir()) == []


def test_bundle_on_a_full_disk(checked_run, tmp_path, monkeypatch):
    overrides, src = checked_run
    run = copy_run(src, tmp_path / "run")
    real_copy = tarfile.copyfileobj
    written = [0]

    def filling_copy(src_f, dst_f, length=None, *a, **k):
        if written[0] > 1 << 20:
            raise _enospc()
        written[0] += length or 0
        return real_copy(src_f, dst_f, length, *a, **k)

    monkeypatch.setattr(tarfile, "copyfileobj", filling_copy)
    root = next(o for o in overrides if o.startswith("data.root=")).partition("=")[2]
    before = snapshot(run)
    res = cli("package", *tiny_sets(*CHECK_ONLY_ORT, data_root=Path(root)), "--out", run, "--quiet")
    refused(res, names=[run / "bundle.tar"], problem=NO_SPACE)
    assert snapshot(run) == before


# ------------------------------------------------------------------------------------------------
# a real full disk


@contextlib.contextmanager
def _tmpfs(where: Path, size_mb: int):
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real full disk needs a tmpfs mount (root); the simulated ENOSPC tests above still ran")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({proc.stderr.strip()}); the simulated ENOSPC tests above still ran"
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: Path, leave_mb: int) -> None:
    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as f:
        f.truncate(0)
        os.posix_fallocate(f.fileno(), 0, max(0, free - (leave_mb << 20)))


@pytest.mark.slow
def test_real_full_tmpfs(tiny_run, data_root, tmp_path):
    """Train (load weights), export and OpenVINO IR into a tmpfs with 8 MiB left: each is one line
    naming the artifact, and nothing is left behind on the full disk."""
    _, src = tiny_run
    with _tmpfs(tmp_path / "disk", 128) as disk:
        run = disk / "run"
        run.mkdir()
        shutil.copy(src / "model.pt", run)
        shutil.copy(src / "model.pt.manifest.json", run)
        _fill(disk, 8)
        before = snapshot(run)
        res = cli(
            "train",
            *tiny_sets(f"model.weights={src / 'model.pt'}", data_root=data_root),
            "--out",
            disk / "run2",
            "--quiet",
        )
        refused(res, names=[disk / "run2" / "model.pt"], problem=NO_SPACE)
        assert leftovers(disk) == [] and not (disk / "run2" / "model.pt").exists()
        res = cli("export", *tiny_sets(data_root=data_root), "--out", run, "--quiet")
        refused(res, names=[run / "model.onnx"], problem=NO_SPACE)
        assert snapshot(run) == before
        if _has_openvino():
            (disk / "filler").unlink()
            shutil.copy(src / "model.onnx", run)
            shutil.copy(src / "model.onnx.manifest.json", run)
            _fill(disk, 8)
            before = snapshot(run)
            res = cli(*build_args(run, data_root=data_root))
            refused(res, names=[run / "openvino" / "fp32"], problem=NO_SPACE)
            assert {k: v for k, v in snapshot(run).items() if k != "openvino"} == before


def _has_openvino() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True

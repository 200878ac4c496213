"""Artifacts on disk: atomic writes, sha256, and the sidecar manifests that make stages skippable.

An artifact ``X`` is complete only when ``X.manifest.json`` exists and its recorded sha256 matches
``X``: the manifest is always written last, so an interrupted stage leaves nothing a later run
would trust. Files a stage writes beside its artifact (``report.md`` beside ``report.json``) are
its side outputs: recorded in the same manifest, and one missing or changed makes the artifact stale.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefpn.backend_names import backend_packages
from edgefpn.digests import cached_sha256
from edgefpn.errors import EdgefpnError

MANIFEST_SUFFIX = ".manifest.json"
_TRACKED_PACKAGES: tuple[str, ...] = (
    "edgefpn",
    "torch",
    "torchvision",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxslim",
    "openvino",
    "nncf",
    "pillow",
    "pycocotools",
    "tensorrt",
)
# and every backend's own (edgefpn.backend_names), so a new backend's version is recorded without an edit here
_TRACKED_PACKAGES += tuple(p for p in backend_packages() if p not in _TRACKED_PACKAGES)


@dataclass(frozen=True)
class Artifact:
    """A file (or folder) made by a stage, with its manifest."""

    path: Path
    manifest: Mapping[str, Any]

    @property
    def sha256(self) -> str:
        return str(self.manifest["sha256"])


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + MANIFEST_SUFFIX)


def sha256_file(path: Path) -> str:
    """sha256 of a file; reused while the file's path, size, times and inode are unchanged
    (:mod:`edgefpn.digests`), so a no-op rerun stats its inputs instead of reading them."""
    return cached_sha256(path)


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted)."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(child.relative_to(path).as_posix().encode() + b"\0")
        h.update(sha256_file(child).encode())
    return h.hexdigest()


def tool_versions() -> dict[str, str]:
    """Versions of the packages that shape artifacts (read from metadata: nothing is imported)."""
    out = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def backend_versions() -> dict[str, str]:
    """Versions of the inference backends (and of the preprocessing's Pillow / numpy): part of the
    key of anything cached from running engines (calibration ranges, timings, check reports), so an
    upgraded backend never reuses numbers measured with the old one."""
    versions = tool_versions()
    return {k: versions[k] for k in (*backend_packages(), "numpy", "pillow") if k in versions}


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_LOW_SPACE = 1 << 20  # bytes: below this, a writer's untyped failure is reported as a full disk


def _disk_full(exc: BaseException, folder: Path) -> str | None:
    """Why a write into ``folder`` failed, if the disk is to blame (an OSError anywhere in the chain,
    or a library's own error type raised while the disk has under 1 MiB free), else None."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _DISK_FULL:
            return os.strerror(cur.errno)
        cur = cur.__cause__ or cur.__context__
    if isinstance(exc, EdgefpnError | KeyboardInterrupt):
        return None
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(folder).free
        if free < _LOW_SPACE:
            return f"{type(exc).__name__} with only {free} bytes free on its disk (disk full?)"
    return None


def _remove_orphans(path: Path) -> None:
    """Temporary folders of ``path`` left by a process that was killed (SIGKILL, power loss).

    Their names carry the writer's pid; a folder whose pid is gone is removed, so repeated killed
    runs cannot fill the disk with hidden partial artifacts. A live writer's folder is left alone.
    """
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass  # alive, owned by someone else


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it into place, else delete it.

    Works for files and folders. The old manifest of ``path`` is removed just before the rename, so
    a crash between the rename and the new manifest leaves an artifact that is simply rebuilt, and a
    write that fails (an error, a full disk, a kill) leaves the old artifact and its manifest as they
    were. A full disk is one line naming ``path`` (an ``EdgefpnError``), whichever library was writing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise EdgefpnError(f"{path}: the stage wrote nothing")
        manifest_path(path).unlink(missing_ok=True)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        if (why := _disk_full(exc, path.parent)) is not None:
            raise EdgefpnError(f"{path}: not written: {why}; nothing partial was kept") from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def _side_name(path: Path, output: Path) -> str:
    """``output``'s name relative to ``path``'s folder (the key it is recorded under)."""
    try:
        return output.relative_to(path.parent).as_posix()
    except ValueError:
        raise ValueError(f"side output {output} is not in {path.parent}, the folder of {path.name}") from None


def write_manifest(
    path: Path,
    *,
    stage: str,
    config_hash: str,
    inputs: Mapping[str, str],
    outputs: Sequence[Path] = (),
    extra: Mapping[str, Any] | None = None,
) -> Artifact:
    """Record ``path`` as complete. ``inputs`` maps input names to their sha256.

    ``outputs`` are the other files the stage wrote beside ``path`` (already in place): their sha256
    goes into the manifest, so that ``up_to_date`` can require them too.
    """
    manifest = {
        "artifact": path.name,
        "stage": stage,
        "sha256": sha256_path(path),
        "config_hash": config_hash,
        "inputs": dict(sorted(inputs.items())),
        "side_outputs": {_side_name(path, o): sha256_path(o) for o in sorted(outputs)},
        "versions": tool_versions(),
        "created_unix": int(time.time()),
        **(dict(extra) if extra else {}),
    }
    write_json(manifest_path(path), manifest)
    return Artifact(path, manifest)


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of ``path``, or None when it is missing or unreadable."""
    mpath = manifest_path(path)
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def up_to_date(
    path: Path, *, config_hash: str, inputs: Mapping[str, str], outputs: Sequence[Path] = ()
) -> Artifact | None:
    """The artifact if it exists, is intact and was made from these inputs and settings.

    ``outputs`` are the side outputs the stage writes beside ``path`` (as given to
    ``write_manifest``): each must exist and match the sha256 recorded for it, and the manifest must
    record exactly these, so a deleted ``report.html`` (or a manifest from before the stage wrote
    it) reruns the stage instead of skipping it.
    """
    manifest = read_manifest(path)
    if manifest is None or not path.exists():
        return None
    if manifest.get("config_hash") != config_hash or manifest.get("inputs") != dict(inputs):
        return None
    recorded = manifest.get("side_outputs") or {}
    wanted = {_side_name(path, o): o for o in outputs}
    if not isinstance(recorded, dict) or set(recorded) != set(wanted):
        return None
    if any(not o.is_file() or recorded[name] != sha256_path(o) for name, o in wanted.items()):
        return None
    if manifest.get("sha256") != sha256_path(path):
        return None
    return Artifact(path, manifest)


def require(path: Path, what: str) -> Artifact:
    """A complete artifact made by an earlier stage, or a clear error."""
    manifest = read_manifest(path)
    if manifest is None or not path.exists():
        raise EdgefpnError(f"{path}: missing {what}; run the stage that makes it first")
    if manifest.get("sha256") != sha256_path(path):
        raise EdgefpnError(f"{path}: {what} does not match its manifest (modified or partly written)")
    return Artifact(path, manifest)

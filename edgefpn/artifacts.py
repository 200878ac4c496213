"""Artifacts on disk: atomic writes, sha256, and the sidecar manifests that make stages skippable.

An artifact ``X`` is complete only when ``X.manifest.json`` exists and its recorded sha256 matches
``X``: the manifest is always written last, so an interrupted stage leaves nothing a later run
would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefpn.errors import EdgefpnError

MANIFEST_SUFFIX = ".manifest.json"
_TRACKED_PACKAGES = (
    "edgefpn", "torch", "torchvision", "numpy", "onnx", "onnxruntime", "onnxslim", "openvino", "nncf",
    "pillow", "pycocotools", "tensorrt",
)


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


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it into place, else delete it.

    Works for files and folders. A stale manifest of ``path`` is removed first, so a crash between
    the rename and the new manifest leaves an artifact that is simply rebuilt.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    stale = manifest_path(path)
    if stale.exists():
        stale.unlink()
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise EdgefpnError(f"{path}: the stage wrote nothing")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
        _fsync_dir(path.parent)
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


def write_manifest(
    path: Path,
    *,
    stage: str,
    config_hash: str,
    inputs: Mapping[str, str],
    extra: Mapping[str, Any] | None = None,
) -> Artifact:
    """Record ``path`` as complete. ``inputs`` maps input names to their sha256."""
    manifest = {
        "artifact": path.name,
        "stage": stage,
        "sha256": sha256_path(path),
        "config_hash": config_hash,
        "inputs": dict(sorted(inputs.items())),
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


def up_to_date(path: Path, *, config_hash: str, inputs: Mapping[str, str]) -> Artifact | None:
    """The artifact if it exists, is intact and was made from these inputs and settings."""
    manifest = read_manifest(path)
    if manifest is None or not path.exists():
        return None
    if manifest.get("config_hash") != config_hash or manifest.get("inputs") != dict(inputs):
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

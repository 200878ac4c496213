"""Engine bundles on disk: one plain tar, written deterministically, read back refusing anything unsafe.

A bundle holds regular files only, at relative POSIX paths, plus ``manifest.json`` as the LAST member.
The manifest lists every other member's ``sha256``, ``size`` and ``role``; a reader accepts the bundle
only when the member set equals that list exactly and every hash matches.

Writing (:func:`write_tar`): members sorted by name, mtime 0, uid/gid 0, empty owner names, mode
0644, PAX format: packaging the same files twice gives byte-identical tars.

Reading (:func:`read_verified`, :func:`extract`): every check that can be made from the headers is made
BEFORE anything is written (``..`` or absolute names, links, devices/fifos, duplicates, too many
members, too large a member or total), then every member's sha256 is checked from the tar stream;
:func:`extract` writes into a fresh temporary folder beside the destination, hashes what it wrote
again, and renames the folder into place. stdlib + the edgefpn error types only (device runtime).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefpn.errors import ModelFileError
from edgefpn.ownership import check_replaceable

__all__ = [
    "MANIFEST",
    "SCHEMA",
    "Limits",
    "check_extract_dest",
    "extract",
    "extracted_problem",
    "file_entry",
    "read_member",
    "read_verified",
    "write_tar",
]

MANIFEST = "manifest.json"
SCHEMA = "edgefpn.bundle/1"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Caps checked from the tar headers before anything is read or written."""

    max_members: int = 4096
    max_member_bytes: int = 4 << 30  # 4 GiB: a large TensorRT engine or IR .bin
    max_total_bytes: int = 16 << 30
    max_manifest_bytes: int = 16 << 20


DEFAULT_LIMITS = Limits()


def file_entry(path: Path, role: Sequence[str]) -> dict[str, Any]:
    """The manifest entry of one file: sha256, size and its sorted roles."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return {"sha256": h.hexdigest(), "size": path.stat().st_size, "role": sorted(set(role))}


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_tar(dest: Path, files: Mapping[str, Path], manifest: Mapping[str, Any]) -> bytes:
    """Write ``files`` (bundle name -> source file) sorted, then ``manifest`` last; return its bytes.

    ``manifest["files"]`` must list exactly ``files``' names (the caller computed it with
    :func:`file_entry`); the sources are re-hashed while they are copied, so a file that changed in
    between is an error rather than a bundle whose manifest lies.
    """
    listed = manifest.get("files", {})
    if set(listed) != set(files):
        raise ValueError(f"manifest lists {sorted(listed)}, bundle files are {sorted(files)}")
    for name in files:
        _check_name(name, dest)
    blob = (json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            src = files[name]
            size = src.stat().st_size
            with open(src, "rb") as f:
                reader = _HashingReader(f)
                tar.addfile(_tarinfo(name, size), reader)
            if reader.hexdigest() != listed[name]["sha256"] or size != listed[name]["size"]:
                raise ModelFileError(f"{src}: changed while it was being packaged")
        tar.addfile(_tarinfo(MANIFEST, len(blob)), io.BytesIO(blob))
    return blob


class _HashingReader(io.RawIOBase):
    def __init__(self, f: Any) -> None:
        self._f, self._h = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._h.update(data)
        return data

    def hexdigest(self) -> str:
        return self._h.hexdigest()


# ----------------------------------------------------------------------------------------------
# reading


def _check_name(name: str, bundle: Path) -> None:
    bad = None
    if not name or "\0" in name or "\\" in name:
        bad = "an empty name or one with NUL or backslash"
    elif name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        bad = "an absolute path"
    elif ".." in name.split("/"):
        bad = "a '..' path component"
    elif posixpath.normpath(name) != name or name.startswith("./"):
        bad = "a path that is not normalised"
    if bad:
        raise ModelFileError(f"{bundle}: member {name!r} is {bad}; refusing the bundle")


def _check_members(bundle: Path, members: list[tarfile.TarInfo], limits: Limits) -> list[tarfile.TarInfo]:
    """All header checks; returns the regular-file members. Raises on the first problem."""
    if len(members) > limits.max_members:
        raise ModelFileError(f"{bundle}: {len(members)} members, more than the limit of {limits.max_members}")
    seen: set[str] = set()
    total = 0
    files = []
    for m in members:
        _check_name(m.name.rstrip("/") if m.isdir() else m.name, bundle)
        if m.issym() or m.islnk():
            raise ModelFileError(
                f"{bundle}: member {m.name!r} is a link (to {m.linkname!r}); refusing the bundle"
            )
        if not (m.isfile() or m.isdir()):
            raise ModelFileError(
                f"{bundle}: member {m.name!r} is a device, fifo or other special file; refusing the bundle"
            )
        name = m.name.rstrip("/")
        if name in seen:
            raise ModelFileError(f"{bundle}: member {name!r} appears twice; refusing the bundle")
        seen.add(name)
        if m.isfile():
            if m.size > limits.max_member_bytes:
                raise ModelFileError(
                    f"{bundle}: member {name!r} is {m.size} bytes, above the limit of "
                    f"{limits.max_member_bytes}"
                )
            total += m.size
            if total > limits.max_total_bytes:
                raise ModelFileError(
                    f"{bundle}: members total more than the limit of {limits.max_total_bytes} bytes"
                )
            files.append(m)
    names = {m.name for m in files}
    for name in names:  # a file whose name is also a folder of another member cannot be extracted
        parts = name.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in names:
                raise ModelFileError(f"{bundle}: member {name!r} sits under the file {'/'.join(parts[:i])!r}")
    if not files or files[-1].name != MANIFEST:
        raise ModelFileError(
            f"{bundle}: {MANIFEST} is not the last member (incomplete or not an edgefpn bundle)"
        )
    return files


@contextlib.contextmanager
def _open(bundle: Path) -> Iterator[tarfile.TarFile]:
    try:
        # plain tar only: "r:" refuses compressed streams (no decompression bombs)
        with tarfile.open(bundle, "r:") as tar:
            yield tar
    except FileNotFoundError:
        raise ModelFileError(f"{bundle}: bundle not found") from None
    except tarfile.TarError as exc:
        raise ModelFileError(f"{bundle}: not a readable plain tar ({exc})") from None


def _parse_manifest(
    bundle: Path, tar: tarfile.TarFile, member: tarfile.TarInfo, limits: Limits
) -> dict[str, Any]:
    if member.size > limits.max_manifest_bytes:
        raise ModelFileError(
            f"{bundle}: {MANIFEST} is {member.size} bytes, above {limits.max_manifest_bytes}"
        )
    f = tar.extractfile(member)
    try:
        manifest = json.loads(f.read().decode("utf-8")) if f else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{bundle}: {MANIFEST} is not valid JSON ({exc})") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("schema") != SCHEMA
        or not isinstance(manifest.get("files"), dict)
    ):
        raise ModelFileError(f"{bundle}: {MANIFEST} is not an {SCHEMA} manifest")
    for name, entry in manifest["files"].items():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("size"), int)
        ):
            raise ModelFileError(f"{bundle}: {MANIFEST} entry {name!r} lacks sha256/size")
    return manifest


def _check_listing(bundle: Path, files: list[tarfile.TarInfo], manifest: Mapping[str, Any]) -> None:
    listed = manifest["files"]
    present = {m.name: m for m in files if m.name != MANIFEST}
    for name in sorted(set(present) - set(listed)):
        raise ModelFileError(f"{bundle}: member {name!r} is not listed in {MANIFEST}; refusing the bundle")
    for name in sorted(set(listed) - set(present)):
        raise ModelFileError(f"{bundle}: {name!r} is listed in {MANIFEST} but missing from the bundle")
    for name, m in present.items():
        if m.size != listed[name]["size"]:
            raise ModelFileError(
                f"{bundle}: {name}: size {m.size} differs from the manifest's {listed[name]['size']}"
            )


def _hash_stream(f: Any) -> str:
    h = hashlib.sha256()
    while block := f.read(_CHUNK):
        h.update(block)
    return h.hexdigest()


def read_verified(bundle: Path, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The bundle's manifest, after every header check and every member's sha256. Writes nothing."""
    with _open(bundle) as tar:
        files = _check_members(bundle, tar.getmembers(), limits)
        manifest = _parse_manifest(bundle, tar, files[-1], limits)
        _check_listing(bundle, files, manifest)
        for m in files[:-1]:
            f = tar.extractfile(m)
            if f is None or _hash_stream(f) != manifest["files"][m.name]["sha256"]:
                raise ModelFileError(
                    f"{bundle}: {m.name}: sha256 does not match the manifest (modified or corrupt)"
                )
    return manifest


def read_member(bundle: Path, name: str, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The bytes of one regular-file member (after the header checks), without extracting anything."""
    with _open(bundle) as tar:
        files = _check_members(bundle, tar.getmembers(), limits)
        member = next((m for m in files if m.name == name), None)
        f = tar.extractfile(member) if member is not None else None
        if f is None:
            raise ModelFileError(f"{bundle}: no member {name!r}")
        return f.read()


def extracted_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a bundle extracted by edgefpn and left unchanged, or None.

    Such a folder holds its ``manifest.json`` and exactly the files it lists, each with its sha256:
    a file added or edited since extraction is the user's, and replacing the folder would lose it.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_bytes())
        listed = (
            manifest["files"] if isinstance(manifest, dict) and manifest.get("schema") == SCHEMA else None
        )
    except (OSError, ValueError, KeyError):
        listed = None
    if not isinstance(listed, dict):
        return f"no edgefpn {MANIFEST} in it"
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()} - {MANIFEST}
    if extra := sorted(present - set(listed)):
        return f"{len(extra)} file(s) its {MANIFEST} does not list, e.g. {extra[0]}"
    for name in sorted(present):
        path = folder / name
        entry = listed[name]
        if path.is_symlink() or not isinstance(entry, dict):
            return f"{name} is not as extracted"
        with open(path, "rb") as f:
            if _hash_stream(f) != entry.get("sha256"):
                return f"{name} changed since it was extracted"
    return None


def check_extract_dest(dest: Path, option: str = "--extract-to") -> None:
    """Refuse ``dest`` unless it is absent, empty or a bundle extracted by edgefpn, unchanged."""
    check_replaceable(
        dest, what="a bundle extracted by edgefpn", problem=extracted_problem, folder=True, option=option
    )


def extract(bundle: Path, dest: Path, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Verify ``bundle`` (:func:`read_verified`), then extract it to ``dest``.

    ``dest`` may exist only as an empty folder or an unchanged earlier extraction
    (:func:`check_extract_dest`): nothing else is ever replaced. Files go to a fresh temporary folder
    beside ``dest``, are hashed again on disk, and the folder is renamed into place: ``dest`` never
    holds a partial or unverified bundle.
    """
    check_extract_dest(dest)
    manifest = read_verified(bundle, limits)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        with _open(bundle) as tar:
            files = _check_members(bundle, tar.getmembers(), limits)  # the file could have changed since
            for m in files:
                target = tmp.joinpath(*m.name.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                if src is None:
                    raise ModelFileError(f"{bundle}: {m.name}: cannot be read")
                with open(target, "xb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
                os.chmod(target, 0o644)
        if json.loads((tmp / MANIFEST).read_bytes()) != manifest:
            raise ModelFileError(f"{bundle}: changed while it was being extracted")
        for name, entry in manifest["files"].items():
            with open(tmp.joinpath(*name.split("/")), "rb") as f:
                if _hash_stream(f) != entry["sha256"]:
                    raise ModelFileError(
                        f"{bundle}: {name}: sha256 does not match the manifest after extraction"
                    )
        check_extract_dest(dest)  # again, right before: something may have been put there meanwhile
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest

"""File digests (and image sizes) cached by path, size, mtime, ctime and inode.

A stage's inputs are the content it reads, every image included, so an up-to-date check would read
~2,500 images and every artifact on each rerun. Instead a file's sha256 (and, for an image, its
header's width x height) is reused while its path, size, inode, mtime and ctime are all unchanged:
any write changes mtime and ctime, and ctime cannot be set back (``touch -r`` after an edit still
leaves a new ctime). File timestamps are coarse (one kernel clock tick), so two writes inside one
tick can share them; a file modified less than :data:`RACY_SECONDS` before it was hashed is
therefore hashed again next time instead of cached (git's "racy" rule).

The cache lives in this process and, for CLI commands, in ``<run dir>/cache/digests.json``
(:func:`persisted`): written atomically, pruned of files that changed or vanished, and ignored and
rebuilt when it is unreadable. It is only a cache: nothing is trusted from it that a stat would
not confirm. The device runtime never uses it (:mod:`edgefpn.bundle` hashes every member itself).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

__all__ = ["RACY_SECONDS", "STORE", "cached_image_size", "cached_sha256", "persisted"]

RACY_SECONDS = 2.0
STORE = Path("cache") / "digests.json"  # inside a run directory
_SCHEMA = "edgefpn.digests/1"

# absolute path -> [size, mtime_ns, ctime_ns, inode, device, sha256 | None, [w, h] | None]
_entries: dict[str, list] = {}
_dirty = False


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _racy(st: os.stat_result) -> bool:
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_SECONDS * 1e9


_T = TypeVar("_T")


def _cached(path: Path, slot: int, compute: Callable[[Path], _T]) -> _T:
    global _dirty
    name = os.path.abspath(path)
    st = os.stat(name)
    key = _stat_key(st)
    entry = _entries.get(name)
    if entry is not None and entry[:5] == key and entry[slot] is not None:
        return entry[slot]
    value = compute(path)
    if _racy(st) or _stat_key(os.stat(name)) != key:  # changed while (or just before) it was read
        return value
    if entry is None or entry[:5] != key:
        entry = [*key, None, None]
        _entries[name] = entry
    entry[slot] = value
    _dirty = True
    return value


def sha256_uncached(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cached_sha256(path: Path) -> str:
    """sha256 of the file ``path``, reused while its stat is unchanged."""
    return str(_cached(path, 5, sha256_uncached))


def cached_image_size(path: Path, read: Callable[[Path], tuple[int, int]]) -> tuple[int, int]:
    """``read(path)`` (the image header's ``(width, height)``), reused while the file's stat is unchanged."""
    w, h = _cached(path, 6, lambda p: list(read(p)))
    return int(w), int(h)


def _load(store: Path) -> None:
    global _dirty
    try:
        data = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # none yet, or unreadable: it is rebuilt
    entries = data.get("entries") if isinstance(data, dict) and data.get("schema") == _SCHEMA else None
    if not isinstance(entries, dict):
        return
    for name, entry in entries.items():
        if (
            isinstance(name, str)
            and isinstance(entry, list)
            and len(entry) == 7
            and all(isinstance(v, int) and not isinstance(v, bool) for v in entry[:5])
            and (entry[5] is None or (isinstance(entry[5], str) and len(entry[5]) == 64))
            and (
                entry[6] is None
                or (
                    isinstance(entry[6], list)
                    and len(entry[6]) == 2
                    and all(isinstance(v, int) for v in entry[6])
                )
            )
            and name not in _entries
        ):
            _entries[name] = entry
    _dirty = False


def _save(store: Path) -> None:
    from edgefpn.artifacts import atomic_write_text

    live = {}
    for name, entry in sorted(_entries.items()):
        try:
            if _stat_key(os.stat(name)) == entry[:5]:
                live[name] = entry
        except OSError:
            pass  # the file is gone: its entry goes too
    atomic_write_text(store, json.dumps({"schema": _SCHEMA, "entries": live}, separators=(",", ":")) + "\n")


@contextlib.contextmanager
def persisted(run_dir: Path) -> Iterator[None]:
    """Load ``run_dir``'s digest cache, and save it when the command succeeded and added to it.

    A command that fails leaves the run directory as it found it, and nothing is written when
    ``run_dir`` does not exist (a command that made nothing leaves no folder). Saving is best
    effort: a cache that cannot be written is rebuilt next time.
    """
    global _dirty
    store = run_dir / STORE
    _load(store)
    yield
    if _dirty and run_dir.is_dir():
        from edgefpn.errors import EdgefpnError

        # a read-only run dir or a full disk costs the next run its cache, not this command its result
        with contextlib.suppress(OSError, EdgefpnError):
            _save(store)
        _dirty = False

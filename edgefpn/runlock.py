"""One command at a time per run directory.

Two processes writing one run directory (even with the same config) overwrite each other's artifacts
and report on files that no longer exist, so every command that writes there holds
``RUN_DIR/.edgefpn.lock`` while it runs. The lock is an ``flock`` on that file, so the kernel drops it
when its holder dies however it dies; the file also names the holder (pid, command, start time) for
the one-line refusal a second process gets. A file left by a killed holder is stale: the next command
locks it, says whose it was, and takes it over. The file is removed when its holder finishes.

stdlib only (fcntl: Linux, macOS, Jetson).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from edgefpn.errors import EdgefpnError
from edgefpn.ownership import LOCK_NAME, check_run_dir

__all__ = ["RunDirBusy", "run_lock"]


class RunDirBusy(EdgefpnError):
    """Another process holds the run directory's lock."""


@contextlib.contextmanager
def run_lock(run_dir: Path, command: str, *, log=None) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the body; create ``run_dir`` (and remove it again if it stays empty).

    Args:
        command: what the holder runs, named to a second process ("edgefpn train").
        log: called with one message when a stale lock is taken over (default: stderr).

    Raises:
        EdgefpnError: ``run_dir`` is not an edgefpn run directory (:func:`edgefpn.ownership.check_run_dir`).
        RunDirBusy: another live process holds the lock (its pid and command are named).
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    created = _missing_parents(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_NAME
    try:
        fd = _acquire(lock, run_dir, command, log or _stderr)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or lock.exists():
            _remove_empty(created)
            raise
        # A run directory we may not write to (shared read-only, a mounted image): this command cannot
        # write its artifacts there either, so it cannot clash with another; a stage that does need to
        # write fails there with its own one line.
        (log or _stderr)(f"[lock] {run_dir}: not writable here; running without its lock")
        yield
        return
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # before the unlock: a waiter that locked this inode sees it is gone and retries
        os.close(fd)
        _remove_empty(created)  # a command that failed before writing anything leaves no folder


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _missing_parents(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    out = []
    while not os.path.lexists(path) and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (or gone): neither it nor its parents are ours to remove


def _acquire(lock: Path, run_dir: Path, command: str, log) -> int:
    import fcntl

    for _ in range(100):  # each retry means a holder released between our open and our lock
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunDirBusy(
                f"{run_dir}: in use by {_describe(holder)}; wait for it to finish, or choose another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if not same:  # the holder we waited on removed this file as it finished: lock the next one
            os.close(fd)
            continue
        previous = _holder(fd)
        if previous:
            log(
                f"[lock] {run_dir}: taking over the lock of {_describe(previous)}, which is no longer running"
            )
        record = {
            "pid": os.getpid(),
            "command": command,
            "host": socket.gethostname(),
            "started_unix": int(time.time()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        return fd
    raise RunDirBusy(f"{run_dir}: its lock {lock} keeps changing hands; try again")


def _holder(fd: int) -> dict:
    """The holder record in the lock file ({} when empty or unreadable: a holder between lock and write)."""
    for attempt in range(3):
        try:
            data = json.loads(os.pread(fd, 4096, 0) or b"null")
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict):
            return data
        if attempt < 2:
            time.sleep(0.05)
    return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    started = holder.get("started_unix")
    since = (
        time.strftime(", since %Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
        if isinstance(started, int)
        else ""
    )
    host = holder.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"pid {holder.get('pid', '?')}{where} ({holder.get('command', 'edgefpn')}{since})"

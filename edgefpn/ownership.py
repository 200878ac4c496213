"""What edgefpn may replace: only what it made itself.

Every path a command writes (``--out``, ``--save``, ``--extract-to``, ``data.root``, run directories)
goes through :func:`check_replaceable` first. A path that does not exist, or an empty folder where a
folder is wanted, is free. Anything else is replaced only when its format's recogniser says edgefpn
made it and nobody changed it since (a manifest or marker that still matches); otherwise the command
stops with one line naming the path, before any work is done. stdlib only: the device runtime uses it.

The recognisers live with their formats: detections files and run directories here, extracted bundles
in :mod:`edgefpn.bundle`, the built-in dataset in :mod:`edgefpn.data.synth`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from edgefpn.errors import EdgefpnError

__all__ = [
    "DETECTION_KEYS",
    "LOCK_NAME",
    "check_detections_file",
    "check_replaceable",
    "check_run_dir",
    "detections_problem",
    "run_dir_problem",
]

# The keys of one record of `edgefpn predict --save` / `python -m edgefpn.runtime infer --out`
# (edgefpn.runtime.detections_to_records): a JSON list of exactly such records is an edgefpn file.
DETECTION_KEYS = frozenset({"file_name", "category_id", "bbox", "score"})
LOCK_NAME = ".edgefpn.lock"  # edgefpn.runlock's file; a run directory holding only it is edgefpn's
_MAX_DETECTIONS_BYTES = 1 << 30  # recognising a detections file means parsing it; past 1 GiB, refuse


def check_replaceable(
    path: Path,
    *,
    what: str,
    problem: Callable[[Path], str | None],
    folder: bool,
    option: str,
    action: str = "replace it",
    advice: str = "",
    error: type[EdgefpnError] = EdgefpnError,
) -> None:
    """Refuse ``path`` unless writing there loses nothing of the user's.

    Args:
        what: what edgefpn writes there, for the message ("an edgefpn detections file").
        problem: for an existing ``path`` of the right kind, why it is not one edgefpn made and left
            unchanged (None: it is, and may be replaced).
        folder: True when edgefpn writes a folder there (an empty folder is then free).
        option: the flag or config key that named ``path``, for the message.
        action: what edgefpn would do to ``path``, for the message.
        advice: what else the user can do, after "choose another <option>".
        error: the error type raised (all exit 2: bad input).

    Raises:
        EdgefpnError: one line naming ``path``, what is there, and the option to change.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_symlink():
        why: str | None = "a symbolic link"
    elif folder and not path.is_dir():
        why = "not a folder"
    elif not folder and path.is_dir():
        why = "a folder"
    elif folder and not any(path.iterdir()):
        return
    else:
        why = problem(path)
        if why is None:
            return
    raise error(
        f"{path}: exists and is not {what} ({why}); refusing to {action}: choose another {option}"
        f"{advice or ', or move it away yourself'}"
    )


def detections_problem(path: Path) -> str | None:
    """Why ``path`` is not a detections file edgefpn wrote (a JSON list of detection records)."""
    try:
        if path.stat().st_size > _MAX_DETECTIONS_BYTES:
            return "too large to be one"
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return "not a JSON detections list"
    if not isinstance(data, list) or not all(isinstance(r, dict) and set(r) == DETECTION_KEYS for r in data):
        return "not a JSON detections list"
    return None


def run_dir_problem(path: Path) -> str | None:
    """Why the non-empty folder ``path`` is not an edgefpn run directory.

    A run directory holds artifact manifests (``X.manifest.json`` naming the stage that made ``X``),
    or at least the lock of a command that ran in it (one killed before its first artifact).
    """
    if (path / LOCK_NAME).is_file():
        return None
    for candidate in path.glob("*.manifest.json"):
        try:
            data = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "stage" in data and "sha256" in data:
            return None
    return "no edgefpn artifact manifests in it"


def check_run_dir(path: Path, option: str = "--out") -> None:
    """:func:`check_replaceable` for a run directory (``--out`` / ``run.out``)."""
    check_replaceable(
        path,
        what="an edgefpn run directory",
        problem=run_dir_problem,
        folder=True,
        option=option,
        action="write into it",
    )


def check_detections_file(path: Path, option: str) -> None:
    """:func:`check_replaceable` for a detections JSON (``predict --save``, ``runtime infer --out``)."""
    check_replaceable(
        path, what="an edgefpn detections file", problem=detections_problem, folder=False, option=option
    )

"""What every hostile-input and fault test asserts, in one place.

* :func:`cli` runs ``edgefpn`` in-process (click's CliRunner) on the tiny config, never on
  ``configs/default.yaml`` (an empty ``--config`` file keeps the built-in defaults the fixtures use);
* :func:`refused` checks the one-line contract: exit code, a single ``error:`` line naming the file
  and the problem, no traceback;
* :func:`snapshot` is a folder's exact state (relative path -> sha256, or the link target), so
  "the run directory is exactly as before" is one ``==``;
* :class:`OpenWatch` records every Python-level ``open`` of the watched paths through an audit
  hook (PEP 578), which sees ``open()``, ``io.open``, ``os.open`` and ``Path.read_bytes`` whoever
  calls them: "nothing outside the folder was read" is a test, not a hope.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from click.testing import CliRunner, Result

from tests.conftest import TINY

# --------------------------------------------------------------------------------------------------
# running the CLI


EMPTY_CONFIG = Path(__file__).with_name("empty.yaml")


def tiny_sets(*extra: str, data_root: Path | None = None) -> list[str]:
    """``--config <empty> --set ...`` for the tiny run (the tiny_run fixture's settings) plus ``extra``."""
    out = ["--config", str(EMPTY_CONFIG)]
    for item in [*TINY, *(f"data.root={data_root}",) * (data_root is not None), *extra]:
        out += ["--set", item]
    return out


def build_args(
    run: Path, *extra: str, data_root: Path, target: str = "openvino", precision: str = "fp32"
) -> list[object]:
    """``build --target <target> --precision <precision>`` of ``run`` on the tiny settings with quantize
    off (``extra``: more ``--set`` items), quietly: the arguments for :func:`cli`."""
    sets = tiny_sets("quantize.enabled=false", *extra, data_root=data_root)
    return ["build", *sets, "--target", target, "--precision", precision, "--out", run, "--quiet"]


def predict_args(
    run: Path, images: Path, *extra: str, data_root: Path, save: Path | None = None
) -> list[object]:
    """``predict`` of the images in ``images`` with ``run`` on the tiny settings (``extra``: more
    ``--set`` items), quietly, ``--save``-ing to ``save`` where given: the arguments for :func:`cli`."""
    saving = ["--save", save] if save is not None else []
    return [
        "predict",
        *tiny_sets(*extra, data_root=data_root),
        "--out",
        run,
        "--images",
        images,
        *saving,
        "--quiet",
    ]


def cli(*args: str) -> Result:
    """``edgefpn *args`` in this process; exceptions are the CLI's to handle (a leak is a failure)."""
    from edgefpn.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def refused(result: Result, *, names: Iterable[str | Path], problem: str, code: int = 2) -> str:
    """Assert the one-line error contract and return the line.

    ``names``: strings the line must contain (the file); ``problem``: a regex it must match.
    """
    text = result.output
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert result.exit_code == code, f"exit {result.exit_code}, expected {code}: {text}"
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text}"
    line = lines[0]
    assert line.startswith("error: "), line
    for name in names:
        assert str(name) in line, f"{name!s} not named in: {line}"
    assert re.search(problem, line), f"{problem!r} not in: {line}"
    return line


def refused_text(
    text: str, code: int, *, expected_code: int, names: Iterable[str | Path], problem: str
) -> str:
    """:func:`refused` for a command that is not click (``python -m edgefpn.runtime``)."""
    from types import SimpleNamespace

    return refused(
        SimpleNamespace(output=text, exit_code=code), names=names, problem=problem, code=expected_code
    )  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# folder state


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones too): file -> sha256, link -> target, folder -> "dir".
    A missing folder is ``{}``; compare snapshots with ``==``."""
    if not folder.exists():
        return {}
    out: dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root, name)
            rel = p.relative_to(folder).as_posix()
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files or folders (``.<name>.*.tmp``) anywhere under ``folder``."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(".*.tmp")) if folder.exists() else []


# --------------------------------------------------------------------------------------------------
# canaries and watched paths


def canary_payload(canary: Path) -> type:
    """A class whose unpickling creates ``canary`` (``open(canary, "w")``): proof that code ran."""

    class Payload:
        def __reduce__(self):
            return (open, (str(canary), "w"))

    return Payload


class OpenWatch:
    """Records opens of the watched paths (resolved) by this process while active."""

    _active: list[OpenWatch] = []
    _installed = False

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = {os.path.realpath(p) for p in paths}
        self.opened: list[str] = []

    @classmethod
    def _hook(cls, event: str, args: tuple) -> None:
        if (
            event != "open"
            or not cls._active
            or not args
            or not isinstance(args[0], str | bytes | os.PathLike)
        ):
            return
        try:
            path = os.path.realpath(os.fsdecode(args[0]))
        except (TypeError, ValueError):
            return
        for watch in cls._active:
            if path in watch.paths:
                watch.opened.append(path)

    def __enter__(self) -> OpenWatch:
        if not OpenWatch._installed:  # an audit hook cannot be removed: one for the whole session
            sys.addaudithook(OpenWatch._hook)
            OpenWatch._installed = True
        OpenWatch._active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        OpenWatch._active.remove(self)


# --------------------------------------------------------------------------------------------------
# bundles and tar members


def tar_file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    """A regular tar member ``name`` holding ``data``."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def tar_special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, None]:
    """A non-regular tar member (link, device, fifo) of ``kind``, pointing at ``link``; no data."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, None


def onnx_bundle(src: Path, onnx_bytes: bytes, pipeline: dict, out: Path) -> Path:
    """A valid bundle at ``out`` with one ONNX Runtime engine (``onnx_bytes``) and ``pipeline``,
    its files first written into the new folder ``src``."""
    from edgefpn import bundle as bundle_io

    src.mkdir()
    (src / "model.onnx").write_bytes(onnx_bytes)
    (src / "pipeline.json").write_text(json.dumps(pipeline))
    files = {n: src / n for n in ("model.onnx", "pipeline.json")}
    manifest = {
        "schema": bundle_io.SCHEMA,
        "pipeline": "pipeline.json",
        "files": {n: bundle_io.file_entry(p, ["engine"]) for n, p in files.items()},
        "engines": [
            {
                "name": "onnxruntime-fp32",
                "backend": "onnxruntime",
                "precision": "fp32",
                "path": "model.onnx",
                "files": ["model.onnx"],
                "target": {},
            }
        ],
    }
    bundle_io.write_tar(out, files, manifest)
    return out

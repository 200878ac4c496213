"""What a bundle's ``manifest.json`` and ``pipeline.json`` must say before the runtime loads anything.

The tar-level checks (:mod:`edgefpn.bundle`) prove that the bundle is complete and unmodified relative
to its manifest. This module checks what the manifest and ``pipeline.json`` *mean*, from the verified
bytes, before anything is extracted or loaded:

* the schema: every key the runtime reads is present with the right type and a usable value
  (an engine without ``backend``, ``engines`` not a list, a ``pipeline`` that is missing or not JSON,
  fewer category ids than classes, a negative threshold ...);
* confinement: every path in the manifest (the pipeline, the report, each engine's ``path``,
  ``files``, ``manifest`` and ``source``) and every file an engine makes its backend read (an
  OpenVINO IR's ``.bin``, a TensorRT engine's sidecar manifest) is a regular-file member of the
  bundle. Bundle members are plain relative names (no ``..``, no links), so a member always resolves
  inside the extracted folder; a path that is not a member (``../../home/x/model.xml``) is refused.
  ONNX engines must also be self-contained (:func:`edgefpn.runtime.check_bundled_onnx`).

All problems are collected and reported on one line (``ModelFileError``, exit 2). stdlib only.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgefpn.backend_names import BUNDLED, NAMES
from edgefpn.errors import ModelFileError

__all__ = ["BACKENDS", "engine_reads", "validate_manifest", "validate_pipeline"]

BACKENDS = BUNDLED  # edgefpn.backend_names: stdlib, as this module
PRECISIONS = ("fp32", "fp16", "int8")
IR_XML = "model.xml"  # edgefpn.backends.openvino.IR_NAME (not imported: that module imports numpy only, but
# the schema stays stdlib)
_MAX_PROBLEMS = 5  # named on the one line; the rest are counted


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


def _member_name_problem(value: Any) -> str | None:
    """Why ``value`` cannot name a bundle member (the same rules as the tar member names), or None."""
    if not isinstance(value, str) or not value:
        return f"must be a non-empty string, got {value!r}"
    if "\0" in value or "\\" in value:
        return f"{value!r} has a NUL or backslash"
    if value.startswith("/") or (len(value) > 1 and value[1] == ":"):
        return f"{value!r} is an absolute path"
    if ".." in value.split("/"):
        return f"{value!r} leaves the bundle (a '..' component)"
    if posixpath.normpath(value) != value or value.startswith("./"):
        return f"{value!r} is not a normalised path"
    return None


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, why: str) -> None:
        self.items.append(f"{where} {why}")

    def member(self, where: str, value: Any, listed: Mapping[str, Any]) -> bool:
        """``value`` must name a file listed in the manifest (hence a member inside the bundle)."""
        problem = _member_name_problem(value)
        if problem is None and value not in listed:
            problem = f"{value!r} is not a file of the bundle"
        if problem is not None:
            self.add(where, problem)
            return False
        return True

    def raise_if_any(self, prefix: str) -> None:
        if self.items:
            more = len(self.items) - _MAX_PROBLEMS
            text = "; ".join(self.items[:_MAX_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
            raise ModelFileError(f"{prefix}: {text}; refusing the bundle")


def engine_reads(entry: Mapping[str, Any]) -> list[str]:
    """The bundle files the backend of a (schema-valid) engine entry opens, the engine file first.

    OpenVINO: the IR's ``.xml`` (``path`` itself, or ``path/model.xml`` for an IR folder) and the ``.bin``
    OpenVINO reads beside it. TensorRT: the engine and its sidecar manifest, which the runner reads
    before the engine. ONNX Runtime: the ONNX file (its external data is refused separately).
    """
    path = str(entry["path"])
    reads = NAMES[entry["backend"]].reads
    if reads == "ir":
        xml = path if path.endswith(".xml") else f"{path}/{IR_XML}"
        return [xml, xml[: -len(".xml")] + ".bin"]
    if reads == "file+manifest":
        return [path, f"{path}.manifest.json"]
    return [path]


def _check_engine(p: _Problems, i: int, e: Any, listed: Mapping[str, Any], names: set[str]) -> None:
    where = f"engines[{i}]"
    if not isinstance(e, dict):
        p.add(where, f"must be an object, got {type(e).__name__}")
        return
    name = e.get("name")
    if not isinstance(name, str) or not name:
        p.add(f"{where}.name", f"must be a non-empty string, got {name!r}")
    elif name in names:
        p.add(f"{where}.name", f"{name!r} appears twice")
    else:
        names.add(name)
        where = f"engine {name!r}"
    if e.get("backend") not in BACKENDS:
        p.add(f"{where}.backend", f"must be one of {list(BACKENDS)}, got {e.get('backend')!r}")
    if e.get("precision") not in PRECISIONS:
        p.add(f"{where}.precision", f"must be one of {list(PRECISIONS)}, got {e.get('precision')!r}")
    # the engine contract (absent in bundles from before it: float in, raw out); see edgefpn.inference
    if e.get("input", "float") not in ("float", "uint8"):
        p.add(f"{where}.input", f"must be float or uint8, got {e.get('input')!r}")
    if e.get("contract", "raw") not in ("raw", "detections"):
        p.add(f"{where}.contract", f"must be raw or detections, got {e.get('contract')!r}")
    target = e.get("target", {})
    if target is not None and not isinstance(target, dict):
        p.add(f"{where}.target", f"must be an object, got {type(target).__name__}")
    path = e.get("path")
    problem = _member_name_problem(path)
    if problem is not None:
        p.add(f"{where}.path", problem)
    elif isinstance(path, str) and e.get("backend") in BACKENDS:  # a str: no problem above
        if NAMES[e["backend"]].reads == "ir" and not (path.endswith(".xml") or f"{path}/{IR_XML}" in listed):
            p.add(
                f"{where}.path",
                f"{path!r} is not an OpenVINO IR of the bundle (an .xml or a folder with {IR_XML})",
            )
        else:
            for k, read in enumerate(engine_reads(e)):
                label = f"{where}.path" if k == 0 else f"{where} (file its backend reads)"
                p.member(label, read, listed)
    files = e.get("files", [])
    if not isinstance(files, list):
        p.add(f"{where}.files", f"must be a list, got {type(files).__name__}")
    else:
        for j, f in enumerate(files):
            p.member(f"{where}.files[{j}]", f, listed)
    for key in ("manifest", "source"):
        if e.get(key) is not None:
            p.member(f"{where}.{key}", e[key], listed)


def validate_manifest(manifest: Mapping[str, Any], bundle: Path) -> None:
    """Refuse (one line, every problem named) a verified manifest the runtime could not use safely.

    ``manifest`` has passed :func:`edgefpn.bundle.read_verified` (schema tag, ``files`` with sha256/size).
    """
    p = _Problems()
    listed = manifest["files"]
    p.member("pipeline", manifest.get("pipeline"), listed)
    report = manifest.get("report")
    if report is not None:
        if not isinstance(report, dict):
            p.add("report", f"must be an object, got {type(report).__name__}")
        else:
            for key in ("json", "md"):
                if report.get(key) is not None:
                    p.member(f"report.{key}", report[key], listed)
    engines = manifest.get("engines")
    if not isinstance(engines, list):
        p.add("engines", f"must be a list, got {type(engines).__name__}")
    elif not engines:
        p.add("engines", "is empty (a bundle with no engine)")
    else:
        names: set[str] = set()
        for i, e in enumerate(engines):
            _check_engine(p, i, e, listed, names)
    p.raise_if_any(f"{bundle}: manifest.json")


def _check_list(p: _Problems, where: str, value: Any, n: int | None, ok: Any, want: str) -> bool:
    if not isinstance(value, list) or (n is not None and len(value) != n) or not all(ok(v) for v in value):
        count = f"{n} " if n is not None else ""
        p.add(where, f"must be a list of {count}{want}, got {value!r}"[:200])
        return False
    return True


def validate_pipeline(data: bytes, name: str, bundle: Path) -> dict[str, Any]:
    """``pipeline.json``'s settings, parsed and checked; one line naming every problem otherwise."""
    from edgefpn.postprocess import DECODERS  # numpy only

    prefix = f"{bundle}: {name}"
    try:
        params = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{prefix}: not valid JSON ({exc}); refusing the bundle") from None
    if not isinstance(params, dict):
        raise ModelFileError(
            f"{prefix}: must be a JSON object, got {type(params).__name__}; refusing the bundle"
        )
    p = _Problems()
    arch = params.get("arch", "fcos")  # bundles from before the arch was recorded were all FCOS
    if arch not in DECODERS:
        p.add("arch", f"must be one of {list(DECODERS)}, got {arch!r}")
    sections = {}
    for key in ("classes", "preprocess", "postprocess"):
        sections[key] = params.get(key)
        if not isinstance(sections[key], dict):
            p.add(key, f"must be an object, got {type(sections[key]).__name__}")
            sections[key] = None
    if (c := sections["classes"]) is not None:
        n = c.get("num_classes")
        if not _is_int(n) or n <= 0:
            p.add("classes.num_classes", f"must be a positive integer, got {n!r}")
        else:
            _check_list(
                p, "classes.category_ids", c.get("category_ids"), n, _is_int, "integers (one per class)"
            )
            if "names" in c:
                _check_list(
                    p, "classes.names", c["names"], n, lambda v: isinstance(v, str), "strings (one per class)"
                )
    if (pre := sections["preprocess"]) is not None:
        _check_list(
            p,
            "preprocess.input_size",
            pre.get("input_size"),
            2,
            lambda v: _is_int(v) and v > 0,
            "positive integers [H, W]",
        )
        _check_list(p, "preprocess.mean", pre.get("mean"), 3, _is_num, "finite numbers")
        _check_list(
            p, "preprocess.std", pre.get("std"), 3, lambda v: _is_num(v) and v > 0, "positive numbers"
        )
    if (post := sections["postprocess"]) is not None:
        for key, ok, want in (
            ("score_thresh", lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
            ("nms_thresh", lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1]"),
            ("topk_candidates", lambda v: _is_int(v) and v > 0, "a positive integer"),
            ("detections_per_img", lambda v: _is_int(v) and v > 0, "a positive integer"),
        ):
            if not ok(post.get(key)):
                p.add(f"postprocess.{key}", f"must be {want}, got {post.get(key)!r}")
        if _check_list(
            p, "postprocess.levels", post.get("levels"), None, lambda v: isinstance(v, str), "strings"
        ):
            _check_list(
                p,
                "postprocess.strides",
                post.get("strides"),
                len(post["levels"]),
                lambda v: _is_int(v) and v > 0,
                "positive integers (one per level)",
            )
    p.raise_if_any(prefix)
    return params

"""Which engines in a run directory belong to the current model: check, package and benchmark use only those.

An engine is current when the config asks for it and its manifests chain back to the run's
``model.pt``: the engine's manifest records the sha256 of the ONNX (or Q/DQ ONNX) it was made from,
that file's manifest the sha256 of ``model.onnx``, whose manifest records ``model.pt``'s; every file
on the way must still be the one its manifest describes. Anything else on disk (an engine of a
target or precision no longer configured, one built from an older model, a file without a manifest)
is left where it is, not compared, and named with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefpn.backend_names import CHECKED
from edgefpn.backends import BACKENDS, EngineSpec
from edgefpn.config import Config
from edgefpn.manifests import Record, record, recorded_sha256

__all__ = ["Ignored", "configured_engines", "current_engines"]

MODEL = "model.pt"
_ONNX_FILES = ("model.onnx", "model.int8.onnx", "model.int8.ort.onnx", "model.fp16.onnx")
_E2E_ONNX = ("model.e2e.onnx", "model.int8.e2e.onnx", "model.fp16.e2e.onnx")  # TensorRT e2e engines' sources


@dataclass(frozen=True)
class Ignored:
    """An engine file present in the run directory that is not compared, and why."""

    name: str
    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "path": self.path, "reason": self.reason}


def configured_engines(cfg: Config) -> set[str]:
    """Engine names the config makes: the exported ONNX, the quantize stage's models (the NNCF IR is
    ``openvino-int8``) and ``build.targets`` x ``build.precisions`` (int8 only with quantize on)."""
    q = cfg.quantize
    # the engines export / quantize make (a record without build): each record says when cfg makes none
    names = {
        f"{name}-{p}"
        for name in CHECKED
        if (record := BACKENDS[name]).build is None
        for p in record.precisions
        if record.not_made is None or record.not_made(cfg, p) is None
    }
    if q.enabled and q.openvino:
        names.add("openvino-int8")  # the quantize stage's NNCF IR
    names |= {f"{t}-{p}" for t in cfg.build.targets for p in cfg.build.precisions if p != "int8" or q.enabled}
    if cfg.export.nms or cfg.export.input == "uint8":  # edgefpn.pipeline.e2e: a twin of every engine
        names |= {f"{n}-e2e" for n in names}
    return names


def current_engines(
    cfg: Config, run_dir: Path, backends: Sequence[str], engine_files: Sequence[tuple[str, str, str, str]]
) -> tuple[list[EngineSpec], list[Ignored]]:
    """The engines of ``engine_files`` (name, backend, precision, path in ``run_dir``) present on disk
    for ``backends`` that the config makes and that chain to ``run_dir/model.pt``; and the others
    present on disk, each with the reason it is left out."""
    wanted = configured_engines(cfg)
    chain = _Chain(run_dir)
    found: list[EngineSpec] = []
    ignored: list[Ignored] = []
    for name, backend, precision, rel in engine_files:
        path = run_dir / rel
        if backend not in backends or not path.exists():
            continue
        if name not in wanted:
            why: str | None = "not made by the current configuration (left from an earlier one)"
        else:
            why = chain.problem(rel)
        if why is None:
            found.append(EngineSpec(name, backend, precision, path))
        else:
            ignored.append(Ignored(name, rel, why))
    return found, ignored


def _parents(rel: str, made: Record) -> dict[str, str] | None:
    """Input key in ``rel``'s manifest -> the run-dir file whose sha256 it must equal."""
    if rel == "model.onnx":
        return {"model": MODEL}
    if made.stage == "e2e" and made.e2e_source is not None:
        return {"source": made.e2e_source}  # an -e2e engine: through its raw twin
    if rel in _ONNX_FILES:
        return {"model": "model.onnx"}
    if made.stage == "quantize":  # the NNCF IR (openvino/int8)
        return {"model": "model.onnx", "int8_qdq": "model.int8.onnx"}
    src = made.source_path
    if made.stage == "build" and src in _ONNX_FILES + _E2E_ONNX:
        return {"onnx": str(src)}
    if made.stage == "build" and src == MODEL:
        return {"model": MODEL, "onnx": "model.onnx"}  # made from the checkpoint, at the ONNX's input spec
    return None


class _Chain:
    """Memoised chain checks of one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._problems: dict[str, str | None] = {}

    def problem(self, rel: str) -> str | None:
        if rel not in self._problems:
            self._problems[rel] = self._problem(rel)
        return self._problems[rel]

    def _problem(self, rel: str) -> str | None:
        path = self.run_dir / rel
        made = record(path)
        if made is None or not path.exists():
            return f"{rel} has no manifest (not made by edgefpn, or partly written)"
        if not made.intact():
            return f"{rel} no longer matches its manifest (modified after it was made)"
        if rel == MODEL:
            return None
        parents = _parents(rel, made)
        if parents is None:
            return f"{rel}: its manifest names no source model"
        for key, parent in parents.items():
            if (why := self.problem(parent)) is not None:
                return why
            if made.inputs.get(key) != recorded_sha256(self.run_dir / parent):
                return f"made from another {parent} than the current one (an older model or configuration)"
        return None

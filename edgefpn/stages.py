"""Stage keys: for each artifact, the one value that says what decides whether it is rebuilt.

A :class:`StageKey` names the config sections an artifact depends on (in the order they are hashed),
the inputs it is always made from, and the side outputs written beside it. It computes the
artifact's ``config_hash``, answers "fresh?" (:meth:`StageKey.fresh`) and writes the manifest
(:meth:`StageKey.record`), so which settings rerun a stage is read here, not traced through the
stage's code. Values that are not config (tool versions, a derived list) are :class:`Given` by the
stage when it asks. The hashes are the ones the stages computed by hand before; changing a key's
parts changes its hash and reruns the stage once everywhere.

Stdlib only (``edgefpn.config`` and ``edgefpn.artifacts`` import no torch): the CLI and the tests
read the table without loading a framework.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefpn.artifacts import Artifact, up_to_date, write_manifest
from edgefpn.config import Config, config_hash, to_dict


@dataclass(frozen=True)
class Section:
    """A config section or setting by its dotted path (``"model.input_size"``), less ``without``'s keys."""

    path: str
    without: tuple[str, ...] = ()

    def value(self, cfg: Config) -> Any:
        obj: Any = cfg
        for name in self.path.split("."):
            obj = getattr(obj, name)
        if self.without:
            return {k: v for k, v in to_dict(obj).items() if k not in self.without}
        return obj


@dataclass(frozen=True)
class Given:
    """A hashed value that is not config, supplied by the stage by name (a tool version, a device)."""

    name: str


@dataclass(frozen=True)
class StageKey:
    """What one artifact depends on; the only place a stage's freshness is decided.

    ``parts`` are hashed in order: a :class:`Section`, a :class:`Given`, another key (its hash), a
    dict of parts, or a literal. ``inputs`` are the input names every manifest of it records (a stage
    may add more: one per engine, an optional checkpoint). ``side_outputs`` are file names beside the
    artifact, recorded in its manifest and required by :meth:`fresh`.
    """

    stage: str
    artifact: str
    parts: tuple[Any, ...]
    inputs: tuple[str, ...] = ()
    side_outputs: tuple[str, ...] = ()

    def sections(self) -> tuple[Section, ...]:
        """The config sections in this key (nested keys and dicts included), in hash order."""
        return tuple(_sections(self.parts))

    def resolve(self, cfg: Config, **given: Any) -> tuple[Any, ...]:
        """The hashed values: each part with ``cfg``'s sections and the ``given`` values filled in."""
        return tuple(_resolve(p, cfg, given) for p in self.parts)

    def config_hash(self, cfg: Config, **given: Any) -> str:
        return config_hash(*self.resolve(cfg, **given))

    def side_paths(self, out: Path) -> list[Path]:
        return [out.parent / name for name in self.side_outputs]

    def fresh(
        self, out: Path, *, config_hash: str, inputs: Mapping[str, str], force: bool = False
    ) -> Artifact | None:
        """``out`` when it is intact and was made with this hash, these inputs and the side outputs on
        disk as recorded; None when it must be (re)made, and always under ``force``."""
        self._check_inputs(inputs)
        if force:
            return None
        return up_to_date(out, config_hash=config_hash, inputs=inputs, outputs=self.side_paths(out))

    def record(
        self,
        out: Path,
        *,
        config_hash: str,
        inputs: Mapping[str, str],
        extra: Mapping[str, Any] | None = None,
    ) -> Artifact:
        """Write ``out``'s manifest (last, once ``out`` and its side outputs are in place)."""
        self._check_inputs(inputs)
        return write_manifest(
            out,
            stage=self.stage,
            config_hash=config_hash,
            inputs=inputs,
            outputs=self.side_paths(out),
            extra=extra,
        )

    def _check_inputs(self, inputs: Mapping[str, str]) -> None:
        if missing := [n for n in self.inputs if n not in inputs]:  # a stage's bug, not a user's error
            raise ValueError(f"{self.artifact}: inputs {missing} not given (key {self.stage})")


def _resolve(part: Any, cfg: Config, given: Mapping[str, Any]) -> Any:
    if isinstance(part, Section):
        return part.value(cfg)
    if isinstance(part, Given):
        if part.name not in given:
            raise ValueError(f"stage key: the value {part.name!r} was not given")
        return given[part.name]
    if isinstance(part, StageKey):
        return part.config_hash(cfg, **given)
    if isinstance(part, Mapping):
        return {k: _resolve(v, cfg, given) for k, v in part.items()}
    if isinstance(part, list):  # a fresh copy: the caller may keep what it gets
        return [_resolve(v, cfg, given) for v in part]
    return part


def _sections(parts: Sequence[Any]) -> list[Section]:
    out: list[Section] = []
    for p in parts:
        if isinstance(p, Section):
            out.append(p)
        elif isinstance(p, StageKey):
            out += _sections(p.parts)
        elif isinstance(p, Mapping):
            out += _sections(list(p.values()))
    return out


# ----------------------------------------------------------------------------------------------
# the keys, one per artifact (paths relative to the run directory; DATA's is data.root)

# train settings that do not shape the weights: items draw their randomness per index, so the worker
# count does not change the result (tested), and a collective timeout changes nothing once training runs
TRAIN_NOT_SHAPING = ("workers", "timeout_s")
# e2e-only export settings: they shape the grafted graphs, never model.onnx
E2E_ONLY = ("input", "nms")
_PREPROCESS = (Section("model.input_size"), Section("model.mean"), Section("model.std"))

DATA = StageKey("data", "<data.root>", (Section("data.synth"),))
TRAIN = StageKey(
    "train",
    "model.pt",
    (
        Section("model"),
        Section("train", without=TRAIN_NOT_SHAPING),
        Section("run.seed"),
        Section("data.train_split"),
    ),
    inputs=("train_annotations", "train_images"),
)
TRAIN_FROM_WEIGHTS = StageKey(
    "train", "model.pt", (Section("model"), Section("data.root")), inputs=("weights",)
)
EXPORT = StageKey(
    "export",
    "model.onnx",
    (Section("export", without=E2E_ONLY), Section("postprocess"), Section("model.input_size")),
    inputs=("model",),
)
_VAL = ("val_annotations", "val_images")
QUANTIZE_INT8 = StageKey(
    "quantize",
    "model.int8.onnx",
    (Section("quantize"), *_PREPROCESS, Section("postprocess")),
    inputs=("model", "calibration", *_VAL),
)
QUANTIZE_ORT_INT8 = StageKey(
    "quantize",
    "model.int8.ort.onnx",
    (QUANTIZE_INT8, Section("quantize.onnxruntime")),
    inputs=QUANTIZE_INT8.inputs,
)
QUANTIZE_FP16 = StageKey("quantize", "model.fp16.onnx", ("fp16", "keep_io_types"), inputs=("model",))
QUANTIZE_OPENVINO = StageKey(
    "quantize",
    "openvino/int8",
    ("nncf", "performance", Given("kept_float"), Section("quantize.max_map_drop"), Section("postprocess")),
    inputs=("model", "calibration", "int8_qdq", *_VAL),
)


def _e2e(kind: str, artifact: str) -> StageKey:
    head = {
        "e2e": kind,
        "graph_version": Given("graph_version"),
        "input": Section("export.input"),
        "nms": Section("export.nms"),
    }
    return StageKey("e2e", artifact, (head, Section("postprocess"), *_PREPROCESS), inputs=("source",))


E2E_ONNX = _e2e("onnx", "model*-e2e.onnx")
E2E_OPENVINO = _e2e("openvino", "openvino/<precision>-e2e")
BUILD_TENSORRT = StageKey(
    "build",
    "tensorrt/<precision>.engine",
    (
        Section("build.tensorrt"),
        {"precision": Given("precision"), "device": Given("device"), "tensorrt": Given("version")},
    ),
    inputs=("onnx",),
)
# OpenVINO and ExecuTorch conversions read no config section: target, precision and tool version only
BUILD_OPENVINO = StageKey("build", "openvino/<precision>", (Given("settings"),), inputs=("onnx",))
BUILD_EXECUTORCH = StageKey(
    "build", "executorch/<precision>/model.pte", (Given("settings"),), inputs=("model", "onnx")
)
CHECK = StageKey(
    "check",
    "report.json",
    (
        Section("check"),
        Section("postprocess"),
        Section("deploy"),
        Section("model.input_size"),
        Section("run.threads"),
        Given("backend_versions"),
    ),
    inputs=(*_VAL, "ignored_engines"),  # plus one per engine checked
    side_outputs=("report.md", "report.html"),
)
BENCHMARK = StageKey(
    "benchmark",
    "benchmark.json",
    (
        {
            "iters": Given("iters"),  # --iters, else check.latency_iters
            "warmup": Section("check.warmup"),
            "threads": Section("run.threads"),
            "app_seconds": Given("app_seconds"),
            "app_rounds": Given("app_rounds"),
            "throughput_seconds": Given("throughput_seconds"),
            "input": Given("input"),
            "batches": Given("batches"),
            "end_to_end": Given("end_to_end"),
            "scenarios": ["single_stream", "offline", "streaming"],
            "cpu": Given("cpu"),
            "versions": Given("backend_versions"),
        },
    ),
    side_outputs=("benchmark.md",),  # inputs: one per engine timed
)
PACKAGE = StageKey(
    "package",
    "bundle.tar",
    ({"schema": Given("schema"), "engines": Given("engines")},),
    inputs=("pipeline.json",),
)

KEYS: Mapping[str, StageKey] = {
    "data": DATA,
    "train": TRAIN,
    "train-from-weights": TRAIN_FROM_WEIGHTS,
    "export": EXPORT,
    "quantize-int8": QUANTIZE_INT8,
    "quantize-ort-int8": QUANTIZE_ORT_INT8,
    "quantize-fp16": QUANTIZE_FP16,
    "quantize-openvino-int8": QUANTIZE_OPENVINO,
    "e2e-onnx": E2E_ONNX,
    "e2e-openvino": E2E_OPENVINO,
    "build-tensorrt": BUILD_TENSORRT,
    "build-openvino": BUILD_OPENVINO,
    "build-executorch": BUILD_EXECUTORCH,
    "check": CHECK,
    "benchmark": BENCHMARK,
    "package": PACKAGE,
}

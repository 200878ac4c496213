"""The stdlib half of each backend's record: what config, the CLI, the bundle schema and the version
tracking need without importing numpy or torch (loading a config imports no torch; tested).

Everything else about a backend (runner, engine paths, build, availability, device compatibility,
bundle metadata, throughput mode) is its ``Backend`` record in ``edgefpn/backends/<name>.py``;
``tests/backends/test_backend_registry.py`` checks that this table and ``edgefpn.backends.BACKENDS`` name the
same backends in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BUILD_TARGETS",
    "BUNDLED",
    "CHECKED",
    "DEFAULT_CHECKED",
    "DEFAULT_TARGETS",
    "NAMES",
    "PREDICT_BACKENDS",
    "Names",
    "backend_packages",
]


@dataclass(frozen=True)
class Names:
    """What a backend is called where torch cannot be imported."""

    built: bool  # its engines come from `edgefpn build --target <name>` (else from export / quantize)
    checked: bool  # check compares its engines with the reference (torch is the reference itself)
    default: bool  # in the default build.targets / check.backends
    packages: tuple[str, ...] = ()  # distributions whose versions every manifest records
    # the bundle files its runner opens: "file" (the engine), "ir" (an OpenVINO IR's .xml and .bin),
    # "file+manifest" (the engine and its sidecar manifest, read before the engine)
    reads: str = "file"


NAMES: dict[str, Names] = {
    "torch": Names(built=False, checked=False, default=False),
    "onnxruntime": Names(built=False, checked=True, default=True, packages=("onnxruntime",)),
    "openvino": Names(built=True, checked=True, default=True, packages=("openvino", "nncf"), reads="ir"),
    "tensorrt": Names(built=True, checked=True, default=True, packages=("tensorrt",), reads="file+manifest"),
    # opt-in: build.targets and check.backends must name it (the default run's outputs stay as they were)
    "executorch": Names(
        built=True, checked=True, default=False, packages=("executorch",), reads="file+manifest"
    ),
}

BUILD_TARGETS = tuple(n for n, b in NAMES.items() if b.built)  # `edgefpn build --target` choices
DEFAULT_TARGETS = tuple(n for n, b in NAMES.items() if b.built and b.default)
CHECKED = tuple(n for n, b in NAMES.items() if b.checked)  # check.backends choices
DEFAULT_CHECKED = tuple(n for n, b in NAMES.items() if b.checked and b.default)
BUNDLED = CHECKED  # a bundle holds checked engines only
# `edgefpn predict --backend` choices: the backends whose fp32 engine train / export make (no build)
PREDICT_BACKENDS = tuple(n for n, b in NAMES.items() if not b.built)


def backend_packages() -> tuple[str, ...]:
    """Every backend's tracked distributions, in table order."""
    return tuple(p for b in NAMES.values() for p in b.packages)

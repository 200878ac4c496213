"""Backend registry consistency: every backend is one complete record, and nothing else needs editing.

The twin of tests/models/test_registry.py (parametrised over ARCHITECTURES): a backend whose record
misses a field, names a path its precisions cannot reach, or is missing from the stdlib name table,
fails here rather than in whichever stage would have branched on it.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

from edgefpn import backend_names
from edgefpn.artifacts import tool_versions
from edgefpn.backends import BACKENDS, RUNNERS, Backend, BaseRunner, EngineSpec, backend
from edgefpn.backends.base import THROUGHPUT_MODES
from edgefpn.config import PRECISIONS, load_config
from edgefpn.errors import BackendUnavailable, ConfigError


def test_stdlib_names_and_records_name_the_same_backends() -> None:
    assert list(backend_names.NAMES) == list(BACKENDS)
    assert list(RUNNERS) == list(BACKENDS)
    for name, record in BACKENDS.items():
        names = backend_names.NAMES[name]
        assert names.built == (record.build is not None), name
    # the defaults are what the default run has always built and checked
    assert backend_names.DEFAULT_TARGETS == ("openvino", "tensorrt")
    assert backend_names.DEFAULT_CHECKED == ("onnxruntime", "openvino", "tensorrt")


@pytest.mark.parametrize("name", list(BACKENDS))
def test_backend_record_is_complete(name: str, tmp_path: Path) -> None:
    record = BACKENDS[name]
    assert isinstance(record, Backend) and record.name == name
    # its record lives in its own module, beside its runner
    assert importlib.import_module(f"edgefpn.backends.{name}").BACKEND is record
    assert issubclass(record.runner, BaseRunner) and record.runner.requires and record.runner.install
    for field in dataclasses.fields(Backend):
        if field.default is dataclasses.MISSING:
            assert getattr(record, field.name) is not None, f"{name}.{field.name}"
    assert record.precisions and set(record.precisions) <= set(PRECISIONS)
    assert record.throughput in THROUGHPUT_MODES
    assert record.file_kind
    # engine paths: one per precision, distinct, inside the run directory
    paths = [record.engine_path(tmp_path, p) for p in record.precisions]
    assert len(set(paths)) == len(paths) and all(p.is_relative_to(tmp_path) for p in paths)
    assert [row[0] for row in record.engines(tmp_path)] == [f"{name}-{p}" for p in record.precisions]
    # availability: None or one line (never raises, whatever is installed)
    reason = record.unavailable()
    assert reason is None or (isinstance(reason, str) and reason and "\n" not in reason)
    assert record.runner.is_available() is (record.runner.unavailable() is None)
    # made by `edgefpn build`, or the record says when export / quantize make it
    assert (record.build is None) != (record.not_made is None) or name == "torch"
    if record.build is None:
        assert record.not_made(load_config(None, []), record.precisions[0]) is None
    # device compatibility and bundle metadata answer from a manifest entry alone
    entry = {
        "name": f"{name}-{record.precisions[0]}",
        "backend": name,
        "precision": record.precisions[0],
        "path": "x",
        "target": {},
    }
    problem = record.target_problem(entry, lambda: (None, None))
    assert problem is None or isinstance(problem, str)
    assert isinstance(record.bundle_target(record.precisions[0], {}), dict)
    # the runner refuses to run outside its context, with the shared guard
    runner = record.runner(EngineSpec(entry["name"], name, record.precisions[0], tmp_path / "x"), threads=1)
    with pytest.raises(RuntimeError, match="outside its context"):
        runner.infer({})
    # its packages' versions are recorded wherever it is installed
    for package in backend_names.NAMES[name].packages:
        assert package in tool_versions() or importlib.util.find_spec(package.replace("-", "_")) is None


def test_every_checked_backend_has_a_check_row_and_a_target_choice() -> None:
    from edgefpn.pipeline.build import TARGETS
    from edgefpn.pipeline.check import ENGINE_FILES

    checked = {backend for _, backend, _, _ in ENGINE_FILES}
    assert checked == set(backend_names.CHECKED)
    assert set(TARGETS) == {n for n, b in BACKENDS.items() if b.build is not None}


def test_unknown_backend_is_one_clear_error() -> None:
    with pytest.raises(BackendUnavailable, match="'tflite'.*executorch"):
        backend("tflite")
    with pytest.raises(ConfigError, match="build.targets has unknown target 'tflite'.*executorch"):
        load_config(None, ["build.targets=[tflite]"])
    with pytest.raises(ConfigError, match="check.backends has unknown backend 'torch'"):
        load_config(None, ["check.backends=[torch]"])

"""Stage keys: each artifact reruns when a config setting its key declares changes, and only then.

Every setting of the tiny config is changed in turn; for every key in ``edgefpn.stages.KEYS`` the
artifact must turn stale exactly when the setting lies in one of the key's declared sections. The
hashes must also stay those the stages computed by hand before the keys existed, so that a run made
by an older edgefpn stays up to date.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from edgefpn.config import Config, config_hash, load_config, to_dict
from edgefpn.stages import KEYS, Given, StageKey
from tests.conftest import tiny_overrides


def _leaves(obj: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every setting under a config dataclass (an unset optional section is one leaf)."""
    for f in dataclasses.fields(obj):
        if not f.metadata.get("setting", True):
            continue
        value, path = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, path + ".")
        else:
            yield path


def _changed(value: Any) -> Any:
    """Another value of the same setting (types as loaded; not validated: only hashed)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "-changed"
    if isinstance(value, tuple):
        return (*value, value[-1]) if value else ("changed",)
    if isinstance(value, Mapping):
        return {**value, "changed": 1}
    if value is None:
        return 1
    raise TypeError(f"no change defined for {value!r}")


def _with(obj: Any, path: str) -> Any:
    """``obj`` with the setting at ``path`` changed (frozen dataclasses rebuilt along the way)."""
    head, _, rest = path.partition(".")
    value = getattr(obj, head)
    return dataclasses.replace(obj, **{head: _with(value, rest) if rest else _changed(value)})


def _declares(key: StageKey, leaf: str) -> bool:
    for s in key.sections():
        if leaf == s.path or leaf.startswith(s.path + "."):
            below = leaf[len(s.path) + 1 :].split(".", 1)[0]
            if below not in s.without:
                return True
    return False


def _given(key: StageKey) -> dict[str, Any]:
    names: set[str] = set()

    def walk(parts: Any) -> None:
        for p in parts:
            if isinstance(p, Given):
                names.add(p.name)
            elif isinstance(p, StageKey):
                walk(p.parts)
            elif isinstance(p, Mapping):
                walk(p.values())

    walk(key.parts)
    return {n: f"given-{n}" for n in names}


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory) -> Config:
    return load_config(None, tiny_overrides(tmp_path_factory.mktemp("keys")))


def test_every_declared_section_is_a_setting(tiny_cfg: Config) -> None:
    """A misspelt section in a key would silently hash nothing: every path must name a setting."""
    leaves = set(_leaves(tiny_cfg))
    for name, key in KEYS.items():
        for s in key.sections():
            assert any(leaf == s.path or leaf.startswith(s.path + ".") for leaf in leaves), (name, s.path)
            for w in s.without:
                assert any(leaf.startswith(f"{s.path}.{w}") for leaf in leaves), (name, s.path, w)


@pytest.mark.parametrize("name", list(KEYS))
def test_declared_sections_decide_freshness(name: str, tiny_cfg: Config, tmp_path: Path) -> None:
    """A change to a declared section makes the artifact stale; a change anywhere else leaves it fresh."""
    key = KEYS[name]
    given = _given(key)
    inputs = {n: f"sha-{n}" for n in key.inputs}
    out = tmp_path / "artifact.bin"
    out.write_bytes(b"artifact")
    for side in key.side_paths(out):
        side.write_text("side output")
    base = key.config_hash(tiny_cfg, **given)
    art = key.record(out, config_hash=base, inputs=inputs)
    assert art.manifest["stage"] == key.stage
    assert key.fresh(out, config_hash=base, inputs=inputs) is not None
    assert key.fresh(out, config_hash=base, inputs=inputs, force=True) is None

    declared, undeclared = [], []
    for leaf in _leaves(tiny_cfg):
        changed = key.config_hash(_with(tiny_cfg, leaf), **given)
        fresh = key.fresh(out, config_hash=changed, inputs=inputs) is not None
        (declared if _declares(key, leaf) else undeclared).append((leaf, fresh))
    assert [leaf for leaf, fresh in declared if fresh] == []  # a declared setting that does not rerun it
    assert [leaf for leaf, fresh in undeclared if not fresh] == []  # an undeclared one that does
    assert declared or not key.sections()
    if key.sections():  # the key depends on some settings, not all of them
        assert undeclared

    # the side outputs count: one deleted reruns the stage
    for side in key.side_paths(out):
        side.unlink()
        assert key.fresh(out, config_hash=base, inputs=inputs) is None


def test_given_values_are_hashed(tiny_cfg: Config) -> None:
    """What a stage supplies (a tool version, the engines packaged) is part of the key too."""
    for name, key in KEYS.items():
        given = _given(key)
        for n in given:
            other = {**given, n: "another"}
            assert key.config_hash(tiny_cfg, **other) != key.config_hash(tiny_cfg, **given), (name, n)


def test_missing_input_is_refused(tiny_cfg: Config, tmp_path: Path) -> None:
    key = KEYS["export"]
    with pytest.raises(ValueError, match="model"):
        key.fresh(tmp_path / "model.onnx", config_hash="x", inputs={})


@pytest.mark.parametrize("overrides", [[], ["export.input=uint8", "train.workers=3", "quantize.fp16=false"]])
def test_hashes_are_the_hand_written_ones(overrides: list[str], tmp_path: Path) -> None:
    """The keys reproduce the hashes the stages computed inline before, so existing runs stay fresh."""
    cfg = load_config(None, [*tiny_overrides(tmp_path), *overrides])
    m, pp, q = cfg.model, cfg.postprocess, cfg.quantize
    train = {k: v for k, v in to_dict(cfg.train).items() if k not in ("workers", "timeout_s")}
    export = {k: v for k, v in to_dict(cfg.export).items() if k not in ("input", "nms")}
    int8 = config_hash(q, m.input_size, m.mean, m.std, pp)
    e2e = {"graph_version": 3, "input": cfg.export.input, "nms": cfg.export.nms}
    trt = {"precision": "fp16", "device": {"name": "gpu"}, "tensorrt": "10"}
    expected = {
        "data": (config_hash(cfg.data.synth), {}),
        "train": (config_hash(m, train, cfg.run.seed, cfg.data.train_split), {}),
        "train-from-weights": (config_hash(m, cfg.data.root), {}),
        "export": (config_hash(export, pp, m.input_size), {}),
        "quantize-int8": (int8, {}),
        "quantize-ort-int8": (config_hash(int8, q.onnxruntime), {}),
        "quantize-fp16": (config_hash("fp16", "keep_io_types"), {}),
        "quantize-openvino-int8": (
            config_hash("nncf", "performance", ["a", "b"], q.max_map_drop, pp),
            {"kept_float": ["a", "b"]},
        ),
        "e2e-onnx": (
            config_hash({"e2e": "onnx", **e2e}, pp, m.input_size, m.mean, m.std),
            {"graph_version": 3},
        ),
        "e2e-openvino": (
            config_hash({"e2e": "openvino", **e2e}, pp, m.input_size, m.mean, m.std),
            {"graph_version": 3},
        ),
        "build-tensorrt": (
            config_hash(cfg.build.tensorrt, trt),
            {"precision": "fp16", "device": {"name": "gpu"}, "version": "10"},
        ),
        "build-openvino": (config_hash({"target": "openvino"}), {"settings": {"target": "openvino"}}),
        "build-executorch": (config_hash({"target": "executorch"}), {"settings": {"target": "executorch"}}),
        "check": (
            config_hash(cfg.check, pp, cfg.deploy, m.input_size, cfg.run.threads, {"onnxruntime": "1"}),
            {"backend_versions": {"onnxruntime": "1"}},
        ),
        "package": (
            config_hash({"schema": 2, "engines": ["onnxruntime-fp32"]}),
            {"schema": 2, "engines": ["onnxruntime-fp32"]},
        ),
    }
    for name, (want, given) in expected.items():
        assert KEYS[name].config_hash(cfg, **given) == want, name
    bench = {
        "iters": 3,
        "app_seconds": 0,
        "app_rounds": 1,
        "throughput_seconds": 1.0,
        "input": "val",
        "batches": [1],
        "end_to_end": False,
        "cpu": "x86",
        "backend_versions": {"onnxruntime": "1"},
    }
    settings = {
        **{k: v for k, v in bench.items() if k != "backend_versions"},
        "warmup": cfg.check.warmup,
        "threads": cfg.run.threads,
        "scenarios": ["single_stream", "offline", "streaming"],
        "versions": {"onnxruntime": "1"},
    }
    assert KEYS["benchmark"].config_hash(cfg, **bench) == config_hash(settings)
    assert set(expected) | {"benchmark"} == set(KEYS)

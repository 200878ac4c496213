"""ONNX files whose external data escapes their folder, and files that are not ONNX.

Entry points: ``edgefpn trt-lint FILE.onnx`` (the CLI command that reads a user's ONNX), the device
runtime on a bundle holding such a model, and the ONNX Runtime runner every stage uses. The escaping
target is a "secret" file outside the model's folder: the audit-hook watch proves nothing opened it,
and ``onnx.load`` / ``onnxruntime.InferenceSession`` are spied on to prove the refusal came first.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefpn import onnx_guard
from edgefpn.backends import EngineSpec
from edgefpn.backends.onnxruntime import OnnxRuntimeRunner
from edgefpn.errors import ModelFileError
from edgefpn.runtime import __main__ as runtime_main
from tests.security.harness import OpenWatch, cli, onnx_bundle, refused, refused_text, snapshot

WEIGHTS = np.arange(4, dtype=np.float32)


def _model(
    weight: TensorProto | None = None, nodes=None, *, inputs=("x",), opset: int = 17
) -> onnx.ModelProto:
    w = weight if weight is not None else numpy_helper.from_array(WEIGHTS, "w")
    nodes = nodes or [helper.make_node("Add", ["x", "w"], ["y"], name="add")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(i, TensorProto.FLOAT, [4]) for i in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _external(location: str, **entries: str) -> TensorProto:
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    for key, value in {"location": location, **entries}.items():
        e = w.external_data.add()
        e.key, e.value = key, value
    return w


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """``tmp/secret.bin`` outside, ``tmp/models/`` the model folder, with a symlink to the secret in it."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(WEIGHTS[::-1].tobytes())
    models = tmp_path / "models"
    models.mkdir()
    (models / "link.bin").symlink_to(secret)
    (models / "sub").symlink_to(tmp_path, target_is_directory=True)
    (models / "inside.bin").write_bytes(WEIGHTS.tobytes())
    return {"secret": secret, "models": models}


def _escapes(layout) -> dict[str, tuple[str, str]]:
    return {
        "dotdot": ("../secret.bin", "has a '..' component"),
        "dotdot-nested": ("a/../../secret.bin", "has a '..' component"),
        "absolute": (str(layout["secret"]), "is an absolute path"),
        "windows-absolute": ("C:\\secret.bin", "is an absolute path"),
        "symlink-file": ("link.bin", "goes through a symbolic link"),
        "symlink-folder": ("sub/secret.bin", "goes through a symbolic link"),
        "missing": ("nope.bin", "missing or not a regular file"),
        "past-the-end": ("inside.bin", r"offset 8 \+ length 16 is past its 16 bytes"),
    }


ESCAPE_IDS = [
    "dotdot",
    "dotdot-nested",
    "absolute",
    "windows-absolute",
    "symlink-file",
    "symlink-folder",
    "missing",
    "past-the-end",
]


@pytest.fixture
def spies(monkeypatch):
    """Calls that reached onnx.load or an ONNX Runtime session."""
    import onnxruntime

    calls: list[str] = []
    real_load, real_session = onnx.load, onnxruntime.InferenceSession
    monkeypatch.setattr(onnx, "load", lambda *a, **k: calls.append("onnx.load") or real_load(*a, **k))
    monkeypatch.setattr(
        onnxruntime, "InferenceSession", lambda *a, **k: calls.append("ort") or real_session(*a, **k)
    )
    return calls


@pytest.mark.parametrize("case", ESCAPE_IDS)
def test_lint_refuses_escaping_external_data_before_reading(layout, spies, case):
    location, problem = _escapes(layout)[case]
    extra = {"offset": "8", "length": "16"} if case == "past-the-end" else {}
    path = layout["models"] / "model.onnx"
    path.write_bytes(_model(_external(location, **extra)).SerializeToString())
    before = snapshot(layout["models"].parent)
    with OpenWatch([layout["secret"]]) as watch:
        res = cli("trt-lint", path)
    refused(res, names=[path, "'w'"], problem=problem)
    assert watch.opened == [] and spies == []
    assert snapshot(layout["models"].parent) == before


def test_open_watch_sees_a_read(layout):
    """The watch is not blind: reading the secret through a symlink is recorded."""
    with OpenWatch([layout["secret"]]) as watch:
        (layout["models"] / "link.bin").read_bytes()
    assert watch.opened == [str(layout["secret"].resolve())]


def test_external_data_inside_the_folder_is_fine(layout):
    path = layout["models"] / "model.onnx"
    path.write_bytes(_model(_external("inside.bin", offset="0", length="16")).SerializeToString())
    res = cli("trt-lint", path)
    assert res.exit_code == 0 and "0 error(s)" in res.output, res.output
    with OnnxRuntimeRunner(EngineSpec("x", "onnxruntime", "fp32", path), threads=1) as r:
        out = r.infer({"x": np.ones(4, np.float32)})["y"]
    np.testing.assert_array_equal(out, WEIGHTS + 1)


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink-file"])
def test_runner_refuses_before_onnxruntime_sees_it(layout, spies, case):
    location, problem = _escapes(layout)[case]
    path = layout["models"] / "model.onnx"
    path.write_bytes(_model(_external(location)).SerializeToString())
    with OpenWatch([layout["secret"]]) as watch, pytest.raises(ModelFileError, match=problem) as err:
        OnnxRuntimeRunner(EngineSpec("x", "onnxruntime", "fp32", path), threads=1).__enter__()
    assert str(path) in str(err.value) and watch.opened == [] and spies == []


def test_external_data_in_constants_and_subgraphs_is_found(layout):
    """Tensors hide in Constant attributes, If branches and sparse initializers too."""
    const = helper.make_node("Constant", [], ["c"], value=_external("../secret.bin"))
    then = helper.make_graph(
        [helper.make_node("Constant", [], ["t"], value=_external("/etc/passwd"))],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4])],
    )
    cond = helper.make_node("If", ["b"], ["y"], then_branch=then, else_branch=then)
    sparse = helper.make_sparse_tensor(
        _external("../../s.bin"), numpy_helper.from_array(np.array([0], np.int64)), [4]
    )
    model = _model(nodes=[const, cond], inputs=("x", "b"))
    model.graph.sparse_initializer.append(sparse)
    found = {e["location"] for _, e in onnx_guard.external_data_entries(model.SerializeToString())}
    assert found == {"../secret.bin", "/etc/passwd", "../../s.bin"}


def _bytes_not_onnx(tmp: Path) -> dict[str, tuple[bytes, str]]:
    good = _model().SerializeToString()
    return {
        "random-bytes": (np.random.default_rng(0).bytes(4096), r"not a protobuf ONNX model"),
        "truncated": (good[: len(good) // 2], r"not a protobuf ONNX model \(.*runs past the end"),
        "empty": (b"", r"empty file \(0 bytes\)"),
        "text": (b"hello, I am not a model\n" * 8, r"not a protobuf ONNX model|not an ONNX model"),
        "no-graph": (
            helper.make_model(helper.make_graph([], "g", [], [])).SerializeToString()[:6],
            r"not an ONNX model \(no graph\)|not a protobuf ONNX model",
        ),
    }


@pytest.mark.parametrize("case", ["random-bytes", "truncated", "empty", "text", "no-graph"])
def test_lint_refuses_bytes_that_are_not_onnx(tmp_path, spies, case):
    data, problem = _bytes_not_onnx(tmp_path)[case]
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    refused(cli("trt-lint", path), names=[path], problem=problem)
    assert spies == []


def _cycle() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"], name="first"),
        helper.make_node("Relu", ["a"], ["b"], name="second"),
        helper.make_node("Add", ["a", "w"], ["y"], name="out"),
    ]
    return _model(nodes=nodes)


def _dangling() -> onnx.ModelProto:
    return _model(nodes=[helper.make_node("Add", ["x", "ghost"], ["y"], name="add")])


def _orphan_output() -> onnx.ModelProto:
    return _model(nodes=[helper.make_node("Add", ["x", "w"], ["z"], name="add")])


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_cycle, r"node 'first' reads 'b' before anything defines it \(a cycle or unsorted nodes\)"),
        (_dangling, r"node 'add' reads 'ghost' before anything defines it \(a dangling input\)"),
        (_orphan_output, r"graph output 'y' is produced by no node"),
    ],
    ids=["cycle", "dangling-input", "orphan-output"],
)
def test_lint_refuses_broken_graphs(tmp_path, make, problem):
    path = tmp_path / "model.onnx"
    path.write_bytes(make().SerializeToString())
    refused(cli("trt-lint", path), names=[path], problem=problem)


def test_lint_refuses_a_file_past_the_protobuf_limit(tmp_path, spies):
    """A sparse file just over 2 GiB: refused from its size (stat), nothing allocated or read."""
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as f:
        f.write(_model().SerializeToString())
        f.truncate(onnx_guard.PROTOBUF_LIMIT + 1)
    assert os.stat(path).st_blocks * 512 < 1 << 20  # really sparse: the test costs no disk
    with OpenWatch([path]) as watch:
        res = cli("trt-lint", path)
    refused(res, names=[path], problem=r"2147483648 bytes, past protobuf's 2 GiB limit")
    assert watch.opened == [] and spies == []


def test_save_onnx_writes_one_self_contained_file(layout, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    # a model read without its external data still points at the source folder: refused
    src = layout["models"] / "model.onnx"
    src.write_bytes(_model(_external("inside.bin")).SerializeToString())
    lazy = onnx.load(str(src), load_external_data=False)
    with pytest.raises(ModelFileError, match="still references external data"):
        onnx_guard.save_onnx(lazy, out / "model.onnx")
    # loaded whole, it is written whole: one file, the weights inline, nothing beside it
    onnx_guard.save_onnx(onnx.load(str(src)), out / "model.onnx")
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]
    assert onnx_guard.external_data_entries((out / "model.onnx").read_bytes()) == []
    # past the protobuf limit (lowered here; the rule, not 2 GiB of RAM, is under test): refused
    monkeypatch.setattr(onnx_guard, "PROTOBUF_LIMIT", 64)
    with pytest.raises(ModelFileError, match="past protobuf's 2 GiB limit"):
        onnx_guard.save_onnx(_model(), out / "big.onnx")
    assert not (out / "big.onnx").exists()


# ------------------------------------------------------------------------------------------------
# the device runtime: a bundle carrying an ONNX with escaping external data


def _bundle_with(tmp: Path, model: onnx.ModelProto) -> Path:
    pipeline = {
        "classes": {"num_classes": 1, "names": ["a"], "category_ids": [1]},
        "preprocess": {"input_size": [32, 32], "mean": [0, 0, 0], "std": [1, 1, 1]},
        "postprocess": {
            "score_thresh": 0.1,
            "nms_thresh": 0.5,
            "topk_candidates": 10,
            "detections_per_img": 10,
            "strides": [8],
            "levels": ["p3"],
        },
    }
    return onnx_bundle(tmp / "bundle-src", model.SerializeToString(), pipeline, tmp / "bundle.tar")


@pytest.mark.parametrize("case", ["dotdot", "absolute"])
def test_runtime_refuses_a_bundled_onnx_with_external_data(layout, tmp_path, spies, capsys, case):
    location = {"dotdot": "../../secret.bin", "absolute": str(layout["secret"])}[case]
    bundle = _bundle_with(tmp_path, _model(_external(location)))
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"not read")
    dest = tmp_path / "x" / "dest"
    with OpenWatch([layout["secret"]]) as watch:
        code = runtime_main.main(
            [
                "infer",
                "--bundle",
                str(bundle),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "d.json"),
                "--extract-to",
                str(dest),
            ]
        )
    err = capsys.readouterr().err
    refused_text(
        err,
        code,
        expected_code=2,
        names=[bundle, "model.onnx", "'w'"],
        problem=rf"external file '{location}'; a bundled ONNX must be self-contained",
    )
    assert watch.opened == [] and spies == []
    assert not (tmp_path / "x").exists() and not (tmp_path / "d.json").exists()

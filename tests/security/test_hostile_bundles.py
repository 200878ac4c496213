"""Hostile bundles through the device runtime (``python -m edgefpn.runtime``),
and TensorRT engines built for another TensorRT or GPU, refused before a byte of the engine is read.

Every hostile bundle is a valid bundle plus one bad member (inserted before the manifest): the valid
one is run first, so a refusal is the bad member's doing. Outside targets stay absent, the extraction
folder and the detections file are never created.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgefpn import bundle as bundle_io
from edgefpn.artifacts import write_manifest
from edgefpn.backends import EngineSpec
from edgefpn.backends import tensorrt as trt_backend
from edgefpn.backends.tensorrt import DeviceInfo, TensorRTRunner
from edgefpn.errors import ModelFileError
from edgefpn.runtime import __main__ as runtime_main
from tests.security.harness import OpenWatch, onnx_bundle, refused_text, snapshot, tar_file, tar_special

NUM_CLASSES = 2
LEVELS = ("p3", "p4", "p5", "p6", "p7")


def _detector_onnx() -> bytes:
    """A 64x64 'detector' with the 15 edgefpn outputs (constants): enough for the runtime to run."""
    sizes = {"p3": 8, "p4": 4, "p5": 2, "p6": 1, "p7": 1}
    nodes, outputs = [], []
    for kind, ch in (("cls", NUM_CLASSES), ("box", 4), ("ctr", 1)):
        for level in LEVELS:
            s = sizes[level]
            name = f"{kind}_{level}"
            value = helper.make_tensor(
                name + "_v", TensorProto.FLOAT, [1, ch, s, s], np.full(ch * s * s, -4.0)
            )
            nodes.append(helper.make_node("Constant", [], [name + "_c"], value=value))
            nodes.append(helper.make_node("Add", [name + "_c", "zero"], [name]))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, ch, s, s]))
    nodes.insert(0, helper.make_node("ReduceMin", ["images"], ["zero0"], keepdims=0))
    nodes.insert(1, helper.make_node("Mul", ["zero0", "k0"], ["zero"]))
    k0 = helper.make_tensor("k0", TensorProto.FLOAT, [], [0.0])
    graph = helper.make_graph(
        nodes,
        "det",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        outputs,
        [k0],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return model.SerializeToString()


@pytest.fixture
def valid(tmp_path: Path) -> dict[str, Path]:
    pipeline = {
        "classes": {"num_classes": NUM_CLASSES, "names": ["a", "b"], "category_ids": [1, 2]},
        "preprocess": {"input_size": [64, 64], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "postprocess": {
            "score_thresh": 0.05,
            "nms_thresh": 0.6,
            "topk_candidates": 100,
            "detections_per_img": 10,
            "strides": [8, 16, 32, 64, 128],
            "levels": list(LEVELS),
        },
    }
    bundle = onnx_bundle(tmp_path / "src", _detector_onnx(), pipeline, tmp_path / "valid.tar")
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (50, 40), (90, 120, 30)).save(images / "a.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    return {"bundle": bundle, "images": images, "outside": outside, "tmp": tmp_path}


def _infer(v: dict[str, Path], bundle: Path, capsys, name: str = "x") -> tuple[int, str]:
    code = runtime_main.main(
        [
            "infer",
            "--bundle",
            str(bundle),
            "--images",
            str(v["images"]),
            "--out",
            str(v["tmp"] / f"{name}.json"),
            "--extract-to",
            str(v["tmp"] / name / "dest"),
        ]
    )
    return code, capsys.readouterr().err


def _with(valid_bundle: Path, out: Path, extra: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """``valid_bundle`` with ``extra`` members inserted before its manifest."""
    with tarfile.open(valid_bundle) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in [*members[:-1], *extra, members[-1]]:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return out


def _cases(v: dict[str, Path]) -> dict[str, tuple[list, str]]:
    outside = v["outside"]
    return {
        "dotdot": (
            [tar_file("../outside/evil.txt", b"x")],
            r"'\.\./outside/evil\.txt' is a '\.\.' path component",
        ),
        "dotdot-nested": ([tar_file("a/../../outside/evil.txt", b"x")], r"is a '\.\.' path component"),
        "absolute": ([tar_file(str(outside / "evil.txt"), b"x")], r"is an absolute path"),
        "symlink": ([tar_special("engine", tarfile.SYMTYPE, str(outside))], r"'engine' is a link"),
        "hardlink": ([tar_special("passwd", tarfile.LNKTYPE, "/etc/passwd")], r"'passwd' is a link"),
        "chardev": ([tar_special("tty", tarfile.CHRTYPE)], r"'tty' is a device, fifo or other special file"),
        "blockdev": ([tar_special("sda", tarfile.BLKTYPE)], r"'sda' is a device, fifo"),
        "fifo": ([tar_special("pipe", tarfile.FIFOTYPE)], r"'pipe' is a device, fifo"),
        "duplicate": ([tar_file("pipeline.json", b'{"evil": 1}')], r"'pipeline\.json' appears twice"),
        "file-under-file": ([tar_file("model.onnx/evil.txt", b"x")], r"sits under the file 'model\.onnx'"),
        "unlisted": ([tar_file("extra.so", b"\x7fELF")], r"'extra\.so' is not listed in manifest\.json"),
        "absurd-count": (
            [tar_file(f"m/{i:05d}", b"") for i in range(bundle_io.DEFAULT_LIMITS.max_members)],
            r"\d+ members, more than the limit of 4096",
        ),
    }


CASE_IDS = [
    "dotdot",
    "dotdot-nested",
    "absolute",
    "symlink",
    "hardlink",
    "chardev",
    "blockdev",
    "fifo",
    "duplicate",
    "file-under-file",
    "unlisted",
    "absurd-count",
]


def test_the_valid_bundle_runs(valid, capsys):
    code, err = _infer(valid, valid["bundle"], capsys)
    assert code == 0, err
    assert json.loads((valid["tmp"] / "x.json").read_text()) == []  # constant low scores: no detections
    assert (valid["tmp"] / "x" / "dest" / "model.onnx").is_file()


@pytest.mark.parametrize("case", CASE_IDS)
def test_hostile_bundle_is_refused_and_writes_nothing(valid, capsys, case):
    extra, problem = _cases(valid)[case]
    bad = _with(valid["bundle"], valid["tmp"] / "bad.tar", extra)
    before = snapshot(valid["tmp"])
    code, err = _infer(valid, bad, capsys)
    refused_text(err, code, expected_code=2, names=[bad], problem=problem)
    assert snapshot(valid["tmp"]) == before  # no dest, no detections, nothing outside


def test_member_of_absurd_size_is_refused_from_its_header(valid, capsys):
    """A member claiming 5 GiB (a sparse hole: no disk, no read) is refused from its header."""
    before = snapshot(valid["tmp"])  # taken first: hashing the 5 GiB hole would read 5 GiB of zeros
    bad = valid["tmp"] / "huge.tar"
    with tarfile.open(valid["bundle"]) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with open(bad, "wb") as f:
        for info, data in members[:-1]:
            f.write(info.tobuf(tarfile.PAX_FORMAT) + data + b"\0" * (-len(data) % 512))
        huge = tarfile.TarInfo("engine.bin")
        huge.size = 5 << 30
        f.write(huge.tobuf(tarfile.PAX_FORMAT))
        f.seek(huge.size, io.SEEK_CUR)
        info, data = members[-1]
        f.write(info.tobuf(tarfile.PAX_FORMAT) + data + b"\0" * (-len(data) % 512) + b"\0" * 1024)
    assert bad.stat().st_blocks * 512 < 1 << 20
    code, err = _infer(valid, bad, capsys)
    refused_text(
        err, code, expected_code=2, names=[bad], problem=r"'engine\.bin' is 5368709120 bytes, above the limit"
    )
    bad.unlink()
    assert snapshot(valid["tmp"]) == before


def test_compressed_bundle_is_refused(valid, capsys):
    bad = valid["tmp"] / "bundle.tar.gz"
    with tarfile.open(valid["bundle"]) as src, tarfile.open(bad, "w:gz") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m))
    code, err = _infer(valid, bad, capsys)
    refused_text(err, code, expected_code=2, names=[bad], problem="not a readable plain tar")


def test_planted_link_then_write_through_it(valid, capsys):
    """Bundle 1 plants ``engine -> outside``; bundle 2 writes ``engine/payload``. Both are refused and
    extract to the same folder: nothing ever lands outside."""
    plant = _with(
        valid["bundle"],
        valid["tmp"] / "plant.tar",
        [tar_special("engine", tarfile.SYMTYPE, str(valid["outside"]))],
    )
    through = _with(
        valid["bundle"], valid["tmp"] / "through.tar", [tar_file("engine/payload.sh", b"rm -rf ~\n")]
    )
    before = snapshot(valid["tmp"])
    code, err = _infer(valid, plant, capsys, name="same")
    refused_text(err, code, expected_code=2, names=[plant], problem="is a link")
    code, err = _infer(valid, through, capsys, name="same")
    refused_text(err, code, expected_code=2, names=[through], problem=r"'engine/payload\.sh' is not listed")
    assert snapshot(valid["tmp"]) == before and list(valid["outside"].iterdir()) == []


# ------------------------------------------------------------------------------------------------
# case 13: TensorRT engine manifests, checked before deserializing (no tensorrt needed: a fake module)

ORIN = DeviceInfo("Orin", "8.7", "12.6")
BUILT = {
    "version": "10.3.0",
    "compute_capability": "8.7",
    "device": "Orin",
    "hardware_compatibility": "none",
    "version_compatible": False,
}


@pytest.fixture
def fake_trt(monkeypatch):
    """A stand-in ``tensorrt`` module that records whether anything got as far as deserializing."""
    calls: list[str] = []
    module = types.ModuleType("tensorrt")
    module.__version__ = "10.3.0"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Runtime:
        def __init__(self, logger):
            calls.append("Runtime")

        def deserialize_cuda_engine(self, data):
            calls.append("deserialize")
            return None

    module.Logger, module.Runtime = Logger, Runtime
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(trt_backend.machine, "unavailable_reason", lambda: None)
    monkeypatch.setattr(trt_backend.machine, "cuda_device", lambda index=0: ORIN)
    return module, calls


def _engine(tmp: Path, built: dict | None) -> Path:
    engine = tmp / "tensorrt" / "fp16" / "model.engine"
    engine.parent.mkdir(parents=True)
    engine.write_bytes(b"\x00not really an engine")
    if built is not None:
        write_manifest(engine, stage="build", config_hash="x", inputs={}, extra={"tensorrt": built})
    return engine


@pytest.mark.parametrize(
    ("runtime_version", "device", "built", "problem"),
    [
        ("10.4.0", ORIN, BUILT, r"built with TensorRT 10\.3\.0, this machine has TensorRT 10\.4\.0"),
        (
            "10.3.0",
            DeviceInfo("H100", "9.0", "12.4"),
            BUILT,
            r"built for compute capability 8\.7 \(Orin\).*is 9\.0",
        ),
        (
            "11.0.0",
            ORIN,
            {**BUILT, "version_compatible": True},
            r"built version-compatible with TensorRT 10\.3\.0",
        ),
        (
            "10.3.0",
            DeviceInfo("T4", "7.5", None),
            {**BUILT, "hardware_compatibility": "ampere_plus"},
            r"Ampere\+",
        ),
        ("10.3.0", ORIN, {"device": "Orin"}, r"does not record the TensorRT version and compute capability"),
        ("10.3.0", ORIN, None, r"no manifest beside the engine"),
    ],
    ids=["other-version", "other-gpu", "other-major", "pre-ampere", "manifest-without-target", "no-manifest"],
)
def test_foreign_engine_refused_before_deserializing(
    tmp_path, fake_trt, monkeypatch, runtime_version, device, built, problem
):
    module, calls = fake_trt
    module.__version__ = runtime_version
    monkeypatch.setattr(trt_backend.machine, "cuda_device", lambda index=0: device)
    engine = _engine(tmp_path, built)
    with OpenWatch([engine]) as watch, pytest.raises(ModelFileError, match=problem) as err:
        TensorRTRunner(EngineSpec("tensorrt-fp16", "tensorrt", "fp16", engine), threads=1).__enter__()
    assert str(engine) in str(err.value) and "\n" not in str(err.value)
    assert calls == [] and watch.opened == []  # the engine's bytes were never read


def test_matching_engine_reaches_deserialization(tmp_path, fake_trt):
    """Control: with a matching manifest the runner does read and deserialize the engine."""
    _, calls = fake_trt
    engine = _engine(tmp_path, BUILT)
    with OpenWatch([engine]) as watch, pytest.raises(ModelFileError, match="could not deserialize"):
        TensorRTRunner(EngineSpec("tensorrt-fp16", "tensorrt", "fp16", engine), threads=1).__enter__()
    assert calls == ["Runtime", "deserialize"] and watch.opened

"""`edgefpn package` + the device runtime on the tiny run: same detections as check, no torch, refusals."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edgefpn import bundle
from edgefpn.backends.base import EngineSpec
from edgefpn.backends.tensorrt import DeviceInfo
from edgefpn.inference import detect_file
from edgefpn.pipeline import package
from edgefpn.pipeline.common import make_prepost
from edgefpn.runtime import __main__ as runtime_main
from edgefpn.runtime import open_runner

pytest.importorskip("openvino", reason="needs the openvino extra: pip install 'edgefpn[openvino]'")
BLOCKED = ("torch", "torchvision", "click", "tqdm", "yaml")


def _members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def test_bundle_layout_and_manifest(packaged):
    _, run_dir, art, _ = packaged
    members = _members(art.path)
    assert members[-1].name == bundle.MANIFEST
    manifest = bundle.read_verified(art.path)
    names = [e["name"] for e in manifest["engines"]]
    assert names == ["onnxruntime-fp32", "openvino-fp32"]
    files = manifest["files"]
    assert {
        "model.onnx",
        "openvino/fp32/model.xml",
        "openvino/fp32/model.bin",
        "report.json",
        "report.md",
        "pipeline.json",
        "openvino/fp32.manifest.json",
    } <= set(files)
    assert files["model.onnx"]["role"] == ["engine", "source"]
    assert files["openvino/fp32/model.bin"]["role"] == ["engine"]
    ov = manifest["engines"][1]
    assert ov["source"] == "model.onnx" and ov["target"]["backend"] == "openvino" and ov["target"]["version"]
    assert ov["built_with"]["openvino"]
    # engine bytes are stored as-is
    with tarfile.open(art.path) as tar:
        assert (
            tar.extractfile("openvino/fp32/model.bin").read()
            == (run_dir / "openvino/fp32/model.bin").read_bytes()
        )
    onnx_manifest = json.loads((run_dir / "model.onnx.manifest.json").read_text())
    assert onnx_manifest["sha256"] == files["model.onnx"]["sha256"]


def test_package_is_skipped_when_up_to_date_and_deterministic(packaged):
    cfg, run_dir, art, _ = packaged
    before = art.path.read_bytes()
    again = package.run(cfg, run_dir, progress=False)
    assert again.manifest["created_unix"] == art.manifest["created_unix"]  # skipped, not rewritten
    forced = package.run(cfg, run_dir, force=True, progress=False)
    assert forced.path.read_bytes() == before  # byte-identical tar


_BLOCKER = """
import importlib.abc, runpy, sys
BLOCKED = set({blocked!r})
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked for the runtime test: " + name)
sys.meta_path.insert(0, Block())
sys.argv = ["edgefpn.runtime", *{argv!r}]
try:
    runpy.run_module("edgefpn.runtime", run_name="__main__", alter_sys=True)
finally:
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
"""


def _run_blocked(argv: list[str]) -> subprocess.CompletedProcess:
    code = _BLOCKER.format(blocked=BLOCKED, argv=argv)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def _expected(cfg, run_dir: Path, art, images: Path, engine: str) -> list[tuple]:
    """What the check stage's pipeline detects with ``engine``: (file, category id, xyxy box, score)."""
    backend, precision = engine.split("-")
    rel = {"openvino": "openvino/fp32", "onnxruntime": "model.onnx"}[backend]
    pipe = make_prepost(cfg, deploy=True)  # the bundle keeps what a deployed detector keeps
    with tarfile.open(art.path) as tar:
        category_ids = json.loads(tar.extractfile("pipeline.json").read())["classes"]["category_ids"]
    expected = []
    with open_runner(EngineSpec(engine, backend, precision, run_dir / rel), threads=1) as runner:
        for path in sorted(images.iterdir()):
            det = detect_file(runner, pipe, path)
            for box, score, label in zip(
                det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True
            ):
                expected.append((path.name, int(category_ids[label]), box, score))
    return expected


@pytest.mark.parametrize("engine", ["openvino-fp32", "onnxruntime-fp32", None])
def test_runtime_without_torch_matches_check_pipeline(packaged, tmp_path, engine):
    cfg, run_dir, art, images = packaged
    out = tmp_path / "dets.json"
    argv = ["infer", "--bundle", str(art.path), "--images", str(images), "--out", str(out), "--threads", "1"]
    if engine:
        argv += ["--engine", engine]
    proc = _run_blocked(argv)
    assert proc.returncode == 0, proc.stderr
    if engine is None:  # the fastest by the bundle's report, measured on this very kind of device
        from edgefpn.runtime import recorded_latencies
        from edgefpn.runtime.device import device_kind

        with tarfile.open(art.path) as tar:
            lat = recorded_latencies(json.loads(tar.extractfile("report.json").read()), device_kind())
        bundled = {n: ms for n, ms in lat.items() if n in ("openvino-fp32", "onnxruntime-fp32")}
        assert len(bundled) == 2, lat  # the report also times the torch reference, which is not bundled
        chosen = min(bundled, key=bundled.__getitem__)
        assert f"engine {chosen}: fastest recorded on this kind of device" in proc.stderr
    else:
        chosen = engine
    assert f"engine {chosen}" in proc.stderr
    got = json.loads(out.read_text())

    expected = _expected(cfg, run_dir, art, images, chosen)
    assert len(got) == len(expected) and expected
    for g, (name, cat, box, score) in zip(got, expected, strict=True):
        assert (g["file_name"], g["category_id"], g["score"]) == (name, cat, score)
        x, y, w, h = g["bbox"]
        np.testing.assert_allclose([x, y, x + w, y + h], box, atol=1e-4, rtol=0)


def _refused(capsys, argv: list[str]) -> str:
    rc = runtime_main.main(argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _argv(bundle_path: Path, images: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "infer",
        "--bundle",
        str(bundle_path),
        "--images",
        str(images),
        "--out",
        str(tmp_path / "d.json"),
        "--extract-to",
        str(tmp_path / "x" / "dest"),
        *extra,
    ]


def test_tampered_engine_refused(packaged, tmp_path, capsys):
    _, _, art, images = packaged
    bad = tmp_path / "tampered.tar"
    shutil.copy(art.path, bad)
    member = next(m for m in _members(bad) if m.name == "openvino/fp32/model.bin")
    with open(bad, "r+b") as f:
        f.seek(member.offset_data + member.size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))
    line = _refused(capsys, _argv(bad, images, tmp_path))
    assert "openvino/fp32/model.bin" in line and "sha256" in line
    assert not (tmp_path / "x").exists() and not (tmp_path / "d.json").exists()


def _rewrite(art_path: Path, tmp_path: Path, edit, add: dict[str, bytes]) -> Path:
    """A copy of the bundle with ``add`` files and ``edit(manifest)`` applied, written by write_tar."""
    root = tmp_path / "src"
    with tarfile.open(art_path) as tar:
        for m in tar.getmembers():
            (root / m.name).parent.mkdir(parents=True, exist_ok=True)
            (root / m.name).write_bytes(tar.extractfile(m).read())
    manifest = json.loads((root / bundle.MANIFEST).read_text())
    (root / bundle.MANIFEST).unlink()
    for name, data in add.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        manifest["files"][name] = bundle.file_entry(root / name, ["engine"])
    edit(manifest)
    files = {n: root / n for n in manifest["files"]}
    out = tmp_path / "edited.tar"
    bundle.write_tar(out, files, manifest)
    return out


def test_dotdot_member_refused(packaged, tmp_path, capsys):
    _, _, art, images = packaged
    bad = _rewrite(art.path, tmp_path, lambda m: None, {})
    # append a ../ member before the manifest by rebuilding with raw tarfile
    with tarfile.open(bad) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    evil = tarfile.TarInfo("../evil.txt")
    evil.size = 4
    with tarfile.open(bad, "w") as tar:
        for m, data in members[:-1]:
            tar.addfile(m, io.BytesIO(data))
        tar.addfile(evil, io.BytesIO(b"evil"))
        tar.addfile(members[-1][0], io.BytesIO(members[-1][1]))
    line = _refused(capsys, _argv(bad, images, tmp_path))
    assert "../evil.txt" in line and "'..'" in line
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "evil.txt").exists()


def _trt_entry(cc: str) -> dict:
    return {
        "name": "tensorrt-fp16",
        "backend": "tensorrt",
        "precision": "fp16",
        "path": "tensorrt/fp16/model.engine",
        "files": ["tensorrt/fp16/model.engine"],
        "source": "model.onnx",
        "target": {
            "backend": "tensorrt",
            "precision": "fp16",
            "version": "10.3.0",
            "tensorrt": {
                "version": "10.3.0",
                "compute_capability": cc,
                "device": "Tesla T4",
                "hardware_compatibility": "none",
                "version_compatible": False,
            },
        },
    }


@pytest.mark.parametrize("only_trt", [False, True])
def test_tensorrt_engine_for_another_gpu_refused(packaged, tmp_path, capsys, monkeypatch, only_trt):
    from edgefpn.runtime import device

    _, _, art, images = packaged

    def edit(manifest):
        if only_trt:
            manifest["engines"] = []
        manifest["engines"].append(_trt_entry("7.5"))

    # as `edgefpn package` ships it: the engine and the sidecar manifest its runner reads (a bundle
    # whose engine needs a file it does not ship is refused on that ground first)
    sidecar = json.dumps({"stage": "build", "tensorrt": _trt_entry("7.5")["target"]["tensorrt"]}).encode()
    bad = _rewrite(
        art.path,
        tmp_path,
        edit,
        {
            "tensorrt/fp16/model.engine": b"\x00fake engine bytes",
            "tensorrt/fp16/model.engine.manifest.json": sidecar,
        },
    )
    monkeypatch.setattr(device, "tensorrt_probe", lambda: ("10.3.0", DeviceInfo("Orin", "8.7", "12.6")))
    extra = () if only_trt else ("--engine", "tensorrt-fp16")
    line = _refused(capsys, _argv(bad, images, tmp_path, *extra))
    assert "tensorrt/fp16/model.engine" in line and "compute capability 7.5" in line and "8.7" in line
    assert not (tmp_path / "x").exists()


def test_bench_reports_startup_and_latency(packaged, capsys):
    _, _, art, images = packaged
    assert (
        runtime_main.main(
            [
                "bench",
                "--bundle",
                str(art.path),
                "--iters",
                "3",
                "--warmup",
                "1",
                "--threads",
                "1",
                "--stream-frames",
                "1",
                "--images",
                str(images),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    # the faster of the bundle's two engines by check's recorded latency (tests/runtime/test_engine_choice.py)
    assert result["engine"] in ("openvino-fp32", "onnxruntime-fp32")
    assert f"[runtime] engine {result['engine']}: fastest recorded on this kind of device" in captured.err
    assert result["startup_s"]["to_first_inference"] > 0 and result["model_only_ms"]["samples"] == 3
    deploy = result["scenarios"]["streaming"]["deploy"]  # the val images streamed as a video
    assert deploy["frames"] == len(list(images.iterdir())) and deploy["fps"] > 0
    assert deploy["conditions"]["threads"] == 1 and deploy["conditions"]["batch"] == 1


def _uv() -> str | None:
    import shutil as _shutil

    root = Path(__file__).resolve().parents[2]
    found = _shutil.which("uv")
    return found or (str(root / ".tools/bin/uv") if (root / ".tools/bin/uv").exists() else None)


@pytest.mark.slow
def test_runtime_in_a_fresh_venv_without_torch(packaged, tmp_path):
    """A new virtual environment with only the runtime's locked needs (numpy, Pillow, OpenCV,
    onnxruntime, openvino) and edgefpn itself: the runtime's detections equal the check pipeline's."""
    uv = _uv()
    if uv is None:
        pytest.skip("uv is not installed (make test bootstraps it into .tools/)")
    root = Path(__file__).resolve().parents[2]
    venv = tmp_path / "venv"
    reqs = tmp_path / "runtime-requirements.txt"
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    run = {"capture_output": True, "text": True, "timeout": 300, "env": env}
    exported = subprocess.run(
        [
            uv,
            "export",
            "--frozen",
            "--no-hashes",
            "--extra",
            "runtime",
            "--no-dev",
            "--no-emit-project",
            "--project",
            str(root),
        ],
        check=True,
        **run,
    ).stdout
    reqs.write_text(exported)
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, **run)
    py = str(venv / "bin" / "python")
    subprocess.run([uv, "pip", "install", "-q", "--python", py, "-r", str(reqs)], check=True, **run)
    subprocess.run([uv, "pip", "install", "-q", "--python", py, "--no-deps", str(root)], check=True, **run)
    probe = subprocess.run(
        [
            py,
            "-c",
            "import importlib.util as u; print([m for m in "
            "('torch', 'torchvision', 'click', 'yaml', 'tqdm') if u.find_spec(m)])",
        ],
        check=True,
        **run,
    )
    assert probe.stdout.strip() == "[]"  # none of the pipeline's packages is there

    _, run_dir, art, images = packaged
    cfg = packaged[0]
    for engine in ("onnxruntime-fp32", "openvino-fp32"):
        out = tmp_path / f"{engine}.json"
        proc = subprocess.run(
            [
                py,
                "-m",
                "edgefpn.runtime",
                "infer",
                "--bundle",
                str(art.path),
                "--images",
                str(images),
                "--out",
                str(out),
                "--threads",
                "1",
                "--engine",
                engine,
            ],
            cwd=tmp_path,
            **run,
        )
        assert proc.returncode == 0, proc.stderr
        got = json.loads(out.read_text())
        expected = _expected(cfg, run_dir, art, images, engine)
        assert len(got) == len(expected) and expected
        for g, (name, cat, box, score) in zip(got, expected, strict=True):
            assert (g["file_name"], g["category_id"]) == (name, cat)
            assert abs(g["score"] - score) <= 1e-6
            x, y, w, h = g["bbox"]
            np.testing.assert_allclose([x, y, x + w, y + h], box, atol=1e-4, rtol=0)


def _follow(rule: dict, image: np.ndarray, size: tuple[int, int], mean, std) -> np.ndarray:
    """The bundle's preprocessing rule followed literally, as a device integrator would: its expressions
    evaluated, the OpenCV call it names, then its normalisation; nothing taken from edgefpn's code."""
    import cv2

    H, W = size  # noqa: N806  (the rule's names)
    h, w = image.shape[:2]
    names = {"min": min, "max": max, "round": round, "H": H, "W": W, "h": h, "w": w}
    names["scale"] = eval(rule["scale"], {"__builtins__": {}}, names)  # noqa: S307  (our own rule, in a test)
    new_w = eval(rule["new_w"], {"__builtins__": {}}, names)  # noqa: S307
    new_h = eval(rule["new_h"], {"__builtins__": {}}, names)  # noqa: S307
    assert rule["resize"]["library"] == "opencv" and rule["resize"]["function"] == "cv2.resize"
    resized = (
        image
        if (new_w, new_h) == (w, h)
        else cv2.resize(image, (new_w, new_h), interpolation=getattr(cv2, rule["resize"]["interpolation"]))
    )
    x = resized.astype(np.float64)
    norm = eval(
        rule["normalise"],
        {"__builtins__": {}},  # noqa: S307
        {"x": x, "mean": np.asarray(mean), "std": np.asarray(std)},
    )
    assert rule["placement"] == "top-left" and rule["layout"] == "[1, 3, H, W] float32"
    out = np.full((3, H, W), rule["pad_value"], dtype=np.float64)
    out[:, :new_h, :new_w] = norm.transpose(2, 0, 1)
    return out


def test_shipped_preprocessing_rule_reproduces_preprocess(packaged):
    """The resize rule pipeline.json ships is the one the code runs (it once said "Pillow BILINEAR" while
    the code used OpenCV INTER_LINEAR, up to 131 levels apart). The rule that ships is generated from the
    code; followed literally, it gives preprocess()'s pixels (to float32 rounding) on down- and upscaled,
    odd-sized and unchanged images."""
    from edgefpn.data.preprocess import preprocess

    _, _, art, _ = packaged
    pre = json.loads(bundle.read_member(art.path, "pipeline.json"))["preprocess"]
    size, mean, std = tuple(pre["input_size"]), pre["mean"], pre["std"]
    assert "INTER_LINEAR" in pre["letterbox"] and "Pillow" not in pre["letterbox"].replace("not Pillow", "")
    rng = np.random.default_rng(0)
    for h, w in [
        (37, 91),
        (301, 207),
        (size[0], size[1]),
        (1, 500),
        (95, 95),
        (size[0] * 3 + 1, size[1] // 2),
    ]:
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        ours, _ = preprocess(image, size=size, mean=mean, std=std)
        followed = _follow(pre["rule"], image, size, mean, std)
        np.testing.assert_allclose(ours, followed, rtol=0, atol=2e-5, err_msg=f"{h}x{w}")

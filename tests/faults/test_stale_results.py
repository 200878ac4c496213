"""No stale results: every figure comes from the run's current inputs.

* A stage's inputs are the content it reads, images included: an image replaced in place (the
  annotation files untouched) reruns the stages that read it, and a no-op rerun opens no image.
* check, package and benchmark take only the engines the config makes that chain to the run's
  model.pt through their manifests; the NNCF IR and build's own IR share ``openvino/int8`` only
  behind a freshness check.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from edgefpn.artifacts import read_manifest, sha256_file, write_manifest
from tests.conftest import copy_run
from tests.faults.conftest import CHECK_ONLY_ORT
from tests.security.harness import OpenWatch, cli, refused, snapshot, tiny_sets

# quantize (QDQ + its mAP loop) and check on ONNX Runtime only: the stages that read images, cheaply
# (a budget the 1-epoch model always meets: no sensitivity search, which is not what is tested here;
# calibrated on 2 images, the int8 p6/p7 maps' cosine is noise around the tiny run's 0.95 gate, and
# the gates are not what these tests hold either: which stages rerun is)
CHEAP_QDQ = (
    "quantize.fp16=false",
    "quantize.openvino=false",
    "quantize.num_images=2",
    "quantize.max_map_drop=100",
    "check.min_cosine.int8=0.5",
)
QDQ_ONLY = ("data.builtin=false", *CHEAP_QDQ, "build.targets=[]", "check.backends=[onnxruntime]")


def _edit_in_place(path: Path) -> None:
    """New pixels under the same name, size and format (what replacing a photo does)."""
    with Image.open(path) as im:
        fmt, pixels = im.format, im.convert("RGB")
    Image.eval(pixels, lambda v: 255 - v).save(path, format=fmt)


def _first_image(data: Path, split: str) -> Path:
    ann = json.loads((data / "annotations" / f"instances_{split}.json").read_text())
    return data / "images" / ann["images"][0]["file_name"]


# what each stage logs when it does its work ("up to date" lines are said once per process)
WORK = {
    "train": "[train] fcos/",
    "export": "[export] exporting",
    "quantize": "[quantize] INT8 QDQ (",
    "check": "[check] wrote",
}


def _reran(output: str, stage: str) -> bool:
    return WORK[stage] in output


@pytest.mark.slow
def test_an_image_replaced_in_place_reruns_train_quantize_and_check(tiny_run, data_root, tmp_path):
    _, src = tiny_run
    run = copy_run(src, tmp_path / "run")
    data = copy_run(data_root, tmp_path / "data")  # the user's own COCO folder now (builtin off)
    args = [*tiny_sets(*QDQ_ONLY, data_root=data), "--out", str(run)]
    annotations = {p.name: sha256_file(p) for p in (data / "annotations").iterdir()}

    first = cli("check", *args)
    assert first.exit_code == 0, first.output
    assert not _reran(first.output, "train")  # same images under another root: the model is still current
    assert _reran(first.output, "quantize") and _reran(first.output, "check")  # the control: logs are seen
    again = cli("check", *args)  # the control: a no-op, and it opens no image (digests cached by stat)
    with OpenWatch(list((data / "images").iterdir())) as watch:
        noop = cli("check", *args)
    assert noop.exit_code == 0 and again.exit_code == 0, noop.output
    assert not any(_reran(noop.output, s) for s in WORK), noop.output
    assert watch.opened == []

    report = read_manifest(run / "report.json")
    _edit_in_place(_first_image(data, "val"))  # the val images feed quantize's mAP loop and check
    val_edit = cli("check", *args)
    assert val_edit.exit_code == 0, val_edit.output
    assert not _reran(val_edit.output, "train")  # train.eval_every=0: training never reads val
    assert _reran(val_edit.output, "quantize") and _reran(val_edit.output, "check")
    assert read_manifest(run / "report.json")["inputs"]["val_images"] != report["inputs"]["val_images"]

    model = read_manifest(run / "model.pt")["sha256"]
    _edit_in_place(_first_image(data, "train"))
    train_edit = cli("train", *args)
    assert train_edit.exit_code == 0, train_edit.output
    assert _reran(train_edit.output, "train") and read_manifest(run / "model.pt")["sha256"] != model
    # nothing was written into the user's dataset: the annotation files are as they were
    assert {p.name: sha256_file(p) for p in (data / "annotations").iterdir()} == annotations
    assert not (data / "cache").exists()


def _plant(path: Path, files: dict[str, bytes], *, stage: str, inputs: dict[str, str], **extra) -> None:
    """Engine files with a well-formed manifest, as an earlier configuration's build would leave them."""
    if len(files) == 1 and next(iter(files)) == path.name:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(next(iter(files.values())))
    else:
        path.mkdir(parents=True)
        for name, data in files.items():
            (path / name).write_bytes(data)
    write_manifest(path, stage=stage, config_hash="an earlier configuration", inputs=inputs, extra=extra)


IR = {"model.xml": b"<net name='from an earlier configuration'/>", "model.bin": b"\0" * 16}


def test_engines_of_an_earlier_configuration_are_not_checked_or_packaged(checked_run, tmp_path):
    overrides, src = checked_run
    run = copy_run(src, tmp_path / "run")
    onnx = read_manifest(run / "model.onnx")["sha256"]
    # an OpenVINO target no longer in build.targets (its IR still chains to the current model.onnx) ...
    _plant(
        run / "openvino" / "fp32",
        IR,
        stage="build",
        inputs={"onnx": onnx},
        source={"path": "model.onnx", "sha256": onnx},
    )
    # ... and a TensorRT engine built from an older model
    _plant(
        run / "tensorrt" / "fp16" / "model.engine",
        {"model.engine": b"plan"},
        stage="build",
        inputs={"onnx": "0" * 64},
        source={"path": "model.onnx", "sha256": "0" * 64},
    )
    planted = {k: v for k, v in snapshot(run).items() if k.startswith(("openvino", "tensorrt"))}
    root = next(o for o in overrides if o.startswith("data.root=")).partition("=")[2]
    sets = tiny_sets(*CHECK_ONLY_ORT, "check.backends=[onnxruntime,openvino,tensorrt]", f"data.root={root}")

    res = cli("check", *sets, "--out", run)
    assert res.exit_code == 0, res.output
    report = json.loads((run / "report.json").read_text())
    assert [e["name"] for e in report["engines"]] == ["torch-fp32", "onnxruntime-fp32"]  # the reference + 1
    ignored = {i["name"]: i["reason"] for i in report["ignored_engines"]}
    assert set(ignored) == {"openvino-fp32", "tensorrt-fp16"}
    assert all("not made by the current configuration" in r for r in ignored.values())
    for name in ignored:
        assert f"[check] ignored {name}" in res.output
    assert "Not compared: openvino-fp32" in (run / "report.md").read_text()

    res = cli("package", *sets, "--out", run, "--quiet")
    assert res.exit_code == 0, res.output
    with tarfile.open(run / "bundle.tar") as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert [e["name"] for e in manifest["engines"]] == ["onnxruntime-fp32"]
    bundle = snapshot(run)["bundle.tar"]
    res = cli("package", *sets, "--out", run, "--engines", "openvino-fp32", "--quiet")
    # refused before check runs: these settings never build it (the engine on disk is an earlier one's)
    refused(
        res,
        names=["openvino-fp32"],
        problem=r"never built with these settings \(build\.targets does not "
        r"include openvino\)",
    )
    assert snapshot(run)["bundle.tar"] == bundle
    assert {k: v for k, v in snapshot(run).items() if k.startswith(("openvino", "tensorrt"))} == planted


def test_benchmark_times_only_engines_built_from_the_current_model(checked_run, tmp_path):
    overrides, src = checked_run
    run = copy_run(src, tmp_path / "run")
    _plant(
        run / "openvino" / "fp32",
        IR,
        stage="build",
        inputs={"onnx": "0" * 64},  # an older model.onnx
        source={"path": "model.onnx", "sha256": "0" * 64},
    )
    root = next(o for o in overrides if o.startswith("data.root=")).partition("=")[2]
    sets = tiny_sets(
        "quantize.enabled=false",
        "build.targets=[openvino]",
        "build.precisions=[fp32]",
        "check.backends=[onnxruntime,openvino]",
        f"data.root={root}",
    )
    res = cli(
        "benchmark", *sets, "--out", run, "--iters", "2", "--app-seconds", "0", "--throughput-seconds", "0.1"
    )
    assert res.exit_code == 0, res.output
    assert "[benchmark] ignored openvino-fp32 (openvino/fp32): made from another model.onnx" in res.output
    bench = json.loads((run / "benchmark.json").read_text())
    assert [e["name"] for e in bench["engines"]] == ["onnxruntime-fp32"]


@pytest.mark.slow
def test_a_stale_nncf_ir_is_not_taken_as_the_openvino_int8_engine(tiny_run, data_root, tmp_path):
    pytest.importorskip("openvino", reason="needs the openvino extra")
    _, src = tiny_run
    run = copy_run(src, tmp_path / "run", ignore=shutil.ignore_patterns("openvino", "*.int8.*", "*.fp16.*"))
    # quantize once wrote its NNCF IR here, from an older model; quantize.openvino is now off
    _plant(
        run / "openvino" / "int8",
        IR,
        stage="quantize",
        inputs={"model": "0" * 64, "int8_qdq": "1" * 64},
        precision="int8",
        format="openvino-ir",
    )
    res = cli(
        "build",
        *tiny_sets(*CHEAP_QDQ, data_root=data_root),
        "--target",
        "openvino",
        "--precision",
        "int8",
        "--out",
        run,
    )
    assert res.exit_code == 0, res.output
    assert "the NNCF IR in" in res.output and "is stale (quantize.openvino is off)" in res.output
    manifest = read_manifest(run / "openvino" / "int8")
    assert manifest["stage"] == "build" and manifest["source"]["path"] == "model.int8.onnx"
    assert manifest["inputs"] == {"onnx": read_manifest(run / "model.int8.onnx")["sha256"]}
    assert (run / "openvino" / "int8" / "model.xml").read_bytes() != IR["model.xml"]

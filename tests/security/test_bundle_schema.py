"""A bundle runs exactly what it ships, or nothing.

Each bundle here is *verified* (every member listed, every sha256 right): only what its manifest or
pipeline.json says is wrong. The runtime must refuse it with one ``error:`` line, exit 2, before
anything is extracted or loaded, and never open a file outside the bundle (an audit hook watches).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from edgefpn import bundle as bundle_io
from tests.security.harness import OpenWatch, refused_text, snapshot
from tests.security.test_hostile_bundles import _detector_onnx, _infer, valid  # noqa: F401  (fixture)

PIPELINE = {
    "classes": {"num_classes": 2, "names": ["a", "b"], "category_ids": [1, 2]},
    "preprocess": {"input_size": [64, 64], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    "postprocess": {
        "score_thresh": 0.05,
        "nms_thresh": 0.6,
        "topk_candidates": 100,
        "detections_per_img": 10,
        "strides": [8, 16, 32, 64, 128],
        "levels": ["p3", "p4", "p5", "p6", "p7"],
    },
}
ORT = {
    "name": "onnxruntime-fp32",
    "backend": "onnxruntime",
    "precision": "fp32",
    "path": "model.onnx",
    "files": ["model.onnx"],
    "target": {},
}


def _bundle(
    tmp: Path,
    name: str,
    *,
    files: dict[str, bytes] | None = None,
    edit: Callable[[dict], None] = lambda m: None,
) -> Path:
    """A verified bundle of ``files`` (default: the 64x64 detector and PIPELINE) whose manifest
    ``edit`` changed; hashes and sizes always match the members."""
    src = tmp / f"{name}-src"
    files = (
        files
        if files is not None
        else {"model.onnx": _detector_onnx(), "pipeline.json": json.dumps(PIPELINE).encode()}
    )
    paths = {}
    for rel, data in files.items():
        paths[rel] = src.joinpath(*rel.split("/"))
        paths[rel].parent.mkdir(parents=True, exist_ok=True)
        paths[rel].write_bytes(data)
    manifest = {
        "schema": bundle_io.SCHEMA,
        "pipeline": "pipeline.json",
        "files": {n: bundle_io.file_entry(p, ["engine"]) for n, p in paths.items()},
        "engines": [dict(ORT)],
    }
    edit(manifest)
    out = tmp / f"{name}.tar"
    bundle_io.write_tar(out, paths, manifest)
    return out


def _outside_ir(folder: Path) -> Path:
    """A loadable OpenVINO IR of the test detector, outside any bundle."""
    ov = pytest.importorskip("openvino")
    onnx_path = folder / "src.onnx"
    onnx_path.write_bytes(_detector_onnx())
    ov.save_model(ov.convert_model(str(onnx_path)), str(folder / "model.xml"), compress_to_fp16=False)
    onnx_path.unlink()
    return folder / "model.xml"


def _set_engine(**changes):
    def edit(m: dict) -> None:
        m["engines"][0].update(changes)

    return edit


def _refused(valid, bundle: Path, capsys, problem: str, watched: list[Path] = ()) -> None:  # noqa: F811
    before = snapshot(valid["tmp"])
    with OpenWatch(watched) as watch:
        code, err = _infer(valid, bundle, capsys)
    refused_text(err, code, expected_code=2, names=[bundle], problem=problem)
    assert watch.opened == [], f"opened outside the bundle: {watch.opened}"
    assert snapshot(valid["tmp"]) == before  # nothing extracted, no detections file


# ------------------------------------------------------------------------------------------------
# 4a: every path stays in the bundle


def test_openvino_engine_outside_the_bundle_is_never_loaded(valid, capsys):  # noqa: F811
    """The reported case: an OpenVINO ``path`` of ``../../..`` loaded an IR from outside the bundle."""
    xml = _outside_ir(valid["outside"])
    rel = Path("..", "..", *xml.relative_to(valid["tmp"]).parts).as_posix()  # from <tmp>/x/dest
    # the only engine: before the fix the runtime verified the bundle, then ran the outside IR
    bad = _bundle(
        valid["tmp"],
        "ov-out",
        edit=lambda m: m.update(
            engines=[
                {
                    "name": "openvino-fp32",
                    "backend": "openvino",
                    "precision": "fp32",
                    "path": rel,
                    "files": [],
                    "target": {},
                }
            ]
        ),
    )
    _refused(
        valid,
        bad,
        capsys,
        r"engine 'openvino-fp32'\.path .*leaves the bundle",
        watched=[xml, xml.with_suffix(".bin")],
    )


def test_pipeline_outside_the_bundle_is_never_read(valid, capsys):  # noqa: F811
    outside = valid["outside"] / "pipeline.json"
    outside.write_text(json.dumps(PIPELINE))
    rel = Path("..", "..", *outside.relative_to(valid["tmp"]).parts).as_posix()
    bad = _bundle(valid["tmp"], "pipe-out", edit=lambda m: m.update(pipeline=rel))
    _refused(valid, bad, capsys, r"manifest\.json: pipeline .*leaves the bundle", watched=[outside])


@pytest.mark.parametrize(
    ("case", "edit", "problem"),
    [
        (
            "engine-files",
            _set_engine(files=["model.onnx", "../../etc/passwd"]),
            r"files\[1\] .*leaves the bundle",
        ),
        ("engine-source", _set_engine(source="/etc/passwd"), r"\.source '/etc/passwd' is an absolute path"),
        (
            "unlisted-ir",
            lambda m: m["engines"].append(
                {
                    "name": "openvino-fp32",
                    "backend": "openvino",
                    "precision": "fp32",
                    "path": "model.xml",
                    "target": {},
                }
            ),
            r"engine 'openvino-fp32'\.path 'model\.xml' is not a file of the bundle",
        ),
        (
            "ir-without-bin",
            None,
            r"engine 'openvino-fp32' \(file its backend reads\) 'ir/model\.bin' is not a file",
        ),
        (
            "openvino-reads-onnx",
            _set_engine(backend="openvino", name="openvino-fp32"),
            r"'model\.onnx' is not an OpenVINO IR of the bundle",
        ),
    ],
)
def test_every_path_an_engine_reads_is_a_member(valid, capsys, case, edit, problem):  # noqa: F811
    files = None
    if case == "ir-without-bin":  # the xml is shipped, the .bin it loads beside it is not
        files = {
            "model.onnx": _detector_onnx(),
            "pipeline.json": json.dumps(PIPELINE).encode(),
            "ir/model.xml": b"<net/>",
        }

        def edit(m):
            m["engines"].insert(
                0,
                {
                    "name": "openvino-fp32",
                    "backend": "openvino",
                    "precision": "fp32",
                    "path": "ir",
                    "target": {},
                },
            )

    bad = _bundle(valid["tmp"], case, files=files, edit=edit)
    _refused(valid, bad, capsys, problem)


# ------------------------------------------------------------------------------------------------
# 4b: the whole schema, before anything loads


def _pipeline_files(
    change: Callable[[dict], None] | None = None, raw: bytes | None = None
) -> dict[str, bytes]:
    p = json.loads(json.dumps(PIPELINE))
    if change is not None:
        change(p)
    return {
        "model.onnx": _detector_onnx(),
        "pipeline.json": raw if raw is not None else json.dumps(p).encode(),
    }


@pytest.mark.parametrize(
    ("case", "files", "edit", "problem"),
    [
        (
            "engine-without-backend",
            None,
            lambda m: m["engines"][0].pop("backend"),
            r"engine 'onnxruntime-fp32'\.backend must be one of .*got None",
        ),
        (
            "engines-not-a-list",
            None,
            lambda m: m.update(engines={"onnxruntime-fp32": ORT}),
            r"engines must be a list, got dict",
        ),
        (
            "no-pipeline-key",
            None,
            lambda m: m.pop("pipeline"),
            r"pipeline must be a non-empty string, got None",
        ),
        (
            "pipeline-not-json",
            _pipeline_files(raw=b"{not json"),
            lambda m: None,
            r"pipeline\.json: not valid JSON",
        ),
        (
            "fewer-category-ids",
            _pipeline_files(lambda p: p["classes"].update(category_ids=[1])),
            lambda m: None,
            r"classes\.category_ids must be a list of 2 integers",
        ),
        (
            "input-size-disagrees",
            _pipeline_files(lambda p: p["preprocess"].update(input_size=[96, 96])),
            lambda m: None,
            r"input_size \[96, 96\] disagrees with engine 'onnxruntime-fp32': its input 'images' is \[1, 3, "
            r"64, 64\]",
        ),
        (
            "classes-disagree",
            _pipeline_files(
                lambda p: p["classes"].update(num_classes=3, names=["a", "b", "c"], category_ids=[1, 2, 3])
            ),
            lambda m: None,
            r"num_classes is 3, engine 'onnxruntime-fp32' outputs \[2\] classes",
        ),
        (
            "bad-threshold",
            _pipeline_files(lambda p: p["postprocess"].update(score_thresh=-1, topk_candidates=0)),
            lambda m: None,
            r"postprocess\.score_thresh must be a number in \[0, 1\), got -1; "
            r"postprocess\.topk_candidates must be a positive integer, got 0",
        ),
    ],
)
def test_malformed_manifest_or_pipeline_is_one_line(valid, capsys, case, files, edit, problem):  # noqa: F811
    bad = _bundle(valid["tmp"], case, files=files, edit=edit)
    _refused(valid, bad, capsys, problem)


def test_the_schema_accepts_what_package_writes(valid, capsys):  # noqa: F811
    """Control: the same helper with nothing edited gives a bundle that runs."""
    good = _bundle(valid["tmp"], "good")
    code, err = _infer(valid, good, capsys)
    assert code == 0, err

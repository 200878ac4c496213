import json

import pytest

from edgefpn.artifacts import (
    atomic_output,
    manifest_path,
    require,
    sha256_file,
    sha256_path,
    up_to_date,
    write_manifest,
)
from edgefpn.errors import EdgefpnError


def test_manifest_roundtrip_and_staleness(tmp_path):
    art = tmp_path / "a.bin"
    art.write_bytes(b"hello")
    write_manifest(art, stage="t", config_hash="c1", inputs={"x": "1"})
    m = json.loads(manifest_path(art).read_text())
    assert m["sha256"] == sha256_file(art) and m["stage"] == "t" and "torch" in m["versions"]
    assert up_to_date(art, config_hash="c1", inputs={"x": "1"}) is not None
    assert up_to_date(art, config_hash="c2", inputs={"x": "1"}) is None  # settings changed
    assert up_to_date(art, config_hash="c1", inputs={"x": "2"}) is None  # input changed
    art.write_bytes(b"tampered")
    assert up_to_date(art, config_hash="c1", inputs={"x": "1"}) is None  # file changed under us
    with pytest.raises(EdgefpnError, match="does not match its manifest"):
        require(art, "thing")


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    write_manifest(target, stage="t", config_hash="c", inputs={})
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    # the old file and its manifest stay as they were (a consistent pair, made from the old inputs,
    # which up_to_date compares), no temp litter
    assert target.read_bytes() == b"old"
    assert json.loads(manifest_path(target).read_text())["sha256"] == sha256_path(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "out.bin.manifest.json"]


def test_atomic_output_folder(tmp_path):
    target = tmp_path / "ir"
    with atomic_output(target) as tmp:
        tmp.mkdir()
        (tmp / "model.xml").write_text("x")
    assert (target / "model.xml").read_text() == "x"
    with atomic_output(target) as tmp:
        tmp.mkdir()
        (tmp / "other.xml").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["other.xml"]


def test_a_missing_or_changed_side_output_makes_the_artifact_stale(tmp_path):
    art, md = tmp_path / "report.json", tmp_path / "report.md"
    art.write_text("{}")
    md.write_text("# report")
    write_manifest(art, stage="t", config_hash="c", inputs={}, outputs=[md])
    assert up_to_date(art, config_hash="c", inputs={}, outputs=[md]) is not None
    md.write_text("# edited")
    assert up_to_date(art, config_hash="c", inputs={}, outputs=[md]) is None
    md.unlink()
    assert up_to_date(art, config_hash="c", inputs={}, outputs=[md]) is None
    # a manifest that does not record an output the stage writes (an older edgefpn's) is stale too
    md.write_text("# report")
    write_manifest(art, stage="t", config_hash="c", inputs={})
    assert up_to_date(art, config_hash="c", inputs={}, outputs=[md]) is None

"""The same inputs give the same bytes.

* exporting the same checkpoint twice (a fresh export, in another run directory) gives a byte-identical
  ONNX, and loading the same weights twice gives a byte-identical ``model.pt``;
* packaging the same checked run twice gives a byte-identical ``bundle.tar`` (so identical
  ``manifest.json`` inside it: it carries no clock reading).

Timestamps aside: every sidecar ``X.manifest.json`` records ``created_unix`` (when the artifact was
made); that one key differs between two runs, and is the only one that does.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgefpn import bundle
from edgefpn.artifacts import manifest_path
from tests.conftest import copy_run
from tests.faults.conftest import CHECK_ONLY_ORT
from tests.security.harness import cli, tiny_sets

TIMESTAMP_KEYS = {"created_unix"}


def _sidecar(path: Path) -> dict:
    return json.loads(manifest_path(path).read_text())


def _same_but_timestamps(a: dict, b: dict) -> None:
    differing = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert differing <= TIMESTAMP_KEYS, differing


def test_export_and_weights_are_byte_identical(tiny_run, tmp_path):
    overrides, src = tiny_run
    data_root = src.parent / "data"
    for name in ("a", "b"):
        run = tmp_path / name
        args = tiny_sets(f"model.weights={src / 'model.pt'}", data_root=data_root)
        assert cli("export", *args, "--out", run, "--quiet").exit_code == 0
    a, b = tmp_path / "a", tmp_path / "b"
    for artifact in ("model.pt", "model.onnx"):
        assert (a / artifact).read_bytes() == (b / artifact).read_bytes(), artifact
    _same_but_timestamps(_sidecar(a / "model.onnx"), _sidecar(b / "model.onnx"))
    # and the session's tiny run, which exported the same weights from its own training: same bytes
    assert (a / "model.onnx").read_bytes() == (src / "model.onnx").read_bytes()


def test_package_twice_is_byte_identical(checked_run, tmp_path):
    overrides, src = checked_run
    root = next(o for o in overrides if o.startswith("data.root=")).partition("=")[2]
    tars = []
    for name in ("a", "b"):
        run = copy_run(src, tmp_path / name)
        res = cli("package", *tiny_sets(*CHECK_ONLY_ORT, f"data.root={root}"), "--out", run, "--quiet")
        assert res.exit_code == 0, res.output
        tars.append(run / "bundle.tar")
    assert tars[0].read_bytes() == tars[1].read_bytes()
    manifests = [bundle.read_verified(t) for t in tars]
    assert manifests[0] == manifests[1]
    # its only time is the check report's own creation time, an input copied from report.json's
    # sidecar, not a clock read while packaging
    assert (
        manifests[0]["report"]["check_report_created_unix"] == _sidecar(src / "report.json")["created_unix"]
    )
    _same_but_timestamps(_sidecar(tars[0]), _sidecar(tars[1]))

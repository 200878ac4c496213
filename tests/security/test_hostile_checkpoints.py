"""Checkpoints that run code on load, and corrupt or ill-fitting checkpoints.

Each goes through ``edgefpn train --set model.weights=FILE`` into a copy of the tiny run: one line
naming the file and the problem, exit 2, the canary absent, the run directory byte-identical.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

from tests.security.harness import canary_payload, cli, refused, snapshot, tiny_sets

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_dir(run_copy) -> Path:
    """A private copy of the tiny run (model.pt, model.onnx and their manifests)."""
    return run_copy[1]


@pytest.fixture
def data_root(tiny_run) -> Path:
    return tiny_run[1].parent / "data"


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", map_location="cpu", weights_only=True)["state_dict"]


def _evil_zip(path: Path, canary: Path, state) -> None:
    torch.save({"state_dict": state, "payload": canary_payload(canary)()}, path)


def _evil_legacy(path: Path, canary: Path, state) -> None:
    torch.save(
        {"state_dict": state, "payload": canary_payload(canary)()}, path, _use_new_zipfile_serialization=False
    )


def _evil_plain_pickle(path: Path, canary: Path, state) -> None:
    path.write_bytes(pickle.dumps({"payload": canary_payload(canary)()}))


@pytest.mark.parametrize(
    "write", [_evil_zip, _evil_legacy, _evil_plain_pickle], ids=["zip", "legacy", "raw-pickle"]
)
def test_code_running_checkpoint_is_refused(run_dir, data_root, tmp_path, write):
    canary = tmp_path / "canary"
    evil = tmp_path / "evil.pt"
    write(evil, canary, {"w": torch.ones(1)})
    assert not canary.exists()
    before = snapshot(run_dir)
    res = cli("train", *tiny_sets(f"model.weights={evil}", data_root=data_root), "--out", run_dir, "--quiet")
    refused(res, names=[evil], problem=r"refused to unpickle|not a torch checkpoint")
    assert not canary.exists(), "the pickle payload ran"
    assert snapshot(run_dir) == before


def _offences(source: str, where: str) -> list[str]:
    """Unsafe loading calls in ``source``: torch.load without a literal weights_only=True, any other
    unpickler, unsafe YAML loaders, tar extractall, np.load(allow_pickle=True), Pillow's bomb check off."""
    offences = []
    for node in ast.walk(ast.parse(source)):
        at = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if (
                    isinstance(t, ast.Attribute)
                    and t.attr in ("MAX_IMAGE_PIXELS", "LOAD_TRUNCATED_IMAGES")
                    and isinstance(node.value, ast.Constant)
                    and node.value.value in (None, True)
                ):
                    offences.append(f"{at}: {t.attr} = {node.value.value}")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        name, kw = node.func.attr, {k.arg: k.value for k in node.keywords}
        if (owner, name) == ("torch", "load"):
            wo = kw.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                offences.append(f"{at}: torch.load without weights_only=True")
        elif owner in ("pickle", "dill", "cloudpickle", "joblib") and name in ("load", "loads"):
            offences.append(f"{at}: {owner}.{name}")
        elif owner == "yaml" and name in ("unsafe_load", "full_load", "load_all", "unsafe_load_all"):
            offences.append(f"{at}: yaml.{name}")
        elif owner == "yaml" and name == "load":
            loader = kw.get("Loader")
            if not (isinstance(loader, ast.Name) and loader.id in ("SafeLoader", "_NoAliasLoader")):
                offences.append(f"{at}: yaml.load with another Loader")
        elif name == "extractall":
            offences.append(f"{at}: extractall")
        elif (owner, name) == ("np", "load"):
            ap = kw.get("allow_pickle")
            if isinstance(ap, ast.Constant) and ap.value is True:
                offences.append(f"{at}: np.load(allow_pickle=True)")
    return offences


def test_every_torch_load_is_weights_only_and_nothing_unpickles():
    """Source scan of the package and the benchmarks."""
    files = sorted([*(REPO / "edgefpn").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")])
    assert len(files) > 40
    offences = [o for p in files for o in _offences(p.read_text(encoding="utf-8"), str(p.relative_to(REPO)))]
    assert offences == []


def test_the_source_scan_finds_unsafe_calls():
    bad = """
import pickle, torch, yaml, tarfile, numpy as np
from PIL import Image
torch.load(p)
torch.load(p, weights_only=False)
torch.load(p, weights_only=flag)
pickle.loads(b)
yaml.load(text, Loader=yaml.Loader)
yaml.full_load(text)
tarfile.open(p).extractall(d)
np.load(p, allow_pickle=True)
Image.MAX_IMAGE_PIXELS = None
torch.load(p, map_location="cpu", weights_only=True)
yaml.load(text, Loader=_NoAliasLoader)
"""
    found = _offences(bad, "x.py")
    assert len(found) == 9 and not any(":13:" in f or ":14:" in f for f in found), found


def _truncated(run: Path, tmp: Path) -> Path:
    data = (run / "model.pt").read_bytes()
    out = tmp / "truncated.pt"
    out.write_bytes(data[: len(data) // 2])
    return out


def _wrong_keys(run: Path, tmp: Path) -> Path:
    state = {k.replace("head.", "heads."): v for k, v in _state(run).items()}
    out = tmp / "keys.pt"
    torch.save(state, out)
    return out


def _wrong_shapes(run: Path, tmp: Path) -> Path:
    state = {
        k: (torch.zeros(*v.shape[:-1], v.shape[-1] + 1) if k.startswith("head.") and v.ndim == 4 else v)
        for k, v in _state(run).items()
    }
    out = tmp / "shapes.pt"
    torch.save(state, out)
    return out


def _no_tensors(run: Path, tmp: Path) -> Path:
    out = tmp / "nothing.pt"
    torch.save({"epoch": 3, "note": "no weights here"}, out)
    return out


def _not_a_checkpoint(run: Path, tmp: Path) -> Path:
    out = tmp / "image.pt"
    out.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    return out


CORRUPT = {
    "truncated-zip": (_truncated, r"truncated or corrupt checkpoint"),
    "wrong-keys": (
        _wrong_keys,
        r"\d+ missing keys \(head\.\S+, head\.\S+, head\.\S+, …\); \d+ unexpected keys \(heads\.",
    ),
    "wrong-shapes": (
        _wrong_shapes,
        r"\d+ shape mismatches \(head\.\S+: checkpoint \[[\d, ]+\] vs model \[[\d, ]+\]",
    ),
    "no-state-dict": (_no_tensors, r"found no state dict"),
    "not-a-checkpoint": (_not_a_checkpoint, r"not a torch checkpoint \(neither a zip archive nor a pickle\)"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_checkpoint_is_one_line(run_dir, data_root, tmp_path, case):
    make, problem = CORRUPT[case]
    bad = make(run_dir, tmp_path)
    # a bare state dict records no class count: give the tiny model's, so the keys are what fails
    num_classes = torch.load(run_dir / "model.pt", weights_only=True)["meta"]["num_classes"]
    before = snapshot(run_dir)
    res = cli(
        "train",
        *tiny_sets(f"model.weights={bad}", f"model.num_classes={num_classes}", data_root=data_root),
        "--out",
        run_dir,
        "--quiet",
    )
    refused(res, names=[bad], problem=problem)
    assert snapshot(run_dir) == before

"""A stage SIGKILLed while it writes (train checkpoint, training resume state, ONNX
export, OpenVINO IR, bundle).

Each runs ``edgefpn`` in a subprocess whose writer is patched to write half of its bytes and then
SIGKILL its own process: a real kill at a known point, no timing race. Afterwards nothing partial is
at the artifact's path (the run directory is exactly as before, apart from the killed writer's hidden
temporary folder), and the next run redoes the stage, removes that folder and leaves a verified
artifact.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgefpn.artifacts import manifest_path, require
from edgefpn.ownership import LOCK_NAME
from tests.conftest import TINY, copy_run
from tests.security.harness import EMPTY_CONFIG, build_args, cli, leftovers, snapshot, tiny_sets

PRELUDE = """
import os, signal, sys

def die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

def write_half(path, data):
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
"""


def run_killed(tmp: Path, patch: str, *args: str) -> None:
    """``edgefpn *args`` in a subprocess with ``patch`` applied; it must die by SIGKILL."""
    code = (
        PRELUDE
        + textwrap.dedent(patch)
        + "\nfrom edgefpn.cli import main\nmain(sys.argv[1:], prog_name='edgefpn')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def without_leftovers(snap: dict[str, str]) -> dict[str, str]:
    """``snap`` without the killed writer's temporary folders (and parent folders holding only those)
    and its run-directory lock (stale once its holder is dead: the next command takes it over)."""
    kept = {
        k: v
        for k, v in snap.items()
        if k != LOCK_NAME and not any(part.endswith(".tmp") for part in k.split("/"))
    }
    return {k: v for k, v in kept.items() if v != "dir" or any(o.startswith(k + "/") for o in kept)}


def assert_killed_cleanly(run: Path, before: dict[str, str], artifact: str) -> None:
    assert leftovers(run), "the patched writer never ran: the kill did not happen mid-write"
    assert without_leftovers(snapshot(run)) == before
    assert not (run / artifact).exists() and not manifest_path(run / artifact).exists()


def assert_redone(run: Path, artifact: str, what: str) -> None:
    require(run / artifact, what)  # exists, has a manifest, and its sha256 matches
    assert leftovers(run) == [], "the killed writer's temporary folder was not cleaned up"
    assert not (run / LOCK_NAME).exists(), "the killed writer's lock was not taken over and released"


def kill_mid_write_then_rerun(tmp: Path, run: Path, patch: str, args: list, artifact: str, what: str) -> None:
    """Kill ``edgefpn *args`` inside its patched writer, check the run directory is as before, then run
    it again and check the stage was redone cleanly."""
    before = snapshot(run)
    run_killed(tmp, patch, *args)
    assert_killed_cleanly(run, before, artifact)
    res = cli(*args)
    assert res.exit_code == 0, res.output
    assert_redone(run, artifact, what)


def test_killed_while_writing_the_checkpoint(tiny_run, data_root, tmp_path):
    _, src = tiny_run
    run = tmp_path / "run"
    run.mkdir()
    args = [
        "train",
        *tiny_sets(f"model.weights={src / 'model.pt'}", data_root=data_root),
        "--out",
        run,
        "--quiet",
    ]
    kill_mid_write_then_rerun(
        tmp_path,
        run,
        """
        import io, torch
        real_save = torch.save
        def dying_save(obj, f, *a, **k):
            buf = io.BytesIO()
            real_save(obj, buf, *a, **k)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            die()
        torch.save = dying_save
    """,
        args,
        "model.pt",
        "checkpoint",
    )


def test_killed_while_exporting_onnx(tiny_run, data_root, tmp_path):
    _, src = tiny_run
    run = copy_run(src, tmp_path / "run")
    for name in ("model.onnx", "model.onnx.manifest.json"):
        (run / name).unlink()
    args = ["export", *tiny_sets(data_root=data_root), "--out", run, "--quiet"]
    kill_mid_write_then_rerun(
        tmp_path,
        run,
        """
        import onnx
        onnx.save = lambda model, path, *a, **k: (write_half(path, model.SerializeToString()), die())
    """,
        args,
        "model.onnx",
        "ONNX",
    )
    assert (run / "model.onnx").read_bytes() == (src / "model.onnx").read_bytes()  # the same export again


def test_killed_while_writing_openvino_ir(tiny_run, data_root, tmp_path):
    pytest.importorskip("openvino", reason="needs the openvino extra")
    _, src = tiny_run
    run = copy_run(src, tmp_path / "run")
    args = build_args(run, data_root=data_root)
    kill_mid_write_then_rerun(
        tmp_path,
        run,
        """
        import openvino
        real_save = openvino.save_model
        def dying_save(model, xml, *a, **k):
            real_save(model, xml, *a, **k)  # then cut the weights in half, as a kill mid-write would
            bin_ = xml[: -len(".xml")] + ".bin"
            data = open(bin_, "rb").read()
            write_half(bin_, data)
            die()
        openvino.save_model = dying_save
    """,
        args,
        "openvino/fp32",
        "OpenVINO IR",
    )


def test_killed_while_writing_the_bundle(checked_run, tmp_path):
    from edgefpn import bundle

    overrides, src = checked_run
    run = copy_run(src, tmp_path / "run")
    extra = [
        o for o in overrides if o.split("=")[0] in ("quantize.enabled", "build.targets", "check.backends")
    ]
    args = ["package", *tiny_sets(*extra, data_root=_data_root(overrides)), "--out", run, "--quiet"]
    kill_mid_write_then_rerun(
        tmp_path,
        run,
        """
        import edgefpn.bundle as bundle
        real_write = bundle.write_tar
        def dying_write(dest, files, manifest):
            real_write(dest, files, manifest)
            write_half(dest, open(dest, "rb").read())
            die()
        bundle.write_tar = dying_write
    """,
        args,
        "bundle.tar",
        "bundle",
    )
    bundle.read_verified(run / "bundle.tar")


def _data_root(overrides: list[str]) -> Path:
    return Path(next(o for o in overrides if o.startswith("data.root=")).partition("=")[2])


# ------------------------------------------------------------------------------------------------
# training resume from train.last.pt

RESUME_SETS = (
    "train.epochs=2",
    "data.synth.num_train=4",
    "train.batch_size=2",
    "model.backbone_width=32",
    "model.input_size=[128, 128]",
)


@pytest.mark.slow
def test_killed_training_resumes_from_the_last_epoch_and_matches(tmp_path):
    """Killed right after epoch 1 saved ``train.last.pt``: the next run resumes at epoch 1 and ends with
    exactly the weights of an uninterrupted run (model, optimizer and both RNG states were saved)."""
    import torch

    data = tmp_path / "data"
    run, ref = tmp_path / "run", tmp_path / "ref"
    args = ["train", *tiny_sets(*RESUME_SETS, data_root=data), "--quiet"]
    assert cli(*args, "--out", ref).exit_code == 0  # uninterrupted: 2 epochs (and the dataset)
    run_killed(
        tmp_path,
        """
        import edgefpn.training.loop as loop
        real = loop._save_resume
        def save_then_die(*a, **k):
            real(*a, **k)
            die()
        loop._save_resume = save_then_die
    """,
        *args,
        "--out",
        run,
    )
    assert (run / "train.last.pt").is_file() and not (run / "model.pt").exists()
    require(run / "train.last.pt", "resume state")
    res = cli(*[a for a in args if a != "--quiet"], "--out", run)
    assert res.exit_code == 0, res.output
    assert f"resuming from {run / 'train.last.pt'} at epoch 1" in res.output
    assert "[train] epoch 1/2" not in res.output and "[train] epoch 2/2" in res.output  # epoch 1 not redone
    assert not (run / "train.last.pt").exists()
    assert_redone(run, "model.pt", "checkpoint")
    got = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    want = torch.load(ref / "model.pt", weights_only=True)["state_dict"]
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want), (
        "resumed training diverged from the uninterrupted run"
    )


def test_resume_state_from_other_settings_is_not_used(tmp_path, monkeypatch):
    """A ``train.last.pt`` whose manifest does not match (other settings, or bytes modified) is ignored."""
    from edgefpn.artifacts import write_manifest
    from edgefpn.config import load_config
    from edgefpn.pipeline import train

    loads = []
    monkeypatch.setattr(
        "torch.load", lambda *a, **k: loads.append(a) or (_ for _ in ()).throw(AssertionError)
    )
    run = tmp_path / "run"
    run.mkdir()
    resume = run / train.RESUME
    resume.write_bytes(b"PK\x03\x04 state of another run")
    write_manifest(resume, stage="train-resume", config_hash="other", inputs={})
    # one step (4 images, batch 4): train.epochs=0 is refused, it would write an untrained model
    cfg = load_config(
        EMPTY_CONFIG, [*TINY, f"data.root={tmp_path / 'data'}", "train.epochs=1", "data.synth.num_train=4"]
    )
    train.run(cfg, run, progress=False)
    assert loads == [] and (run / "model.pt").is_file()

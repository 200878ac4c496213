"""Nothing the user owns is deleted or overwritten.

One test per class, through the CLI or the runtime as a user would type it: a path that edgefpn
would write (``--extract-to``, ``--out``, ``--save``, a run directory, the built-in dataset's folder)
holding something edgefpn did not make, or changed since; a model trained with other settings than
the command's; a second process on the same run directory. Each is one ``error:`` line naming the
path, exit 2, no traceback, and the user's files exactly as before (path -> sha256). What edgefpn made
itself (an earlier extraction, detections file or dataset, unchanged) is still replaced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgefpn.artifacts import manifest_path, read_manifest, require
from edgefpn.runtime import __main__ as runtime_main
from tests.conftest import TINY, copy_run
from tests.security.harness import cli, predict_args, refused, refused_text, snapshot, tiny_sets
from tests.security.test_hostile_bundles import valid  # noqa: F401  (the fixture: a runnable bundle)

REPO = Path(__file__).resolve().parents[2]


def _user_folder(v: dict[str, Path]) -> Path:
    """A user's working folder: the bundle, the images and their own files, side by side."""
    work = v["tmp"] / "work"
    work.mkdir()
    shutil.copy(v["bundle"], work / "bundle.tar")
    copy_run(v["images"], work / "images")
    (work / "notes.txt").write_text("my notes\n")
    (work / "results.json").write_text(json.dumps({"mine": [1, 2, 3]}))
    return work


def _infer(capsys, *argv: str) -> tuple[int, str]:
    code = runtime_main.main(["infer", *argv])
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# runtime: --extract-to and --out


@pytest.mark.parametrize("dest", [".", "images", "extracted-and-edited"])
def test_runtime_extract_to_a_folder_of_user_files_is_refused(valid, capsys, monkeypatch, dest):  # noqa: F811
    work = _user_folder(valid)
    monkeypatch.chdir(work)
    if dest == "extracted-and-edited":  # an earlier extraction the user then added a file to
        assert _infer(capsys, "--bundle", "bundle.tar", "--images", "images", "--extract-to", dest)[0] == 0
        (work / dest / "calibration-notes.txt").write_text("mine\n")
    before = snapshot(work)
    code, err = _infer(capsys, "--bundle", "bundle.tar", "--images", "images", "--extract-to", dest)
    refused_text(
        err, code, expected_code=2, names=[f"{dest}: exists"], problem=r"refusing to replace it.*--extract-to"
    )
    assert snapshot(work) == before


@pytest.mark.parametrize("out", ["bundle.tar", "images", "results.json", "notes.txt"])
def test_runtime_out_over_a_user_file_is_refused(valid, capsys, monkeypatch, out):  # noqa: F811
    work = _user_folder(valid)
    monkeypatch.chdir(work)
    before = snapshot(work)
    code, err = _infer(capsys, "--bundle", "bundle.tar", "--images", "images", "--out", out)
    refused_text(
        err, code, expected_code=2, names=[f"{out}: exists"], problem=r"not an edgefpn detections file.*--out"
    )
    assert snapshot(work) == before


def test_runtime_replaces_what_it_made_itself(valid, capsys, monkeypatch):  # noqa: F811
    work = _user_folder(valid)
    monkeypatch.chdir(work)
    argv = ["--bundle", "bundle.tar", "--images", "images", "--out", "dets.json", "--extract-to", "x"]
    (work / "x").mkdir()  # an empty folder is free
    assert _infer(capsys, *argv)[0] == 0
    (work / "dets.json").write_text("[]\n")  # an edgefpn detections file (no detections)
    code, err = _infer(capsys, *argv)  # an unchanged extraction and a detections file: replaced
    assert code == 0, err
    assert json.loads((work / "dets.json").read_text()) == [] and (work / "x" / "model.onnx").is_file()
    assert (work / "notes.txt").read_text() == "my notes\n"


# --------------------------------------------------------------------------------------------------
# edgefpn: predict --save, and a run directory that is not one


def test_predict_save_over_a_user_file_is_refused(tiny_run, tmp_path):
    _, src = tiny_run
    run = copy_run(src, tmp_path / "run")
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"annotations": "hand-made"}))
    images = src.parent / "data" / "images"
    before = snapshot(tmp_path)
    res = cli(*predict_args(run, images, data_root=src.parent / "data", save=mine))
    refused(res, names=[mine], problem=r"not an edgefpn detections file.*--save")
    assert snapshot(tmp_path) == before


def test_out_into_a_folder_that_is_not_a_run_directory_is_refused(tiny_run, tmp_path):
    _, src = tiny_run
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("\\section{Intro}\n")
    (folder / "model.pt").write_bytes(b"my own model, not edgefpn's")
    before = snapshot(folder)
    res = cli(
        "train",
        *tiny_sets(f"model.weights={src / 'model.pt'}", data_root=src.parent / "data"),
        "--out",
        folder,
        "--quiet",
    )
    refused(res, names=[folder], problem=r"not an edgefpn run directory .*refusing to write into it")
    assert snapshot(folder) == before


# --------------------------------------------------------------------------------------------------
# the model: only `train` and `run` train; a replaced model is kept


@pytest.mark.parametrize("command", ["predict", "check", "package", "benchmark", "export"])
def test_commands_that_do_not_train_refuse_a_model_made_with_other_settings(tiny_run, tmp_path, command):
    """The user left out a --set used for training: the command names it instead of retraining."""
    _, src = tiny_run
    run = copy_run(src, tmp_path / "run")
    data = src.parent / "data"
    extra = ["--images", data / "images"] if command == "predict" else []
    before, data_before = snapshot(run), snapshot(data)
    res = cli(
        command,
        *tiny_sets("train.epochs=3", "model.head_convs=2", data_root=data),
        "--out",
        run,
        *extra,
        "--quiet",
    )
    line = refused(res, names=[run / "model.pt"], problem=r"trained with other settings than these")
    assert "model.head_convs (trained 1, given 2)" in line and "train.epochs (trained 1, given 3)" in line
    assert f"`edgefpn {command}` never trains" in line and "edgefpn train" in line
    assert snapshot(run) == before and snapshot(data) == data_before


def test_commands_that_do_not_train_refuse_a_run_without_a_model(tiny_run, tmp_path):
    _, src = tiny_run
    run = tmp_path / "run"
    res = cli("check", *tiny_sets(data_root=src.parent / "data"), "--out", run, "--quiet")
    refused(res, names=[run / "model.pt"], problem=r"no trained model in this run directory.*edgefpn train")
    assert not run.exists()  # nothing made, not even the folder


def test_train_on_changed_settings_keeps_the_model_it_replaces(tiny_run, tmp_path):
    _, src = tiny_run
    run = copy_run(src, tmp_path / "run")
    old = {n: (run / n).read_bytes() for n in ("model.pt", "model.pt.manifest.json")}
    stale = run / "train.last.pt"  # another run's partial training: not resumed, kept too
    stale.write_bytes(b"PK resume state of other settings")
    stale.with_name("train.last.pt.manifest.json").write_text(
        json.dumps({"stage": "train-resume", "sha256": "x"})
    )
    res = cli("train", *tiny_sets("train.lr=0.0123", data_root=src.parent / "data"), "--out", run)
    assert res.exit_code == 0, res.output
    assert re.search(r"train\.lr \(trained [0-9.e-]+, given 0\.0123\)", res.output)  # why it trains again
    kept = sorted(run.glob("model.prev-*.pt"))
    assert len(kept) == 1 and f"kept as {kept[0]}" in res.output
    assert kept[0].read_bytes() == old["model.pt"]
    assert manifest_path(kept[0]).read_bytes() == old["model.pt.manifest.json"]
    (kept_resume,) = run.glob("train.last.prev-*.pt")
    assert (
        kept_resume.read_bytes() == b"PK resume state of other settings"
        and f"kept as {kept_resume}" in res.output
    )
    assert manifest_path(kept_resume).is_file()
    assert read_manifest(run / "model.pt")["settings"]["train.lr"] == 0.0123
    require(run / "model.pt", "checkpoint")


# --------------------------------------------------------------------------------------------------
# the built-in dataset's folder


@pytest.mark.parametrize("how", ["copy", "in-place"])
def test_edited_builtin_dataset_is_not_regenerated(tiny_run, tmp_path, how):
    """A copy of the built-in dataset (marker copied along) that the user grew into their own, or the
    generated folder edited in place: `data.builtin` left at its default never regenerates over it."""
    _, src = tiny_run
    data = copy_run(src.parent / "data", tmp_path / "data")
    if how == "in-place":  # with the data stage's record beside it: "generated here, then edited"
        shutil.copy(manifest_path(src.parent / "data"), manifest_path(data))
    edited = sorted((data / "images").glob("train_*.jpg"))[0]
    edited.write_bytes(edited.read_bytes() + b"\0")
    (data / "images" / "my_photo.jpg").write_bytes((data / "images" / "val_000000.jpg").read_bytes())
    before = snapshot(tmp_path)
    res = cli("data", *tiny_sets(data_root=data), "--quiet")
    refused(
        res, names=[data], problem=r"(was changed|was added) since edgefpn generated it.*data\.builtin=false"
    )
    assert snapshot(tmp_path) == before
    res = cli("data", "synth", "--out", data, "--num-train", "2", "--num-val", "1", "--num-calib", "1")
    refused(res, names=[data], problem=r"since edgefpn generated it.*--out")
    assert snapshot(tmp_path) == before


def test_unchanged_builtin_dataset_copy_is_regenerated(tiny_run, tmp_path):
    _, src = tiny_run
    data = copy_run(src.parent / "data", tmp_path / "data")
    res = cli("data", *tiny_sets("data.synth.num_train=4", data_root=data), "--quiet")
    assert res.exit_code == 0, res.output
    assert len(list((data / "images").glob("train_*.jpg"))) == 4


# --------------------------------------------------------------------------------------------------
# one process per run directory

_HOLD = """
import sys, time
from pathlib import Path
import edgefpn.pipeline.train as train
real = train.run
def held(*a, **k):
    Path(sys.argv[1]).touch()  # holding the run directory now
    for _ in range(2400):
        if Path(sys.argv[2]).exists():
            break
        time.sleep(0.05)
    return real(*a, **k)
train.run = held
from edgefpn.cli import main
main(sys.argv[3:], prog_name="edgefpn")
"""


@pytest.mark.slow
def test_two_processes_on_one_run_directory(tiny_run, tmp_path):
    """A (another process, the run's own config) holds the run directory while B (other settings) tries
    train and predict: B is refused with A's pid and command, and the run ends consistent with A's
    config alone (B, alone afterwards, is told the model is not its own)."""
    _, src = tiny_run
    data = src.parent / "data"
    run = copy_run(src, tmp_path / "run")
    started, go = tmp_path / "started", tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    a = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(_HOLD),
            started,
            go,
            "export",
            *map(str, tiny_sets(data_root=data)),
            "--out",
            run,
            "--quiet",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert a.poll() is None, a.stdout.read()
            assert time.monotonic() < deadline, "process A never reached the train stage"
            time.sleep(0.05)
        before = snapshot(run)
        for command, extra in (("train", []), ("predict", ["--images", data / "images"])):
            res = cli(command, *tiny_sets("train.epochs=0", data_root=data), "--out", run, *extra, "--quiet")
            refused(
                res,
                names=[run, f"pid {a.pid}", "edgefpn export"],
                problem=r"in use by pid \d+ .*another --out",
            )
        assert snapshot(run) == before
    finally:
        go.touch()
        out, _ = a.communicate(timeout=120)
    assert a.returncode == 0, out
    from edgefpn.config import load_config
    from edgefpn.training.settings import model_config_hash, model_settings
    from tests.security.harness import EMPTY_CONFIG

    cfg_a = load_config(EMPTY_CONFIG, [*TINY, f"data.root={data}"])
    model = require(run / "model.pt", "checkpoint").manifest
    assert model["config_hash"] == model_config_hash(cfg_a) and model["settings"] == model_settings(cfg_a)
    assert require(run / "model.onnx", "ONNX").manifest["inputs"] == {"model": model["sha256"]}
    assert not (run / ".edgefpn.lock").exists()
    res = cli(
        "predict",
        *tiny_sets("train.epochs=0", data_root=data),
        "--out",
        run,
        "--images",
        data / "images",
        "--quiet",
    )
    refused(res, names=[run / "model.pt"], problem=r"train\.epochs \(trained 1, given 0\)")


def test_stale_lock_of_a_killed_process_is_taken_over(tiny_run, tmp_path):
    _, src = tiny_run
    run = copy_run(src, tmp_path / "run")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".edgefpn.lock").write_text(json.dumps({"pid": dead.pid, "command": "edgefpn train"}))
    res = cli("export", *tiny_sets(data_root=src.parent / "data"), "--out", run)
    assert res.exit_code == 0, res.output
    assert f"taking over the lock of pid {dead.pid} (edgefpn train), which is no longer running" in res.output
    assert not (run / ".edgefpn.lock").exists()


def test_read_only_run_directory_runs_without_its_lock(tmp_path, monkeypatch):
    """Where the lock file cannot be created (a shared read-only run directory; root ignores chmod, so
    the refusal is simulated), the command runs unlocked and says so: it cannot write there either."""
    import errno

    from edgefpn import runlock

    run = tmp_path / "run"
    run.mkdir()
    real_open = os.open

    def read_only(path, *a, **k):
        if Path(path).name == ".edgefpn.lock":
            raise PermissionError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(runlock.os, "open", read_only)
    said: list[str] = []
    with runlock.run_lock(run, "edgefpn predict", log=said.append):
        ran = True
    assert ran and said == [f"[lock] {run}: not writable here; running without its lock"]
    assert snapshot(run) == {}

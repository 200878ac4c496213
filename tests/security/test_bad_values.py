"""Bad values are bad input, refused at load time.

Each is one ``error:`` line naming the key or flag, exit 2, no traceback, and the user's folder exactly
as before (nothing trained, evaluated or extracted first).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefpn.runtime import __main__ as runtime_main
from tests.conftest import copy_run
from tests.faults.conftest import CHECK_ONLY_ORT
from tests.security.harness import cli, predict_args, refused, refused_text, snapshot, tiny_sets
from tests.security.test_hostile_bundles import valid  # noqa: F401  (fixture)


@pytest.mark.parametrize(
    ("command", "setting", "problem"),
    [
        ("data", "data.synth.min_side=0", r"data\.synth\.min_side must be in \[32, 4096\], got 0"),
        (
            "data",
            "data.synth.min_side=200",
            r"data\.synth\.min_side must be <= data\.synth\.max_side, got 200 > 192",
        ),
        ("data", "data.synth.num_train=-5", r"data\.synth\.num_train must be > 0, got -5"),
        ("check", "check.latency_iters=0", r"check\.latency_iters must be > 0, got 0"),
        ("train", "train.eval_images=0", r"train\.eval_images must be > 0, got 0"),
        ("export", "export.opset=99", r"export\.opset must be in \[7, 20\], got 99"),
    ],
)
def test_bad_setting_refused_before_any_work(tmp_path, command, setting, problem):
    """A fresh data root and run dir: before the fix each of these generated data (or trained) first."""
    before = snapshot(tmp_path)
    res = cli(command, *tiny_sets(setting, data_root=tmp_path / "data"), "--out", tmp_path / "run", "--quiet")
    refused(res, names=[setting.partition("=")[0]], problem=problem)
    assert snapshot(tmp_path) == before


def _runtime(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = runtime_main.main(argv)
    except SystemExit as exc:  # argparse refuses a flag by exiting
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["bench", "--iters", "0"], r"argument --iters: must be an integer >= 1, got 0"),
        (["bench", "--warmup", "-1"], r"argument --warmup: must be an integer >= 0, got -1"),
        (["infer", "--threads", "-3"], r"argument --threads: must be an integer >= 1, got -3"),
    ],
)
def test_runtime_flag_refused_before_the_bundle_is_opened(valid, capsys, flags, problem):  # noqa: F811
    argv = [*flags, "--bundle", str(valid["bundle"]), "--extract-to", str(valid["tmp"] / "dest")]
    if flags[0] == "infer":
        argv += ["--images", str(valid["images"]), "--out", str(valid["tmp"] / "dets.json")]
    before = snapshot(valid["tmp"])
    code, err = _runtime(argv, capsys)
    refused_text(err, code, expected_code=2, names=[flags[1]], problem=problem)
    assert snapshot(valid["tmp"]) == before


def test_images_given_a_file_says_so(valid, capsys):  # noqa: F811
    """``--images a.png``: the file is named as a file, not as a missing folder (runtime and predict)."""
    image = valid["images"] / "a.png"
    before = snapshot(valid["tmp"])
    code, err = _runtime(["infer", "--bundle", str(valid["bundle"]), "--images", str(image)], capsys)
    refused_text(err, code, expected_code=2, names=[image], problem="is a file, not a folder")
    assert snapshot(valid["tmp"]) == before


def test_predict_images_given_a_file_says_so(tiny_run, tmp_path):
    overrides, src = tiny_run
    run = copy_run(src, tmp_path / "run")
    image = tmp_path / "one.png"
    from PIL import Image

    Image.new("RGB", (40, 30)).save(image)
    root = next(o for o in overrides if o.startswith("data.root=")).partition("=")[2]
    before = snapshot(tmp_path)
    res = cli(*predict_args(run, image, *CHECK_ONLY_ORT, data_root=Path(root)))
    refused(res, names=[image], problem="is a file, not a folder")
    assert snapshot(tmp_path) == before


def test_package_an_engine_never_built_is_bad_input(tiny_run, tmp_path):
    """Exit 2 naming the flag and the engines this run does build, before check runs; not exit 4
    ("a gate failed") after it."""
    overrides, src = tiny_run
    run = copy_run(src, tmp_path / "run")
    root = next(o for o in overrides if o.startswith("data.root=")).partition("=")[2]
    before = snapshot(run)
    res = cli(
        "package",
        *tiny_sets(*CHECK_ONLY_ORT, data_root=Path(root)),
        "--out",
        run,
        "--engines",
        "tensorrt-int8",
        "--quiet",
    )
    refused(
        res,
        names=["--engines tensorrt-int8"],
        problem=r"never built with these settings \(check\.backends does not include tensorrt\); "
        r"available: onnxruntime-fp32$",
    )
    assert snapshot(run) == before

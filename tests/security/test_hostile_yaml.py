"""Hostile or broken YAML configs through ``edgefpn train --config FILE``.

One line naming the file and the problem, exit 2, nothing executed, no run directory created.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefpn.config import MAX_CONFIG_BYTES
from tests.security.harness import cli, refused, snapshot

BILLION_LAUGHS = (
    "\n".join(
        ["a: &a [x, x, x, x, x, x, x, x, x]"]
        + [
            f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
            f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
            for i in range(8)
        ]
    )
    + "\n"
)

CASES = {
    # name: (file content (bytes or a callable of the canary path), problem regex)
    "unknown-key-suggested": (
        b"train:\n  epoch: 1\n",
        r"unknown key train\.epoch \(did you mean train\.epochs\?\)",
    ),
    "unknown-section": (b"trian:\n  epochs: 1\n", r"unknown key trian \(did you mean train\?\)"),
    "wrong-type": (b"train:\n  epochs: ten\n", r"train\.epochs must be an integer, got 'ten'"),
    "wrong-type-table": (b"model: 3\n", r"model must be a mapping, got 3"),
    "top-level-list": (b"- 1\n- 2\n", r"top level must be a mapping"),
    "alias-bomb": (BILLION_LAUGHS.encode(), r"aliases are not allowed"),
    "python-tag": (
        lambda canary: f'run: !!python/object/apply:os.system ["touch {canary}"]\n'.encode(),
        r"invalid YAML \(line 1\)",
    ),
    "python-name-tag": (b"run: !!python/name:os.system\n", r"invalid YAML"),
    "deep-nesting": (b"a: " + b"[" * 60_000 + b"]" * 60_000 + b"\n", r"nested too deeply"),
    "not-utf8": (b"train:\n  epochs: \xff\xfe\n", r"not UTF-8"),
    "too-big": (b"# " + b"x" * MAX_CONFIG_BYTES + b"\n", rf"more than the {MAX_CONFIG_BYTES} byte cap"),
    "invalid-value": (
        b"model:\n  input_size: [100, 100]\n",
        r"model\.input_size must be positive multiples of 32",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_is_one_line_and_runs_nothing(tmp_path: Path, case: str):
    content, problem = CASES[case]
    canary = tmp_path / "canary"
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(content(canary) if callable(content) else content)
    run = tmp_path / "run"
    before = snapshot(tmp_path)
    res = cli("train", "--config", cfg, "--out", run, "--quiet")
    refused(res, names=[cfg], problem=problem)
    assert not canary.exists()
    assert snapshot(tmp_path) == before  # no run folder, nothing written beside the config


def test_nearest_key_is_never_auto_applied(tmp_path: Path):
    """The suggestion is text only: the misspelt key stops the command instead of training 1 epoch."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epoch: 1\n")
    res = cli("train", "--config", cfg, "--out", tmp_path / "run", "--quiet")
    assert res.exit_code == 2 and "did you mean train.epochs" in res.output
    assert not (tmp_path / "run").exists()


def test_hostile_override_value_stays_a_string(tmp_path: Path):
    canary = tmp_path / "canary"
    res = cli("train", "--config", tmp_path / "none.yaml", "--out", tmp_path / "run", "--quiet")
    refused(res, names=[tmp_path / "none.yaml"], problem="config file not found")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    res = cli(
        "train",
        "--config",
        empty,
        "--set",
        f'run.out=!!python/object/apply:os.system ["touch {canary}"]',
        "--set",
        "train.epochs=!!python/name:os.system",
        "--out",
        tmp_path / "run",
        "--quiet",
    )
    refused(res, names=[str(empty)], problem=r"train\.epochs must be an integer")
    assert not canary.exists() and not (tmp_path / "run").exists()

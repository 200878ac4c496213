"""The run context: what one command remembers (quiet, lines said) stays with that command."""

from __future__ import annotations

from edgefpn.pipeline.common import RunContext, current_context, log, run_context


def test_quiet_context_prints_nothing(capsys) -> None:
    with run_context(RunContext(quiet=True)):
        log("[export] exporting")
    assert capsys.readouterr().err == ""


def test_up_to_date_lines_are_said_once_per_command(capsys) -> None:
    first, second = RunContext(), RunContext()
    with run_context(first):
        log("[train] up to date: runs/x/model.pt")
        log("[train] up to date: runs/x/model.pt")
        log("[check] ignored a")
        log("[check] ignored a")  # only "up to date" lines are deduplicated
    with run_context(second):  # the next command says it again
        log("[train] up to date: runs/x/model.pt")
    assert capsys.readouterr().err.splitlines() == [
        "[train] up to date: runs/x/model.pt",
        "[check] ignored a",
        "[check] ignored a",
        "[train] up to date: runs/x/model.pt",
    ]
    assert "[train] up to date: runs/x/model.pt" in first.said


def test_context_is_restored_after_the_command() -> None:
    outer = current_context()
    with run_context(RunContext(quiet=True)) as inner:
        assert current_context() is inner
    assert current_context() is outer

"""Engines opened and closed in any order leave the process able to take a signal.

OpenVINO's CPU plugin (2026.4) installs an alternate signal stack on the thread that creates it and,
when it is destroyed, puts back the one it found and unmaps its own. Two plugin instances released out
of order (A and B created, A released first) leave the thread's alternate stack pointing at unmapped
memory; the next signal that Python handles there (Ctrl-C, or SIGCHLD once torch's DataLoader has set a
handler) then kills the process with SIGSEGV, or corrupts the heap if the pages were mapped again. This
is what made the test suite segfault in some orders. Every edgefpn engine compiles on one Core, so
there is one plugin for the life of the process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("openvino", reason="needs the openvino extra: pip install 'edgefpn[openvino]'")

from edgefpn.backends.openvino import onnx_to_openvino  # noqa: E402
from tests.backends.test_openvino import make_tiny_onnx  # noqa: E402

pytestmark = [
    pytest.mark.openvino,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the alternate stack via /proc"),
]

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from edgefpn.backends import EngineSpec, open_runner
    from tests.altstack import alternate_stack_state

    spec = EngineSpec("openvino-fp32", "openvino", "fp32", Path(sys.argv[1]))
    a = open_runner(spec, threads=1).__enter__()
    b = open_runner(spec, threads=1).__enter__()
    a.__exit__(None, None, None)  # out of order: the first one opened is the first one closed
    b.__exit__(None, None, None)
    del a, b
    print("alternate stack:", alternate_stack_state(), flush=True)
    signal.signal(signal.SIGUSR1, lambda *_: print("handled", flush=True))
    os.kill(os.getpid(), signal.SIGUSR1)
    print("alive", flush=True)
    """
)


def test_engines_closed_out_of_order_leave_signals_deliverable(tmp_path):
    onnx = make_tiny_onnx(tmp_path / "model.onnx")
    onnx_to_openvino(onnx, tmp_path / "fp32/model.xml", compress_to_fp16=False)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "fp32")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )
    assert "alternate stack: unmapped" not in proc.stdout, proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.splitlines()[-2:] == ["handled", "alive"]

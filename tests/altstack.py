"""The calling thread's alternate signal stack, as the OpenVINO regression tests need to see it.

Plain ctypes and ``/proc``, so that it also runs without pytest, in the subprocess of
``tests/backends/test_openvino_signals.py``. Linux only.
"""

from __future__ import annotations

import ctypes

_SS_DISABLE = 2


class _StackT(ctypes.Structure):
    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]


def alternate_stack_state() -> str:
    """``none``, ``mapped`` or ``unmapped``: whether a signal delivered on its alternate stack can land."""
    st = _StackT()
    if ctypes.CDLL(None).sigaltstack(None, ctypes.byref(st)) != 0 or st.flags & _SS_DISABLE:
        return "none"
    with open("/proc/self/maps") as maps:
        for line in maps:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= (st.sp or 0) < hi:
                return "mapped"
    return "unmapped"

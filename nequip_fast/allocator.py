"""Keep freed memory in the process instead of handing it back to the kernel after every call.

A force call allocates tens of large temporaries (per-edge weights, their gradients). glibc's
malloc serves blocks over its mmap threshold (at most 32 MiB) with fresh ``mmap``s and gives freed
heap tops back to the kernel, so the next call faults every page in again and the kernel zeroes
it: 20-30% of the CPU time of a deployed l_max 2 call and of a LAMMPS step on this project's
benchmark (benchmarks/RESULTS.md, "Freed memory kept"). With mmap off and trimming off, the second
call reuses the first call's memory; the peak resident set stays the same.

The setting is per process, so the entry points apply it (the ``nequip-fast`` command, the ASE
calculator, the upstream training modifier; ``pair_style nequip`` does the same in C++), not the
library on import. ``NEQUIP_FAST_KEEP_FREED_MEMORY=0`` turns it off everywhere.
"""
from __future__ import annotations

import ctypes
import os
import platform

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1  # mallopt takes an int

_state: dict[str, bool] = {}


def keep_freed_memory() -> bool:
    """Switch glibc malloc to keep freed memory (once per process); True when the setting is on.

    Off (False) when ``NEQUIP_FAST_KEEP_FREED_MEMORY=0`` or when the C library is not glibc.
    """
    if "on" not in _state:
        _state["on"] = _apply()
    return _state["on"]


def _apply() -> bool:
    if os.environ.get("NEQUIP_FAST_KEEP_FREED_MEMORY", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))

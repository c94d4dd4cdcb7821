"""Freed memory kept (nequip_fast/allocator.py): a repeated large temporary no longer faults its pages in.

Each case runs in a fresh interpreter: the malloc setting is per process and cannot be undone."""
import os
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from nequip_fast.allocator import keep_freed_memory
on = keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def temporary():  # 64 MiB: over glibc's largest mmap threshold (32 MiB), written, freed
    before = faults()
    torch.empty(16 * 2**20).fill_(1.0)
    return faults() - before
for _ in range(16):  # glibc grows the heap for several rounds before it reuses the freed block
    temporary()
rounds = sorted(temporary() for _ in range(7))
print(on, rounds[3])  # the median: robust to a stray fault of the interpreter
"""
PAGES = 16 * 2**20 * 4 // 4096


def _probe(setting: str | None) -> tuple[str, float]:
    env = dict(os.environ)
    env.pop("NEQUIP_FAST_KEEP_FREED_MEMORY", None)
    if setting is not None:
        env["NEQUIP_FAST_KEEP_FREED_MEMORY"] = setting
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    on, faults = out.stdout.split()
    return on, float(faults)


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="the setting is glibc's (Linux)")
def test_large_temporaries_are_reused_not_faulted_in_again():
    on, faults = _probe(None)
    assert on == "True"
    assert faults < 0.05 * PAGES, f"{faults} page faults per 64 MiB temporary with freed memory kept"


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="the setting is glibc's (Linux)")
def test_the_setting_can_be_turned_off():
    on, faults = _probe("0")
    assert on == "False"
    assert faults > 0.5 * PAGES, f"only {faults} page faults per 64 MiB temporary: is glibc's default in effect?"

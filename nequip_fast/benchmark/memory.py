"""Peak memory of one case, measured in a fresh process: ``python -m nequip_fast.benchmark.memory SETUP CASE``.

On CPU the peak resident set (VmHWM) is reset after warm-up (Linux ``clear_refs``), so one-off
costs such as upstream's compilation do not count; the working memory of a call is its peak
minus the resident set before it (model, graph, libraries). On CUDA, the allocator's peak.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from ..allocator import keep_freed_memory
from .setup import Setup


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _peak_of(call, device: torch.device) -> dict[str, float]:
    call()  # warm-up: compilation, caches, allocator pools
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
        before = _status_kib("VmRSS") * 1024
        call()
        peak = _status_kib("VmHWM") * 1024
    return {"peak_mib": peak / 2**20, "working_mib": (peak - before) / 2**20}


def measure(setup: Setup, name: str) -> dict[str, dict[str, float]]:
    from .cases import Case

    cfg, state, graph = setup.prepare()
    calls = Case(name, cfg, state, setup.torch_device, setup.stress, setup.model_file).calls(graph)
    return {kind: _peak_of(call, setup.torch_device)
            for kind, call in (("energy_forces", calls.energy_forces), ("train_step", calls.train_step)) if call}


def measure_in_subprocess(setup: Setup, name: str) -> dict:
    """The peaks of ``name``, or ``{"error": ...}`` naming why the subprocess failed."""
    proc = subprocess.run([sys.executable, "-m", __name__, json.dumps(setup.as_dict()), name],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    keep_freed_memory()  # as in the `nequip-fast benchmark` process that timed the calls
    setup = Setup.from_dict(json.loads(sys.argv[1]))
    torch.set_num_threads(setup.threads)
    print(json.dumps(measure(setup, sys.argv[2])))

"""Peak memory of one E+F call with ops.matmul's oneDNN on and off, one fresh process per number.

    .venv/bin/python benchmarks/matmul_memory.py                    # l_max 1 and 2, 6 processes each
    .venv/bin/python benchmarks/matmul_memory.py --l-max 2 --rounds 8

The profile's model (fcc Cu 1024 atoms, 4 layers, 32 features, float32, fused cpu conv, 2 threads),
freed memory kept; the peak RSS as ``nequip_fast.benchmark.memory`` takes it (VmHWM reset after a
warm-up call). On and off alternate; the median and range per case. The numbers of one process vary
by 10-30 MiB (the heap's layout), hence several.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def child(l_max: int, onednn: bool, threads: int) -> None:
    import torch

    from nequip_fast.allocator import keep_freed_memory
    from nequip_fast.benchmark import memory
    from nequip_fast.benchmark.cases import Case
    from nequip_fast.benchmark.setup import Setup
    from nequip_fast.benchmark.system import SystemSpec
    from nequip_fast.ops import matmul as mm

    keep_freed_memory()
    torch.set_num_threads(threads)
    mm.enable_onednn(onednn)
    setup = Setup(model={"l_max": l_max, "num_layers": 4, "num_features": 32, "dtype": "float32"},
                  system=SystemSpec(atoms=1024), threads=threads)
    cfg, state, graph = setup.prepare()
    calls = Case("cpu", cfg, state, setup.torch_device, False).calls(graph)
    print(json.dumps(memory._peak_of(calls.energy_forces, setup.torch_device)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--l-max", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=2, type=int, metavar=("L_MAX", "ONEDNN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], bool(args.child[1]), args.threads)
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), f"{args.threads} threads, load",
          tuple(round(x, 2) for x in os.getloadavg()))
    peaks = {(l, on): [] for l in args.l_max for on in (False, True)}
    for _ in range(args.rounds):
        for l_max in args.l_max:
            for on in (False, True):
                out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--child", str(l_max),
                                      str(int(on))], capture_output=True, text=True, check=True).stdout
                peaks[l_max, on].append(json.loads(out.strip().splitlines()[-1])["peak_mib"])
    for (l_max, on), v in peaks.items():
        print(f"l_max {l_max} E+F {'oneDNN' if on else 'MKL'}: peak {statistics.median(v):.0f} MiB "
              f"({min(v):.0f}-{max(v):.0f}, {len(v)} processes)")


if __name__ == "__main__":
    main()

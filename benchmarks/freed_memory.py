"""Page faults and CPU time per call with glibc's default malloc and with freed memory kept
(nequip_fast/allocator.py), each setting in its own fresh process, alternating.

    .venv/bin/python benchmarks/freed_memory.py build/headline/l1.pt2 build/headline/l2.pt2 build/headline/l2.pt

Model files as `bash benchmarks/headline.sh` leaves them: a deployed .pt2 is timed for energy+forces,
a saved model for energy+forces and a training step (force loss). fcc Cu, --threads threads.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time


def measure(model_file: str, atoms: int, calls: int, threads: int) -> dict:
    import torch

    from nequip_fast.allocator import keep_freed_memory
    from nequip_fast.benchmark.cases import DEPLOYED, Case
    from nequip_fast.benchmark.setup import Setup
    from nequip_fast.benchmark.system import SystemSpec

    kept = keep_freed_memory()
    torch.set_num_threads(threads)
    setup = Setup(model={}, system=SystemSpec(atoms=atoms), model_file=model_file)
    cfg, state, graph = setup.prepare()
    name = DEPLOYED if setup.deployed else "cpu"
    timed = Case(name, cfg, state, torch.device("cpu"), False, model_file if setup.deployed else None).calls(graph)
    result = {"kept": kept}
    for kind, call in (("energy_forces", timed.energy_forces), ("train_step", timed.train_step)):
        if call is None:
            continue
        for _ in range(6):  # the heap settles in a few calls
            call()
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(calls):
            call()
        after = resource.getrusage(resource.RUSAGE_SELF)
        result[kind] = {"faults": (after.ru_minflt - before.ru_minflt) / calls,
                        "sys_ms": (after.ru_stime - before.ru_stime) / calls * 1e3,
                        "user_ms": (after.ru_utime - before.ru_utime) / calls * 1e3,
                        "wall_ms": (time.perf_counter() - start) / calls * 1e3}
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--atoms", type=int, default=1024)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.models[0], args.atoms, args.calls, args.threads)))
        return
    print("| model | call | malloc | page faults / call | sys ms | user ms | wall ms | peak RSS MiB |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for model in args.models:
        for _ in range(args.rounds):
            for setting in ("0", "1"):
                env = dict(os.environ, NEQUIP_FAST_KEEP_FREED_MEMORY=setting, OMP_NUM_THREADS=str(args.threads))
                out = subprocess.run([sys.executable, __file__, model, "--child", "--atoms", str(args.atoms),
                                      "--calls", str(args.calls), "--threads", str(args.threads)], env=env, capture_output=True, text=True, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                for kind in ("energy_forces", "train_step"):
                    if kind in result:
                        r = result[kind]
                        print(f"| {os.path.basename(model)} | {kind} | {'kept' if result['kept'] else 'default'} "
                              f"| {r['faults']:.0f} | {r['sys_ms']:.1f} | {r['user_ms']:.1f} | {r['wall_ms']:.1f} "
                              f"| {result['peak_rss_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()

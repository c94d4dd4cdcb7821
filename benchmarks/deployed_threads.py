"""Deployed ``.pt2`` energy+forces against eager Python on the same model, at several thread counts.

    python benchmarks/deployed_threads.py --deploy-dir /tmp/dep --threads 1 2 --repeats 7

fcc Cu 1024 atoms (rattled), 4 layers, 32 features, float32, the fused ``cpu`` conv (the setup of
``profile_layers.py``). The files are deployed once into ``--deploy-dir`` (reused when present, so
delete them after changing the export). One process, calls interleaved round by round: for each
thread count, the deployed program (with the graph's edge pairs, then told none), then the eager
model; median wall ms and process CPU ms (all threads) per call. Wall > CPU / threads means the threads wait; CPU above the 1-thread CPU means
they spin or repeat work.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from nequip_fast.deploy import DeployedPotential, deploy
from nequip_fast.model.tabulated import tabulate
from profile_layers import benchmark_case  # this folder: the same model and structure


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--l-max", type=int, default=1)
    parser.add_argument("--atoms", type=int, default=1024)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tabulate", choices=("no", "yes", "both"), default="no")
    parser.add_argument("--deploy-dir", required=True)
    args = parser.parse_args(argv)
    model, graph = benchmark_case(args.l_max, args.atoms, max(args.threads))
    unpaired = dataclasses.replace(graph, edge_pairs=0)  # the same edges, one radial row each
    folder = Path(args.deploy_dir)
    folder.mkdir(parents=True, exist_ok=True)
    variants = {"no": (False,), "yes": (True,), "both": (False, True)}[args.tabulate]
    runs = {}
    for tab in variants:
        name = "tabulated" if tab else "untabulated"
        path = folder / f"l{args.l_max}_{name}.pt2"
        if not path.is_file():
            start = time.perf_counter()
            deploy(model, path, tabulate=tab)
            print(f"deployed {path} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        deployed, eager = DeployedPotential(path), tabulate(model) if tab else model
        runs[f"deployed {name}"] = (deployed, graph)
        runs[f"deployed {name}, edges unpaired"] = (deployed, unpaired)
        runs[f"eager {name}"] = (eager, graph)
    ms: dict[tuple, list[float]] = defaultdict(list)
    for round_ in range(args.repeats + 2):  # two warm-up rounds
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name, (run, g) in runs.items():
                wall, cpu = time.perf_counter(), time.process_time()
                run(g, forces=True)
                if round_ >= 2:
                    ms[(name, threads, "wall")].append(1e3 * (time.perf_counter() - wall))
                    ms[(name, threads, "cpu")].append(1e3 * (time.process_time() - cpu))
    print(f"| l_max {args.l_max}, {graph.edge_index.shape[1]} edges | threads | wall ms | process CPU ms |")
    print("|---|---|---|---|")
    for name in runs:
        for threads in args.threads:
            print(f"| {name} | {threads} | {statistics.median(ms[(name, threads, 'wall')]):.0f} | "
                  f"{statistics.median(ms[(name, threads, 'cpu')]):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

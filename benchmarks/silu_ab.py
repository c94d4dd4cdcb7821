"""The radial MLP's fused SiLU (ops/activations.py) against torch's silu: per op and in the whole model.

    python benchmarks/silu_ab.py                 # l_max 1 and 2, 1024 atoms, 1 thread, CPU time; ~2 min on 2 cores
    python benchmarks/silu_ab.py --memory        # peak memory instead: a fresh process per case

Per op: silu, its backward and double backward on an (edges x width) float32 tensor of the benchmark's
size, torch (aten.silu, aten.silu_backward, autograd's double backward of silu_backward) vs the fused ops.
Model: the `nequip-fast benchmark` case (fcc Cu rattled, 4 layers, 32 features, float32, fused cpu
conv, same weights), energy+forces and a training step (energy + force loss, backward to the
parameters), with RadialMLP's silu switched between the two in one process, rounds interleaved.
Times are the calling thread's CPU time (time.thread_time), medians.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict

import torch

import nequip_fast.model.radial as radial
from nequip_fast.benchmark.memory import _peak_of
from nequip_fast.ops import activations
from profile_layers import benchmark_case

SILU = {"torch": torch.nn.functional.silu, "fused": activations.silu}


def interleaved(cases: dict, repeats: int) -> dict[str, float]:
    """Median ms of each case, one warm-up round, rounds interleaved."""
    samples = defaultdict(list)
    for round_ in range(repeats + 1):
        for name, run in cases.items():
            start = time.thread_time()
            run()
            if round_:
                samples[name].append(time.thread_time() - start)
    return {name: 1e3 * statistics.median(v) for name, v in samples.items()}


def op_cases(rows: int, width: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    z, g, gg = (torch.randn(rows, width, generator=gen) * 3 for _ in range(3))

    def double_backward(silu):
        zz, gr = z.clone().requires_grad_(), g.clone().requires_grad_()
        (dz,) = torch.autograd.grad(silu(zz), zz, gr, create_graph=True)

        def run():
            torch.autograd.grad(dz, (gr, zz), gg, retain_graph=True)
        return run

    ops = torch.ops.nequip_fast
    return {"silu torch": lambda: torch.nn.functional.silu(z), "silu fused": lambda: ops.silu(z),
            "backward torch": lambda: torch.ops.aten.silu_backward(g, z), "backward fused": lambda: ops.silu_grad(g, z),
            "double backward torch": double_backward(torch.nn.functional.silu),
            "double backward fused": double_backward(activations.silu)}


def model_cases(model, graph) -> dict:
    n = graph.pos.shape[0]

    def with_silu(name, run):
        def call():
            radial.silu = SILU[name]
            try:
                run()
            finally:
                radial.silu = activations.silu
        return call

    def energy_forces():
        model(graph, forces=True)

    def train_step():
        model.zero_grad(set_to_none=True)
        out = model(graph, forces=True, create_graph=True)
        ((out.energy / n).square().mean() + out.forces.square().mean()).backward()

    return {f"{what} {name}": with_silu(name, run) for what, run in (("E+F", energy_forces), ("train", train_step))
            for name in SILU}


def memory(l_max: int, atoms: int) -> None:
    """Every case's peak (VmHWM after a warm-up call) in a fresh process each."""
    for case in ("E+F torch", "E+F fused", "train torch", "train fused"):
        command = [sys.executable, __file__, "--peak-of", case, "--l-max", str(l_max), "--atoms", str(atoms)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        peak = json.loads(out.strip().splitlines()[-1])
        print(f"l_max {l_max}, {atoms} atoms, {case}: peak {peak['peak_mib']:.0f} MiB, "
              f"working {peak['working_mib']:.0f} MiB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--l-max", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--atoms", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--memory", action="store_true", help="peak memory of each case instead of times")
    parser.add_argument("--peak-of", help=argparse.SUPPRESS)  # one case, in the fresh process of --memory
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not activations._load():
        sys.exit("the C++ ops library does not build here")
    if args.peak_of:
        model, graph = benchmark_case(args.l_max[0], args.atoms, 1)
        print(json.dumps(_peak_of(model_cases(model, graph)[args.peak_of], torch.device("cpu"))))
        return 0
    if args.memory:
        for l_max in args.l_max:
            memory(l_max, args.atoms)
        return 0
    for l_max in args.l_max:
        model, graph = benchmark_case(l_max, args.atoms, 1)
        rows = graph.edge_index.shape[1] - graph.edge_pairs  # radial rows: one per edge pair
        width = model.energy_model.layers[0].block.radial_mlp.weights[0].shape[1]
        if l_max == args.l_max[0]:
            ms = interleaved(op_cases(rows, width), 4 * args.repeats)
            print(f"per op, [{rows}, {width}] float32, ms: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in ms.items()))
        ms = interleaved(model_cases(model, graph), args.repeats)
        for what in ("E+F", "train"):
            t, f = ms[f"{what} torch"], ms[f"{what} fused"]
            print(f"l_max {l_max}, {args.atoms} atoms, {what}: torch silu {t:.1f} ms, fused {f:.1f} ms "
                  f"({t / f:.3f}x, {t - f:.1f} ms less)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

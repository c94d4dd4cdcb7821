"""ops.matmul through oneDNN against torch's mm (MKL), per product shape and in the model; with
``--weight-gradients``, ops.matmul.matmul_tn (x^T g, csrc/matmul_cpu.cpp) against torch's x.t() @ g.

    .venv/bin/python benchmarks/matmul_ab.py                 # 2 threads, l_max 1 and 2, 9 rounds
    .venv/bin/python benchmarks/matmul_ab.py --threads 1 --rounds 15
    .venv/bin/python benchmarks/matmul_ab.py --weight-gradients

Shapes: the radial MLP's products on the profile's 21874 pair rows (fcc Cu 1024 atoms) and node-level
ones (1024 rows), best of 30 calls each. Model: the profile's fcc Cu 1024 atoms, 4 layers, 32 features,
float32, fused cpu conv; E+F and a training step (force loss, double backward) with oneDNN on and off,
interleaved in one process (``ops.matmul.enable_onednn``), freed memory kept as the product's entry
points do; median ms and the median of per-round ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from profile_layers import benchmark_case  # noqa: E402

from nequip_fast.allocator import keep_freed_memory  # noqa: E402
from nequip_fast.ops import matmul as mm  # noqa: E402

# weight gradients x^T g, (k, m, n): x (k, m) the radial MLP's layer inputs, g (k, n) their outputs' gradients
TN_SHAPES = [(21874, 8, 64), (21874, 64, 64), (21874, 64, 160), (21874, 160, 64), (21874, 256, 64),
             (21874, 864, 64), (21874, 64, 8)]
SHAPES = [(21874, 8, 64), (21874, 64, 64), (21874, 64, 160), (21874, 64, 256), (21874, 256, 64),
          (21874, 64, 480), (1024, 64, 96), (1024, 128, 160)]


def best_ms(fn, calls: int = 30) -> float:
    fn()
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def shapes() -> None:
    print("| m x k x n | MKL ms | GFLOP/s | oneDNN ms | GFLOP/s | ratio |\n|---|---|---|---|---|---|")
    for m, k, n in SHAPES:
        x, a = torch.randn(m, k), torch.randn(k, n)
        mm.enable_onednn(False)
        t0 = best_ms(lambda: mm.matmul(x, a))
        mm.enable_onednn(True)
        t1 = best_ms(lambda: mm.matmul(x, a))
        flop = 2 * m * k * n / 1e6
        print(f"| {m} x {k} x {n} | {t0:.3f} | {flop / t0:.0f} | {t1:.3f} | {flop / t1:.0f} | {t0 / t1:.2f}x |")


def weight_gradient_shapes() -> None:
    print("| k x m x n (x^T g) | MKL ms | GFLOP/s | matmul_tn ms | GFLOP/s | ratio |\n|---|---|---|---|---|---|")
    for k, m, n in TN_SHAPES:
        x, g = torch.randn(k, m), torch.randn(k, n)
        t0 = best_ms(lambda: x.t() @ g)
        t1 = best_ms(lambda: mm.matmul_tn(x, g))
        flop = 2 * m * k * n / 1e6
        print(f"| {k} x {m} x {n} | {t0:.3f} | {flop / t0:.0f} | {t1:.3f} | {flop / t1:.0f} | {t0 / t1:.2f}x |")


def _switch_onednn(on: bool) -> None:
    mm.enable_onednn(on)


_MATMUL_TN = mm.matmul_tn


def _switch_matmul_tn(on: bool) -> None:
    mm.matmul_tn = _MATMUL_TN if on else (lambda x, g: x.t() @ g)


def model_ab(l_max: int, threads: int, rounds: int, switch=_switch_onednn, names=("oneDNN", "MKL")) -> None:
    model, graph = benchmark_case(l_max, 1024, threads)

    def energy_forces():
        model(graph, forces=True)

    def train_step():
        model.train(True)
        pred = model(graph, forces=True, create_graph=True)
        (pred.forces.pow(2).mean() + pred.energy.pow(2)).backward()
        model.train(False)

    times = {(kind, flag): [] for kind in ("E+F", "train") for flag in (True, False)}
    for r in range(rounds + 2):  # 2 warm-up rounds
        for flag in (True, False):
            switch(flag)
            for kind, fn in (("E+F", energy_forces), ("train", train_step)):
                start = time.perf_counter()
                fn()
                if r >= 2:
                    times[kind, flag].append(time.perf_counter() - start)
    for kind in ("E+F", "train"):
        on, off = times[kind, True], times[kind, False]
        ratio = statistics.median(b / a for a, b in zip(on, off))
        print(f"l_max {l_max} {kind}: {names[0]} {statistics.median(on) * 1e3:.1f} ms, {names[1]} "
              f"{statistics.median(off) * 1e3:.1f} ms, {ratio:.2f}x")
    switch(True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--l-max", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--weight-gradients", action="store_true", help="matmul_tn against torch's x.t() @ g")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    if not mm.enable_onednn(True):
        raise SystemExit("oneDNN's linear is not usable in this torch: nothing to compare")
    load = tuple(round(x, 2) for x in os.getloadavg())
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), f"{args.threads} threads, load {load}")
    if args.weight_gradients:
        weight_gradient_shapes()
    else:
        shapes()
    for l_max in args.l_max:
        if args.weight_gradients:
            model_ab(l_max, args.threads, args.rounds, _switch_matmul_tn, ("matmul_tn", "torch x.t() @ g"))
        else:
            model_ab(l_max, args.threads, args.rounds)


if __name__ == "__main__":
    main()

"""Upstream NequIP vs nequip_fast on an upstream-style preset (issue 13's Performance section), in one
process, cases interleaved call by call (``benchmark.timing``), all with the same weights:

- ``upstream``: upstream NequIP 0.19.1 eager, as ``nequip-train`` runs it;
- ``upstream + modifier``: the same upstream model with ``enable_nequip_fast`` (what ``nequip-train``
  runs with the modifier in its config: upstream's model and training loop, our fused convolution);
- ``nequip_fast cpu``: our model on the fused cpu kernels, weights transferred from upstream's.

Each is timed for energy+forces and for a training step (forward with differentiable forces,
energy + force loss, backward, Adam step: what ``nequip-train`` does per batch). The preset is
upstream's standard one (``parity: false``, type embedding 32, radial MLP 1 x 128) at l_max 3 with
uneven multiplicities [32, 16, 8, 8], 4 layers, r_max 5, float32, on fcc Cu.

    .venv/bin/python benchmarks/upstream_preset.py [--atoms 256] [--threads 2] [--repeats 7] [--json F]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics

import torch

from nequip_fast.benchmark.cases import UPSTREAM, Case
from nequip_fast.benchmark.system import SystemSpec, build_system
from nequip_fast.benchmark.timing import time_interleaved
from nequip_fast.data import AtomicGraph
from nequip_fast.data.statistics import avg_num_neighbors
from nequip_fast.interop import upstream
from nequip_fast.interop.accelerate import enable_nequip_fast
from nequip_fast.model import ModelConfig

PRESET = dict(species=["Cu"], r_max=5.0, num_layers=4, l_max=3, num_features=[32, 16, 8, 8], parity="natural",
              type_embed_num_features=32, radial_mlp_depth=1, radial_mlp_width=128, dtype="float32")
CASES = ("upstream", "upstream + modifier", "nequip_fast cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atoms", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="write the timings here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    atoms = build_system(SystemSpec("Cu", "fcc", args.atoms))
    probe = AtomicGraph.from_atoms(atoms, ["Cu"], PRESET["r_max"])
    cfg = ModelConfig.from_dict({**PRESET, "avg_num_neighbors": avg_num_neighbors([probe])})
    cpu = torch.device("cpu")
    plain = Case(UPSTREAM, cfg, None, cpu, stress=False)
    modified = Case(UPSTREAM, cfg, None, cpu, stress=False)
    modified.model = enable_nequip_fast(copy.deepcopy(plain.model), backend="cpu")
    ours = Case("cpu", cfg, None, cpu, stress=False)
    upstream.transfer_weights(plain.model, ours.model)
    cases = dict(zip(CASES, (plain, modified, ours)))
    graph = AtomicGraph.from_atoms(atoms, ["Cu"], cfg.r_max)
    calls = {name: case.calls(graph) for name, case in cases.items()}

    energies = {name: c.energy_forces() for name, c in calls.items()}
    base_e, base_f = energies["upstream"]
    for name, (e, f) in energies.items():
        print(f"agreement with upstream: {name:20s} |dE|/atom {float((e - base_e).abs().max()) / len(atoms):.1e}, "
              f"max |dF| {float((f - base_f).abs().max()):.1e}")

    load = os.getloadavg()
    print(f"\nfcc Cu, {len(atoms)} atoms, {graph.edge_index.shape[1]} edges; {cfg.num_layers} layers, l_max {cfg.l_max}, "
          f"parity {cfg.parity}, features {list(cfg.features_per_l)}, float32; {args.threads} threads, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}; load before {load[0]:.1f}")
    result = {"config": cfg.to_dict(), "atoms": len(atoms), "threads": args.threads, "load_before": load[0], "kinds": {}}
    for kind, attr in (("energy+forces", "energy_forces"), ("training step", "train_step")):
        timings = time_interleaved({name: getattr(c, attr) for name, c in calls.items()}, args.warmup, args.repeats)
        rows = {}
        for name, t in timings.items():
            # the median of per-round ratios: a burst of load hits both cases of a round alike
            ratio = statistics.median(u / s for u, s in zip(timings["upstream"].samples, t.samples))
            rows[name] = {**t.as_dict(), "speedup_vs_upstream": ratio}
            print(f"{kind:14s} {name:20s} {1e3 * t.median:9.1f} ms ±{100 * t.spread:3.0f}%   {ratio:5.2f}x upstream")
        result["kinds"][kind] = rows
    result["load_after"] = os.getloadavg()[0]
    print(f"load after {result['load_after']:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

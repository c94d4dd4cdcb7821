"""LAMMPS MD throughput of a deployed model (pair_style nequip), with the ASE calculator on the same
model for comparison. fcc Cu, NVE from 300 K; one model compiled per conv backend.

    .venv/bin/python benchmarks/lammps_md.py --atoms 256 2048 --ranks 1 2 --backends reference cpu --rounds 3

Prints a markdown table (atom-steps/s and ms/step) and writes it as JSON with --json. The
default model is randomly initialised with the benchmark hyperparameters (throughput does not
depend on the weights); --model takes a trained checkpoint instead (species must include Cu).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from nequip_fast.ase import NequIPCalculator
from nequip_fast.deploy import deploy
from nequip_fast.deploy.package import with_backend
from nequip_fast.model import build_model, load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from lammps_run import build_plugin, run_lammps  # noqa: E402 (the checkout's LAMMPS runner)

MODEL = dict(species=["Cu"], r_max=5.0, num_layers=4, l_max=1, num_features=32, avg_num_neighbors=54.0,
             dtype="float32")
CELLS = {32: 2, 256: 4, 864: 6, 2048: 8, 16384: 16}  # atoms -> cubic fcc cells per side (4 atoms each)


def lammps_script(plugin: Path, model: Path, cells: int, steps: int, warmup: int) -> str:
    return f"""
units metal
atom_style atomic
boundary p p p
newton on
lattice fcc 3.61
region box block 0 {cells} 0 {cells} 0 {cells}
create_box 1 box
create_atoms 1 box
mass 1 63.546
plugin load {plugin}
pair_style nequip
pair_coeff * * {model} Cu
velocity all create 300 1 mom yes rot no
timestep 0.001
fix nve all nve
thermo {max(steps, 1)}
run {warmup}
run {steps}
"""


def lammps_rate(plugin, model, natoms, ranks, threads, steps, warmup, workdir) -> dict:
    log = run_lammps(lammps_script(plugin, model, CELLS[natoms], steps, warmup), workdir, ranks=ranks,
                     threads=threads, timeout=3600)
    seconds = float(re.findall(r"Loop time of (\S+) on", log)[-1])
    graph = re.search(r"model graph: (\d+) atoms \((\d+) local\)", log)
    return dict(seconds_per_step=seconds / steps, atom_steps_per_second=natoms * steps / seconds,
                rank0_model_atoms=int(graph.group(1)), rank0_local_atoms=int(graph.group(2)))


def ase_rate(model, natoms, steps, warmup) -> dict:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(CELLS[natoms])
    atoms.calc = NequIPCalculator(model)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(1))
    dyn = VelocityVerlet(atoms, timestep=1 * units.fs)
    dyn.run(warmup)
    start = time.perf_counter()
    dyn.run(steps)
    seconds = time.perf_counter() - start
    return dict(seconds_per_step=seconds / steps, atom_steps_per_second=natoms * steps / seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint (default: random weights, benchmark hyperparameters)")
    parser.add_argument("--atoms", type=int, nargs="+", default=[256, 2048], choices=sorted(CELLS))
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backends", nargs="+", default=["reference", "cpu"])
    parser.add_argument("--steps", type=int, default=5, help="timed MD steps (default 5)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat each atoms' rank counts in alternation; medians, and rank speed-ups as the "
                             "median of per-round ratios (paired under the same load)")
    parser.add_argument("--threads", type=int, help="torch threads per rank, and for ASE (default: cores / ranks; "
                        "use 1 on a loaded machine, where spinning OpenMP threads stall)")
    parser.add_argument("--device", default="cpu", help="device the model is compiled for (cpu or cuda)")
    parser.add_argument("--no-ase", action="store_true", help="skip the ASE comparison")
    parser.add_argument("--workdir", help="keep deployed models and LAMMPS runs here")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    def threads_for(ranks: int) -> int:
        return args.threads or max(1, (os.cpu_count() or 1) // ranks)

    torch.set_num_threads(threads_for(1))
    torch.manual_seed(0)
    base = load_model(args.model) if args.model else build_model(MODEL)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lammps_md_")).resolve()  # LAMMPS runs in subfolders
    workdir.mkdir(parents=True, exist_ok=True)
    plugin = build_plugin()
    rows = []
    for backend in args.backends:
        model = with_backend(base, backend)
        pt2 = workdir / f"model_{backend}_{args.device}.pt2"
        if not pt2.is_file():
            start = time.perf_counter()
            deploy(model, pt2, device=args.device)
            print(f"deployed {backend} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        for natoms in args.atoms:
            rounds = {ranks: [] for ranks in args.ranks}
            for _ in range(args.rounds):
                for ranks in args.ranks:
                    run_dir = workdir / f"{backend}_{natoms}_{ranks}"
                    run_dir.mkdir(exist_ok=True)
                    rounds[ranks].append(lammps_rate(plugin, pt2, natoms, ranks, threads_for(ranks), args.steps,
                                                     args.warmup, run_dir))
                    print(natoms, ranks, rounds[ranks][-1], file=sys.stderr)
            for ranks, runs in rounds.items():
                rate = float(np.median([r["atom_steps_per_second"] for r in runs]))
                speedup = float(np.median([r["atom_steps_per_second"] / one["atom_steps_per_second"]
                                           for r, one in zip(runs, rounds[args.ranks[0]])]))
                rows.append(dict(engine="LAMMPS", backend=backend, atoms=natoms, ranks=ranks, threads=threads_for(ranks),
                                 **dict(runs[0], atom_steps_per_second=rate, seconds_per_step=natoms / rate),
                                 speedup=speedup))
            if not args.no_ase and args.device == "cpu":
                rows.append(dict(engine="ASE", backend=backend, atoms=natoms, ranks=1, threads=threads_for(1),
                                 **ase_rate(model, natoms, args.steps, args.warmup)))
                print(rows[-1], file=sys.stderr)
    print(f"| engine | conv backend | atoms | ranks x threads | atom-steps/s | ms/step | vs {args.ranks[0]} rank(s) "
          "| rank-0 model atoms / local |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ghosts = f"{r['rank0_model_atoms']} / {r['rank0_local_atoms']}" if "rank0_model_atoms" in r else "-"
        speedup = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        print(f"| {r['engine']} | {r['backend']} | {r['atoms']} | {r['ranks']} x {r['threads']} "
              f"| {r['atom_steps_per_second']:.1f} | {1000 * r['seconds_per_step']:.0f} | {speedup} | {ghosts} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

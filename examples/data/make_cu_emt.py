"""Generate examples/data/cu_emt.extxyz: fcc Cu with a vacancy under ASE's EMT potential.

A 3x3x3 cubic fcc Cu cell (a = 3.6 A) with one atom removed (107 atoms), in segments of
Langevin MD at a random temperature in 500-1000 K, each with a random isotropic strain of up
to +-2%; every ``stride``-th MD step after ``equilibrate`` steps is kept, with EMT energy,
forces and stress. Deterministic for a given seed (numpy's generator; floating point may differ
in the last digits between machines).

    python examples/data/make_cu_emt.py [--frames 150] [--output examples/data/cu_emt.extxyz]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import ase.io
import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution


def generate(frames: int, per_segment: int = 20, stride: int = 10, equilibrate: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    segment = 0
    while len(out) < frames:
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
        del atoms[0]
        strain = 1.0 + rng.uniform(-0.02, 0.02)
        atoms.set_cell(atoms.cell * strain, scale_atoms=True)
        temperature = float(rng.uniform(500.0, 1000.0))
        atoms.calc = EMT()
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
        md = Langevin(atoms, 2.0 * units.fs, temperature_K=temperature, friction=0.02, fixcm=False, rng=rng)
        md.run(equilibrate)
        for k in range(min(per_segment, frames - len(out))):
            md.run(stride)
            frame = atoms.copy()
            frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(),
                                               forces=atoms.get_forces(), stress=atoms.get_stress())
            frame.info.update(segment=segment, T_target=temperature, strain_scale=strain,
                              md_step=equilibrate + (k + 1) * stride, method="emt")
            out.append(frame)
        segment += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "cu_emt.extxyz")
    args = parser.parse_args()
    ase.io.write(args.output, generate(args.frames, seed=args.seed), format="extxyz")
    print(f"wrote {args.frames} frames to {args.output}")


if __name__ == "__main__":
    main()

"""Demo step 3: NVE molecular dynamics with a trained model through the ASE calculator.

    python examples/demo_md.py MODEL STRUCTURES OUTPUT.extxyz [--steps 400] [--threads 1]

Starts from the first structure at 300 K, 0.5 fs steps, and reports the total-energy drift:
with exact (conservative) forces it stays small.
"""
import argparse
import time

import numpy as np
import torch
from ase import units
from ase.io import read, write
from ase.md import velocitydistribution
from ase.md.velocitydistribution import Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet

from nequip_fast.ase import NequIPCalculator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("structures")
    parser.add_argument("output")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a small molecule gains nothing from more)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    atoms = read(args.structures, 0)
    atoms.calc = NequIPCalculator(args.model)
    # thermalize_momenta is ASE >= 3.29's name for MaxwellBoltzmannDistribution
    thermalize = (getattr(velocitydistribution, "thermalize_momenta", None)
                  or velocitydistribution.MaxwellBoltzmannDistribution)
    thermalize(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    ZeroRotation(atoms)
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=1)
    with open(args.output, "w") as trajectory:
        dyn.attach(lambda: write(trajectory, atoms, format="extxyz"), interval=10)
        start = time.perf_counter()
        dyn.run(args.steps)
        seconds = time.perf_counter() - start
    drift = energies[-1] - energies[0]
    fluctuation = np.std(energies)
    print(f"NVE MD: {args.steps} steps of 0.5 fs ({args.steps / 2:.0f} fs) in {seconds:.1f} s "
          f"({args.steps / seconds:.0f} steps/s); total energy drift {1e3 * drift:+.3f} meV, "
          f"std {1e3 * fluctuation:.3f} meV; final T {atoms.get_temperature():.0f} K")
    print(f"trajectory: {args.output}")


if __name__ == "__main__":
    main()

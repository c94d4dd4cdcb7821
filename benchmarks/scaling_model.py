"""Multi-rank scaling of pair_style nequip on paper: ghost atoms, bytes exchanged and projected
parallel efficiency per step, for cubic subdomains of fcc Cu (weak scaling: atoms per rank fixed).

    .venv/bin/python benchmarks/scaling_model.py --us-per-atom 350 --bandwidth-gbs 10 --latency-us 2

Model (lammps_plugin/README.md): each rank computes its local atoms (``us_per_atom`` per atom-step,
measured on one rank) plus a ghost overhead per model-graph ghost (``ghost_cost`` of an atom); every
step exchanges each layer's convolution input forward and its gradient back, for every
communicated ghost (r_max + skin shell), 6 messages per exchange (3-d brick), float64 buffers.
"""
from __future__ import annotations

import argparse

DENSITY = 4 / 3.61**3  # fcc Cu, atoms per A^3


def shell_atoms(atoms: float, thickness: float) -> float:
    """Atoms within ``thickness`` outside a cube holding ``atoms``."""
    side = (atoms / DENSITY) ** (1 / 3)
    return DENSITY * ((side + 2 * thickness) ** 3 - side**3)


def step_model(atoms_per_rank: float, args) -> dict:
    comm_ghosts = shell_atoms(atoms_per_rank, args.r_max + args.skin)
    model_ghosts = shell_atoms(atoms_per_rank, args.r_max)
    width = sum(args.widths)  # features per atom over all layers' exchanges
    bytes_per_step = 2 * comm_ghosts * width * 8  # forward + reverse, float64
    messages = 2 * len(args.widths) * 6
    compute = atoms_per_rank * args.us_per_atom * 1e-6 + model_ghosts * args.ghost_cost * args.us_per_atom * 1e-6
    comm = bytes_per_step / (args.bandwidth_gbs * 1e9) + messages * args.latency_us * 1e-6
    ideal = atoms_per_rank * args.us_per_atom * 1e-6
    return dict(comm_ghosts=comm_ghosts, model_ghosts=model_ghosts, mbytes=bytes_per_step / 1e6,
                efficiency=ideal / (compute + comm))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--us-per-atom", type=float, required=True, help="measured one-rank compute, us per atom-step")
    parser.add_argument("--ghost-cost", type=float, default=0.05,
                        help="cost of a model-graph ghost relative to a local atom (measured from 2 vs 1 rank)")
    parser.add_argument("--bandwidth-gbs", type=float, default=10.0, help="network bandwidth per rank, GB/s")
    parser.add_argument("--latency-us", type=float, default=2.0, help="latency per message, us")
    parser.add_argument("--r-max", type=float, default=5.0)
    parser.add_argument("--skin", type=float, default=2.0, help="LAMMPS neighbor skin (metal default 2 A)")
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 256, 256, 256],
                        help="features exchanged per layer (l_max 1, 32 features, parity, 4 layers)")
    args = parser.parse_args(argv)
    print(f"assumed: {args.us_per_atom} us/atom-step compute, ghost cost {args.ghost_cost}, "
          f"{args.bandwidth_gbs} GB/s, {args.latency_us} us/message, r_max {args.r_max} + skin {args.skin} A, "
          f"exchange widths {args.widths}")
    print("| atoms/rank | comm ghosts/rank | model-graph ghosts/rank | MB exchanged/rank/step | "
          "projected efficiency (8-512 ranks) |")
    print("|---|---|---|---|---|")
    for atoms in (1e4, 1e5, 1e6):
        m = step_model(atoms, args)
        print(f"| {atoms:.0e} | {m['comm_ghosts']:.0f} ({m['comm_ghosts'] / atoms:.2f}x) | "
              f"{m['model_ghosts']:.0f} ({m['model_ghosts'] / atoms:.2f}x) | {m['mbytes']:.1f} | "
              f"{100 * m['efficiency']:.1f}% |")


if __name__ == "__main__":
    main()

"""``nequip-fast benchmark``: time and memory of a model per conv backend, optionally against upstream NequIP."""
from __future__ import annotations

import importlib.util
import json
import sys

EPILOG = """examples:
  nequip-fast benchmark                                   fcc Cu, 1024 atoms, default model, all backends
  nequip-fast benchmark --set l_max=2 --compare-upstream  ... and upstream NequIP with the same weights
  nequip-fast benchmark --model best.pt --structure POSCAR --json out.json
  nequip-fast benchmark --plot scaling.png                time per atom-step from 64 to 4096 atoms
"""


def register(subparsers) -> None:
    import argparse

    from nequip_fast.benchmark import DEFAULT_PLOT_SIZES, LATTICES, MEASUREMENTS

    parser = subparsers.add_parser(
        "benchmark", help="time energy+forces, training step and the conv op per backend",
        description="Measure a NequIP model on each conv backend in one process, interleaved call by call "
                    "so that ratios hold on a busy machine, and print a table with ratios to the reference.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model (default: nequip_fast's defaults, species and avg_num_neighbors "
                                      "from the system)")
    model.add_argument("--config", metavar="YAML", help="model keys, or a training config with a model: section")
    model.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                       help="a model key, e.g. --set l_max=2 --set num_features=64 (repeatable)")
    model.add_argument("--model", metavar="FILE", help="a saved model or training checkpoint (its config and weights), "
                       "or a deployed .pt2: timed as the case 'deployed' beside backends built with its config")
    system = parser.add_argument_group("system (default: fcc Cu, 1024 atoms)")
    system.add_argument("--element", default="Cu")
    system.add_argument("--lattice", default="fcc", choices=LATTICES)
    system.add_argument("--atoms", type=int, default=1024, help="about this many atoms (a near-cubic supercell)")
    system.add_argument("--lattice-constant", type=float, help="Angstrom (default: ASE's reference value)")
    system.add_argument("--structure", metavar="FILE", help="a structure file (any ase.io format) instead")
    run = parser.add_argument_group("what to run")
    run.add_argument("--backends", help="comma-separated conv backends (default: reference and every fused "
                                        "backend native to the device)")
    run.add_argument("--compare-upstream", action="store_true",
                     help="also upstream NequIP (pip install nequip==0.19.1), eager and compiled, same weights")
    run.add_argument("--no-upstream-compile", action="store_true", help="upstream eager only (compiling takes minutes)")
    run.add_argument("--skip", default="", help=f"comma-separated, from: {', '.join(MEASUREMENTS)}")
    run.add_argument("--stress", action="store_true", help="also compute the stress in energy+forces calls")
    run.add_argument("--device", default="cpu")
    run.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    run.add_argument("--warmup", type=int, default=2, help="untimed rounds (default 2)")
    run.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write all measurements as JSON")
    out.add_argument("--plot", metavar="PNG", help="also time sizes --plot-sizes and plot time per atom-step")
    out.add_argument("--plot-sizes", default=",".join(map(str, DEFAULT_PLOT_SIZES)), help="atom counts for --plot")
    out.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=run_command)


def _model_keys(args) -> dict:
    import yaml

    keys: dict = {}
    if args.config:
        with open(args.config) as f:
            loaded = yaml.safe_load(f) or {}
        keys = dict(loaded.get("model", loaded))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        keys[key.strip()] = yaml.safe_load(value)
    return keys


def _cases(args, device) -> tuple[str, ...]:
    from nequip_fast.interop import upstream
    from nequip_fast.benchmark.cases import DEPLOYED, UPSTREAM, UPSTREAM_COMPILED
    from nequip_fast.benchmark.runner import default_backends

    names = tuple(b.strip() for b in args.backends.split(",") if b.strip()) if args.backends else default_backends(device)
    if args.model and args.model.endswith(".pt2"):
        names += (DEPLOYED,)
    if args.compare_upstream:
        if not upstream.available():
            print(f"nequip-fast benchmark: {upstream.NOT_INSTALLED}", file=sys.stderr)
        else:
            names += (UPSTREAM,) if args.no_upstream_compile else (UPSTREAM, UPSTREAM_COMPILED)
    return names


def run_command(args) -> int:
    import torch

    from nequip_fast.benchmark import MEASUREMENTS
    from nequip_fast.benchmark.cases import DEPLOYED
    from nequip_fast.benchmark.runner import Options, format_report, plot, run
    from nequip_fast.benchmark.setup import Setup
    from nequip_fast.benchmark.system import SystemSpec
    from nequip_fast.ops import BACKENDS

    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        skip = {s.strip() for s in args.skip.split(",") if s.strip()}
        if skip - set(MEASUREMENTS):
            raise ValueError(f"--skip: unknown {sorted(skip - set(MEASUREMENTS))}; choose from {MEASUREMENTS}")
        device = torch.device(args.device)
        setup = Setup(model=_model_keys(args), model_file=args.model, device=args.device,
                      threads=torch.get_num_threads(), stress=args.stress,
                      system=SystemSpec(args.element, args.lattice, args.atoms, args.lattice_constant, args.structure))
        cases = _cases(args, device)
        unknown = [c for c in cases if c not in BACKENDS + (DEPLOYED,) and not c.startswith("upstream")]
        if unknown or "auto" in cases:
            raise ValueError(f"--backends: {unknown or ['auto']} not a concrete backend; choose from "
                             f"{[b for b in BACKENDS if b != 'auto']}")
        if args.plot and importlib.util.find_spec("matplotlib") is None:
            raise ValueError("--plot needs matplotlib: pip install matplotlib")
        sizes = tuple(int(s) for s in args.plot_sizes.split(",")) if args.plot else ()
        options = Options(setup, cases, args.warmup, args.repeats,
                          tuple(m for m in MEASUREMENTS if m not in skip), sizes, args.quiet,
                          ("nequip-fast", "benchmark", *sys.argv[2:]))
        result = run(options)
    except (ValueError, RuntimeError, FileNotFoundError, KeyError) as exc:
        print(f"nequip-fast benchmark: error: {exc}", file=sys.stderr)
        return 2
    print(format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"measurements written to {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"plot written to {args.plot}")
    return 0

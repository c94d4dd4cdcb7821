"""``nequip-fast deploy CHECKPOINT OUT.pt2``: a compiled model file for LAMMPS and ``NequIPCalculator``."""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "deploy", help="compile a model or checkpoint into one .pt2 file for LAMMPS",
        description="Export the energy model with forces and virial (AOTInductor) and its metadata "
                    "(r_max, species, layers, dtype, versions) into one file. The file is tied to this "
                    "torch release and to DEVICE. A .pt2 holds compiled native code that runs when the file is "
                    "loaded (by LAMMPS or NequIPCalculator; --info reads only the metadata): trust model files like programs and "
                    "load only those from sources you trust. Loading checks, before any code from the file runs, "
                    "that its metadata is complete and unedited (fingerprint), and after, that the program "
                    "reproduces the probe energy and forces recorded at deployment.")
    parser.add_argument("model", help="model file or training checkpoint (best.pt, last.pt); with --info, a .pt2")
    parser.add_argument("output", nargs="?", help="deployed file to write (.pt2)")
    parser.add_argument("--device", default="cpu", help="device the file runs on: cpu or cuda (default cpu)")
    parser.add_argument("--backend", help="conv backend compiled into the file (default: the model's); "
                        "'cpu' for the fused CPU kernels, 'reference' for e3nn")
    parser.add_argument("--tabulate", action=argparse.BooleanOptionalAction, default=None,
                        help="replace the radial networks by cubic tables (faster; forces stay exact gradients of "
                             "the tabulated energy); default: on for float32 models, off for float64")
    parser.add_argument("--tabulate-tolerance", type=float, metavar="REL",
                        help="max error of the tables' weights and of their r-derivative, each relative to the "
                             "layer's largest value (default 1e-6 in float32, 1e-8 in float64)")
    parser.add_argument("--info", action="store_true", help="only print the metadata of the deployed file MODEL")
    parser.set_defaults(func=run)


def run(args) -> int:
    from nequip_fast.deploy import DeployError, deploy, read_metadata

    if not args.info and args.output is None:
        print("nequip-fast deploy: error: give the deployed file to write: deploy MODEL OUTPUT.pt2", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not args.info:
        import torch

        if not torch.cuda.is_available():
            print(f"nequip-fast deploy: error: --device {args.device}: CUDA is not available on this machine "
                  "(a file for GPUs is compiled on a machine with one)", file=sys.stderr)
            return 2
    try:
        if not args.info:
            from nequip_fast.model import load_model

            deploy(load_model(args.model), args.output, device=args.device, backend=args.backend,
                   tabulate=args.tabulate, tolerance=args.tabulate_tolerance)
        meta = read_metadata(args.model if args.info else args.output)
    except (DeployError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"nequip-fast deploy: error: {exc}", file=sys.stderr)
        return 2
    for key, value in sorted(meta.items()):
        if key != "model_config":
            print(f"{key:20s} {value}")
    return 0

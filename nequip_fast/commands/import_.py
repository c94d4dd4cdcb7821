"""``nequip-fast import MODEL -o model.pt``: an upstream NequIP model as a nequip_fast model file."""
from __future__ import annotations

import sys

TRUST = ("loading runs upstream NequIP's loader: a .ckpt is unpickled and a .nequip.zip runs the Python "
         "code it carries; import only files you trust")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "import", help="convert an upstream NequIP model (.ckpt, .nequip.zip) into a nequip_fast model file",
        description="Read an upstream NequIP 0.19 training checkpoint (nequip-train) or packaged model "
                    "(nequip-package), rebuild it in nequip_fast with the same weights, check on a generated "
                    "structure that energy, forces and stress agree (float64, relative 1e-10), and write a "
                    "model file that evaluate, deploy, train (init_from) and the ASE calculator take. "
                    f"Needs `pip install nequip==0.19.1`. Trust: {TRUST}.")
    parser.add_argument("model", help="upstream .ckpt or .nequip.zip file")
    parser.add_argument("-o", "--output", required=True, help="nequip_fast model file to write (e.g. model.pt)")
    parser.add_argument("--species", help="comma-separated element of each upstream type, in type order "
                        "(needed when the type names are not element symbols)")
    parser.add_argument("--dtype", choices=("float32", "float64"), help="dtype of the written model "
                        "(default: the upstream model's)")
    parser.add_argument("--model-key", default="sole_model", help="which model of a multi-model file (default sole_model)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from nequip_fast.interop.importer import ImportFailed, import_file
    from nequip_fast.interop.upstream import UnsupportedModel

    species = args.species.split(",") if args.species else None
    try:
        model, checks = import_file(args.model, args.output, species, args.dtype, args.model_key)
    except UnsupportedModel as exc:
        print(f"nequip-fast import: error: the model uses an option nequip_fast cannot represent: {exc}", file=sys.stderr)
        return 2
    except (ImportFailed, FileNotFoundError, ValueError) as exc:
        print(f"nequip-fast import: error: {exc}", file=sys.stderr)
        return 2
    cfg = model.config
    print(f"imported {args.model}: species {' '.join(cfg.species)}, r_max {cfg.r_max}, {cfg.num_layers} layers, "
          f"l_max {cfg.l_max}, parity {cfg.parity}, features {cfg.num_features}, {cfg.dtype}")
    for check in checks:
        print(f"agreement with upstream, {check.line()}")
    print(f"wrote {args.output}")
    return 0

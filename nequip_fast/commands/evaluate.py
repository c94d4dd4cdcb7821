"""``nequip-fast evaluate MODEL DATA``: errors of a trained model on labelled structures."""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="metrics of a model on an extxyz file",
        description="Energy per atom, force (overall and per species) and stress MAE/RMSE of MODEL on DATA.")
    parser.add_argument("model", help="model file or training checkpoint (best.pt, last.pt)")
    parser.add_argument("data", help="extxyz (or any ase.io format) with reference energies/forces/stress")
    parser.add_argument("--output", metavar="FILE", help="also write an extxyz with the predictions "
                        "(reference labels kept as REF_energy, REF_forces, REF_stress)")
    parser.add_argument("--index", default=":", help="ase.io index of the frames to use (default: all)")
    parser.add_argument("--batch-size", type=int, default=16, help="structures per forward pass (default 16)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch

    from nequip_fast.data.dataset import DatasetError, read_structures, to_graphs
    from nequip_fast.model import load_model
    from nequip_fast.train.data import Batches
    from nequip_fast.train.evaluate import evaluate, format_table, write_predictions

    try:
        model = load_model(args.model, map_location=args.device).to(args.device)
        frames = read_structures(args.data, args.index, require=())
        graphs = [g.to(dtype=model.dtype) for g in to_graphs(frames, model.species, model.r_max, args.data)]
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"nequip-fast evaluate: error: {exc}", file=sys.stderr)
        return 2
    result = evaluate(model, Batches(graphs, args.batch_size, False).epoch(0, torch.device(args.device)),
                      keep=args.output is not None)
    print(format_table(result.metrics, model.species, f"{len(frames)} structures"))
    if args.output:
        write_predictions(frames, result, args.output)
        print(f"predictions written to {args.output}")
    return 0

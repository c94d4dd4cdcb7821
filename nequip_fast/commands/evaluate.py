"""``nequip-fast evaluate MODEL DATA``: errors of a trained model on labelled structures."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="metrics of a model on an extxyz file",
        description="Energy per atom, force (overall and per species) and stress MAE/RMSE of MODEL on DATA.")
    parser.add_argument("model", help="model file or training checkpoint (best.pt, last.pt)")
    parser.add_argument("data", help="extxyz (or any ase.io format) with reference energies/forces/stress")
    parser.add_argument("--output", metavar="FILE", help="also write an extxyz with the predictions "
                        "(reference labels kept as REF_energy, REF_forces, REF_stress)")
    parser.add_argument("--index", default=":", help="ase.io index of the frames to use (default: all)")
    parser.add_argument("--batch-size", type=positive_int, default=16,
                        help="structures per forward pass (default 16); the metrics do not depend on it")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.set_defaults(func=run)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def run(args) -> int:
    import torch

    from nequip_fast.data.dataset import DatasetError, read_structures, to_graphs
    from nequip_fast.model import load_model
    from nequip_fast.train import evaluate as evaluation
    from nequip_fast.train.data import Batches, labels_present

    def fail(message: str) -> int:
        print(f"nequip-fast evaluate: error: {message}", file=sys.stderr)
        return 2

    try:
        device = torch.device(args.device)
    except RuntimeError:
        return fail(f"--device {args.device}: not a torch device (cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        return fail(f"--device {args.device}: CUDA is not available on this machine")
    if args.output:
        folder = Path(args.output).resolve().parent
        if Path(args.output).is_dir():
            return fail(f"--output: {args.output} is a directory; give a file name (.extxyz)")
        if not folder.is_dir():
            return fail(f"--output: directory {folder} does not exist")
        if not os.access(folder, os.W_OK):
            return fail(f"--output: directory {folder} is not writable")
    try:
        model = load_model(args.model, map_location=args.device).to(device)
        frames = read_structures(args.data, args.index, require=())
        where = args.data if args.index == ":" else f"{args.data}[{args.index}]"
        labelled = [key for key in ("energy", "forces", "stress") if labels_present(frames, key, where)]
        if not labelled and not args.output:
            return fail(f"{where} has no energy, forces or stress labels: nothing to score (--output FILE writes "
                        "the predictions)")
        graphs = [g.to(dtype=model.dtype) for g in to_graphs(frames, model.species, model.r_max, where)]
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        return fail(str(exc))
    result = evaluation.evaluate(model, Batches(graphs, args.batch_size, False).epoch(0, device),
                                 keep=args.output is not None)
    title = f"{len(frames)} structures" if labelled else f"{len(frames)} structures without labels: nothing scored"
    print(evaluation.format_table(result.metrics, model.species, title))
    if args.output:
        try:
            evaluation.write_predictions(frames, result, args.output)
        except OSError as exc:
            return fail(f"--output: cannot write {args.output}: {exc.strerror or exc}")
        print(f"predictions written to {args.output}")
    return 0

"""Training throughput (structures per second, forces in the loss) per convolution backend.

    python benchmarks/train_throughput.py [DATA] [--backends reference auto] [--steps 20] [--threads 1]

The same model (the ethanol example's: 4 layers, 32 channels, l_max 2, float32), the same
batches and the same optimizer steps for each backend, in one process, so the ratio is
meaningful on a noisy shared machine. Backends alternate in rounds; the best round counts.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from nequip_fast.data.dataset import read_structures, to_graphs
from nequip_fast.model import build_model
from nequip_fast.train import Trainer, parse_config
from nequip_fast.train.trainer import resolve_model_config

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ethanol_gfn2_500K.extxyz"


def trainer_for(backend: str, graphs, training) -> Trainer:
    torch.manual_seed(0)
    model_raw = dict(r_max=4.0, num_layers=4, l_max=2, num_features=32, avg_num_neighbors="auto",
                     per_species_shifts="auto", per_species_scales="auto")
    model = build_model(resolve_model_config(model_raw, ["H", "C", "O"], graphs), backend)
    return Trainer(model, training, graphs, graphs[:5])


def seconds_per_round(trainer: Trainer, steps: int) -> float:
    batches = trainer.train_batches.epoch(0)
    start = time.perf_counter()
    for _, graph in zip(range(steps), batches):
        trainer.step(graph)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="?", default=str(DATA))
    parser.add_argument("--backends", nargs="+", default=["reference", "auto"])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of 5 structures per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    training = parse_config({"data": {"train": args.data}, "training": {"batch_size": 5}}).training
    graphs = [g.to(dtype=torch.float32) for g in to_graphs(read_structures(args.data, f":{5 * args.steps}"),
                                                           ["H", "C", "O"], 4.0)]
    trainers = {b: trainer_for(b, graphs, training) for b in args.backends}
    for trainer in trainers.values():
        seconds_per_round(trainer, 2)  # warm-up
    rounds = {b: [] for b in trainers}
    for _ in range(args.rounds):
        for backend, trainer in trainers.items():
            rounds[backend].append(seconds_per_round(trainer, args.steps))
    best = {b: min(times) for b, times in rounds.items()}
    print(f"training throughput, {len(graphs)} structures per round, batch 5, {args.threads} thread(s)")
    for backend, seconds in best.items():
        print(f"{backend:<10} {len(graphs) / seconds:8.2f} structures/s"
              f"   ({best[args.backends[0]] / seconds:.2f}x {args.backends[0]})")


if __name__ == "__main__":
    main()

"""Multi-process training (gloo on CPU): one step on 2 processes equals one step on the combined batch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nequip_fast.data.dataset import to_graphs
from nequip_fast.model import build_model
from nequip_fast.train import Trainer, load_config, parse_config
from nequip_fast.train.data import Batches
from nequip_fast.train.distributed import Dist
from nequip_fast.train.trainer import resolve_model_config
from test_train import TINY_MODEL, copper, write_config

BATCH = 4  # structures in the combined batch; with 2 processes each holds 2


def graphs():
    """4, 8, 8 and 8 atoms: however they are shuffled, the two processes hold different atom counts."""
    return to_graphs(copper(BATCH, repeats=(1, 2, 2, 2)), ["Cu"], TINY_MODEL["r_max"])


def one_step(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """Build the same model everywhere, take one optimizer step, return gradients and weights."""
    torch.set_num_threads(1)
    training = parse_config({"data": {"train": "unused"},
                             "training": {"batch_size": BATCH // world_size, "lr": 0.01}}).training
    data = graphs()
    torch.manual_seed(0)
    model = build_model(resolve_model_config(TINY_MODEL, ["Cu"], data))
    trainer = Trainer(model, training, data, data, Dist(rank, world_size))
    trainer.step(next(trainer.train_batches.epoch(0)))
    named = dict(model.named_parameters())
    return {**{f"grad.{k}": p.grad for k, p in named.items()}, **{k: p.detach() for k, p in named.items()}}


def worker(rank: int, world_size: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        result = one_step(rank, world_size)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path):
    shares = [next(Batches(graphs(), BATCH // 2, True, rank=r, world_size=2).epoch(0)) for r in range(2)]
    assert shares[0].pos.shape[0] != shares[1].pos.shape[0], "the test needs unequal atom counts per process"
    single = one_step(0, 1)
    mp.spawn(worker, args=(2, str(tmp_path / "store"), str(tmp_path / "ddp.pt")), nprocs=2, join=True)
    multi = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert single.keys() == multi.keys()
    for name in single:
        torch.testing.assert_close(multi[name], single[name], rtol=1e-10, atol=1e-12, msg=name)


def test_torchrun_end_to_end(tmp_path):
    """``torchrun -m nequip_fast train``: both processes train, only the main one writes."""
    config = write_config(tmp_path, training={"epochs": 1})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this python")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "nequip_fast",
                           "train", str(config)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 1/1") == 1 and "2 processes" in proc.stdout
    out = Path(load_config(config).output.directory)
    assert (out / "best.pt").is_file() and len((out / "log.csv").read_text().splitlines()) == 2

"""Upstream NequIP vs nequip_fast on an upstream-style preset (issue 13's Performance section), in one
process, cases interleaved call by call (``benchmark.timing``), all with the same weights:

- ``upstream``: upstream NequIP 0.19.1 eager, as ``nequip-train`` runs it;
- ``upstream + modifier``: the same upstream model with ``enable_nequip_fast`` (what ``nequip-train``
  runs with the modifier in its config: upstream's model and training loop, our fused convolution);
- ``nequip_fast cpu``: our model on the fused cpu kernels, weights transferred from upstream's.

Each is timed for energy+forces and for a training step (forward with differentiable forces,
energy + force loss, backward, Adam step: what ``nequip-train`` does per batch). With
``--nequip-train``, ``nequip-train`` itself also runs on the same preset (EMT-labelled rattled
frames of the same crystal), with and without the modifier in its config: the time per epoch is
the difference between a 3-epoch and a 1-epoch run, halved (start-up cancels), runs interleaved. The preset is
upstream's standard one (``parity: false``, type embedding 32, radial MLP 1 x 128) at l_max 3 with
uneven multiplicities [32, 16, 8, 8], 4 layers, r_max 5, float32, on fcc Cu.

    .venv/bin/python benchmarks/upstream_preset.py [--atoms 256] [--threads 2] [--repeats 7] [--json F]
        [--clock wall|cpu] [--nequip-train]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nequip_fast.benchmark.cases import UPSTREAM, Case
from nequip_fast.benchmark.system import SystemSpec, build_system
from nequip_fast.benchmark.timing import time_interleaved
from nequip_fast.data import AtomicGraph
from nequip_fast.data.statistics import avg_num_neighbors
from nequip_fast.interop import upstream
from nequip_fast.interop.accelerate import enable_nequip_fast
from nequip_fast.model import ModelConfig

PRESET = dict(species=["Cu"], r_max=5.0, num_layers=4, l_max=3, num_features=[32, 16, 8, 8], parity="natural",
              type_embed_num_features=32, radial_mlp_depth=1, radial_mlp_width=128, dtype="float32")
CASES = ("upstream", "upstream + modifier", "nequip_fast cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atoms", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: process CPU time (for a loaded machine; use with --threads 1)")
    parser.add_argument("--json", help="write the timings here")
    parser.add_argument("--nequip-train", action="store_true", help="also time nequip-train with and without "
                        "the modifier (a few minutes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    atoms = build_system(SystemSpec("Cu", "fcc", args.atoms))
    probe = AtomicGraph.from_atoms(atoms, ["Cu"], PRESET["r_max"])
    cfg = ModelConfig.from_dict({**PRESET, "avg_num_neighbors": avg_num_neighbors([probe])})
    cpu = torch.device("cpu")
    plain = Case(UPSTREAM, cfg, None, cpu, stress=False)
    modified = Case(UPSTREAM, cfg, None, cpu, stress=False)
    modified.model = enable_nequip_fast(copy.deepcopy(plain.model), backend="cpu")
    ours = Case("cpu", cfg, None, cpu, stress=False)
    upstream.transfer_weights(plain.model, ours.model)
    cases = dict(zip(CASES, (plain, modified, ours)))
    graph = AtomicGraph.from_atoms(atoms, ["Cu"], cfg.r_max)
    calls = {name: case.calls(graph) for name, case in cases.items()}

    energies = {name: c.energy_forces() for name, c in calls.items()}
    base_e, base_f = energies["upstream"]
    for name, (e, f) in energies.items():
        print(f"agreement with upstream: {name:20s} |dE|/atom {float((e - base_e).detach().abs().max()) / len(atoms):.1e}, "
              f"max |dF| {float((f - base_f).detach().abs().max()):.1e}")

    load = os.getloadavg()
    print(f"\nfcc Cu, {len(atoms)} atoms, {graph.edge_index.shape[1]} edges; {cfg.num_layers} layers, l_max {cfg.l_max}, "
          f"parity {cfg.parity}, features {list(cfg.features_per_l)}, float32; {args.threads} threads, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}; {args.clock} clock; "
          f"load before {load[0]:.1f}")
    result = {"config": cfg.to_dict(), "atoms": len(atoms), "threads": args.threads, "clock": args.clock, "load_before": load[0], "kinds": {}}
    for kind, attr in (("energy+forces", "energy_forces"), ("training step", "train_step")):
        timings = time_interleaved({name: getattr(c, attr) for name, c in calls.items()}, args.warmup, args.repeats,
                                   clock=time.perf_counter if args.clock == "wall" else time.process_time)
        rows = {}
        for name, t in timings.items():
            # the median of per-round ratios: a burst of load hits both cases of a round alike
            ratio = statistics.median(u / s for u, s in zip(timings["upstream"].samples, t.samples))
            rows[name] = {**t.as_dict(), "speedup_vs_upstream": ratio}
            print(f"{kind:14s} {name:20s} {1e3 * t.median:9.1f} ms ±{100 * t.spread:3.0f}%   {ratio:5.2f}x upstream")
        result["kinds"][kind] = rows
    if args.nequip_train:
        result["nequip-train"] = time_nequip_train(atoms, cfg, args.threads, args.clock)
    result["load_after"] = os.getloadavg()[0]
    print(f"load after {result['load_after']:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


TRAIN_CONFIG = """
run: [train]
seed: 1
data:
  _target_: nequip.data.datamodule.NequIPDataModule
  seed: 1
  split_dataset:
    dataset:
      _target_: nequip.data.dataset.ASEDataset
      file_path: DATA
      transforms:
        - {_target_: nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper, model_type_names: [Cu],
           chemical_species_to_atom_type_map: {Cu: Cu}}
        - {_target_: nequip.data.transforms.NeighborListTransform, r_max: R_MAX}
    train: 4
    val: 1
  train_dataloader: {_target_: torch.utils.data.DataLoader, batch_size: 1}
  val_dataloader: {_target_: torch.utils.data.DataLoader, batch_size: 1}
trainer:
  _target_: lightning.Trainer
  max_epochs: EPOCHS
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_checkpointing: false
  logger: false
training_module:
  _target_: nequip.train.EMALightningModule
  loss: {_target_: nequip.train.EnergyForceLoss, per_atom_energy: true, coeffs: {total_energy: 1.0, forces: 1.0}}
  val_metrics: {_target_: nequip.train.EnergyForceMetrics, coeffs: {total_energy_mae: 1.0, forces_mae: 1.0}}
  optimizer: {_target_: torch.optim.Adam, lr: 0.001}
  model: MODEL
"""


def time_nequip_train(atoms, cfg: ModelConfig, threads: int, clock: str) -> dict:
    """Seconds per epoch (4 training structures, batch 1, 1 validation structure) of ``nequip-train``
    on the preset, plain and with ``enable_nequip_fast`` wrapping the model builder (``clock`` "cpu":
    the CPU seconds of the nequip-train process)."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    root = Path(tempfile.mkdtemp(prefix="upstream_preset_"))
    frames = []
    for k in range(5):
        frame = atoms.copy()
        frame.rattle(0.05, seed=k)
        frame.calc = EMT()
        frame.calc = SinglePointCalculator(frame, energy=frame.get_potential_energy(), forces=frame.get_forces())
        frames.append(frame)
    write(root / "data.extxyz", frames)
    model = {"_target_": "nequip.model.NequIPGNNModel", **upstream.build_kwargs(cfg, seed=1)}
    variants = {"upstream": model,
                "upstream + modifier": {"_target_": "nequip_fast.interop.accelerate.enable_nequip_fast",
                                        "backend": "cpu", "model": model}}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    seconds: dict[str, dict[int, float]] = {name: {} for name in variants}
    for epochs in (1, 3):
        for name, model_config in variants.items():  # interleaved: plain, modified, plain, modified
            tag = f"{name.replace(' + ', '_')}_{epochs}"
            text = (TRAIN_CONFIG.replace("DATA", str(root / "data.extxyz")).replace("R_MAX", str(cfg.r_max))
                    .replace("EPOCHS", str(epochs)).replace("MODEL", json.dumps(model_config)))
            (root / f"{tag}.yaml").write_text(text)
            start, start_cpu = time.perf_counter(), _children_cpu()
            done = subprocess.run([str(Path(sys.executable).parent / "nequip-train"), "-cp", str(root), "-cn", tag,
                                   f"hydra.run.dir={root / tag}"], env=env, capture_output=True, text=True)
            seconds[name][epochs] = time.perf_counter() - start if clock == "wall" else _children_cpu() - start_cpu
            if done.returncode != 0:
                raise RuntimeError(f"nequip-train ({tag}) failed:\n{done.stderr[-3000:]}")
            swapped = "nequip_fast: fused convolution" in (root / tag / "train.log").read_text()
            if swapped != (name != "upstream"):
                raise RuntimeError(f"nequip-train ({tag}): the modifier was {'' if swapped else 'not '}applied")
            print(f"nequip-train {name:20s} {epochs} epoch(s): {seconds[name][epochs]:.1f} s ({clock})", flush=True)
    per_epoch = {name: (s[3] - s[1]) / 2 for name, s in seconds.items()}
    ratio = per_epoch["upstream"] / per_epoch["upstream + modifier"]
    print(f"nequip-train per epoch (4 x {len(atoms)} atoms): upstream {per_epoch['upstream']:.1f} s, with the "
          f"modifier {per_epoch['upstream + modifier']:.1f} s: {ratio:.2f}x")
    return {f"{clock}_s": seconds, "per_epoch_s": per_epoch, "speedup": ratio}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()

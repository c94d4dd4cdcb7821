"""Predictions of a model on labelled structures: metrics, a table, and an extxyz of predictions."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from ..data import AtomicGraph
from ..model import Potential, Prediction
from .metrics import LossWeights, Metrics, errors


def predict(model: Potential, graph: AtomicGraph, create_graph: bool = False) -> Prediction:
    """Energy and forces, and stress where the graph has stress labels."""
    return model(graph, forces=True, stress=graph.stress is not None, create_graph=create_graph)


@dataclass
class Evaluation:
    metrics: dict[str, float]
    energy: list[float]  # predicted total energy per structure
    forces: list[np.ndarray]  # (n_atoms, 3) per structure
    stress: list[Optional[np.ndarray]]  # (3, 3) per structure, None without stress labels


def evaluate(model: Potential, batches: Iterable[Optional[AtomicGraph]], weights: LossWeights = LossWeights(),
             keep: bool = False, across_processes: bool = False) -> Evaluation:
    """Metrics summed over ``batches`` (and, with ``across_processes``, over all processes, each
    holding its share); ``keep`` also returns the predictions per structure, in batch order."""
    metrics = Metrics(model.species)
    result = Evaluation({}, [], [], [])
    for graph in batches:
        if graph is None:
            continue
        pred = predict(model, graph)
        metrics.add(errors(pred, graph), graph.species)
        if keep:
            _split(pred, graph, result)
    if across_processes:
        metrics.all_reduce()
    result.metrics = metrics.summary(weights)
    return result


def _split(pred: Prediction, graph: AtomicGraph, into: Evaluation) -> None:
    bounds = np.cumsum([0] + graph.num_atoms.tolist())
    forces = pred.forces.detach().double().cpu().numpy()
    for b in range(graph.num_graphs):
        into.energy.append(float(pred.energy[b].detach()))
        into.forces.append(forces[bounds[b]: bounds[b + 1]])
        stress = None if graph.stress is None else pred.stress[b].detach().double().cpu().numpy()
        into.stress.append(stress)


UNITS = {"energy": ("meV/atom", 1e3), "forces": ("meV/A", 1e3), "stress": ("meV/A^3", 1e3)}


def format_table(metrics: dict[str, float], species: Sequence[str], title: str = "") -> str:
    """MAE and RMSE per quantity, and of forces per species, in meV units."""
    rows = [f"{title:<18}{'MAE':>12}{'RMSE':>12}  unit"]
    keys = [(q, "energy per atom" if q == "energy" else q, q) for q in UNITS]
    keys += [(f"forces_{s}", f"forces on {s}", "forces") for s in species]

    for key, label, quantity in keys:
        mae_key = f"{quantity}_mae" + key[len(quantity):]
        if mae_key in metrics:
            unit, factor = UNITS[quantity]
            rmse = metrics[f"{quantity}_rmse" + key[len(quantity):]]
            rows.append(f"{label:<18}{metrics[mae_key] * factor:>12.3f}{rmse * factor:>12.3f}  {unit}")
    return "\n".join(rows)


def write_predictions(frames: Sequence[Atoms], result: Evaluation, path: str | Path) -> None:
    """extxyz whose calculator results are the predictions; the labels move to ``REF_*`` keys."""
    from ase.io import write

    out = []
    for atoms, energy, forces, stress in zip(frames, result.energy, result.forces, result.stress):
        copy = atoms.copy()
        ref = atoms.calc.results if atoms.calc is not None else {}
        if "energy" in ref:
            copy.info["REF_energy"] = float(ref["energy"])
        if "forces" in ref:
            copy.arrays["REF_forces"] = np.asarray(ref["forces"])
        if "stress" in ref:
            copy.info["REF_stress"] = np.asarray(ref["stress"])
        results = {"energy": energy, "forces": forces}
        if stress is not None:
            results["stress"] = full_3x3_to_voigt_6_stress(stress)
        copy.calc = SinglePointCalculator(copy, **results)
        out.append(copy)
    write(str(path), out, format="extxyz")

"""Errors of predictions against labels, the loss built from them, and epoch metrics.

The loss and the metrics use the same error terms, so the epoch loss is computed exactly from
the accumulated squared errors, and both sum correctly across processes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from ..data import AtomicGraph
from ..model import Prediction

QUANTITIES = ("energy", "forces", "stress")


@dataclass(frozen=True)
class LossWeights:
    energy: float = 1.0
    forces: float = 1.0
    stress: float = 1.0


def errors(pred: Prediction, graph: AtomicGraph) -> dict[str, torch.Tensor]:
    """Prediction minus label: energy per atom (B,), force components (N, 3), stress (P, 3, 3) of
    the periodic structures; a label missing from the graph is left out."""
    out = {}
    if graph.energy is not None:
        out["energy"] = (pred.energy - graph.energy) / graph.num_atoms.to(pred.energy.dtype)
    if graph.forces is not None and pred.forces is not None:
        out["forces"] = pred.forces - graph.forces
    if graph.stress is not None and pred.stress is not None:
        periodic = ~torch.isnan(pred.stress).flatten(1).any(dim=1)
        out["stress"] = (pred.stress - graph.stress)[periodic]
    return out


def counts(err: dict[str, torch.Tensor]) -> torch.Tensor:
    """Number of error components of each quantity (float64, for an all-reduce)."""
    return torch.tensor([float(err[q].numel()) if q in err else 0.0 for q in QUANTITIES], dtype=torch.float64)


def step_loss(err: dict[str, torch.Tensor], weights: LossWeights, total: torch.Tensor) -> torch.Tensor:
    """Weighted sum of squared errors divided by the counts of the whole (all-process) batch.

    With ``total`` summed over processes, the per-process losses add up to the loss of the
    combined batch, so summing gradients over processes reproduces a single-process step even
    when the processes hold different numbers of atoms.
    """
    loss = 0.0
    for q in QUANTITIES:
        w = getattr(weights, q)
        if q in err and w > 0 and total[QUANTITIES.index(q)] > 0:
            loss = loss + w * err[q].square().sum() / total[QUANTITIES.index(q)].item()
    if not torch.is_tensor(loss):
        raise ValueError("no labelled quantity has a positive loss weight")
    return loss


class Metrics:
    """Running sums of absolute and squared errors: overall and force errors per species."""

    def __init__(self, species: tuple[str, ...]):
        self.species = species
        self.sums = torch.zeros(len(QUANTITIES), 3, dtype=torch.float64)  # count, sum |e|, sum e^2
        self.per_species = torch.zeros(len(species), 3, dtype=torch.float64)

    def add(self, err: dict[str, torch.Tensor], species: Optional[torch.Tensor] = None) -> None:
        for k, q in enumerate(QUANTITIES):
            if q in err:
                e = err[q].detach().double().cpu()
                self.sums[k] += torch.stack([torch.tensor(float(e.numel())), e.abs().sum(), e.square().sum()])
        if "forces" in err and species is not None:
            e = err["forces"].detach().double().cpu()
            idx = species.cpu()
            for col, values in enumerate((torch.ones_like(e), e.abs(), e.square())):
                self.per_species[:, col].index_add_(0, idx, values.sum(dim=1))

    def all_reduce(self) -> "Metrics":
        """Sum over processes (a no-op in a single process)."""
        if dist.is_available() and dist.is_initialized():
            both = torch.cat([self.sums, self.per_species])
            dist.all_reduce(both)
            self.sums, self.per_species = both[: len(QUANTITIES)], both[len(QUANTITIES):]
        return self

    def summary(self, weights: LossWeights) -> dict[str, float]:
        """MAE/RMSE per quantity present (eV/atom, eV/A, eV/A^3), forces per species, and the loss."""
        out: dict[str, float] = {}
        loss = 0.0
        for k, q in enumerate(QUANTITIES):
            n, abs_sum, sq_sum = self.sums[k].tolist()
            if n > 0:
                out[f"{q}_mae"] = abs_sum / n
                out[f"{q}_rmse"] = (sq_sum / n) ** 0.5
                loss += getattr(weights, q) * sq_sum / n
        for s, (n, abs_sum, sq_sum) in zip(self.species, self.per_species.tolist()):
            if n > 0:
                out[f"forces_mae_{s}"] = abs_sum / n
                out[f"forces_rmse_{s}"] = (sq_sum / n) ** 0.5
        out["loss"] = loss
        return out

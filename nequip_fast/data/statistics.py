"""Dataset statistics that set a model's normalisation: neighbours, energy shifts, force scale."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .graph import AtomicGraph


def avg_num_neighbors(graphs: Sequence[AtomicGraph]) -> float:
    edges = sum(g.edge_index.shape[1] for g in graphs)
    atoms = sum(g.pos.shape[0] for g in graphs)
    return edges / atoms


def per_species_energy_shifts(graphs: Sequence[AtomicGraph], num_species: int) -> np.ndarray:
    """Least-squares per-species energies: E_structure ~ sum_species count * shift."""
    counts = np.stack([np.bincount(g.species.numpy(), minlength=num_species) for g in graphs]).astype(np.float64)
    energies = np.array([float(g.energy.sum()) for g in graphs])
    shifts, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return shifts


def force_rms(graphs: Sequence[AtomicGraph]) -> float:
    forces = np.concatenate([g.forces.numpy().ravel() for g in graphs])
    return float(np.sqrt(np.mean(forces**2)))

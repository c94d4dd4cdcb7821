"""A structure cut into subdomains, as LAMMPS cuts it over MPI ranks, evaluated in one process.

Each subdomain owns the atoms inside it and holds ghost copies of the senders its atoms need
(other subdomains' atoms and periodic images, its own included). All subdomains are stacked into
one graph in the layout of the exported program (``export.EdgePotential``): every subdomain's local
atoms first, then every ghost, with ``ghosts[g]`` the local row of ghost g's owner. The in-process
ghost exchange (``ops.exchange``) then does between the stacked subdomains what LAMMPS's
communication does between ranks, so the result must equal the whole structure's: this is the
oracle of the multi-rank plugin, and a way to check a decomposition without MPI.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch
from ase import Atoms

from ..data.graph import species_indices
from ..data.neighbors import neighbor_list


@dataclass(frozen=True)
class Decomposition:
    """Stacked subdomains. Rows: ``nlocal`` local atoms (subdomain by subdomain), then the ghosts."""

    species: torch.Tensor  # (nlocal,) model type indices of the local rows
    edge_index: torch.Tensor  # (2, E) receivers are local rows
    edge_vec: torch.Tensor  # (E, 3) float64
    ghosts: torch.Tensor  # (rows - nlocal,) local row of each ghost's owner
    atom: torch.Tensor  # (rows,) index in the structure of the atom each row is (a copy of)
    subdomain: torch.Tensor  # (nlocal,) subdomain of each local row
    num_subdomains: int

    @property
    def nlocal(self) -> int:
        return self.atom.shape[0] - self.ghosts.shape[0]


class Results(NamedTuple):
    """Per atom of the structure: ghost contributions summed into owners, as LAMMPS's reverse
    communication does."""

    energy: float
    atomic_energy: torch.Tensor  # (N,)
    forces: torch.Tensor  # (N, 3)
    virial: torch.Tensor  # (3, 3)
    atomic_virial: torch.Tensor  # (N, 3, 3)


def assign_subdomains(atoms: Atoms, grid: Sequence[int], cuts: Optional[Sequence[Sequence[float]]] = None) -> np.ndarray:
    """Subdomain of each atom on a ``grid`` of the cell in fractional coordinates (as LAMMPS splits
    a triclinic box); ``cuts[axis]`` gives the inner boundaries (fractions in (0, 1)) for uneven
    subdomains. Non-periodic directions are split over the atoms' bounding box."""
    grid = tuple(int(n) for n in grid)
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"grid must be three positive integers, got {grid}")
    cuts = [np.linspace(0, 1, n + 1)[1:-1] for n in grid] if cuts is None else [np.asarray(c, float) for c in cuts]
    if [len(c) + 1 for c in cuts] != list(grid):
        raise ValueError(f"cuts {cuts} do not match grid {grid}")
    frac = np.zeros((len(atoms), 3))
    for axis in range(3):
        if atoms.pbc[axis]:
            frac[:, axis] = atoms.cell.scaled_positions(atoms.positions)[:, axis] % 1.0
        else:
            x = atoms.positions[:, axis]
            low, high = x.min(), x.max()
            frac[:, axis] = (x - low) / (high - low + 1e-9)
    index = [np.searchsorted(cuts[axis], frac[:, axis], side="right") for axis in range(3)]
    return (index[0] * grid[1] + index[1]) * grid[2] + index[2]


def decompose(atoms: Atoms, species: Sequence[str], r_max: float, grid: Sequence[int] = (2, 1, 1),
              cuts: Optional[Sequence[Sequence[float]]] = None) -> Decomposition:
    """Cut ``atoms`` into ``grid`` subdomains (``assign_subdomains``) and stack them (``Decomposition``)."""
    owner_of = assign_subdomains(atoms, grid, cuts)
    num_subdomains = int(np.prod(grid))
    order = np.lexsort((np.arange(len(atoms)), owner_of))  # subdomain, then atom index
    local_row = np.empty(len(atoms), dtype=np.int64)
    local_row[order] = np.arange(len(atoms))
    edge_index, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, r_max)
    receiver, sender = edge_index
    # a sender is local to its receiver's subdomain if it is owned there and not a periodic image
    local = (owner_of[sender] == owner_of[receiver]) & ~shifts.any(axis=1)
    ghost_keys = np.concatenate([owner_of[receiver][:, None], sender[:, None], shifts], axis=1)[~local]
    keys, ghost_of_edge = np.unique(ghost_keys, axis=0, return_inverse=True)
    sender_row = local_row[sender]
    sender_row[~local] = len(atoms) + ghost_of_edge.reshape(-1)
    pos = atoms.positions
    edge_vec = pos[sender] - pos[receiver] + shifts @ atoms.cell.array
    types = species_indices(atoms.get_chemical_symbols(), species)
    atom = np.concatenate([order, keys[:, 1]])
    return Decomposition(
        species=torch.from_numpy(types[order]),
        edge_index=torch.from_numpy(np.stack([local_row[receiver], sender_row])),
        edge_vec=torch.from_numpy(edge_vec),
        ghosts=torch.from_numpy(local_row[keys[:, 1]]),
        atom=torch.from_numpy(atom),
        subdomain=torch.from_numpy(owner_of[order]),
        num_subdomains=num_subdomains,
    )


def evaluate(program: Callable, parts: Decomposition, dtype: torch.dtype) -> Results:
    """Run an edge program (``export.EdgePotential`` or a deployed one) on stacked subdomains and
    fold every row back onto its atom."""
    energy, atomic, forces, virial, atomic_virial = program(  # edges unpaired: a radial row per edge
        parts.species, parts.edge_index, parts.edge_vec.to(dtype), parts.ghosts, torch.arange(parts.edge_vec.shape[0]))
    num_atoms = parts.nlocal
    local_atom = parts.atom[:num_atoms]
    fold = lambda t: t.new_zeros((num_atoms,) + t.shape[1:]).index_add(0, parts.atom, t)  # noqa: E731
    return Results(float(energy), atomic.new_zeros(num_atoms).index_copy(0, local_atom, atomic),
                   fold(forces), virial, fold(atomic_virial))

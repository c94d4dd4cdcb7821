"""``AtomicGraph``: the typed input of the model, one or many structures in one graph."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from ase import Atoms

from .neighbors import neighbor_list


class UnknownSpeciesError(ValueError):
    pass


def species_indices(symbols: Sequence[str], species: Sequence[str]) -> np.ndarray:
    """Model type index of each atom; an element the model lacks is an error naming it."""
    index = {s: k for k, s in enumerate(species)}
    unknown = sorted(set(symbols) - set(index))
    if unknown:
        raise UnknownSpeciesError(f"species {unknown} not in the model's species {list(species)}")
    return np.array([index[s] for s in symbols], dtype=np.int64)


GEOMETRY = ("pos", "cell", "edge_shift")


@dataclass
class AtomicGraph:
    """Atoms and their neighbour graph; several structures are stacked along the atom axis.

    edge_index: (2, E), row 0 the centre atom i (receiver), row 1 the neighbour j (sender); the
      edge vector is ``pos[j] - pos[i] + edge_shift @ cell[batch[i]]``.
    edge_pairs: P, the edges are laid out as [P edges, their P reverses (same pair, opposite shift),
      the rest unpaired], so the model runs each pair's radial network once (``neighbors.edges_paired``
      checks it). Decided where the edges are made and carried as data: 0 claims nothing.
    Reference targets (energy, forces, stress) are optional and used by training/evaluation.
    Geometry (pos, cell, edge_shift) is always float64: the model subtracts positions in float64 and
    casts the edge vectors to its dtype, so a float32 model keeps its precision far from the origin.
    """

    pos: torch.Tensor  # (N, 3)
    species: torch.Tensor  # (N,) model type indices
    cell: torch.Tensor  # (B, 3, 3), rows are lattice vectors
    pbc: torch.Tensor  # (B, 3) bool
    edge_index: torch.Tensor  # (2, E)
    edge_shift: torch.Tensor  # (E, 3) integer cell shifts, float64
    batch: torch.Tensor  # (N,) structure index of each atom
    edge_pairs: int = 0
    energy: Optional[torch.Tensor] = None  # (B,)
    forces: Optional[torch.Tensor] = None  # (N, 3)
    stress: Optional[torch.Tensor] = None  # (B, 3, 3), ASE sign convention

    @property
    def num_graphs(self) -> int:
        return self.cell.shape[0]

    @property
    def num_atoms(self) -> torch.Tensor:
        return torch.bincount(self.batch, minlength=self.num_graphs)

    def row_edges(self) -> Optional[torch.Tensor]:
        """The edges that own a radial weight row, ``arange(P, E)`` (``NequIPEnergy``); None without pairs."""
        if self.edge_pairs == 0:
            return None
        return torch.arange(self.edge_pairs, self.edge_index.shape[1], device=self.edge_index.device)

    @staticmethod
    def from_atoms(atoms: Atoms, species: Sequence[str], r_max: float, dtype=torch.float64,
                   targets: bool = False) -> "AtomicGraph":
        types = species_indices(atoms.get_chemical_symbols(), species)
        edge_index, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, r_max)
        graph = AtomicGraph(
            pos=torch.tensor(atoms.positions, dtype=torch.float64),
            species=torch.from_numpy(types),
            cell=torch.tensor(atoms.cell.array, dtype=torch.float64).unsqueeze(0),
            pbc=torch.tensor(atoms.pbc, dtype=torch.bool).unsqueeze(0),
            edge_index=torch.from_numpy(edge_index),
            edge_shift=torch.tensor(shifts, dtype=torch.float64),
            batch=torch.zeros(len(atoms), dtype=torch.long),
            edge_pairs=edge_index.shape[1] // 2,  # neighbor_list pairs every edge
        )
        if targets:
            graph.energy, graph.forces, graph.stress = _targets(atoms, dtype)
        return graph

    def to(self, device=None, dtype=None) -> "AtomicGraph":
        """Moved to ``device``; ``dtype`` applies to the targets (geometry stays float64)."""
        def move(name, t):
            if not isinstance(t, torch.Tensor):
                return t
            if dtype is not None and t.is_floating_point() and name not in GEOMETRY:
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return AtomicGraph(**{f.name: move(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)})


def _targets(atoms: Atoms, dtype):
    calc = atoms.calc
    results = getattr(calc, "results", {}) if calc is not None else {}
    energy = results.get("energy", results.get("free_energy"))
    forces = results.get("forces")
    stress = results.get("stress")
    energy = None if energy is None else torch.tensor([energy], dtype=dtype)
    forces = None if forces is None else torch.tensor(np.asarray(forces), dtype=dtype)
    if stress is not None:
        from ase.stress import voigt_6_to_full_3x3_stress

        stress = np.asarray(stress)
        stress = voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress.reshape(3, 3)
        stress = torch.tensor(stress, dtype=dtype).unsqueeze(0)
    return energy, forces, stress


def batch_graphs(graphs: Sequence[AtomicGraph]) -> AtomicGraph:
    """One graph of several structures, keeping the pair layout (``edge_pairs``): every graph's
    first edges of pairs, then their reverses, then the unpaired edges."""
    if not graphs:
        raise ValueError("cannot batch an empty list of structures")
    offsets = np.cumsum([0] + [g.pos.shape[0] for g in graphs[:-1]])

    def cat_optional(name):
        values = [getattr(g, name) for g in graphs]
        if any(v is None for v in values):
            return None
        return torch.cat(values)

    def bounds(g):  # [first edges of pairs, their reverses, unpaired]
        return (0, g.edge_pairs, 2 * g.edge_pairs, g.edge_index.shape[1])

    pieces = [(g, o, bounds(g)[part:part + 2]) for part in range(3) for g, o in zip(graphs, offsets)]
    return AtomicGraph(
        pos=torch.cat([g.pos for g in graphs]),
        species=torch.cat([g.species for g in graphs]),
        cell=torch.cat([g.cell for g in graphs]),
        pbc=torch.cat([g.pbc for g in graphs]),
        edge_index=torch.cat([g.edge_index[:, a:b] + int(o) for g, o, (a, b) in pieces], dim=1),
        edge_shift=torch.cat([g.edge_shift[a:b] for g, _, (a, b) in pieces]),
        batch=torch.cat([torch.full_like(g.batch, k) for k, g in enumerate(graphs)]),
        edge_pairs=sum(g.edge_pairs for g in graphs),
        energy=cat_optional("energy"),
        forces=cat_optional("forces"),
        stress=cat_optional("stress"),
    )

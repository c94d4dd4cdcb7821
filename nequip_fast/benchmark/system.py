"""Benchmark systems: a lattice of one element at a requested size, or a structure file."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional

from ase import Atoms

from . import LATTICES



@dataclass(frozen=True)
class SystemSpec:
    """A generated crystal (``lattice`` of ``element`` with about ``atoms`` atoms) or a ``structure`` file."""

    element: str = "Cu"
    lattice: str = "fcc"
    atoms: int = 1024
    lattice_constant: Optional[float] = None
    structure: Optional[str] = None

    def with_atoms(self, atoms: int) -> "SystemSpec":
        return SystemSpec(self.element, self.lattice, atoms, self.lattice_constant, self.structure)


def near_cubic_repeats(cells: int) -> tuple[int, int, int]:
    """The factorisation ``a * b * c == cells`` closest to a cube, so no cell axis is needlessly thin."""
    best = (1, 1, cells)
    for a, b in itertools.product(range(1, int(cells**0.5) + 2), repeat=2):
        if cells % (a * b) == 0:
            c = cells // (a * b)
            if max(a, b, c) / min(a, b, c) < max(best) / min(best):
                best = (a, b, c)
    return tuple(sorted(best))


def build_system(spec: SystemSpec) -> Atoms:
    """The ASE structure; generated crystals use ASE's reference lattice constant unless one is given."""
    if spec.structure is not None:
        from ase.io import read

        return read(spec.structure)
    from ase.build import bulk

    if spec.lattice not in LATTICES:
        raise ValueError(f"unknown lattice {spec.lattice!r}; choose one of {', '.join(LATTICES)}")
    cubic = spec.lattice != "hcp"
    cell = bulk(spec.element, spec.lattice, a=spec.lattice_constant, cubic=cubic, orthorhombic=not cubic)
    cells = max(1, round(spec.atoms / len(cell)))
    return cell.repeat(near_cubic_repeats(cells))


def describe(spec: SystemSpec) -> str:
    return spec.structure if spec.structure is not None else f"{spec.lattice} {spec.element}"

"""Reading reference structures (extended XYZ or anything ``ase.io`` reads) with their labels."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.io import read

from .graph import AtomicGraph, species_indices
from .neighbors import GeometryError


class DatasetError(ValueError):
    """A data file that cannot be used as given; the message names the file and frame."""


def read_structures(path: str | Path, index: str = ":", require: Sequence[str] = ("energy", "forces")) -> list[Atoms]:
    """All frames of ``path``; each must carry the labels named in ``require`` (energy/forces/stress)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"data file {path} does not exist")
    try:
        frames = read(path, index=index)
    except Exception as exc:  # ase raises many types for malformed files
        raise DatasetError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise DatasetError(f"{path} holds no structures")
    for k, atoms in enumerate(frames):
        _check_frame(atoms, require, f"{path} frame {k}")
    return frames


def _check_frame(atoms: Atoms, require: Sequence[str], where: str) -> None:
    if len(atoms) == 0:
        raise DatasetError(f"{where}: structure has no atoms")
    results = atoms.calc.results if atoms.calc is not None else {}
    for key in require:
        if key not in results and not (key == "energy" and "free_energy" in results):
            raise DatasetError(f"{where}: missing '{key}' (present: {sorted(results) or 'no labels'})")
    for key, value in results.items():
        if isinstance(value, (float, int, np.ndarray)) and not np.all(np.isfinite(value)):
            raise DatasetError(f"{where}: '{key}' contains NaN or inf")
    if not np.isfinite(atoms.positions).all():
        raise DatasetError(f"{where}: positions contain NaN or inf")


def to_graphs(frames: Sequence[Atoms], species: Sequence[str], r_max: float, name: str = "data") -> list[AtomicGraph]:
    """Graphs with targets; a bad frame is an error naming it and the cause."""
    graphs = []
    for k, atoms in enumerate(frames):
        try:
            graphs.append(AtomicGraph.from_atoms(atoms, species, r_max, targets=True))
        except (GeometryError, ValueError) as exc:
            raise DatasetError(f"{name} frame {k}: {exc}") from exc
    return graphs


def species_of(frames: Sequence[Atoms]) -> list[str]:
    """Elements present, ordered by atomic number (the default model species order)."""
    numbers = sorted({int(z) for atoms in frames for z in atoms.numbers})
    from ase.data import chemical_symbols

    return [chemical_symbols[z] for z in numbers]


__all__ = ["DatasetError", "read_structures", "species_indices", "species_of", "to_graphs"]

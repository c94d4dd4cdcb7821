"""Reading reference structures (extended XYZ or anything ``ase.io`` reads) with their labels."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

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
        raise DatasetError(f"data file {path} {'is a directory' if path.is_dir() else 'does not exist'}")
    if not is_ase_index(index):
        raise DatasetError(f"index {index!r} is not an ase.io index such as ':' (all), '::2', '10:20' or '-1'")
    try:
        frames = read(path, index=index)
    except (StopIteration, IndexError):
        raise DatasetError(f"{path}: index {index!r} selects no frame ({len(read(path, ':'))} frames)") from None
    except Exception as exc:  # ase raises many types for malformed files
        where = locate_extxyz_error(path) if path.suffix in (".xyz", ".extxyz") else None
        raise DatasetError(f"cannot read {path}{where or f': {type(exc).__name__}: {exc}'}") from None
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise DatasetError(f"{path} holds no structures")
    where = str(path) if index == ":" else f"{path}[{index}]"  # frames counted in the selection
    for k, atoms in enumerate(frames):
        _check_frame(atoms, require, f"{where} frame {k}")
    return frames


def is_ase_index(text: str) -> bool:
    """Whether ``text`` selects frames as ase.io's ``index`` does (an integer or a slice)."""
    from ase.io.formats import string2index

    try:
        return isinstance(string2index(text), (int, slice))
    except ValueError:
        return False


# Properties column types of extended XYZ: R real, I integer, L logical, S string.
_PARSE = {"R": float, "I": int, "L": lambda v: {"T": 1, "F": 0, "True": 1, "False": 0}[v], "S": str}


def locate_extxyz_error(path: Path) -> Optional[str]:
    """`` frame K, line L: cause`` for the first structural error of an extended XYZ file (the
    frame counted in the whole file), or None when the layout is sound. Run only after ase failed,
    whose messages name neither the frame nor the line."""
    lines = path.read_text(errors="replace").splitlines()
    n, frame = 0, 0
    while n < len(lines) and lines[n].strip():
        start = n + 1
        try:
            natoms = int(lines[n])
        except ValueError:
            return f" frame {frame}, line {start}: expected the number of atoms, got {lines[n].strip()[:40]!r}"
        columns = _columns(lines[n + 1]) if n + 1 < len(lines) else []
        width = sum(count for _, _, count in columns)
        for atom in range(natoms):
            number = n + 2 + atom  # 0-based line of this atom
            if number >= len(lines):
                return (f" frame {frame} (line {start}): declares {natoms} atoms but the file ends after {atom} "
                        f"of them (line {len(lines)})")
            fields = lines[number].split()
            if columns and len(fields) != width:
                spec = ":".join(f"{name}:{kind}:{count}" for name, kind, count in columns)
                return f" frame {frame}, line {number + 1}: expected {width} columns ({spec}), got {len(fields)}"
            k = 0
            for name, kind, count in columns:
                for value in fields[k: k + count]:
                    try:
                        _PARSE.get(kind, str)(value)
                    except (ValueError, KeyError):
                        what = "a number" if kind in "RI" else "T or F"
                        return f" frame {frame}, line {number + 1}: column '{name}' value {value!r} is not {what}"
                k += count
        n, frame = n + 2 + natoms, frame + 1
    return None


def _columns(comment: str) -> list[tuple[str, str, int]]:
    """(name, type, count) of each Properties column; ase's default without a Properties key."""
    match = re.search(r"Properties=[\"']?([^\s\"']+)", comment)
    parts = (match.group(1) if match else "species:S:1:pos:R:3").split(":")
    try:
        return [(parts[i], parts[i + 1], int(parts[i + 2])) for i in range(0, len(parts) - 2, 3)]
    except ValueError:
        return []


def _check_frame(atoms: Atoms, require: Sequence[str], where: str) -> None:
    if len(atoms) == 0:
        raise DatasetError(f"{where}: structure has no atoms")
    results = atoms.calc.results if atoms.calc is not None else {}
    for key in require:
        if key not in results and not (key == "energy" and "free_energy" in results):
            other = f"; other keys of the frame: {', '.join(sorted(atoms.info))}" if atoms.info else ""
            raise DatasetError(f"{where}: missing '{key}' (present: {sorted(results) or 'no labels'}{other})")
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

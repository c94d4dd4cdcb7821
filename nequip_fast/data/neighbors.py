"""Periodic neighbour lists (vesin), with the checks that keep bad geometry from passing silently."""
import numpy as np
import vesin

MIN_DISTANCE = 0.1  # Angstrom: closer pairs are overlapping atoms, not chemistry


class GeometryError(ValueError):
    """A structure that no potential can evaluate meaningfully."""


def check_positions(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> None:
    if len(positions) == 0:
        raise GeometryError("structure has no atoms")
    bad = ~np.isfinite(positions).all(axis=1)
    if bad.any():
        raise GeometryError(f"non-finite (NaN/inf) position for atom(s) {np.flatnonzero(bad)[:10].tolist()}")
    if not np.isfinite(cell).all():
        raise GeometryError("non-finite (NaN/inf) cell")
    if pbc.any() and abs(np.linalg.det(cell)) < 1e-9:
        raise GeometryError(f"periodic structure (pbc={pbc.tolist()}) has a degenerate cell {cell.tolist()}")


def neighbor_list(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, r_max: float):
    """All ordered pairs ``(i, j, shift)`` with ``|x_j + shift @ cell - x_i| < r_max``, in pairs.

    Returns ``edge_index`` (2, E) with row 0 the centre atom i (the receiver of the message) and
    row 1 the neighbour j (the sender), and integer cell shifts (E, 3). Every edge is paired
    (``edges_paired`` with E/2 pairs): the first E/2 edges (sorted by i, then j), then the same edges
    reversed in the same order, so the model evaluates each pair's radial network once. Raises ``GeometryError``
    for overlapping atoms, naming them.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    check_positions(positions, cell, pbc)
    box = cell if pbc.any() else np.zeros((3, 3))
    i, j, shifts, d = vesin.NeighborList(cutoff=float(r_max), full_list=False).compute(
        positions, box, pbc.tolist(), quantities="ijSd"
    )
    close = d < MIN_DISTANCE
    if close.any():
        k = int(np.flatnonzero(close)[0])
        raise GeometryError(
            f"atoms {int(i[k])} and {int(j[k])} are {d[k]:.3g} A apart (< {MIN_DISTANCE} A): overlapping atoms"
        )
    order = np.lexsort((j, i))
    i, j, shifts = i[order].astype(np.int64), j[order].astype(np.int64), shifts[order].astype(np.int64)
    edge_index = np.stack([np.concatenate([i, j]), np.concatenate([j, i])])
    return edge_index, np.concatenate([shifts, -shifts])


def edges_paired(edge_index, edge_shift, pairs: int) -> bool:
    """Whether edge ``k + pairs`` is edge ``k`` reversed (same pair, opposite shift) for every
    k < ``pairs`` (numpy arrays or torch tensors): the layout ``AtomicGraph.edge_pairs`` claims."""
    if not 0 <= 2 * pairs <= edge_index.shape[1]:
        return False
    return bool((edge_index[0, :pairs] == edge_index[1, pairs:2 * pairs]).all()
                and (edge_index[1, :pairs] == edge_index[0, pairs:2 * pairs]).all()
                and (edge_shift[:pairs] == -edge_shift[pairs:2 * pairs]).all())

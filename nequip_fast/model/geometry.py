"""Edge vectors in; forces and virials out, from the energy's gradient with respect to the edge vectors.

The network sees atoms only through edge vectors ``r_e = x_sender - x_receiver + shift``, so
``g_e = dE/dr_e`` gives every derivative: ``F_i = sum_{e: receiver i} g_e - sum_{e: sender i} g_e``
and the virial ``-sum_e r_e (x) g_e`` (= -dE/dstrain). The Python model, the exported program and
hence LAMMPS use these same functions.
"""
from __future__ import annotations

import torch


def edge_vectors(pos: torch.Tensor, cell: torch.Tensor, batch: torch.Tensor, edge_index: torch.Tensor,
                 edge_shift: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x_j - x_i + shift @ cell`` subtracted in float64, then cast to ``dtype``: atoms far from the
    origin keep their relative precision in a float32 model (autograd reaches ``pos`` and ``cell``)."""
    receiver, sender = edge_index[0], edge_index[1]
    pos, cell = pos.double(), cell.double()
    shift = torch.einsum("ei,eij->ej", edge_shift.double(), cell[batch[receiver]])
    return (pos[sender] - pos[receiver] + shift).to(dtype)


def edge_forces(grad: torch.Tensor, edge_index: torch.Tensor, num_atoms: int) -> torch.Tensor:
    """``(num_atoms, 3)`` forces from ``grad = dE/dedge_vec``; senders may be ghost atoms."""
    forces = grad.new_zeros(num_atoms, 3)
    return forces.index_add(0, edge_index[0], grad).index_add(0, edge_index[1], -grad)


def edge_virials(grad: torch.Tensor, edge_vec: torch.Tensor) -> torch.Tensor:
    """``(E, 3, 3)``: each edge's term ``-r_e (x) g_e`` of the virial."""
    return -edge_vec.unsqueeze(2) * grad.unsqueeze(1)


def atomic_virials(edge_virial: torch.Tensor, edge_index: torch.Tensor, num_atoms: int) -> torch.Tensor:
    """``(num_atoms, 3, 3)``: each edge's term split evenly between its two atoms (sums to the virial)."""
    half = 0.5 * edge_virial
    out = edge_virial.new_zeros(num_atoms, 3, 3)
    return out.index_add(0, edge_index[0], half).index_add(0, edge_index[1], half)

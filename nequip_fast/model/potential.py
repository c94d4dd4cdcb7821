"""Energy, forces and stress of structures: the NequIP network wrapped in autograd.

Forces are ``-dE/dpos`` and the virial is ``-dE/d(strain)`` for a symmetric strain applied to
positions and cell together, so both are exact derivatives of the same energy.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ..data.graph import AtomicGraph
from ..data.neighbors import edges_paired
from .config import ModelConfig
from .nequip import NequIPEnergy


class Prediction(NamedTuple):
    energy: torch.Tensor  # (B,)
    atomic_energy: torch.Tensor  # (N,)
    forces: Optional[torch.Tensor]  # (N, 3)
    virial: Optional[torch.Tensor]  # (B, 3, 3), -dE/dstrain
    stress: Optional[torch.Tensor]  # (B, 3, 3), dE/dstrain / volume (ASE sign); NaN where not periodic


class Potential(torch.nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.species = config.species
        self.r_max = config.r_max
        self.energy_model = NequIPEnergy(config)

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.config.dtype)

    def forward(self, graph: AtomicGraph, forces: bool = True, stress: bool = False,
                create_graph: bool = False) -> Prediction:
        """``create_graph=True`` keeps the force graph for a force loss or a Hessian."""
        with torch.enable_grad():
            pos_in = graph.pos
            if forces and not pos_in.requires_grad:
                pos_in = pos_in.detach().requires_grad_(True)
            pos, cell = pos_in, graph.cell
            strain = None
            if stress:
                strain = torch.zeros_like(cell, requires_grad=True)
                symmetric = 0.5 * (strain + strain.transpose(1, 2))
                pos = pos + torch.einsum("ni,nij->nj", pos, symmetric[graph.batch])
                cell = cell + torch.bmm(cell, symmetric)
            receiver, sender = graph.edge_index[0], graph.edge_index[1]
            shift = torch.einsum("ei,eij->ej", graph.edge_shift, cell[graph.batch[receiver]])
            edge_vec = pos[sender] - pos[receiver] + shift
            paired = edges_paired(graph.edge_index, graph.edge_shift)
            atomic = self.energy_model(graph.species, graph.edge_index, edge_vec, paired)
            energy = torch.zeros(graph.num_graphs, dtype=atomic.dtype, device=atomic.device)
            energy = energy.index_add(0, graph.batch, atomic)

            wrt = ([pos_in] if forces else []) + ([strain] if stress else [])
            if not wrt:
                return Prediction(energy, atomic, None, None, None)
            grads = torch.autograd.grad(energy.sum(), wrt, create_graph=create_graph)
        f = -grads[0] if forces else None
        virial = stress_tensor = None
        if stress:
            virial = -grads[-1]
            volume = torch.linalg.det(graph.cell).abs()
            periodic = graph.pbc.all(dim=1) & (volume > 0)
            stress_tensor = torch.where(
                periodic[:, None, None], -virial / volume.clamp_min(1e-30)[:, None, None], torch.nan
            )
        return Prediction(energy, atomic, f, virial, stress_tensor)

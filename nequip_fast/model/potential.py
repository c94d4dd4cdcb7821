"""Energy, forces and stress of structures: the NequIP network wrapped in autograd.

Forces and the virial (``-dE/dstrain``) come from the energy's gradient with respect to the edge
vectors (``geometry``), so both are exact derivatives of the same energy, as in the deployed model.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ..data.graph import AtomicGraph
from ..ops.matmul import constant_weights
from .config import ModelConfig
from .geometry import edge_forces, edge_vectors, edge_virials
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
            vec = edge_vectors(graph.pos, graph.cell, graph.batch, graph.edge_index, graph.edge_shift, self.dtype)
            if not vec.requires_grad:
                vec.requires_grad_(True)
            # forces without a graph: autograd.grad below frees it, no parameter gradient can follow
            with constant_weights((forces or stress) and not create_graph):
                atomic = self.energy_model(graph.species, graph.edge_index, vec, graph.row_edges())
            energy = torch.zeros(graph.num_graphs, dtype=atomic.dtype, device=atomic.device)
            energy = energy.index_add(0, graph.batch, atomic)
            if not (forces or stress):
                return Prediction(energy, atomic, None, None, None)
            (grad,) = torch.autograd.grad(energy.sum(), vec, create_graph=create_graph, materialize_grads=True)
        f = edge_forces(grad, graph.edge_index, graph.pos.shape[0]) if forces else None
        virial = stress_tensor = None
        if stress:
            edge_batch = graph.batch[graph.edge_index[0]]
            virial = vec.new_zeros(graph.num_graphs, 3, 3).index_add(0, edge_batch, edge_virials(grad, vec))
            volume = torch.linalg.det(graph.cell).abs().to(virial.dtype)
            periodic = graph.pbc.all(dim=1) & (volume > 0)
            stress_tensor = torch.where(
                periodic[:, None, None], -virial / volume.clamp_min(1e-30)[:, None, None], torch.nan
            )
        return Prediction(energy, atomic, f, virial, stress_tensor)

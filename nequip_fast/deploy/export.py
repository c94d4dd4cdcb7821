"""The exported program: edges in, energy, forces and virial out, all derivatives taken inside.

Inputs are chosen for LAMMPS (positions of local and ghost atoms are already images, so callers
pass edge vectors computed in float64): ``species (N,)``, ``edge_index (2, E)`` (row 0 the centre
atom i, row 1 the neighbour j), ``edge_vec (E, 3) = x_j - x_i`` and ``nlocal`` (0-d int64): only
atoms ``< nlocal`` own energy. Outputs: energy of local atoms, per-atom energies (0 for the
others), forces on all atoms (ghosts included, for reverse communication), the virial
``-sum_e r_e (x) dE/dr_e`` (3, 3) and per-atom virials (each edge's term split between its two atoms).
"""
from __future__ import annotations

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from ..model import Potential


class EdgePotential(torch.nn.Module):
    def __init__(self, model: Potential):
        super().__init__()
        self.energy_model = model.energy_model

    def forward(self, species, edge_index, edge_vec, nlocal):
        num_atoms = species.shape[0]
        with torch.enable_grad():
            vec = edge_vec.detach().requires_grad_(True)
            atomic = self.energy_model(species, edge_index, vec)
            local = torch.arange(num_atoms, device=species.device) < nlocal
            atomic = torch.where(local, atomic, torch.zeros_like(atomic))
            energy = atomic.sum()
            (grad,) = torch.autograd.grad(energy, vec)
        receiver, sender = edge_index[0], edge_index[1]
        forces = torch.zeros(num_atoms, 3, dtype=vec.dtype, device=vec.device)
        forces = forces.index_add(0, receiver, grad).index_add(0, sender, -grad)
        edge_virial = -vec.detach().unsqueeze(2) * grad.unsqueeze(1)
        half = 0.5 * edge_virial
        atomic_virial = torch.zeros(num_atoms, 3, 3, dtype=vec.dtype, device=vec.device)
        atomic_virial = atomic_virial.index_add(0, receiver, half).index_add(0, sender, half)
        return energy.detach(), atomic.detach(), forces, edge_virial.sum(0), atomic_virial


def example_inputs(num_atoms: int, dtype: torch.dtype, device: torch.device, r_max: float):
    """A small random graph whose sizes (> 1) keep tracing from specialising on them."""
    g = torch.Generator().manual_seed(0)
    num_edges = num_atoms * (num_atoms - 1)
    ij = torch.cartesian_prod(torch.arange(num_atoms), torch.arange(num_atoms))
    ij = ij[ij[:, 0] != ij[:, 1]].T.contiguous()
    vec = torch.randn(num_edges, 3, generator=g, dtype=torch.float64)
    vec = vec / vec.norm(dim=1, keepdim=True) * (0.5 * r_max)
    species = torch.zeros(num_atoms, dtype=torch.long)
    return (species.to(device), ij.to(device), vec.to(device=device, dtype=dtype),
            torch.tensor(num_atoms - 1, device=device))


def export_program(model: Potential, device: torch.device) -> torch.export.ExportedProgram:
    """make_fx first (it traces the autograd.grad call into plain ops), then export with dynamic sizes."""
    module = EdgePotential(model).to(device).eval()
    inputs = example_inputs(5, model.dtype, device, model.r_max)
    traced = make_fx(module, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*inputs)
    atoms, edges = torch.export.Dim("atoms", min=1), torch.export.Dim("edges", min=1)
    shapes = ({0: atoms}, {1: edges}, {0: edges}, None)
    return torch.export.export(traced, inputs, dynamic_shapes=shapes, strict=False)

"""The exported program: edges in, energy, forces and virial out, all derivatives taken inside.

Inputs are chosen for LAMMPS (positions of local and ghost atoms are already images, so callers
pass edge vectors computed in float64): ``species (L,)`` of the L local atoms, ``edge_index (2, E)``
(row 0 the centre atom i, always local, row 1 the neighbour j), ``edge_vec (E, 3) = x_j - x_i`` and
``ghosts (G,)``: atoms L..L+G-1 are ghosts, copies of atoms owned by another subdomain (MPI rank)
or periodic images, filled between layers by the ghost exchange (``ops.exchange``; LAMMPS's plugin
runs it with its forward/reverse communication and ignores the values of ``ghosts``). Local atoms
alone own energy. With G = 0 (one rank, or Python) the structure is whole. ``row_edges (R,)``:
``arange(P, E)`` when the edges are laid out as [P edges, their P reverses, unpaired]
(``AtomicGraph.edge_pairs``; P = 0: ``arange(E)``), so the radial networks run once per pair.
Outputs: energy of the local atoms, their per-atom energies (L,), forces on all L + G atoms (ghosts
included, for reverse communication), the virial ``-sum_e r_e (x) dE/dr_e`` (3, 3) and per-atom
virials (L + G, 3, 3) (each edge's term split between its two atoms).
"""
from __future__ import annotations

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from ..model import Potential
from ..model.geometry import atomic_virials, edge_forces, edge_virials


class EdgePotential(torch.nn.Module):
    def __init__(self, model: Potential):
        super().__init__()
        self.energy_model = model.energy_model

    def forward(self, species, edge_index, edge_vec, ghosts, row_edges):
        num_atoms = species.shape[0] + ghosts.shape[0]
        with torch.enable_grad():
            vec = edge_vec.detach().requires_grad_(True)
            atomic = self.energy_model(species, edge_index, vec, row_edges, ghosts=ghosts)
            energy = atomic.sum()
            (grad,) = torch.autograd.grad(energy, vec)
        edge_virial = edge_virials(grad, vec.detach())
        return (energy.detach(), atomic.detach(), edge_forces(grad, edge_index, num_atoms), edge_virial.sum(0),
                atomic_virials(edge_virial, edge_index, num_atoms))


def example_inputs(num_atoms: int, num_ghosts: int, dtype: torch.dtype, device: torch.device, r_max: float):
    """A small random subdomain whose sizes (> 1) keep tracing from specialising on them: edges from
    every atom into every other local atom, the local-local ones as pairs, then the ghost senders';
    ghost g copies local atom g."""
    g = torch.Generator().manual_seed(0)
    nlocal = num_atoms - num_ghosts
    first = torch.triu_indices(nlocal, nlocal, offset=1)
    ghost = torch.cartesian_prod(torch.arange(nlocal), torch.arange(nlocal, num_atoms)).T
    ij = torch.cat([first, first.flip(0), ghost], dim=1).contiguous()
    pairs = first.shape[1]
    vec = torch.randn(ij.shape[1], 3, generator=g, dtype=torch.float64)
    vec = vec / vec.norm(dim=1, keepdim=True) * (0.5 * r_max)
    vec[pairs:2 * pairs] = -vec[:pairs]
    species = torch.zeros(nlocal, dtype=torch.long)
    return (species.to(device), ij.to(device), vec.to(device=device, dtype=dtype),
            torch.arange(num_ghosts, device=device), torch.arange(pairs, ij.shape[1], device=device))


def export_program(model: Potential, device: torch.device) -> torch.export.ExportedProgram:
    """make_fx first (it traces the autograd.grad call into plain ops), then export with dynamic sizes."""
    module = EdgePotential(model).to(device).eval()
    inputs = example_inputs(7, 2, model.dtype, device, model.r_max)
    traced = make_fx(module, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*inputs)
    atoms, edges, ghosts, rows = (torch.export.Dim(name, min=0) for name in ("atoms", "edges", "ghosts", "rows"))
    shapes = ({0: atoms}, {1: edges}, {0: edges}, {0: ghosts}, {0: rows})
    return torch.export.export(traced, inputs, dynamic_shapes=shapes, strict=False)

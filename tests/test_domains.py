"""Domain decomposition without MPI: the model on a structure cut into subdomains (ghost atoms,
features exchanged after every layer) equals the model on the whole structure.

This is the oracle of the multi-rank LAMMPS plugin (test_lammps.py runs the real thing).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.geometry.cell import cellpar_to_cell

from conftest import random_molecule, small_model
from nequip_fast.deploy.domains import decompose, evaluate
from nequip_fast.deploy.export import EdgePotential
from nequip_fast.ops.exchange import ghost_exchange, ghost_exchange_adjoint
from nequip_fast.ops.fused import available_backends

BACKENDS = ["reference"] + (["cpu"] if "cpu" in available_backends() else [])

# (grid, inner cuts per axis as fractions): slabs, uneven slabs with one thinner than r_max and one
# empty, and a 2x2x2 grid
DECOMPOSITIONS = {
    "2 slabs": ((2, 1, 1), None),
    "3 slabs, one thin, one empty": ((3, 1, 1), [[0.02, 0.03], [], []]),
    "3 slabs, thinner than r_max": ((1, 3, 1), [[], [0.45, 0.55], []]),
    "2x2x2": ((2, 2, 2), None),
}


def crystal():
    """Triclinic periodic Cu/O, 26 atoms, cell ~7.7 A: subdomains are thinner than 2 r_max."""
    atoms = bulk("Cu", "fcc", a=3.61).repeat((3, 3, 3))
    atoms.set_cell(cellpar_to_cell(atoms.cell.cellpar()), scale_atoms=True)
    del atoms[[0]]
    atoms.symbols[[3, 11]] = "O"
    atoms.rattle(0.08, seed=4)
    return atoms


def molecule():
    atoms = random_molecule(9, seed=5, symbols=("Cu", "O"))
    atoms.positions *= 1.6
    return atoms


def whole_and_parts(model, atoms, grid, cuts, dtype):
    program = EdgePotential(model)
    whole = evaluate(program, decompose(atoms, model.species, model.r_max, (1, 1, 1)), dtype)
    parts = decompose(atoms, model.species, model.r_max, grid, cuts)
    return whole, evaluate(program, parts, dtype), parts


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", DECOMPOSITIONS)
@pytest.mark.parametrize("system", ["crystal", "molecule"])
def test_subdomains_equal_whole_structure(backend, name, system):
    model = small_model(seed=2, species=["Cu", "O"], r_max=4.0, num_layers=3, conv_backend=backend)
    atoms = crystal() if system == "crystal" else molecule()
    grid, cuts = DECOMPOSITIONS[name]
    whole, split, parts = whole_and_parts(model, atoms, grid, cuts, torch.float64)
    counts = np.bincount(parts.subdomain.numpy(), minlength=parts.num_subdomains)
    if name.startswith("3 slabs, one thin") and system == "crystal":
        assert counts.min() == 0, "the decomposition should have an empty subdomain"
    assert parts.ghosts.shape[0] > 0
    assert abs(split.energy - whole.energy) <= 1e-10 * max(1.0, abs(whole.energy))
    for key in ("atomic_energy", "forces", "virial", "atomic_virial"):
        torch.testing.assert_close(getattr(split, key), getattr(whole, key), rtol=1e-10, atol=1e-10, msg=key)


def test_whole_structure_with_images_equals_potential():
    """One subdomain holding periodic images as ghosts (as a tagless LAMMPS rank does) equals the
    plain model, including the per-atom virial summing to the virial."""
    model = small_model(seed=3, species=["Cu", "O"], r_max=4.0)
    atoms = crystal()
    from nequip_fast.data import AtomicGraph

    out = model(AtomicGraph.from_atoms(atoms, model.species, model.r_max), stress=True)
    whole = evaluate(EdgePotential(model), decompose(atoms, model.species, model.r_max, (1, 1, 1)), torch.float64)
    assert abs(whole.energy - float(out.energy.detach())) < 1e-10
    torch.testing.assert_close(whole.forces, out.forces, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(whole.virial, out.virial[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(whole.atomic_virial.sum(0), whole.virial, rtol=1e-10, atol=1e-10)


def test_float32_subdomains():
    model = small_model(seed=2, species=["Cu", "O"], r_max=4.0, dtype="float32")
    whole, split, _ = whole_and_parts(model, crystal(), (2, 2, 2), None, torch.float32)
    assert abs(split.energy - whole.energy) < 1e-4
    torch.testing.assert_close(split.forces, whole.forces, rtol=1e-4, atol=1e-5)


def test_exchange_ops_are_adjoint_and_differentiable():
    """<exchange(x), g> = <x, adjoint(g)>; gradcheck and gradgradcheck through both ops."""
    gen = torch.Generator().manual_seed(0)
    ghosts = torch.tensor([2, 0, 2, 4])
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(9, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    lhs = (ghost_exchange(x, ghosts) * g).sum()
    rhs = (x * ghost_exchange_adjoint(g, ghosts)).sum()
    assert abs(float((lhs - rhs).detach())) < 1e-12
    assert torch.autograd.gradcheck(lambda t: ghost_exchange(t, ghosts), (x,))
    assert torch.autograd.gradgradcheck(lambda t: torch.sin(ghost_exchange(t, ghosts)), (x,))
    assert torch.autograd.gradcheck(lambda t: ghost_exchange_adjoint(t, ghosts), (g,))
    assert torch.autograd.gradgradcheck(lambda t: torch.sin(ghost_exchange_adjoint(t, ghosts)), (g,))


def test_force_training_gradients_through_exchange():
    """Double backward (a force loss) through the exchange equals the whole structure's."""
    model = small_model(seed=6, species=["Cu", "O"], r_max=4.0, num_layers=2)
    atoms = crystal()

    def loss(grid):
        parts = decompose(atoms, model.species, model.r_max, grid)
        vec = parts.edge_vec.clone().requires_grad_(True)
        energy = model.energy_model(parts.species, parts.edge_index, vec, ghosts=parts.ghosts).sum()
        (grad,) = torch.autograd.grad(energy, vec, create_graph=True)
        return (grad ** 2).sum()

    params = [p for p in model.parameters() if p.requires_grad]
    whole = torch.autograd.grad(loss((1, 1, 1)), params)
    split = torch.autograd.grad(loss((2, 1, 2)), params)
    for a, b in zip(split, whole):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)

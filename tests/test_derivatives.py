"""Forces and stress are exact derivatives of the energy; the model is smooth at the cutoff."""
import numpy as np
import pytest
import torch
from ase import Atoms

from conftest import graph_of, random_crystal, random_molecule, small_model


def energy_of(model, atoms) -> float:
    return float(model(graph_of(atoms, model), forces=False).energy.detach())


@pytest.mark.parametrize("periodic", [False, True])
def test_forces_are_minus_finite_difference_gradient(periodic):
    model = small_model(seed=3, l_max=2)
    atoms = random_crystal(seed=3) if periodic else random_molecule(seed=3)
    forces = model(graph_of(atoms, model)).forces.detach().numpy()
    h = 1e-5
    fd = np.zeros_like(forces)
    for i in range(len(atoms)):
        for a in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, a] += h
            minus.positions[i, a] -= h
            fd[i, a] = -(energy_of(model, plus) - energy_of(model, minus)) / (2 * h)
    np.testing.assert_allclose(forces, fd, atol=1e-7, rtol=1e-6)
    assert np.abs(forces).max() > 1e-3  # a zero force field would pass trivially


def test_stress_is_finite_difference_strain_derivative():
    model = small_model(seed=4, l_max=2)
    atoms = random_crystal(seed=4)
    stress = model(graph_of(atoms, model), stress=True).stress[0].detach().numpy()
    volume, h = atoms.get_volume(), 1e-6
    fd = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            strain = np.zeros((3, 3))
            strain[a, b] = strain[b, a] = h / 2 if a != b else h
            energies = []
            for sign in (1, -1):
                deformed = atoms.copy()
                deformed.set_cell(atoms.cell.array @ (np.eye(3) + sign * strain), scale_atoms=True)
                energies.append(energy_of(model, deformed))
            fd[a, b] = (energies[0] - energies[1]) / (2 * h) / volume
    np.testing.assert_allclose(stress, fd, atol=1e-8)
    assert np.abs(stress).max() > 1e-4


def test_force_jacobian_is_symmetric():
    model = small_model(seed=5, l_max=2)
    graph = graph_of(random_molecule(n=6, seed=5), model)
    graph.pos.requires_grad_(True)
    forces = model(graph, create_graph=True).forces.reshape(-1)
    hessian = torch.stack([torch.autograd.grad(f, graph.pos, retain_graph=True)[0].reshape(-1) for f in forces])
    assert hessian.abs().max() > 1e-3
    torch.testing.assert_close(hessian, hessian.T, atol=1e-10, rtol=0)


def test_energy_and_forces_continuous_across_cutoff():
    """A neighbour crossing r_max changes energy and forces by nothing measurable (p=6 envelope)."""
    model = small_model(seed=6, species=["C", "O"])
    r_max = model.r_max
    results = []
    for r in (r_max - 1e-6, r_max + 1e-6):
        atoms = Atoms("COC", positions=[[0, 0, 0], [1.2, 0, 0], [1.2 + r, 0.0, 0]])  # last C only sees O at ~r_max
        out = model(graph_of(atoms, model))
        results.append((float(out.energy.detach()), out.forces.detach().numpy()))
    (e1, f1), (e2, f2) = results
    assert abs(e1 - e2) < 1e-12
    np.testing.assert_allclose(f1, f2, atol=1e-10)


def test_isolated_atom_gets_isolated_energy_and_zero_force():
    model = small_model(seed=7, species=["H", "O"], per_species_shifts={"H": -13.6, "O": -430.0})
    atoms = Atoms("OHHO", positions=[[0, 0, 0], [0.96, 0, 0], [-0.3, 0.9, 0], [20.0, 0, 0]])
    out = model(graph_of(atoms, model))
    lone = model(graph_of(Atoms("O", positions=[[0, 0, 0]]), model))
    assert graph_of(atoms, model).edge_index.max() < 3  # the far atom has no neighbours
    torch.testing.assert_close(out.atomic_energy[3], lone.atomic_energy[0], atol=1e-12, rtol=0)
    assert torch.all(out.forces[3] == 0)
    assert abs(float(lone.energy.detach()) + 430.0) < 100.0  # the shift is applied

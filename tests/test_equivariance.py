"""The whole model is E(3)-equivariant: invariant energy, vector forces, rank-2 stress."""
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from conftest import graph_of, random_crystal, random_molecule, small_model

TOL = {"float64": 1e-10, "float32": 2e-5}


def predict(model, atoms):
    out = model(graph_of(atoms, model), forces=True, stress=bool(atoms.pbc.all()))
    stress = out.stress[0].detach().double().numpy() if atoms.pbc.all() else None
    return float(out.energy.detach().double()), out.forces.detach().double().numpy(), stress


def transformed(atoms, matrix=np.eye(3), shift=np.zeros(3), perm=None):
    new = atoms.copy()
    new.positions = atoms.positions @ matrix.T + shift
    if atoms.pbc.any():
        new.set_cell(atoms.cell.array @ matrix.T, scale_atoms=False)
    return new[perm] if perm is not None else new


def assert_close(a, b, tol, what):
    scale = max(np.abs(b).max(), 1.0)
    err = np.abs(np.asarray(a) - np.asarray(b)).max() / scale
    assert err < tol, f"{what}: relative error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("parity", [True, False])
@pytest.mark.parametrize("l_max", [1, 2, 3])
@pytest.mark.parametrize("periodic", [False, True])
def test_e3_equivariance(l_max, parity, dtype, periodic):
    model = small_model(seed=l_max, l_max=l_max, parity=parity, dtype=dtype)
    atoms = random_crystal(seed=l_max) if periodic else random_molecule(seed=l_max)
    e, f, s = predict(model, atoms)
    tol = TOL[dtype]
    rng = np.random.default_rng(7)
    rot = Rotation.random(random_state=3).as_matrix()
    checks = {
        "rotation": (rot, np.zeros(3), None),
        "translation": (np.eye(3), rng.normal(size=3) * 2.0, None),
        "permutation": (np.eye(3), np.zeros(3), rng.permutation(len(atoms))),
    }
    if parity:  # without parity the model is only SO(3)-equivariant: chirality is a feature
        checks["inversion"] = (-np.eye(3), np.zeros(3), None)
        checks["rotoinversion"] = (-rot, np.zeros(3), None)
    for name, (matrix, shift, perm) in checks.items():
        e2, f2, s2 = predict(model, transformed(atoms, matrix, shift, perm))
        assert_close(e2, e, tol, f"{name} energy")
        f_expected = (f @ matrix.T)[perm] if perm is not None else f @ matrix.T
        assert_close(f2, f_expected, tol, f"{name} forces")
        if periodic:
            assert_close(s2, matrix @ s @ matrix.T, tol, f"{name} stress")


def test_parity_off_distinguishes_mirror_images():
    """Without parity the model is SO(3)-only: mirror images (chirality) differ once a triple product
    can form, which takes three layers."""
    atoms = random_molecule(n=6, seed=5)
    model = small_model(seed=1, parity=False, l_max=2, num_layers=3)
    e, _, _ = predict(model, atoms)
    e_mirror, _, _ = predict(model, transformed(atoms, -np.eye(3)))
    assert abs(e - e_mirror) > 1e-8
    model = small_model(seed=1, parity=True, l_max=2, num_layers=3)
    e, _, _ = predict(model, atoms)
    e_mirror, _, _ = predict(model, transformed(atoms, -np.eye(3)))
    assert abs(e - e_mirror) < 1e-10

"""Model level: the whole potential on each fused backend equals the reference backend.

Energy, forces, stress, the force-loss training gradients (double backward through the op),
forces vs finite differences, a symmetric force Jacobian, and equivariance.
"""
import pytest
import torch
from scipy.spatial.transform import Rotation

from conftest import graph_of, interpreted, random_crystal, random_molecule, small_config
from nequip_fast.data import batch_graphs
from nequip_fast.model import build_model
from nequip_fast.ops.conv import auto_backend as _auto_backend
from nequip_fast.ops.fused import load_backend


def model_pair(backend, seed=0, **overrides):
    """(reference, fused) models with the same weights. Built with float64 as the default dtype so
    that e3nn's CG constants are exact (otherwise the reference carries float32-rounded ones)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(seed)
        ref = build_model(small_config(conv_backend="reference", **overrides))
        fused = build_model(small_config(conv_backend=backend, **overrides))
    finally:
        torch.set_default_dtype(old)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def structures(model):
    return batch_graphs([graph_of(random_crystal(seed=1), model), graph_of(random_molecule(seed=2), model)])


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("l_max,parity", [(1, True), (2, False), (3, True)])
def test_energy_forces_stress_and_training_gradients_match_reference(backend, l_max, parity):
    if interpreted(backend) and l_max > 1:
        pytest.skip("too slow for the Triton interpreter (runs on GPU)")
    ref, fused = model_pair(backend, seed=l_max, l_max=l_max, parity=parity)
    graph = structures(ref)
    target_forces = torch.randn(graph.pos.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    results = []
    for model in (ref, fused):
        model.zero_grad()
        out = model(graph, forces=True, stress=True, create_graph=True)
        loss = out.energy.pow(2).sum() + (out.forces - target_forces).pow(2).sum()
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((out.energy.detach(), out.forces.detach(), out.stress[0].detach(), grads))
    for name, a, e in zip(["energy", "forces", "stress", "parameter gradients"], results[1], results[0]):
        assert rel_err(a, e) < 1e-10, f"{name}: relative error {rel_err(a, e):.2e}"


def test_forces_are_minus_the_energy_gradient_and_jacobian_is_symmetric(backend):
    _, model = model_pair(backend, seed=3, l_max=1 if interpreted(backend) else 2)
    graph = graph_of(random_molecule(n=5, seed=4), model)
    forces = model(graph, forces=True).forces.detach()
    eps, fd = 1e-5, torch.zeros_like(forces)
    for i in range(forces.shape[0]):
        for k in range(3):
            energies = []
            for sign in (1, -1):
                g = graph_of(random_molecule(n=5, seed=4), model)
                g.pos[i, k] += sign * eps
                energies.append(model(g, forces=False).energy.item())
            fd[i, k] = -(energies[0] - energies[1]) / (2 * eps)
    assert rel_err(forces, fd) < 1e-7

    pos = graph.pos.clone().requires_grad_(True)
    graph.pos = pos
    f = model(graph, forces=True, create_graph=True).forces.flatten()
    hessian = torch.stack([torch.autograd.grad(fi, pos, retain_graph=True)[0].flatten() for fi in f])
    assert rel_err(hessian, hessian.T) < 1e-10


def test_rotation_equivariance(backend):
    _, model = model_pair(backend, seed=5, l_max=1 if interpreted(backend) else 3)
    atoms = random_crystal(seed=6)
    rot = Rotation.random(random_state=7).as_matrix()
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rot.T
    rotated.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
    a = model(graph_of(atoms, model), forces=True, stress=True)
    b = model(graph_of(rotated, model), forces=True, stress=True)
    r = torch.as_tensor(rot)
    assert rel_err(b.energy, a.energy) < 1e-10
    assert rel_err(b.forces, a.forces @ r.T) < 1e-10
    assert rel_err(b.stress[0], r @ a.stress[0] @ r.T) < 1e-10


def test_auto_backend_picks_cpu_for_cpu_tensors():
    try:
        load_backend("cpu")
    except RuntimeError as e:
        pytest.skip(str(e))
    assert _auto_backend(torch.device("cpu")) == "cpu"
    ref, auto = model_pair("auto", seed=8)
    graph = structures(ref)
    assert rel_err(auto(graph).forces, ref(graph).forces) < 1e-10


def test_backend_is_an_execution_setting_not_saved(tmp_path):
    """The kernel choice is never stored; a checkpoint that stored it (older versions did) still
    loads, its conv_backend ignored, on the backend the loader picks."""
    from nequip_fast.model import load_model
    from nequip_fast.model.io import model_state
    from nequip_fast.ops import convolutions

    state = model_state(build_model(small_config(conv_backend="reference")))
    assert "conv_backend" not in state["model_config"]
    state["model_config"]["conv_backend"] = "no_such_backend"
    torch.save(state, tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt", backend="reference")
    assert {conv.backend for conv in convolutions(loaded)} == {"reference"}


def test_environment_override_announces_itself(monkeypatch):
    from nequip_fast.ops import resolve_backend

    monkeypatch.setenv("NEQUIP_FAST_CONV_BACKEND", "reference")
    with pytest.warns(UserWarning, match="NEQUIP_FAST_CONV_BACKEND=reference overrides the conv backend 'cpu'"):
        assert resolve_backend("cpu") == "reference"

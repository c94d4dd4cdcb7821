"""Upstream NequIP training accelerated in place (``interop.accelerate``): the same losses, step by
step, with upstream's tensor product + scatter or with nequip_fast's fused op; upstream's MLP layers
on ``ops.matmul`` / ``ops.activations.silu`` with the same parameters, state dict and numbers."""
import copy
import logging

import pytest
import torch

from conftest import random_crystal, random_molecule
from nequip_fast.data import AtomicGraph, batch_graphs
from nequip_fast.interop import upstream
from nequip_fast.interop.accelerate import (FastDeepLinearMLP, FastScalarLinearLayer, FastSiLU,
                                            FusedTensorProductScatter, accelerate, enable_nequip_fast)
from nequip_fast.model import ModelConfig
from nequip_fast.ops import activations
from nequip_fast.ops import matmul as mm


def batch(species):
    atoms = [random_crystal(6, seed=1, symbols=species), random_molecule(5, seed=2, symbols=species)]
    return batch_graphs([AtomicGraph.from_atoms(a, species, 3.5) for a in atoms])


def train_losses(model, graph, steps):
    """Energy + force MSE against fixed random targets, Adam, ``steps`` steps."""
    gen = torch.Generator().manual_seed(0)
    target_e = torch.randn(graph.num_graphs, generator=gen, dtype=torch.float64)
    target_f = torch.randn(graph.pos.shape, generator=gen, dtype=torch.float64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()  # upstream keeps the force graph (for a force loss) in training mode
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(upstream.graph_data(graph))
        loss = (out["total_energy"].reshape(-1) - target_e).pow(2).mean() + (out["forces"] - target_f).pow(2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("case", [
    dict(species=["H", "C", "O"], l_max=2, parity=True, num_features=4),
    dict(species=["H", "C", "O"], l_max=3, parity="natural", num_features=[5, 3, 2, 2], zbl=True,
         per_edge_type_cutoff={"H": 3.0}),
])
def test_training_steps_give_the_same_losses(backend, case):
    cfg = ModelConfig.from_dict(dict(r_max=3.5, num_layers=3, radial_mlp_depth=1, radial_mlp_width=8,
                                     avg_num_neighbors=5.0, dtype="float64", per_species_shifts=-1.0, **case))
    plain = upstream.build(cfg, seed=3)
    fast = enable_nequip_fast(copy.deepcopy(plain), backend=backend)
    swapped = [m for m in fast.modules() if isinstance(m, FusedTensorProductScatter)]
    assert len(swapped) == cfg.num_layers
    assert fast.state_dict().keys() == plain.state_dict().keys()  # checkpoints stay upstream's
    graph = batch(cfg.species)
    a, b = train_losses(plain, graph, 4), train_losses(fast, graph, 4)
    assert a[-1] < a[0]  # it trains
    assert ((a - b).abs() / a.abs()).max() < 1e-8, (a, b)


def test_builds_from_an_upstream_config_and_not_when_packaging():
    from nequip.model.modify_utils import only_apply_persistent_modifiers

    cfg = ModelConfig.from_dict(dict(species=["Cu"], r_max=3.5, num_layers=2, l_max=1, num_features=4,
                                     dtype="float64"))
    config = {"_target_": "nequip.model.NequIPGNNModel", **upstream.build_kwargs(cfg)}
    with upstream.upstream_state():
        built = enable_nequip_fast(config)
        with only_apply_persistent_modifiers(persistent_only=True):
            packaged = enable_nequip_fast(config)
    assert sum(isinstance(m, FusedTensorProductScatter) for m in built.modules()) == 2
    assert not any(isinstance(m, FusedTensorProductScatter) for m in packaged.modules())
    with pytest.raises(ValueError, match="TensorProductScatter"):
        enable_nequip_fast(torch.nn.Linear(2, 2))


def small_model(dtype):
    """A 2-layer upstream model whose radial MLPs have two hidden layers (so SiLUs), and a readout."""
    cfg = ModelConfig.from_dict(dict(species=["H", "C", "O"], r_max=3.5, num_layers=2, l_max=2, num_features=4,
                                     radial_mlp_depth=2, radial_mlp_width=8, avg_num_neighbors=5.0, dtype=dtype))
    return cfg, upstream.build(cfg, seed=3)


def test_mlp_layers_keep_parameters_and_state_dict(caplog):
    """Biased, deep-linear and parametrized MLPs beside a model: the same Parameter objects, the same
    state dict both ways, the same outputs; a parametrized layer is left alone and said so."""
    from nequip.nn import ScalarMLPFunction

    torch.manual_seed(0)
    _, model = small_model("float32")
    plain = torch.nn.ModuleDict(dict(
        model=model,
        biased=ScalarMLPFunction(5, 3, hidden_layers_depth=1, hidden_layers_width=6, bias=True),
        deep=ScalarMLPFunction(5, 3, hidden_layers_depth=1, hidden_layers_width=6, nonlinearity=None),
        normed=ScalarMLPFunction(5, 3, parametrization="weight_norm")))
    with torch.no_grad():
        plain["biased"].mlp[0].bias.normal_()  # upstream starts biases at zero
    fast = copy.deepcopy(plain)
    before = list(fast.named_parameters())
    with caplog.at_level(logging.INFO, logger="nequip_fast.interop.accelerate"):
        accelerate(fast, backend="cpu")
    assert "in 2 upstream tensor-product layers; ops.matmul in 10 MLP layers, ops.activations.silu in 5" in caplog.text
    assert "1 parametrized MLP layers" in caplog.text
    after = list(fast.named_parameters())
    assert [(n, id(p)) for n, p in after] == [(n, id(p)) for n, p in before]  # optimizers and EMA keep them
    assert isinstance(fast["deep"].mlp, FastDeepLinearMLP)
    assert [type(m) for m in fast["biased"].mlp] == [FastScalarLinearLayer, FastSiLU, FastScalarLinearLayer]
    assert type(fast["normed"].mlp[0]).__name__ == "ParametrizedScalarLinearLayer"

    ours, theirs = fast.state_dict(), plain.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    x = torch.randn(7, 5)
    for name in ("biased", "deep", "normed"):
        torch.testing.assert_close(fast[name](x), plain[name](x), rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # an upstream checkpoint into the accelerated model, and back
        for p in plain.parameters():
            p.add_(0.25)
    fast.load_state_dict(plain.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fast.parameters(), plain.parameters()))
    assert fast["biased"].mlp[0].bias is before[[n for n, _ in before].index("biased.mlp.0.bias")][1]
    fresh = copy.deepcopy(plain)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_state_dict(fast.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), plain.parameters()))
    for name in ("biased", "deep", "normed"):
        torch.testing.assert_close(fast[name](x), plain[name](x), rtol=1e-5, atol=1e-6)
    assert upstream.config_from_upstream(fast["model"]) == upstream.config_from_upstream(plain["model"])


def energy_forces_gradient(model, graph):
    """Energies, forces and the gradient of a force loss (double backward, as in training)."""
    model.train()
    out = model(upstream.graph_data(graph))
    loss = out["total_energy"].pow(2).sum() + out["forces"].pow(2).sum()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return out["total_energy"].detach(), out["forces"].detach(), torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_mlp_swap_gives_upstreams_numbers(dtype, tol):
    cfg, plain = small_model(dtype)
    fast = enable_nequip_fast(copy.deepcopy(plain), backend="cpu")
    assert sum(isinstance(m, (FastScalarLinearLayer, FastDeepLinearMLP)) for m in fast.modules()) == 7
    graph = batch(cfg.species)
    for ours, theirs in zip(energy_forces_gradient(fast, graph), energy_forces_gradient(plain, graph)):
        assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < tol


def test_the_swapped_layers_run_on_onednn_and_the_fused_silu():
    mm.enable_onednn(True)
    if not mm._available():
        pytest.skip("torch here has no usable oneDNN linear (torch.backends.mkldnn): ops.matmul is torch's @")
    if not activations._load():
        pytest.skip("the nequip_fast ops library cannot be built here: ops.activations.silu is torch's")
    cfg, plain = small_model("float32")
    fast = enable_nequip_fast(plain, backend="cpu")
    seen = []
    for m in fast.modules():
        if isinstance(m, (FastScalarLinearLayer, FastDeepLinearMLP, FastSiLU)):
            m.register_forward_hook(lambda module, inputs, out: seen.append((type(module), type(out.grad_fn).__name__)))
    energy_forces_gradient(fast, batch(cfg.species))
    kinds = {kind: {name for k, name in seen if k is kind} for kind, _ in seen}
    assert kinds[FastScalarLinearLayer] == {"_OneDNNMatmulBackward"}, kinds
    assert kinds[FastDeepLinearMLP] == {"_OneDNNMatmulBackward"}, kinds  # the readout
    assert kinds[FastSiLU] == {"GeneratedBackwardFor_nequip_fast_silu_defaultBackward"}, kinds

"""Upstream NequIP training accelerated in place (``interop.accelerate``): the same losses, step by
step, with upstream's tensor product + scatter or with nequip_fast's fused op."""
import copy

import pytest
import torch

from conftest import random_crystal, random_molecule
from nequip_fast.data import AtomicGraph, batch_graphs
from nequip_fast.interop import upstream
from nequip_fast.interop.accelerate import FusedTensorProductScatter, enable_nequip_fast
from nequip_fast.model import ModelConfig


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

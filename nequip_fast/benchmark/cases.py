"""What is measured, per case: a nequip_fast model on one conv backend, or upstream NequIP.

A case holds a model; ``calls(graph)`` gives the timed callables for one structure, so a scaling
sweep reuses the models and only changes the graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..data import AtomicGraph
from ..model import ModelConfig, Potential, build_model
from ..interop import upstream
from ..ops import convolutions

UPSTREAM = "upstream"
UPSTREAM_COMPILED = "upstream-compiled"
UPSTREAM_CASES = (UPSTREAM, UPSTREAM_COMPILED)
DEPLOYED = "deployed"  # a deployed .pt2: energy+forces only, its own weights


@dataclass
class Calls:
    energy_forces: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    train_step: Optional[Callable[[], None]]  # None for a deployed file (inference only)
    conv_forward: Optional[Callable[[], None]]  # None where the op is not separable (compiled upstream)
    conv_forward_backward: Optional[Callable[[], None]]


def conv_layer(model: Potential) -> int:
    """The layer whose conv is timed alone: the one with the most tensor-product paths (the costliest)
    but not the last, whose outputs are scalars only."""
    convs = convolutions(model)
    sizes = [conv.descriptor.weight_numel for conv in convs[:max(1, len(convs) - 1)]]
    return sizes.index(max(sizes))


def build_nequip_fast(cfg: ModelConfig, backend: str, state: Optional[dict], device: torch.device) -> Potential:
    torch.manual_seed(0)  # the same weights for every backend, so their energies must agree
    model = build_model(cfg, backend)
    if state is not None:
        model.load_state_dict(state)
    return model.to(device)


def _set_training(model: torch.nn.Module, train: bool) -> None:
    """``model.train(train)`` only when the mode changes: it visits every submodule (137 of ours, ~0.9
    ms), which is the harness's cost, not the model's, and a user's calls do not pay it."""
    if model.training != train:
        model.train(train)


def _train_step(model: torch.nn.Module, predict: Callable, num_atoms: int) -> Callable[[], None]:
    """Forward with forces kept differentiable, energy and force loss, backward, Adam step."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def step():
        optimizer.zero_grad(set_to_none=True)
        energy, forces = predict(True)
        loss = (energy / num_atoms).square().mean() + forces.square().mean()
        loss.backward()
        optimizer.step()

    return step


def _conv_calls(conv: Callable, irreps_dims: tuple[int, int, int], graph: AtomicGraph, dtype, device):
    """Forward and forward+backward (gradients of x, Y and w) of one conv on random inputs."""
    generator = torch.Generator().manual_seed(0)
    n, e = graph.pos.shape[0], graph.edge_index.shape[1]
    x, sh, w = (torch.randn(rows, cols, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
                .requires_grad_(True) for rows, cols in zip((n, e, e), irreps_dims))
    edge_index = graph.edge_index.to(device)

    def forward():
        with torch.no_grad():
            conv(x, sh, w, edge_index)

    def forward_backward():
        out = conv(x, sh, w, edge_index)
        torch.autograd.grad(out, (x, sh, w), torch.ones_like(out))

    return forward, forward_backward


class Case:
    """One model under test; ``name`` is a conv backend or one of ``UPSTREAM_CASES``."""

    def __init__(self, name: str, cfg: ModelConfig, state: Optional[dict], device: torch.device, stress: bool,
                 deployed: Optional[str] = None):
        self.name, self.device, self.stress = name, device, stress
        self.dtype = getattr(torch, cfg.dtype)
        if name == DEPLOYED:
            from ..deploy import DeployedPotential

            self.model = DeployedPotential(deployed)
        elif name in UPSTREAM_CASES:
            self.model = upstream.build(cfg, compile=name == UPSTREAM_COMPILED).to(device)
        else:
            self.model = build_nequip_fast(cfg, name, state, device)

    def calls(self, graph: AtomicGraph, conv: Optional[tuple[int, tuple[int, int, int]]] = None) -> Calls:
        """``conv``: the layer and the (x, Y, w) widths of the conv timed alone; None skips it."""
        graph = graph.to(self.device, dtype=self.dtype)
        num_atoms = graph.pos.shape[0]
        if self.name == DEPLOYED:
            def deployed_predict():
                pred = self.model(graph, forces=True, stress=self.stress)
                return pred.energy, pred.forces

            return Calls(deployed_predict, None, None, None)
        if self.name in UPSTREAM_CASES:
            data = upstream.graph_data(graph)

            def predict(train: bool = False):
                _set_training(self.model, train)  # upstream keeps the force graph in training mode only
                return upstream.predict(self.model, data)

            op = None if conv is None or self.name == UPSTREAM_COMPILED else upstream.layer_conv(self.model, conv[0])
        else:
            def predict(train: bool = False):
                _set_training(self.model, train)
                pred = self.model(graph, forces=True, stress=self.stress, create_graph=train)
                return pred.energy, pred.forces

            op = None if conv is None else convolutions(self.model)[conv[0]]
        conv_forward = conv_forward_backward = None
        if op is not None:
            conv_forward, conv_forward_backward = _conv_calls(op, conv[1], graph, self.dtype, self.device)
        return Calls(predict, _train_step(self.model, predict, num_atoms), conv_forward, conv_forward_backward)

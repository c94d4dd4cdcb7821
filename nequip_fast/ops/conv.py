"""The convolution seam: every interaction block calls ``TensorProductConv``; backends plug in here.

``reference`` is e3nn + index_add (the truth); ``cpu``, ``cuda`` and ``triton`` run the fused ops of
``fused.py``; ``auto`` picks a fused backend by the device of the inputs. The backend is an
execution setting (``set_backend``), chosen when a model is built, loaded, wrapped or deployed, and
never saved with it. ``NEQUIP_FAST_CONV_BACKEND`` overrides it as a test/debug switch, with a warning.
"""
import os
import warnings
from typing import Optional

import torch

from .descriptor import ConvDescriptor
from .fused import ConvGraph, edge_weights, fused_conv, load_backend
from .plan import ConvPlan, lower
from .reference import reference_conv

BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")
ENV_BACKEND = "NEQUIP_FAST_CONV_BACKEND"


def resolve_backend(name: str) -> str:
    """The backend to use for a chosen ``name`` (after the announced environment override); fused
    backends other than ``auto`` must load here, or this raises naming the cause."""
    override = os.environ.get(ENV_BACKEND)
    if override and override != name:
        warnings.warn(f"{ENV_BACKEND}={override} overrides the conv backend {name!r} (a test/debug switch)",
                      stacklevel=2)
        name = override
    if name not in BACKENDS:
        raise ValueError(f"'conv_backend' must be one of {BACKENDS}, got {name!r}")
    if name not in ("auto", "reference"):
        load_backend(name)
    return name


def auto_backend(device: torch.device) -> str:
    """What ``auto`` runs on ``device``: the first fused backend that loads, else ``reference``."""
    preferences = ("cpu",) if device.type == "cpu" else ("cuda", "triton")
    for name in preferences:
        try:
            load_backend(name)
            return name
        except RuntimeError as e:
            reason = e
    warnings.warn(f"conv_backend 'auto': no fused backend for {device.type} ({reason}); using 'reference'")
    return "reference"


class TensorProductConv(torch.nn.Module):
    """``out[i] = sum over edges (i <- j) of TP_uvu(x[j], sh_ij, weight_ij)``.

    ``edge_index[0]`` is the receiver (centre atom i), ``edge_index[1]`` the sender (neighbour j),
    as in the neighbour list. The sum is not normalised; the interaction block divides by
    ``sqrt(avg_num_neighbors)``.
    """

    def __init__(self, descriptor: ConvDescriptor, backend: str = "auto"):
        super().__init__()
        self.descriptor = descriptor
        self.backend = resolve_backend(backend)
        self.tp = descriptor.e3nn_tensor_product()
        self.weight_numel = descriptor.weight_numel
        self.irreps_out = descriptor.irreps_out
        self.out_features = descriptor.irreps_out.dim  # a plain int: torch.compile cannot guard on Irreps
        # Lowered once per layer; not persistent: derived from the descriptor, so checkpoints stay
        # backend-independent. The values follow Module.to like any constant buffer.
        plan = lower(descriptor)
        self.register_buffer("plan", plan.ints, persistent=False)
        self.register_buffer("plan_values", plan.values, persistent=False)
        self.plan_layout = plan.layout

    def _backend_for(self, device: torch.device) -> str:
        return auto_backend(device) if self.backend == "auto" else self.backend

    def prepare(self, edge_index: torch.Tensor, num_nodes: int) -> Optional[ConvGraph]:
        """The graph operand of the fused kernels (both CSR orders), built once per forward and shared
        by every layer; None for the reference backend, which needs only ``edge_index``."""
        name = self._backend_for(edge_index.device)
        return None if name == "reference" else load_backend(name).graph(edge_index, num_nodes)

    def forward(self, x: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor, edge_index: torch.Tensor,
                graph: Optional[ConvGraph] = None) -> torch.Tensor:
        """``weight`` has E - P rows when the first 2P edges are P pairs then their reverses
        (``fused.edge_weights``; both edges of a pair have the same length), E rows without pairs.
        ``graph``: from ``prepare`` (built here when not given)."""
        name = self._backend_for(x.device)
        if name == "reference":  # every fused backend indexes pair rows itself
            return reference_conv(self.tp, x, sh, edge_weights(weight, sh.shape[0]), edge_index)
        if name == "cpu" and x.device.type != "cpu":
            raise RuntimeError(f"conv backend 'cpu' got {x.device.type} tensors; use 'auto', 'cuda' or 'triton'")
        backend = load_backend(name)
        if graph is None:
            graph = backend.graph(edge_index, x.shape[0])
        return fused_conv(backend, x, sh, weight, ConvPlan(self.plan, self.plan_values, self.plan_layout), graph)


def convolutions(module: torch.nn.Module) -> list[TensorProductConv]:
    """The convolutions of a model, in layer order (e.g. to read their descriptors)."""
    return [m for m in module.modules() if isinstance(m, TensorProductConv)]


def set_backend(module: torch.nn.Module, name: str) -> None:
    """Run every convolution of ``module`` on backend ``name`` (not saved: the state dict is unchanged)."""
    name = resolve_backend(name)
    for conv in convolutions(module):
        conv.backend = name

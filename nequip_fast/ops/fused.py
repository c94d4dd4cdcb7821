"""The fused convolution as two primitives that are closed under differentiation (DESIGN.md §3).

``segment_conv`` walks a CSR (rows = receivers, or senders when transposed) and reduces
``T(x[col], sh[e], w[e])`` into each row; ``edge_grads`` gives the per-edge gradients wrt ``sh``
and ``w``. Every derivative of either is again a sum of calls to the two, so one pair of kernels
per backend covers forward, backward, double backward and beyond. The ops take only tensors and ints:

- ``plan, values, layout``: a ``ConvPlan`` (``plan.lower``), both orientations of the descriptor;
  ``transpose`` selects the pre-lowered adjoint, which is all the derivative closure needs,
- ``edge_index, ptr, perm``: a ``ConvGraph``, the graph sorted once by receiver and by sender,
- ``w``: R = E - P rows for edges laid out as [P edges, their P reverses, U unpaired] (E = 2P + U;
  P = E - R comes from the shapes): edge e reads row ``e < P ? e : e - P`` (``edge_weights``), so
  a pair's radial network runs once; ``edge_grads`` returns per row the sum over its edges, the
  gradient of the shared row (every backend). R = E: no pairs.

This module registers the fake functions and the autograd of each backend's pair of ops, the same
for all; the ops themselves come from ``cpp_ops`` (``cpu``/``cuda``, the C++ ops library) and
``triton_ops`` (``triton``), loaded on first use.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple, Optional

import torch

from .plan import HEADER, PREAMBLE, ConvPlan

_B_FEATURES = HEADER.index("b_features")


class ConvGraph(NamedTuple):
    """The edges sorted by receiver (direction 0) and by sender (direction 1), stably."""

    edge_index: torch.Tensor  # (2, E): receiver, sender
    ptr: torch.Tensor  # (2, N + 1): CSR row pointers per direction
    perm: torch.Tensor  # (2, E): edge ids in row order per direction


def conv_graph(edge_index: torch.Tensor, num_nodes: int) -> ConvGraph:
    """Both CSRs of a graph with torch ops (any device; the C++ backend has a counting sort)."""
    edge_index = edge_index.contiguous()
    perm = torch.stack([torch.argsort(edge_index[0], stable=True), torch.argsort(edge_index[1], stable=True)])
    keys = torch.gather(edge_index, 1, perm).contiguous()
    nodes = torch.arange(num_nodes + 1, device=edge_index.device, dtype=edge_index.dtype)
    ptr = torch.searchsorted(keys, nodes.expand(2, -1).contiguous())
    return ConvGraph(edge_index, ptr, perm.contiguous())


def edge_weights(w: torch.Tensor, num_edges: int) -> torch.Tensor:
    """One weight row per edge from R = E - P rows (the layout above): rows ``[w[:P], w]``."""
    return torch.cat((w[: num_edges - w.shape[0]], w))


@dataclass(frozen=True)
class Backend:
    name: str
    segment_conv: Callable  # (x, sh, w, plan, values, layout, edge_index, ptr, perm, transpose) -> out
    edge_grads: Callable  # (x, g, sh, w, plan, values, layout, edge_index, ptr, perm) -> (g_sh, g_w)
    graph: Callable = conv_graph  # (edge_index, num_nodes) -> ConvGraph


def fused_conv(backend: Backend, x, sh, weight, plan: ConvPlan, graph: ConvGraph) -> torch.Tensor:
    """``out[r] = sum over edges e = (r <- s) of T(x[s], sh[e], weight[e])``."""
    return backend.segment_conv(x, sh, weight, plan.ints, plan.values, list(plan.layout), *graph, False)


def register_fake_and_autograd(segment_name: str, edge_name: str) -> Backend:
    """Fake functions and the derivative closure for one backend's pair of ops."""
    torch.library.register_fake(segment_name)(
        lambda x, sh, w, plan, values, layout, edge_index, ptr, perm, transpose:
        x.new_empty(ptr.shape[1] - 1, layout[PREAMBLE + len(HEADER) * transpose + _B_FEATURES])
    )
    torch.library.register_fake(edge_name)(
        lambda x, g, sh, w, plan, values, layout, edge_index, ptr, perm: (torch.empty_like(sh), torch.empty_like(w))
    )
    namespace, segment_op = segment_name.split("::")
    segment = getattr(getattr(torch.ops, namespace), segment_op).default
    edge = getattr(getattr(torch.ops, namespace), edge_name.split("::")[1]).default

    def segment_setup(ctx, inputs, output):
        x, sh, w, plan, values, layout, edge_index, ptr, perm, transpose = inputs
        ctx.save_for_backward(x, sh, w, plan, values, edge_index, ptr, perm)
        ctx.layout, ctx.transpose = layout, transpose

    def segment_backward(ctx, grad):
        # <grad, conv(a)> = <a, conv^T(grad)>, and edge_grads wants (input-space, output-space) operands.
        x, sh, w, plan, values, edge_index, ptr, perm = ctx.saved_tensors
        gx = g_sh = g_w = None
        if ctx.needs_input_grad[0]:
            gx = segment(grad, sh, w, plan, values, ctx.layout, edge_index, ptr, perm, not ctx.transpose)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            inputs, outputs = (grad, x) if ctx.transpose else (x, grad)
            g_sh, g_w = edge(inputs, outputs, sh, w, plan, values, ctx.layout, edge_index, ptr, perm)
        return gx, g_sh, g_w, None, None, None, None, None, None, None

    def edge_setup(ctx, inputs, output):
        x, g, sh, w, plan, values, layout, edge_index, ptr, perm = inputs
        ctx.save_for_backward(x, g, sh, w, plan, values, edge_index, ptr, perm)
        ctx.layout = layout

    def edge_backward(ctx, gg_sh, gg_w):
        # edge_grads is <g, T(x, sh, w)> differentiated once; its cotangent (gg_sh, gg_w) enters
        # in place of sh or w: d/dx = conv^T(g, gg_sh, w) + conv^T(g, sh, gg_w), likewise d/dg.
        x, g, sh, w, plan, values, edge_index, ptr, perm = ctx.saved_tensors
        gg_sh = torch.zeros_like(sh) if gg_sh is None else gg_sh
        gg_w = torch.zeros_like(w) if gg_w is None else gg_w
        layout, needs = ctx.layout, ctx.needs_input_grad
        dx = dg = d_sh = d_w = None
        if needs[0]:
            dx = (segment(g, gg_sh, w, plan, values, layout, edge_index, ptr, perm, True)
                  + segment(g, sh, gg_w, plan, values, layout, edge_index, ptr, perm, True))
        if needs[1]:
            dg = (segment(x, gg_sh, w, plan, values, layout, edge_index, ptr, perm, False)
                  + segment(x, sh, gg_w, plan, values, layout, edge_index, ptr, perm, False))
        if needs[2] or needs[3]:
            d_sh, d_w = edge(x, g, gg_sh, gg_w, plan, values, layout, edge_index, ptr, perm)
        return dx, dg, d_sh, d_w, None, None, None, None, None, None

    torch.library.register_autograd(segment_name, segment_backward, setup_context=segment_setup)
    torch.library.register_autograd(edge_name, edge_backward, setup_context=edge_setup)
    return Backend("", segment, edge)


_MODULES = {"cpu": "cpp_ops", "cuda": "cpp_ops", "triton": "triton_ops"}
# What each backend module's load() returned: the ops register with torch.library once per process.
_LOADED: dict[str, tuple[Optional[Backend], str]] = {}


def load_backend(name: str) -> Backend:
    """The fused backend ``name`` ("cpu", "cuda", "triton"); a clear error says why one is unavailable."""
    module = _MODULES[name]
    if module not in _LOADED:
        _LOADED[module] = importlib.import_module(f"{__package__}.{module}").load()
    backend, reason = _LOADED[module]
    if backend is None:
        raise RuntimeError(f"conv backend {name!r} is unavailable: {reason}")
    if name == "cuda" and not torch._C._dispatch_has_kernel_for_dispatch_key("nequip_fast::segment_conv", "CUDA"):
        from . import native

        raise RuntimeError(f"conv backend 'cuda' is unavailable: no CUDA kernels built ({native.cuda_archs()[1]})")
    return replace(backend, name=name)


def available_backends() -> tuple[str, ...]:
    """Fused backends that load here (a GPU is still needed for "cuda", and for "triton" outside the interpreter)."""
    names = []
    for name in _MODULES:
        try:
            load_backend(name)
            names.append(name)
        except RuntimeError:
            pass
    return tuple(names)

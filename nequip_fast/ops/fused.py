"""The fused convolution as two primitives that are closed under differentiation (DESIGN.md §3).

``segment_conv`` walks a CSR (rows = receivers, or senders when transposed) and reduces
``T(x[col], sh[e], w[e])`` into each row; ``edge_grads`` gives the per-edge gradients wrt ``sh``
and ``w``. Every derivative of either is again a sum of calls to the two, so one pair of kernels
per backend covers forward, backward, double backward and beyond. A backend may add
``segment_conv2``, two convs of one ``x`` summed in one walk (x gathered once), which the double
backward uses for its sums of two convs (the C++ CPU kernels have it; elsewhere two calls).
The ops take only tensors and ints:

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

from .engine import will_use_grad
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
    # (x, sh, w, sh2, w2, plan, values, layout, edge_index, ptr, perm, transpose) -> segment_conv(x, sh, w)
    # + segment_conv(x, sh2, w2), on CPU tensors; None: the double backward makes two calls
    segment_conv2: Optional[Callable] = None


def fused_conv(backend: Backend, x, sh, weight, plan: ConvPlan, graph: ConvGraph) -> torch.Tensor:
    """``out[r] = sum over edges e = (r <- s) of T(x[s], sh[e], weight[e])``."""
    return backend.segment_conv(x, sh, weight, plan.ints, plan.values, list(plan.layout), *graph, False)


def register_fake_and_autograd(segment_name: str, edge_name: str, segment2_name: Optional[str] = None) -> Backend:
    """Fake functions and the derivative closure for one backend's pair of ops (and its
    ``segment_conv2``, if it has one: used for CPU tensors)."""
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

    def operand_grads(ctx, grad, x, pairs, plan, values, graph) -> list:
        """(g_sh, g_w) of each (sh, w) pair of a sum of segment_convs of x, in input order (None where
        not needed): <grad, conv(a)> = <a, conv^T(grad)>, and edge_grads wants (input-space,
        output-space) operands."""
        inputs, outputs = (grad, x) if ctx.transpose else (x, grad)
        grads = []
        for k, (sh, w) in enumerate(pairs):
            needed = ctx.needs_input_grad[1 + 2 * k] or ctx.needs_input_grad[2 + 2 * k]
            grads += edge(inputs, outputs, sh, w, plan, values, ctx.layout, *graph) if needed else (None, None)
        return grads

    def segment_backward(ctx, grad):
        x, sh, w, plan, values, edge_index, ptr, perm = ctx.saved_tensors
        graph = (edge_index, ptr, perm)
        gx = None
        if will_use_grad(ctx, 0):  # not the first layer's features in forces
            gx = segment(grad, sh, w, plan, values, ctx.layout, *graph, not ctx.transpose)
        return gx, *operand_grads(ctx, grad, x, [(sh, w)], plan, values, graph), *(None,) * 7

    segment2 = None
    if segment2_name is not None:
        torch.library.register_fake(segment2_name)(
            lambda x, sh, w, sh2, w2, plan, values, layout, edge_index, ptr, perm, transpose:
            x.new_empty(ptr.shape[1] - 1, layout[PREAMBLE + len(HEADER) * transpose + _B_FEATURES])
        )
        segment2 = getattr(getattr(torch.ops, namespace), segment2_name.split("::")[1]).default

        def segment2_setup(ctx, inputs, output):
            x, sh, w, sh2, w2, plan, values, layout, edge_index, ptr, perm, transpose = inputs
            ctx.save_for_backward(x, sh, w, sh2, w2, plan, values, edge_index, ptr, perm)
            ctx.layout, ctx.transpose = layout, transpose

        def segment2_backward(ctx, grad):
            # The sum of two segment_convs of x: the sum of their backwards (segment_backward).
            x, sh, w, sh2, w2, plan, values, edge_index, ptr, perm = ctx.saved_tensors
            graph = (edge_index, ptr, perm)
            gx = None
            if ctx.needs_input_grad[0]:
                gx = segment2(grad, sh, w, sh2, w2, plan, values, ctx.layout, *graph, not ctx.transpose)
            return gx, *operand_grads(ctx, grad, x, [(sh, w), (sh2, w2)], plan, values, graph), *(None,) * 7

        torch.library.register_autograd(segment2_name, segment2_backward, setup_context=segment2_setup)

    def edge_setup(ctx, inputs, output):
        x, g, sh, w, plan, values, layout, edge_index, ptr, perm = inputs
        ctx.save_for_backward(x, g, sh, w, plan, values, edge_index, ptr, perm)
        ctx.layout = layout
        ctx.set_materialize_grads(False)  # an unused output's cotangent stays None: its conv is left out

    def edge_backward(ctx, gg_sh, gg_w):
        # edge_grads is <g, T(x, sh, w)> differentiated once; its cotangent (gg_sh, gg_w) enters
        # in place of sh or w: d/dx = conv^T(g, gg_sh, w) + conv^T(g, sh, gg_w), likewise d/dg.
        x, g, sh, w, plan, values, edge_index, ptr, perm = ctx.saved_tensors
        layout, needs = ctx.layout, ctx.needs_input_grad
        args = (plan, values, layout, edge_index, ptr, perm)

        def convs(a, transpose):  # conv(a, gg_sh, w) + conv(a, sh, gg_w), a term left out where its cotangent is None
            if gg_w is None:
                return segment(a, gg_sh, w, *args, transpose)
            if gg_sh is None:
                return segment(a, sh, gg_w, *args, transpose)
            if segment2 is not None and a.device.type == "cpu":
                return segment2(a, gg_sh, w, sh, gg_w, *args, transpose)
            return segment(a, gg_sh, w, *args, transpose) + segment(a, sh, gg_w, *args, transpose)

        dx = dg = d_sh = d_w = None
        if gg_sh is None and gg_w is None:
            return dx, dg, d_sh, d_w, None, None, None, None, None, None
        if needs[0]:
            dx = convs(g, True)
        if needs[1]:
            dg = convs(x, False)
        if needs[2] or needs[3]:
            d_sh, d_w = edge(x, g, torch.zeros_like(sh) if gg_sh is None else gg_sh,
                             torch.zeros_like(w) if gg_w is None else gg_w, *args)
        return dx, dg, d_sh, d_w, None, None, None, None, None, None

    torch.library.register_autograd(segment_name, segment_backward, setup_context=segment_setup)
    torch.library.register_autograd(edge_name, edge_backward, setup_context=edge_setup)
    return Backend("", segment, edge, segment_conv2=segment2)


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

"""The fused convolution as two primitives that are closed under differentiation (DESIGN.md §3).

``segment_conv`` walks a CSR (rows = receivers, or senders when transposed) and reduces
``T(x[col], sh[e], w[e])`` into each row; ``edge_grads`` gives the per-edge gradients wrt ``sh``
and ``w``. Every derivative of either is again a sum of calls to the two, so one pair of kernels
per backend covers forward, backward, double backward and beyond. The ops take only tensors:

- ``table``: the descriptor as an int64 tensor (one row per CG nonzero, see ``descriptor_table``),
- ``edge_index, ptr, perm``: a ``ConvGraph``, the graph sorted once by receiver and by sender,
- ``w``: one row per edge, or (cpu backend) one per pair of paired edges, edge k + E/2 reversing
  edge k; then ``edge_grads`` returns the pair sums, the gradient of the shared row.

Backends: ``cpu`` and ``cuda`` are the C++ ops ``nequip_fast::segment_conv``/``edge_grads`` of the
library compiled from csrc/ by ``native.py`` (the device picks the kernel, CUDA kernels register in
csrc/*.cu with ``TORCH_LIBRARY_IMPL(nequip_fast, CUDA, m)``); ``triton`` wraps ``nequip_fast.kernels``
in Python custom ops ``nequip_fast::triton_segment_conv``/``triton_edge_grads``. Fake functions and
autograd are registered here, the same for every backend.
"""
from __future__ import annotations

import importlib
import os
import weakref
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple, Optional

import torch

from . import native
from .descriptor import ConvDescriptor

TABLE_COLUMNS = 12


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


def descriptor_table(descriptor: ConvDescriptor) -> torch.Tensor:
    """``[in_off, in_dim, sh_off, sh_dim, out_off, out_dim, mul, w_off, i, j, k, value]`` per CG nonzero.

    int64 so that ``Module.to(dtype)`` leaves it alone; ``value`` holds the bits of a float64.
    """
    header, index, values = [], [], []
    for p in descriptor.paths:
        for i, j, k, v in p.cg:
            header.append((p.in_offset, p.in_dim, p.sh_offset, p.sh_dim, p.out_offset, p.out_dim, p.mul,
                           p.weight_offset))
            index.append((i, j, k))
            values.append(v)
    bits = torch.tensor(values, dtype=torch.float64).view(torch.int64).reshape(-1, 1)
    table = torch.cat([torch.tensor(header, dtype=torch.int64).reshape(-1, 8),
                       torch.tensor(index, dtype=torch.int64).reshape(-1, 3), bits], dim=1)
    _DESCRIPTORS[table.numpy().tobytes()] = descriptor
    return table


@dataclass(frozen=True)
class Backend:
    name: str
    segment_conv: Callable  # (x, sh, w, table, edge_index, ptr, perm, out_features, transpose) -> out
    edge_grads: Callable  # (x, g, sh, w, table, edge_index, ptr, perm) -> (g_sh, g_w)
    graph: Callable = conv_graph  # (edge_index, num_nodes) -> ConvGraph


def fused_conv(backend: Backend, x, sh, weight, table, graph: ConvGraph, out_features: int) -> torch.Tensor:
    """``out[r] = sum over edges e = (r <- s) of T(x[s], sh[e], weight[e])``."""
    return backend.segment_conv(x, sh, weight, table, *graph, out_features, False)


def _register_fake_and_autograd(segment_name: str, edge_name: str) -> Backend:
    """Fake functions and the derivative closure for one backend's pair of ops."""
    torch.library.register_fake(segment_name)(
        lambda x, sh, w, table, edge_index, ptr, perm, out_features, transpose:
        x.new_empty(ptr.shape[1] - 1, out_features)
    )
    torch.library.register_fake(edge_name)(
        lambda x, g, sh, w, table, edge_index, ptr, perm: (torch.empty_like(sh), torch.empty_like(w))
    )
    namespace, segment_op = segment_name.split("::")
    segment = getattr(getattr(torch.ops, namespace), segment_op).default
    edge = getattr(getattr(torch.ops, namespace), edge_name.split("::")[1]).default

    def segment_setup(ctx, inputs, output):
        x, sh, w, table, edge_index, ptr, perm, _, transpose = inputs
        ctx.save_for_backward(x, sh, w, table, edge_index, ptr, perm)
        ctx.transpose = transpose

    def segment_backward(ctx, grad):
        # <grad, conv(a)> = <a, conv^T(grad)>, and edge_grads wants (input-space, output-space) operands.
        x, sh, w, table, edge_index, ptr, perm = ctx.saved_tensors
        gx = g_sh = g_w = None
        if ctx.needs_input_grad[0]:
            gx = segment(grad, sh, w, table, edge_index, ptr, perm, x.shape[1], not ctx.transpose)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            inputs, outputs = (grad, x) if ctx.transpose else (x, grad)
            g_sh, g_w = edge(inputs, outputs, sh, w, table, edge_index, ptr, perm)
        return gx, g_sh, g_w, None, None, None, None, None, None

    def edge_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def edge_backward(ctx, gg_sh, gg_w):
        # edge_grads is <g, T(x, sh, w)> differentiated once; its cotangent (gg_sh, gg_w) enters
        # in place of sh or w: d/dx = conv^T(g, gg_sh, w) + conv^T(g, sh, gg_w), likewise d/dg.
        x, g, sh, w, table, edge_index, ptr, perm = ctx.saved_tensors
        gg_sh = torch.zeros_like(sh) if gg_sh is None else gg_sh
        gg_w = torch.zeros_like(w) if gg_w is None else gg_w
        needs = ctx.needs_input_grad
        dx = dg = d_sh = d_w = None
        if needs[0]:
            dx = (segment(g, gg_sh, w, table, edge_index, ptr, perm, x.shape[1], True)
                  + segment(g, sh, gg_w, table, edge_index, ptr, perm, x.shape[1], True))
        if needs[1]:
            dg = (segment(x, gg_sh, w, table, edge_index, ptr, perm, g.shape[1], False)
                  + segment(x, sh, gg_w, table, edge_index, ptr, perm, g.shape[1], False))
        if needs[2] or needs[3]:
            d_sh, d_w = edge(x, g, gg_sh, gg_w, table, edge_index, ptr, perm)
        return dx, dg, d_sh, d_w, None, None, None, None

    torch.library.register_autograd(segment_name, segment_backward, setup_context=segment_setup)
    torch.library.register_autograd(edge_name, edge_backward, setup_context=edge_setup)
    return Backend("", segment, edge)


# --- the C++ extension: "cpu" (and "cuda" where csrc/*.cu was built) -----------------------------

def _load_native() -> tuple[Optional[Backend], str]:
    try:
        native.load()  # compiles csrc/ on first use for this torch (ops/native.py)
    except RuntimeError as e:
        return None, str(e)
    torch.library.register_fake("nequip_fast::conv_graph")(
        lambda edge_index, num_nodes: (edge_index.new_empty(2, num_nodes + 1), edge_index.new_empty(edge_index.shape))
    )
    backend = _register_fake_and_autograd("nequip_fast::segment_conv", "nequip_fast::edge_grads")
    return replace(backend, graph=_native_graph), ""


def _native_graph(edge_index: torch.Tensor, num_nodes: int) -> ConvGraph:
    if edge_index.device.type != "cpu":  # the counting sort is serial host code
        return conv_graph(edge_index, num_nodes)
    return ConvGraph(edge_index, *torch.ops.nequip_fast.conv_graph(edge_index, num_nodes))


# --- Triton: Python custom ops around nequip_fast.kernels --------------------------------------------

_DESCRIPTORS: dict[bytes, ConvDescriptor] = {}
_TABLE_CACHE: dict[int, tuple[weakref.ref, ConvDescriptor]] = {}


def _descriptor(table: torch.Tensor) -> ConvDescriptor:
    """The ConvDescriptor a table was made from (Triton specialises its kernels on the Python object)."""
    cached = _TABLE_CACHE.get(table.data_ptr())
    if cached is not None and cached[0]() is table:
        return cached[1]
    key = table.detach().cpu().numpy().tobytes()
    if key not in _DESCRIPTORS:
        raise KeyError("conv table was not made by descriptor_table() in this process")
    _TABLE_CACHE[table.data_ptr()] = (weakref.ref(table), _DESCRIPTORS[key])
    return _DESCRIPTORS[key]


def _load_triton() -> tuple[Optional[Backend], str]:
    try:
        importlib.import_module("triton")
    except ImportError as e:
        return None, f"triton is not installed ({e}); `pip install triton`"
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return None, "no GPU; to run the Triton kernels on CPU set TRITON_INTERPRET=1 before Python starts"
    try:
        kernels = importlib.import_module("nequip_fast.kernels")
        kernel_segment_conv, kernel_edge_grads = kernels.segment_conv, kernels.edge_grads
    except (ImportError, AttributeError) as e:
        return None, f"nequip_fast.kernels does not provide segment_conv and edge_grads ({e})"

    @torch.library.custom_op("nequip_fast::triton_segment_conv", mutates_args=())
    def triton_segment_conv(x: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor, table: torch.Tensor,
                            edge_index: torch.Tensor, ptr: torch.Tensor, perm: torch.Tensor, out_features: int,
                            transpose: bool) -> torch.Tensor:
        d = int(transpose)
        col = edge_index[1 - d][perm[d]]
        return kernel_segment_conv(_descriptor(table), x, sh, weight, ptr[d], perm[d], col, transpose)

    @torch.library.custom_op("nequip_fast::triton_edge_grads", mutates_args=())
    def triton_edge_grads(x: torch.Tensor, g: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor,
                          table: torch.Tensor, edge_index: torch.Tensor, ptr: torch.Tensor,
                          perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return kernel_edge_grads(_descriptor(table), x, g, sh, weight, edge_index[1], edge_index[0])

    return _register_fake_and_autograd("nequip_fast::triton_segment_conv", "nequip_fast::triton_edge_grads"), ""


_LOADERS = {"cpu": _load_native, "cuda": _load_native, "triton": _load_triton}
_LOADED: dict[Callable, tuple[Optional[Backend], str]] = {}


def load_backend(name: str) -> Backend:
    """The fused backend ``name`` ("cpu", "cuda", "triton"); a clear error says why one is unavailable."""
    loader = _LOADERS[name]
    if loader not in _LOADED:
        _LOADED[loader] = loader()
    backend, reason = _LOADED[loader]
    if backend is None:
        raise RuntimeError(f"conv backend {name!r} is unavailable: {reason}")
    if name == "cuda" and not torch._C._dispatch_has_kernel_for_dispatch_key("nequip_fast::segment_conv", "CUDA"):
        raise RuntimeError(f"conv backend 'cuda' is unavailable: no CUDA kernels built ({native.cuda_archs()[1]})")
    return replace(backend, name=name)


def available_backends() -> tuple[str, ...]:
    """Fused backends that load here (a GPU is still needed for "cuda", and for "triton" outside the interpreter)."""
    names = []
    for name in _LOADERS:
        try:
            load_backend(name)
            names.append(name)
        except RuntimeError:
            pass
    return tuple(names)

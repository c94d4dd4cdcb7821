"""A tabulated radial network's lookup as the C++ ops ``nequip_fast::table_lookup`` and
``table_lookup_backward`` (csrc/table_cpu.cpp): per edge on interval ``i`` at ``t`` in [0, 1],
``w = sum_k t**k table[4 i + k]``, and as its backward the t-derivative against ``g`` in one pass
over the rows. torch's ``embedding_bag`` computes the same forward, but its backward for the
per-sample weights calls a BLAS dot per edge and table row (6-7% of a deployed E+F).

Used for CPU float tensors by models whose convolution runs on the ops library (eager and in a
deployed file, which loads the library for its conv anyway: ``model.tabulated``). The second
derivative is torch ops (``embedding_bag_lookup``, also the lookup everywhere else), right at every order.
"""
from __future__ import annotations

import math

import torch

_DTYPES = (torch.float32, torch.float64)


def fused(t: torch.Tensor) -> bool:
    """Whether the ops run for ``t``: a float32/float64 CPU tensor, the library loaded."""
    return t.device.type == "cpu" and t.dtype in _DTYPES and load()


def table_lookup(interval: torch.Tensor, t: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(E, W) weights of E edges: ``interval`` (E,) int64, ``t`` (E,), ``table`` (4 x intervals, W)
    with the ``t**k`` coefficients of interval ``i`` in rows ``4 i + k``."""
    if table.requires_grad:
        raise ValueError("nequip_fast table_lookup: the table is a constant (it has no gradient here)")
    return torch.ops.nequip_fast.table_lookup(interval, t, table)


def embedding_bag_lookup(interval: torch.Tensor, t: torch.Tensor, table: torch.Tensor,
                         derivative: int = 0) -> torch.Tensor:
    """The lookup (``derivative`` 0) or its ``derivative``-th t-derivative in torch ops: one
    ``embedding_bag`` of the rows ``4 i + k``, k >= derivative, weighted by d^n/dt^n t**k (any device,
    differentiable to any order)."""
    rows = interval.unsqueeze(-1) * 4 + torch.arange(derivative, 4, device=interval.device)
    t = t.unsqueeze(-1)
    weights, power = [], torch.ones_like(t)
    for k in range(derivative, 4):  # t**(k - derivative) by products, as (1, t, t * t, t * t * t)
        factor = math.perm(k, derivative)  # k! / (k - derivative)!
        weights.append(power if factor == 1 else factor * power)
        power = power * t
    return torch.nn.functional.embedding_bag(rows, table, per_sample_weights=torch.cat(weights, dim=-1), mode="sum")


def load() -> bool:
    """Whether the ops are loaded and registered here (``native.registered``)."""
    from . import native

    return native.registered(_register)


def _register() -> None:
    ops = torch.ops.nequip_fast
    torch.library.register_fake("nequip_fast::table_lookup")(
        lambda interval, t, table: t.new_empty(t.shape[0], table.shape[1]))
    torch.library.register_fake("nequip_fast::table_lookup_backward")(lambda g, interval, t, table: t.new_empty(t.shape))

    def save_inputs(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def lookup_backward(ctx, g):
        interval, t, table = ctx.saved_tensors
        return None, ops.table_lookup_backward(g, interval, t, table), None

    def lookup_backward_backward(ctx, c):
        # <c, dt> with dt[e] = <g[e], D[e]>, D = table[4i+1] + 2t table[4i+2] + 3t^2 table[4i+3]:
        # d/dg = c D, d/dt = c <g, 2 table[4i+2] + 6t table[4i+3]>
        g, interval, t, table = ctx.saved_tensors
        d_g = c.unsqueeze(-1) * embedding_bag_lookup(interval, t, table, 1)
        d_t = c * (g * embedding_bag_lookup(interval, t, table, 2)).sum(-1)
        return d_g, None, d_t, None

    torch.library.register_autograd("nequip_fast::table_lookup", lookup_backward, setup_context=save_inputs)
    torch.library.register_autograd("nequip_fast::table_lookup_backward", lookup_backward_backward,
                                    setup_context=save_inputs)

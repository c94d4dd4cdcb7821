"""A tabulated radial network's lookup as the C++ ops ``nequip_fast::table_lookup`` and
``table_lookup_backward`` (csrc/table_cpu.cpp): per edge on interval ``i`` at ``t`` in [0, 1],
``w = sum_k t**k table[4 i + k]``, and as its backward the t-derivative against ``g`` in one pass
over the rows. torch's ``embedding_bag`` computes the same forward, but its backward for the
per-sample weights calls a BLAS dot per edge and table row (6-7% of a deployed E+F).

Used for CPU float tensors by models whose convolution runs on the ops library (eager and in a
deployed file, which loads the library for its conv anyway: ``model.tabulated``). The second
derivative is torch ops (``embedding_bag``), right at every order.
"""
from __future__ import annotations

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


def lookup_reference(interval: torch.Tensor, t: torch.Tensor, table: torch.Tensor, powers: tuple = (0, 1, 2, 3),
                     factors: tuple = (1, 1, 1, 1)) -> torch.Tensor:
    """``sum_j factors[j] t**(powers[j] - k0) table[4 i + powers[j]]`` by ``embedding_bag`` (torch ops,
    differentiable to any order); the defaults give the lookup itself."""
    k0 = powers[0]
    rows = interval.unsqueeze(-1) * 4 + torch.tensor(powers, device=interval.device)
    tk = t.unsqueeze(-1)
    weights = torch.cat([f * tk ** (k - k0) if k > k0 else torch.full_like(tk, f) for k, f in zip(powers, factors)],
                        dim=-1)
    return torch.nn.functional.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")


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
        d_g = c.unsqueeze(-1) * lookup_reference(interval, t, table, (1, 2, 3), (1, 2, 3))
        d_t = c * (g * lookup_reference(interval, t, table, (2, 3), (2, 6))).sum(-1)
        return d_g, None, d_t, None

    torch.library.register_autograd("nequip_fast::table_lookup", lookup_backward, setup_context=save_inputs)
    torch.library.register_autograd("nequip_fast::table_lookup_backward", lookup_backward_backward,
                                    setup_context=save_inputs)

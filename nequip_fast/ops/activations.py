"""The radial MLP's SiLU as the C++ ops ``nequip_fast::silu``, ``silu_grad``, ``silu_grad2`` (csrc/silu.cpp).

Each derivative level is one elementwise pass: ``silu(z)``; its backward ``silu_grad(g, z) = g silu'(z)``;
the backward of that ``silu_grad2(gg, g, z) = (gg silu'(z), gg g silu''(z))``, where torch runs autograd's
formula for silu_backward as about nine passes (a training step with a force loss spends ~20% there).
The third derivative (never needed by training) is torch ops: slower, right at every order.
In float64 the first two are ATen's own kernels inside the ops (as fast; only the pair gains there).

``silu`` uses the ops for float32/float64 CPU tensors in eager mode once the ops library loads, and
torch's silu otherwise: on other devices, while a model is traced (torch.compile, make_fx,
torch.export: ``nequip-fast deploy``), where Inductor fuses torch's silu into its neighbours and the
exported program keeps needing no library of ours for it, and under torch.func transforms and
forward-mode AD, for which the ops have no rule (called directly there, they would give a zero
tangent). Fake implementations are registered all the same, so a trace that does reach the ops is right.
"""
from __future__ import annotations

import torch

from .eager import traced_or_transformed

_FUSED_DTYPES = (torch.float32, torch.float64)


def silu(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(x)``: the fused op on CPU in eager mode, torch's silu elsewhere (see the module doc)."""
    if fused(x):
        return torch.ops.nequip_fast.silu(x)
    return torch.nn.functional.silu(x)


def fused(x: torch.Tensor) -> bool:
    """Whether the fused ops run for ``x``: a float32/float64 CPU tensor in eager mode, the library loaded."""
    return x.device.type == "cpu" and x.dtype in _FUSED_DTYPES and not traced_or_transformed() and _load()


def silu_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(silu(x), silu'(x))`` in one pass, outside autograd (float32 ``fused(x)`` tensors): a caller
    that needs only the first derivative keeps silu'(x) instead of x (``ops.matmul.silu_matmul``)."""
    return torch.ops.nequip_fast.silu_with_grad(x)


def _load() -> bool:
    """Whether the ops are loaded and registered here (``native.registered``); conv backend ``auto``
    already warns where the library cannot be built."""
    from . import native

    return native.registered(_register)


def _derivatives(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """silu', silu'', silu''' in torch ops (differentiable): s = sigmoid(z), q = 1 - s = sigmoid(-z)."""
    s, q = torch.sigmoid(z), torch.sigmoid(-z)
    sq = s * q
    return s * (1 + z * q), sq * (2 + z * (q - s)), sq * (3 * (q - s) + z * (1 - 6 * sq))


def _register() -> None:
    ops = torch.ops.nequip_fast
    torch.library.register_fake("nequip_fast::silu")(lambda z: torch.empty_like(z))
    torch.library.register_fake("nequip_fast::silu_grad")(lambda g, z: torch.empty_like(z))
    torch.library.register_fake("nequip_fast::silu_grad2")(
        lambda gg, g, z: (torch.empty_like(z), torch.empty_like(z)))
    torch.library.register_fake("nequip_fast::silu_with_grad")(lambda z: (torch.empty_like(z), torch.empty_like(z)))

    def save_inputs(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def silu_backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return ops.silu_grad(grad, z)

    def silu_grad_backward(ctx, gg):
        # d<gg, g silu'(z)>/dg = gg silu'(z), /dz = gg g silu''(z): both from one pass
        g, z = ctx.saved_tensors
        d_g, d_z = ops.silu_grad2(gg, g, z)
        return d_g, d_z

    def silu_grad2_backward(ctx, c1, c2):
        # outputs gg silu'(z), gg g silu''(z); cotangents c1, c2 (None where unused)
        gg, g, z = ctx.saved_tensors
        d1, d2, d3 = _derivatives(z)
        c1 = torch.zeros_like(z) if c1 is None else c1
        c2 = torch.zeros_like(z) if c2 is None else c2
        return c1 * d1 + c2 * g * d2, c2 * gg * d2, gg * (c1 * d2 + c2 * g * d3)

    torch.library.register_autograd("nequip_fast::silu", silu_backward, setup_context=save_inputs)
    torch.library.register_autograd("nequip_fast::silu_grad", silu_grad_backward, setup_context=save_inputs)
    torch.library.register_autograd("nequip_fast::silu_grad2", silu_grad2_backward, setup_context=save_inputs)

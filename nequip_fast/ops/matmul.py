"""``matmul(x, a)``: the model's large dense products (the radial MLP's) through oneDNN on CPU.

torch's CPU ``mm`` calls MKL's sgemm, which on AMD CPUs runs at about half of what the cores can do:
on a Zen 5 EPYC (2 threads), 205-210 GFLOP/s for the radial MLP's (edges x 64) @ (64 x 64 | 160)
against 350-480 GFLOP/s through oneDNN, which torch ships too (benchmarks/RESULTS.md). The same
products, the same float32 rounding class (sums in another order). The backward is made of the same
``matmul``, so the double backward (training on forces) takes the fast path as well.

Memory and time per shape: oneDNN makes a primitive per product shape (rows included) on its first
call, ~2 ms, and keeps it, ~0.5 MiB, made amid the call's tensors; 34 shapes of an l_max 2 E+F call
(most of them the layers' small node-level products) raised its peak resident set by ~45 MiB. So
only the products that gain use it, the radial MLP's (the layer epilogues use torch's ``@``), and on
bucketed row counts (``row_bucket``), since the edge count changes with every MD step and batch.

oneDNN is used for float32 CPU tensors in eager mode where torch was built with it; torch's ``@``
otherwise: float64 (oneDNN has none), other devices, and while a model is traced or transformed
(``eager.traced_or_transformed``; the deployed program is Inductor's). ``enable_onednn(False)`` turns
it off in this process (A/B measurements, tests).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Optional

import torch

from . import activations
from .eager import traced_or_transformed
from .engine import will_use_grad

_enabled: Optional[bool] = None  # None: not decided yet (the first float32 CPU call probes oneDNN)
_local = threading.local()  # .constant_weights: inside ``constant_weights()`` on this thread


def matmul(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``x @ a`` for 2-d ``x`` (m, k) and ``a`` (k, n). oneDNN only for a row-major ``x``: given the
    transposed operand of a weight gradient (``x.t() @ grad``, a long reduction) it reorders it first
    and ran up to 30x slower than MKL, which reads the transpose in place."""
    if getattr(_local, "constant_weights", False) and a.requires_grad and not traced_or_transformed():
        a = a.detach()
    if _onednn_takes(x, a):
        return _OneDNNMatmul.apply(x, a)
    return x @ a


def bucketed(x: torch.Tensor) -> torch.Tensor:
    """``x`` (m, k) with zero rows appended up to ``row_bucket(m)`` where oneDNN takes its products,
    else ``x``. A chain of products (the radial MLP) pads its input once and cuts its output once:
    each product padding its own operand copied every (m x 64 | n_w) operand both ways, which made
    an l_max 1 E+F call 10-15% slower on edge counts off a bucket (nearly every MD step)."""
    m = x.shape[0]
    if not _onednn_takes(x, x[:1]) or row_bucket(m) == m:  # x[:1]: any operand that oneDNN takes with x
        return x
    return torch.nn.functional.pad(x, (0, 0, 0, row_bucket(m) - m))


def _onednn_takes(x: torch.Tensor, a: torch.Tensor) -> bool:
    """Whether ``x @ a`` runs on oneDNN: 2-d float32 CPU operands, ``x`` row-major, eager, oneDNN usable."""
    return (x.dtype == torch.float32 and a.dtype == torch.float32 and x.device.type == "cpu"
            and a.device.type == "cpu" and x.dim() == 2 and a.dim() == 2 and x.numel() > 0 and a.numel() > 0
            and x.is_contiguous() and not traced_or_transformed() and _available())


def matmul_tn(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``x.t() @ g`` for 2-d ``x`` (k, m) and ``g`` (k, n), k long: a weight gradient of ``matmul``.
    float32 CPU in eager mode: the op ``nequip_fast::matmul_tn`` (csrc/matmul_cpu.cpp), 1.6-9x
    torch's (MKL's) on the radial MLP's shapes (benchmarks/RESULTS.md, issue 14); its backward is
    ``matmul`` again. Elsewhere torch's product."""
    if (x.dtype == torch.float32 and g.dtype == torch.float32 and x.dim() == 2 and g.dim() == 2
            and g.device.type == "cpu" and activations.fused(x)):  # fused: CPU eager, the ops library loaded
        return _MatmulTN.apply(x, g)
    return x.t() @ g


def silu_matmul(z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``silu(z) @ a``, a hidden layer of the radial MLP. Within ``constant_weights`` where oneDNN runs
    (float32 CPU eager), one pass gives silu(z) and silu'(z) and the backward is (g @ a^T) * silu'(z),
    one oneDNN product and a multiply in place: no backward pass of the SiLU, which read z (oneDNN's
    multiply post-op measured slower than the separate multiply, 0.54 against 0.48 ms at
    21504 x 64 x 64; benchmarks/RESULTS.md, issue 14). That backward refuses
    create_graph (it has no derivative), which forces without a graph never ask for. Elsewhere
    ``matmul(silu(z), a)``."""
    if getattr(_local, "constant_weights", False) and _onednn_takes(z, a) and activations.fused(z):
        return _SiluMatmul.apply(z, a.detach())
    return matmul(activations.silu(z), a)


@contextlib.contextmanager
def constant_weights(active: bool = True) -> Iterator[None]:
    """Within (on this thread): ``matmul`` takes its second operand as a constant, so its backward
    keeps no x (which only the weight's gradient reads). For calls whose graph only ever gives the
    gradient of the inputs: forces without ``create_graph``, where ``autograd.grad(E, positions)``
    frees the graph, so no parameter gradient can be asked for afterwards. In the radial MLP the x's
    are the SiLUs' outputs (edges x 64 each): 2 per layer that the forces' backward no longer keeps."""
    before = getattr(_local, "constant_weights", False)
    _local.constant_weights = active
    try:
        yield
    finally:
        _local.constant_weights = before


def enable_onednn(enabled: bool) -> bool:
    """Use oneDNN for float32 CPU products in this process (where it works) or never; returns
    whether it is used now."""
    global _enabled
    _enabled = enabled and _probe()
    return _enabled


def _available() -> bool:
    global _enabled
    if _enabled is None:
        _enabled = _probe()
    return _enabled


def _linear(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    # oneDNN's inner product: x (m, k) times weight (n, k) transposed; strided views are taken as they are
    return torch.ops.mkldnn._linear_pointwise(x, a.t(), None, "none", [], "")


def row_bucket(m: int) -> int:
    """``m`` rounded up to one of 16 to 32 row counts per octave (at most 1/16 more rows)."""
    step = 1 << max(0, m.bit_length() - 5)
    return -(-m // step) * step


def _linear_rows(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``_linear`` on ``row_bucket`` rows, zero rows appended and cut off again. oneDNN makes a
    primitive for each new shape (~2 ms at 21504 x 64 x 64, where the product takes 0.4) and keeps it
    for the process (~0.5 MiB), and the radial MLP's row count, the edge pairs, changes with nearly
    every MD step and training batch: unpadded, that cost more than oneDNN gains and grew its cache
    towards 0.5 GiB."""
    m = x.shape[0]
    rows = row_bucket(m)
    if rows != m:
        x = _pad_rows(x, rows)
    y = _linear(x, a)
    return y if rows == m else y[:m]


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    padded = x.new_empty((rows, x.shape[1]))
    padded[: x.shape[0]] = x
    padded[x.shape[0]:] = 0
    return padded


def _probe() -> bool:
    """oneDNN's linear is a private op of torch's: use it only if it exists here and computes ``@``."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    a = torch.arange(8, dtype=torch.float32).reshape(4, 2) - 3
    try:
        return bool(torch.equal(_linear(x, a), x @ a) and torch.equal(_linear(x.t(), x), x.t() @ x))
    except RuntimeError:
        return False


def _save_crosswise(ctx, inputs) -> None:
    """For a product of two operands, as torch's mm: each is kept only for the other's gradient."""
    x, a = inputs
    ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, a if ctx.needs_input_grad[0] else None)


class _OneDNNMatmul(torch.autograd.Function):
    """``x @ a`` whose backward is ``matmul`` again (so differentiable to any order)."""

    @staticmethod
    def forward(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return _linear_rows(x, a)

    setup_context = staticmethod(lambda ctx, inputs, output: _save_crosswise(ctx, inputs))

    @staticmethod
    def backward(ctx, grad):
        x, a = ctx.saved_tensors
        # ``matmul`` again: a graph (training on forces) gets this backward's backward, and forces in
        # inference the faster products (MKL here cost 7-10% of an l_max 1 E+F call at 1 thread;
        # oneDNN's primitives for these shapes ~20 MiB of peak: benchmarks/RESULTS.md, issue 14).
        grad_x = matmul(grad, a.t()) if will_use_grad(ctx, 0) else None
        grad_a = matmul_tn(x, grad) if will_use_grad(ctx, 1) else None
        return grad_x, grad_a


class _SiluMatmul(torch.autograd.Function):
    """``silu(z) @ a`` for a constant ``a``, keeping silu'(z) (not z) for a backward that is one product
    and a multiply."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        s, ds = activations.silu_with_grad(z)
        ctx.save_for_backward(ds, a)
        return _linear_rows(s, a)

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # create_graph: this backward has no derivative
            raise RuntimeError("silu_matmul within constant_weights() is for forces without a graph; "
                               "a backward with create_graph=True must run outside constant_weights()")
        ds, a = ctx.saved_tensors
        return _linear_rows(grad.contiguous(), a.t()).mul_(ds), None


class _MatmulTN(torch.autograd.Function):
    """``x.t() @ g`` whose backward is ``matmul`` (differentiable to any order): the gradients of
    <c, x^T g> are g c^T for x and x c for g."""

    @staticmethod
    def forward(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return torch.ops.nequip_fast.matmul_tn(x, g)

    setup_context = staticmethod(lambda ctx, inputs, output: _save_crosswise(ctx, inputs))

    @staticmethod
    def backward(ctx, c):
        x, g = ctx.saved_tensors
        grad_x = matmul(g, c.t()) if will_use_grad(ctx, 0) else None
        grad_g = matmul(x, c) if will_use_grad(ctx, 1) else None
        return grad_x, grad_g

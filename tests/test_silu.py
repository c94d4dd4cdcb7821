"""The fused SiLU ops (csrc/silu.cpp, nequip_fast/ops/activations.py) against torch's silu and its derivatives."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nequip_fast.ops import activations

from conftest import graph_of, random_crystal, small_model

if not activations._load():
    pytest.skip("the C++ ops library does not build here (see the conv backend 'cpu' error)", allow_module_level=True)

ops = torch.ops.nequip_fast
SPECIAL = [0.0, -0.0, 1e-30, -1e-30, 100.0, -100.0, 1e4, -1e4, 88.0, -88.0, 89.0, -89.0,
           float("inf"), float("-inf"), float("nan")]


def operands(dtype, n=20000, seed=0):
    """z over a wide range (dense near 0, out to +-120, and the special values), random g, gg."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.cat([torch.linspace(-120, 120, n, dtype=torch.float64),
                   5 * torch.randn(n, generator=gen, dtype=torch.float64),
                   torch.tensor(SPECIAL[:-3], dtype=torch.float64)]).to(dtype)
    g, gg = (torch.randn(z.shape, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2))
    return z, g, gg


def truth(z, g, gg):
    """float64 values and scales (the sums of the terms' magnitudes, for errors near the zeros of
    silu' and silu''): silu, g silu', gg silu', gg g silu''."""
    z, g, gg = z.double(), g.double(), gg.double()
    s, q = torch.sigmoid(z), torch.sigmoid(-z)
    values = [z * s, g * s * (1 + z * q), gg * s * (1 + z * q), gg * g * s * q * (2 + z * (q - s))]
    scales = [(z * s).abs(), g.abs() * s * (1 + z.abs() * q), gg.abs() * s * (1 + z.abs() * q),
              (gg * g).abs() * s * q * (2 + z.abs() * (q + s))]
    return values, scales


def fused(z, g, gg):
    return [ops.silu(z), ops.silu_grad(g, z), *ops.silu_grad2(gg, g, z)]


def torch_autograd(z, g, gg):
    """silu, its backward and double backward through torch's own autograd formulas."""
    z = z.detach().requires_grad_()
    y = torch.nn.functional.silu(z)
    g = g.detach().requires_grad_()
    (dz,) = torch.autograd.grad(y, z, g, create_graph=True)
    d_g, d_z = torch.autograd.grad(dz, (g, z), gg)
    return [y.detach(), dz.detach(), d_g, d_z]


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-14), (torch.float32, 4e-7)])
def test_ops_match_float64_truth(dtype, tolerance):
    """float64 to 1e-14 and float32 within ~3 ulp (2^-23 = 1.2e-7) of the float64 value, relative to
    the terms' size (torch 2.13's own float32 silu_backward errs by up to 1e-6 on these operands)."""
    z, g, gg = operands(dtype)
    values, scales = truth(z, g, gg)
    tiny = 1e-300 if dtype == torch.float64 else 1e-30  # float32: z e(z) flushes to 0 below z = -87.3
    for name, out, ref, scale in zip(("silu", "silu_grad", "silu_grad2[0]", "silu_grad2[1]"),
                                     fused(z, g, gg), values, scales):
        assert out.dtype == dtype and out.shape == z.shape
        error = ((out.double() - ref).abs() - tiny).clamp_min(0) / scale.clamp_min(1e-300)
        assert error.max() <= tolerance, f"{name} {dtype}: error {error.max():.2e} at z = {z[error.argmax()]}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ops_match_torch_autograd(dtype):
    """Against torch's own formulas in the same dtype, relative to the rounding scale of those formulas
    (they lose the tails, e.g. silu''(z) ~ z exp(-z) for z >> 1 comes out as ~eps z, and in float32
    silu_backward errs by up to ~17 ulp); the precise comparison is test_ops_match_float64_truth."""
    z, g, gg = operands(dtype, n=2000, seed=1)
    tolerance = 1e-14 if dtype == torch.float64 else 2e-6
    z64, g64, gg64 = z.double().abs(), g.double().abs(), gg.double().abs()
    scales = [z64, g64 * (1 + z64), gg64 * (1 + z64), gg64 * g64 * (2 + z64)]
    for out, ref, scale in zip(fused(z, g, gg), torch_autograd(z, g, gg), scales):
        error = ((out.double() - ref.double()).abs() - 1e-30).clamp_min(0) / scale.clamp_min(1e-300)
        assert error.max() <= tolerance, f"error {error.max():.2e} at z = {z[error.argmax()]}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_special_values_as_torch(dtype):
    """+-inf and NaN give what torch gives (NaN where torch has 0 * inf); large |z| stays finite."""
    z = torch.tensor(SPECIAL, dtype=dtype)
    ones = torch.ones_like(z)
    ref = torch_autograd(z, ones, ones)
    for out, expected in zip(fused(z, ones, ones), ref):
        assert torch.equal(out.isnan(), expected.isnan()), (out, expected)
        finite = ~expected.isnan()
        torch.testing.assert_close(out[finite], expected[finite], rtol=1e-6, atol=1e-30)
    assert torch.isfinite(torch.stack(fused(z[:-3], ones[:-3], ones[:-3]))).all()


def test_results_do_not_depend_on_threads():
    """Sizes over several parallel chunks, with a tail that is not a whole vector."""
    z, g, gg = operands(torch.float32, n=50001, seed=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fused(z, g, gg)
        torch.set_num_threads(2)
        two = fused(z, g, gg)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    tail = fused(z[:13], g[:13], gg[:13])  # the tail runs the vector code: same bits
    assert all(torch.equal(a, b[:13]) for a, b in zip(tail, one))


def test_bad_operands_are_named():
    with pytest.raises(RuntimeError, match="silu: float32 or float64 expected"):
        ops.silu(torch.ones(3, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="silu_grad: operand 0"):
        ops.silu_grad(torch.ones(4), torch.ones(3))
    with pytest.raises(RuntimeError, match="silu_grad2: operand 1"):
        ops.silu_grad2(torch.ones(3), torch.ones(3, dtype=torch.float64), torch.ones(3))


def test_non_contiguous_operands():
    z = torch.randn(64, 40, dtype=torch.float64)[:, ::3]
    g = torch.randn(40, 64, dtype=torch.float64).t()[:, ::3]
    for out, ref in zip(fused(z, g, g), torch_autograd(z, g, g)):
        torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-15)


def test_gradcheck_to_third_derivative():
    """Backward and double backward (the fused ops) and the third derivative (torch ops) against finite differences."""
    z = (3 * torch.randn(30, dtype=torch.float64)).requires_grad_()
    g = torch.randn(30, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(activations.silu, (z,))
    assert torch.autograd.gradgradcheck(activations.silu, (z,))

    def backward(z, g):
        return torch.autograd.grad(activations.silu(z), z, g, create_graph=True)[0]

    assert torch.autograd.gradgradcheck(backward, (z, g))  # needs silu_grad2's backward


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_fused_in_eager_torch_silu_when_traced():
    z = torch.randn(5, 4, requires_grad=True)
    with OpLog() as log:
        y = activations.silu(z)
        (d,) = torch.autograd.grad(y.sum(), z, create_graph=True)
        d.sum().backward()
    fused_ops = {"nequip_fast.silu.default", "nequip_fast.silu_grad.default", "nequip_fast.silu_grad2.default"}
    assert fused_ops <= set(log.ops)
    from torch.fx.experimental.proxy_tensor import make_fx

    traced = make_fx(activations.silu, tracing_mode="symbolic")(torch.randn(5, 4))
    targets = {str(node.target) for node in traced.graph.nodes if node.op == "call_function"}
    assert "aten.silu.default" in targets and not any("nequip_fast" in t for t in targets), targets
    assert torch.equal(activations.silu(torch.ones(3, dtype=torch.float16)),
                       torch.nn.functional.silu(torch.ones(3, dtype=torch.float16)))  # no fused half: torch's


def test_transforms_use_torch_silu():
    """Forward-mode AD and torch.func transforms, which the ops have no rule for, get torch's silu:
    right tangents (model.tabulated takes the radial slopes from torch.func.jvp)."""
    z = torch.linspace(-3, 3, 7, dtype=torch.float64)
    slope = torch.func.jvp(activations.silu, (z,), (torch.ones_like(z),))[1]
    _, expected = truth(z, torch.ones_like(z), torch.ones_like(z))[0][:2]
    torch.testing.assert_close(slope, expected, rtol=1e-14, atol=0)
    import torch.autograd.forward_ad as forward_ad

    with forward_ad.dual_level():
        tangent = forward_ad.unpack_dual(activations.silu(forward_ad.make_dual(z, torch.ones_like(z)))).tangent
    torch.testing.assert_close(tangent, expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(torch.func.grad(lambda x: activations.silu(x).sum())(z), expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(torch.func.vmap(activations.silu)(z[:, None]), activations.silu(z)[:, None])


def forces_and_loss_gradient(model, atoms):
    out = model(graph_of(atoms, model), create_graph=True)
    loss = (out.forces ** 2).sum() + out.energy.sum() ** 2
    params = [p for p in model.parameters() if p.requires_grad]
    return out.forces.detach(), torch.autograd.grad(loss, params)


def test_model_equals_torch_silu_model(monkeypatch):
    """float64 forces and a force-loss parameter gradient (the double backward) as with torch's silu."""
    model = small_model(seed=3)
    atoms = random_crystal(seed=4)
    forces, grads = forces_and_loss_gradient(model, atoms)
    monkeypatch.setattr(activations, "silu", torch.nn.functional.silu)  # what the radial MLP calls
    ref_forces, ref_grads = forces_and_loss_gradient(model, atoms)
    assert forces.abs().max() > 1e-3
    torch.testing.assert_close(forces, ref_forces, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert any(a.abs().max() > 1e-3 for a in grads)

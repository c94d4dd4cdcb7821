"""The Triton kernels equal the path table's formulas and e3nn, run on CPU by Triton's interpreter.

``TRITON_INTERPRET`` is read when a kernel is generated, so setting it here suffices even though
e3nn (through torch) has already imported triton by the time this module runs.
"""
import functools
import os
import subprocess
import sys
import textwrap

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from e3nn import o3  # noqa: E402

from nequip_fast.ops import ConvDescriptor  # noqa: E402

try:
    import triton  # noqa: E402
except ImportError as error:
    pytest.skip(f"triton is not installed ({error}); pip install triton", allow_module_level=True)

from nequip_fast import kernels  # noqa: E402
from nequip_fast.ops.plan import lower  # noqa: E402
from nequip_fast.ops.triton_ops import kernel_plan  # noqa: E402


def segment_conv(desc, x, sh, w, row_ptr, perm, col, transpose):
    """The kernel on the plan orientation of ``desc`` that the op layer would give it."""
    return kernels.segment_conv(kernel_plan(lower(desc, x.dtype), transpose), x, sh, w, row_ptr, perm, col)


def edge_grads(desc, x, g, sh, w, sender, receiver):
    return kernels.edge_grads(kernel_plan(lower(desc, x.dtype), False), x, g, sh, w, sender, receiver)

# (irreps_in, l_max, parity): l up to 3, multiplicities 1, 3, 16, mixed, and 33 (two channel blocks, masked)
CONFIGS = [
    ("3x0e+3x1o+3x2e+3x3o", 3, True),
    ("1x0e+1x1e+1x2e", 2, False),
    ("16x0e+16x1o", 1, True),
    ("1x0e+3x1o+16x2e", 2, True),
    ("33x0e+33x1e", 1, False),
]
# every configuration in float64; float32 on two (the interpreter is slow)
CASES = [pytest.param(c, torch.float64, id=f"{c[0]}-l{c[1]}-{'O3' if c[2] else 'SO3'}-f64") for c in CONFIGS] + [
    pytest.param(c, torch.float32, id=f"{c[0]}-l{c[1]}-{'O3' if c[2] else 'SO3'}-f32") for c in CONFIGS[3:]
]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def descriptor(irreps_in: str, l_max: int, parity: bool) -> ConvDescriptor:
    irreps_sh = o3.Irreps.spherical_harmonics(l_max, p=-1 if parity else 1)
    target = o3.Irreps([(1, (l, p)) for l in range(l_max + 1) for p in ((1, -1) if parity else (1,))])
    return ConvDescriptor.nequip(irreps_in, irreps_sh, target)


def random_graph(num_nodes: int = 7, num_edges: int = 13, seed: int = 0):
    """(sender, receiver) with a self-loop, a duplicated edge, and nodes 5, 6 without any edge."""
    gen = torch.Generator().manual_seed(seed)
    sender = torch.randint(0, 5, (num_edges - 3,), generator=gen)
    receiver = torch.randint(0, 5, (num_edges - 3,), generator=gen)
    sender = torch.cat([sender, torch.tensor([2, 3, 3])])
    receiver = torch.cat([receiver, torch.tensor([2, 1, 1])])
    return sender, receiver, num_nodes


def csr(rows: torch.Tensor, cols: torch.Tensor, num_rows: int):
    """``(row_ptr, perm, col)`` grouping edges by ``rows``, as the op layer passes them."""
    perm = torch.argsort(rows, stable=True)
    row_ptr = torch.zeros(num_rows + 1, dtype=torch.int64)
    row_ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=num_rows), 0)
    return row_ptr, perm, cols[perm]


def dense_paths(desc: ConvDescriptor):
    """Each path with its CG nonzeros scattered into a dense ``(in_dim, sh_dim, out_dim)`` tensor."""
    for p in desc.paths:
        cg = torch.zeros(p.in_dim, p.sh_dim, p.out_dim, dtype=torch.float64)
        for i, j, k, value in p.cg:
            cg[i, j, k] = value
        yield p, cg


def block(t: torch.Tensor, offset: int, mul: int, dim: int) -> torch.Tensor:
    """Columns ``offset : offset + mul * dim`` of ``t`` as ``(rows, mul, dim)``."""
    return t[:, offset: offset + mul * dim].reshape(t.shape[0], mul, dim)


def tp_edges(desc: ConvDescriptor, x, sh, w, transpose: bool):
    """T (or T^T, reading ``x`` in the output layout) per edge, straight from the formulas."""
    out = x.new_zeros(x.shape[0], desc.irreps_in.dim if transpose else desc.irreps_out.dim)
    for p, cg in dense_paths(desc):
        ys, ws = sh[:, p.sh_offset: p.sh_offset + p.sh_dim], w[:, p.weight_offset: p.weight_offset + p.mul]
        if transpose:
            res = torch.einsum("euk,ej,ijk,eu->eui", block(x, p.out_offset, p.mul, p.out_dim), ys, cg.to(x.dtype), ws)
            block(out, p.in_offset, p.mul, p.in_dim).add_(res)
        else:
            res = torch.einsum("eui,ej,ijk,eu->euk", block(x, p.in_offset, p.mul, p.in_dim), ys, cg.to(x.dtype), ws)
            block(out, p.out_offset, p.mul, p.out_dim).add_(res)
    return out


def edge_grads_formula(desc: ConvDescriptor, x, g, sh, w, sender, receiver):
    g_sh, g_w = sh.new_zeros(sh.shape), w.new_zeros(w.shape)
    for p, cg in dense_paths(desc):
        xs = block(x[sender], p.in_offset, p.mul, p.in_dim)
        gs = block(g[receiver], p.out_offset, p.mul, p.out_dim)
        ys, ws = sh[:, p.sh_offset: p.sh_offset + p.sh_dim], w[:, p.weight_offset: p.weight_offset + p.mul]
        cg = cg.to(x.dtype)
        g_sh[:, p.sh_offset: p.sh_offset + p.sh_dim] += torch.einsum("eui,euk,ijk,eu->ej", xs, gs, cg, ws)
        g_w[:, p.weight_offset: p.weight_offset + p.mul] += torch.einsum("eui,euk,ijk,ej->eu", xs, gs, cg, ys)
    return g_sh, g_w


def segment_formula(desc, x, sh, w, row_ptr, perm, col, transpose):
    rows = torch.repeat_interleave(torch.arange(len(row_ptr) - 1), row_ptr.diff())
    messages = tp_edges(desc, x[col], sh[perm], w[perm], transpose)
    return messages.new_zeros(len(row_ptr) - 1, messages.shape[1]).index_add(0, rows, messages)


@functools.cache
def e3nn_tp(desc: ConvDescriptor) -> o3.TensorProduct:
    torch.set_default_dtype(torch.float64)  # e3nn stores its Clebsch-Gordan buffers in the default dtype
    try:
        return desc.e3nn_tensor_product()
    finally:
        torch.set_default_dtype(torch.float32)


def inputs(desc: ConvDescriptor, dtype, seed: int = 0):
    sender, receiver, num_nodes = random_graph(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    x, g = (torch.randn(num_nodes, d, generator=gen, dtype=dtype) for d in (desc.irreps_in.dim, desc.irreps_out.dim))
    sh = torch.randn(len(sender), desc.irreps_sh.dim, generator=gen, dtype=dtype)
    w = torch.randn(len(sender), desc.weight_numel, generator=gen, dtype=dtype)
    return x, g, sh, w, sender, receiver, num_nodes


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype):
    """Max error relative to the largest entry (entries that cancel to ~0 have no meaningful relative error)."""
    assert actual.shape == expected.shape and actual.dtype == dtype
    scale = expected.abs().max().clamp_min(1e-30)
    error = (actual.double() - expected.double()).abs().max() / scale
    assert error <= TOL[dtype], f"relative error {error:.3g} > {TOL[dtype]:g}"


@pytest.mark.parametrize("config, dtype", CASES)
def test_segment_conv_forward(config, dtype):
    desc = descriptor(*config)
    x, _, sh, w, sender, receiver, num_nodes = inputs(desc, dtype)
    row_ptr, perm, col = csr(receiver, sender, num_nodes)
    out = segment_conv(desc, x, sh, w, row_ptr, perm, col, transpose=False)
    x64, sh64, w64 = x.double(), sh.double(), w.double()
    assert_close(out, segment_formula(desc, x64, sh64, w64, row_ptr, perm, col, False), dtype)
    expected = torch.zeros(num_nodes, desc.irreps_out.dim, dtype=torch.float64)
    assert_close(out, expected.index_add(0, receiver, e3nn_tp(desc)(x64[sender], sh64, w64)), dtype)
    assert out[5:].abs().max() == 0  # nodes without edges


@pytest.mark.parametrize("config, dtype", CASES)
def test_segment_conv_transpose(config, dtype):
    """T^T reduced by sender is the gradient with respect to x (checked through e3nn's autograd)."""
    desc = descriptor(*config)
    x, g, sh, w, sender, receiver, num_nodes = inputs(desc, dtype)
    row_ptr, perm, col = csr(sender, receiver, num_nodes)
    out = segment_conv(desc, g, sh, w, row_ptr, perm, col, transpose=True)
    g64, sh64, w64 = g.double(), sh.double(), w.double()
    assert_close(out, segment_formula(desc, g64, sh64, w64, row_ptr, perm, col, True), dtype)
    x64 = x.double().requires_grad_()
    (grad_x,) = torch.autograd.grad((e3nn_tp(desc)(x64[sender], sh64, w64) * g64[receiver]).sum(), x64)
    assert_close(out, grad_x, dtype)


@pytest.mark.parametrize("config, dtype", CASES)
def test_edge_grads(config, dtype):
    desc = descriptor(*config)
    x, g, sh, w, sender, receiver, _ = inputs(desc, dtype)
    g_sh, g_w = edge_grads(desc, x, g, sh, w, sender, receiver)
    x64, g64, sh64, w64 = x.double(), g.double(), sh.double(), w.double()
    expected_sh, expected_w = edge_grads_formula(desc, x64, g64, sh64, w64, sender, receiver)
    assert_close(g_sh, expected_sh, dtype)
    assert_close(g_w, expected_w, dtype)
    sh64.requires_grad_(), w64.requires_grad_()
    grads = torch.autograd.grad((e3nn_tp(desc)(x64[sender], sh64, w64) * g64[receiver]).sum(), (sh64, w64))
    assert_close(g_sh, grads[0], dtype)
    assert_close(g_w, grads[1], dtype)


def test_no_edges():
    desc = descriptor(*CONFIGS[2])
    x, g, sh, w, *_ = inputs(desc, torch.float64)
    empty = torch.zeros(0, dtype=torch.int64)
    out = segment_conv(desc, x, sh[:0], w[:0], torch.zeros(4, dtype=torch.int64), empty, empty, transpose=False)
    assert out.shape == (3, desc.irreps_out.dim) and out.abs().max() == 0
    g_sh, g_w = edge_grads(desc, x, g, sh[:0], w[:0], empty, empty)
    assert g_sh.shape == (0, desc.irreps_sh.dim) and g_w.shape == (0, desc.weight_numel)


def test_bad_inputs():
    desc = descriptor(*CONFIGS[2])
    x, g, sh, w, sender, receiver, num_nodes = inputs(desc, torch.float64)
    row_ptr, perm, col = csr(receiver, sender, num_nodes)
    with pytest.raises(ValueError, match="col: expected an int64 vector"):
        segment_conv(desc, x, sh, w, row_ptr, perm, col.int(), transpose=False)
    with pytest.raises(ValueError, match="x: expected shape"):
        segment_conv(desc, x, sh, w, row_ptr, perm, col, transpose=True)
    with pytest.raises(ValueError, match="weight: expected dtype"):
        edge_grads(desc, x, g, sh, w.float(), sender, receiver)
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = False
        with pytest.raises(RuntimeError, match="needs a GPU"):
            edge_grads(desc, x, g, sh, w, sender, receiver)


# Builds the generated kernels for an H100 (sm_90): ptxas ships with triton, no GPU needed.
COMPILE_SCRIPT = textwrap.dedent("""
    import triton
    from e3nn import o3
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import torch
    from nequip_fast.kernels.conv import _edge_grads, _segment
    from nequip_fast.ops import ConvDescriptor
    from nequip_fast.ops.plan import lower
    from nequip_fast.ops.triton_ops import kernel_plan

    desc = ConvDescriptor.nequip("3x0e+33x1o", o3.Irreps.spherical_harmonics(1, p=-1), "1x0e+1x1o+1x1e+1x0o")
    plan = lower(desc, torch.float64)
    for dt in ("*fp32", "*fp64"):
        pointers = dict.fromkeys(["x_ptr", "sh_ptr", "w_ptr"], dt)
        for transpose in (False, True):
            sig = {**pointers, "out_ptr": dt, "row_ptr": "*i64", "col_ptr": "*i64", "perm_ptr": "*i64",
                   "pairs": "i64", "BLOCK_E": "constexpr"}
            src = ASTSource(_segment(kernel_plan(plan, transpose), False).kernel, sig, {"BLOCK_E": 4})
            triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        sig = {**pointers, "g_ptr": dt, "sender_ptr": "*i64", "receiver_ptr": "*i64", "g_sh_ptr": dt, "g_w_ptr": dt,
               "num_edges": "i64", "pairs": "i64", "BLOCK_E": "constexpr"}
        src = ASTSource(_edge_grads(kernel_plan(plan, False), False).kernel, sig, {"BLOCK_E": 4})
        triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
""")


def test_kernels_compile_for_h100(tmp_path):
    """The interpreter does not type-check like Triton's compiler: compile the generated kernels for real."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    result = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]

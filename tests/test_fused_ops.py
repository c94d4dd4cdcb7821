"""Op level: every fused backend equals the e3nn reference, through double backward.

The Triton backend runs here on CPU under TRITON_INTERPRET=1 when triton is installed.
"""
import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from e3nn import o3

from conftest import interpreted
from nequip_fast.ops import ConvDescriptor, TensorProductConv
from nequip_fast.ops.fused import conv_graph, fused_conv, load_backend
from nequip_fast.ops.plan import ConvPlan, lower

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
ALL_TARGETS = "0e+0o+1e+1o+2e+2o+3e+3o"
CASES = {  # irreps_in, l_max of the spherical harmonics, parity[, output irreps (default ALL_TARGETS)]
    "mul1-l1": ("1x0e+1x1o", 1, True),
    "mul3-l3": ("3x0e+3x1o+3x2e+3x3o", 3, True),
    "mul16-l2-noparity": ("16x0e+16x1e+16x2e", 2, False),
    "mul32-l1": ("32x0e+32x1o", 1, True),
    "mixed-l3": ("5x0e+2x0o+3x1o+4x1e+2x2e+1x3o", 3, True),
    # irreps of dimension 9 and 11: the CPU kernels' path for more than 7 components
    "mul2-l5": ("2x0e+2x1o+2x4e", 1, True, "0e+1o+3o+4e+5o"),
}


@contextlib.contextmanager
def default_dtype(dtype):
    """e3nn bakes its CG constants in the default dtype: build the float64 truth in float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def descriptor(case):
    irreps_in, l_max, parity, *targets = CASES[case]
    irreps_sh = o3.Irreps.spherical_harmonics(l_max, p=-1 if parity else 1)
    return ConvDescriptor.nequip(irreps_in, irreps_sh, targets[0] if targets else ALL_TARGETS)


def random_graph(num_nodes, num_edges, seed):
    """Random edges, plus self-loops and duplicates; the last two nodes have no edges."""
    g = torch.Generator().manual_seed(seed)
    edges = torch.randint(0, num_nodes - 2, (2, num_edges), generator=g)
    loops = torch.arange(3).expand(2, 3)
    return torch.cat([edges, loops, edges[:, :4]], dim=1)


def random_inputs(d, num_nodes, edge_index, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    num_edges = edge_index.shape[1]
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
            for shape in ((num_nodes, d.irreps_in.dim), (num_edges, d.irreps_sh.dim), (num_edges, d.weight_numel))]


def derivatives(conv, inputs, seed):
    """Output, first gradients of <out, r> and second gradients of <grads, r'> wrt (x, sh, w)."""
    g = torch.Generator().manual_seed(seed)
    out = conv(*inputs)
    first = torch.autograd.grad((out * torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)).sum(),
                                inputs, create_graph=True)
    second = torch.autograd.grad(
        sum((f * torch.randn(f.shape, generator=g, dtype=torch.float64).to(f)).sum() for f in first), inputs)
    return [out, *first, *second]


def make_conv(d, backend, dtype):
    with default_dtype(torch.float64):
        module = TensorProductConv(d, backend)
    module.to(dtype)
    return lambda x, sh, w, edge_index: module(x, sh, w, edge_index)


def assert_close(actual, expected, tol, what):
    scale = expected.abs().max().clamp_min(1e-30)
    err = ((actual.double() - expected.double()).abs().max() / scale).item()
    assert err < tol, f"{what}: relative error {err:.2e} > {tol:.0e}"


NAMES = ["out", "d/dx", "d/dsh", "d/dw", "d2/dx", "d2/dsh", "d2/dw"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference_through_double_backward(backend, case, dtype):
    if interpreted(backend) and (case == "mixed-l3" or (case == "mul3-l3" and dtype == torch.float32)):
        pytest.skip("too slow for the Triton interpreter (runs on GPU)")
    d = descriptor(case)
    num_nodes, edge_index = 9, random_graph(9, 24, seed=1)
    ref, fused = make_conv(d, "reference", torch.float64), make_conv(d, backend, dtype)
    inputs = random_inputs(d, num_nodes, edge_index, dtype, seed=2)
    expected = derivatives(lambda *a: ref(*a, edge_index), [t.detach().double().requires_grad_() for t in inputs], 3)
    actual = derivatives(lambda *a: fused(*a, edge_index), inputs, 3)
    for name, a, e in zip(NAMES, actual, expected):
        assert a.dtype == dtype
        assert_close(a, e, TOL[dtype], f"{case} {name}")
    assert actual[0][-2:].abs().max() == 0, "nodes without edges must get zero output"


@pytest.mark.parametrize("layout", [(20, 0), (12, 9)], ids=["all-paired", "paired+unpaired"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_pair_weights_match_reference_through_double_backward(backend, dtype, layout):
    """Edges laid out as [P edges, their P reverses, U unpaired] take E - P weight rows (edge e reads
    row e < P ? e : e - P); the gradient of a shared row is the sum over both edges."""
    pairs, unpaired = layout
    d = descriptor("mul32-l1" if interpreted(backend) else "mul3-l3")
    half = random_graph(9, pairs - 7, seed=6)
    others = torch.randint(0, 9, (2, unpaired), generator=torch.Generator().manual_seed(8))
    edge_index = torch.cat([half, half.flip(0), others], dim=1)
    x, sh, w = random_inputs(d, 9, edge_index, dtype, seed=7)
    w = w[: pairs + unpaired].detach().requires_grad_(True)
    ref, fused = make_conv(d, "reference", torch.float64), make_conv(d, backend, dtype)
    expected = derivatives(lambda x, sh, w: ref(x, sh, torch.cat((w[:pairs], w[:pairs], w[pairs:])), edge_index),
                           [t.detach().double().requires_grad_() for t in (x, sh, w)], 3)
    actual = derivatives(lambda *a: fused(*a, edge_index), [x, sh, w], 3)
    for name, a, e in zip(NAMES, actual, expected):
        assert a.shape == e.shape
        assert_close(a, e, TOL[dtype], f"P={pairs} U={unpaired} {name}")
    short = edge_index.shape[1] // 2 - 1  # fewer rows than pairs can share
    with pytest.raises(RuntimeError, match="weight needs E - P rows"):
        load_backend("cpu").segment_conv(x, sh, w[:short], *lower(d), *conv_graph(edge_index, 9), False)


def test_gradcheck_and_gradgradcheck(backend):
    if interpreted(backend):
        pytest.skip("gradcheck needs thousands of kernel launches, too slow in the Triton interpreter; on CPU "
                    "the Triton derivatives are checked against the reference by the double-backward tests")
    d = ConvDescriptor.nequip("2x0e+2x1o+1x2e", o3.Irreps.spherical_harmonics(2), ALL_TARGETS)
    edge_index = random_graph(5, 4, seed=4)
    conv = make_conv(d, backend, torch.float64)
    inputs = random_inputs(d, 5, edge_index, torch.float64, seed=5)
    fn = lambda *a: conv(*a, edge_index)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_cpu_is_deterministic_across_runs_and_threads():
    try:
        load_backend("cpu")
    except RuntimeError as e:
        pytest.skip(str(e))
    d = descriptor("mixed-l3")
    edge_index = random_graph(40, 400, seed=6)
    conv = make_conv(d, "cpu", torch.float32)
    inputs = random_inputs(d, 40, edge_index, torch.float32, seed=7)
    runs = []
    for threads in (2, 2, 1):
        torch.set_num_threads(threads)
        runs.append(derivatives(lambda *a: conv(*a, edge_index), inputs, 8))
    torch.set_num_threads(2)
    for run in runs[1:]:
        for name, a, b in zip(NAMES, runs[0], run):
            assert torch.equal(a, b), f"{name} differs between runs"


THREAD_PROBE = """
import os, torch
from nequip_fast.ops.fused import conv_graph, load_backend
from nequip_fast.ops.plan import lower
from nequip_fast.ops import ConvDescriptor
torch.set_num_threads(2)
d = ConvDescriptor.nequip("32x0e+32x1o", "1x0e+1x1o", "0e+1o")
g = torch.Generator().manual_seed(0)
edge_index = torch.randint(0, 2048, (2, 65536), generator=g)
x, sh, w = torch.randn(2048, d.irreps_in.dim), torch.randn(65536, 4), torch.randn(65536, d.weight_numel)
graph, plan, op = conv_graph(edge_index, 2048), lower(d), load_backend("cpu").segment_conv

def cpu_ticks():
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks[tid] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks

before = cpu_ticks()
for _ in range(40):
    op(x, sh, w, *plan, *graph, False)
after = cpu_ticks()
print(*sorted((after[t] - before.get(t, 0) for t in after), reverse=True))
"""


def test_cpu_kernels_run_on_several_threads():
    """The kernels' at::parallel_for is an inline `omp parallel`: built without -fopenmp it runs
    serially (it once did). With 2 threads, a second thread must do a real share of the op's work
    (CPU time per thread from /proc, not wall time)."""
    import os
    import subprocess
    import sys

    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs /proc to read CPU time per thread (Linux)")
    try:
        load_backend("cpu")
    except RuntimeError as e:
        pytest.skip(str(e))
    out = subprocess.run([sys.executable, "-c", THREAD_PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "2"})
    ticks = [int(t) for t in out.stdout.split()]
    assert ticks[0] > 0, f"the op ran too briefly to measure: {ticks}"
    assert len(ticks) > 1 and ticks[1] >= 0.25 * ticks[0], f"one thread did the work (CPU ticks per thread: {ticks})"


def test_triple_backward_matches_reference(backend):
    d = descriptor("mul16-l2-noparity" if interpreted(backend) else "mul3-l3")
    edge_index = random_graph(6, 10, seed=9)
    ref, fused = make_conv(d, "reference", torch.float64), make_conv(d, backend, torch.float64)
    inputs = random_inputs(d, 6, edge_index, torch.float64, seed=10)

    def third(conv):
        x, sh, w = inputs
        (gx,) = torch.autograd.grad(conv(x, sh, w, edge_index).pow(2).sum(), x, create_graph=True)
        (gsh,) = torch.autograd.grad(gx.pow(2).sum(), sh, create_graph=True)
        return torch.autograd.grad(gsh.pow(2).sum(), w)[0]

    assert_close(third(fused), third(ref), 1e-10, "d3")


@pytest.mark.parametrize("transpose", [False, True], ids=["forward", "transposed"])
def test_segment_conv2_is_the_sum_of_two_convs(transpose):
    """segment_conv2 (the double backward's sums of two convs, one walk) equals two segment_convs
    summed, with pair-shared weight rows; mismatched second operands are refused."""
    backend = cpu_or_skip()
    d = descriptor("mixed-l3")
    half = random_graph(11, 30, seed=14)
    edge_index = torch.cat([half, half.flip(0), random_graph(11, 5, seed=15)], dim=1)
    pairs = half.shape[1]
    g = torch.Generator().manual_seed(16)
    e, rows = edge_index.shape[1], edge_index.shape[1] - pairs
    sh, sh2 = (torch.randn(e, d.irreps_sh.dim, generator=g, dtype=torch.float64) for _ in range(2))
    w, w2 = (torch.randn(rows, d.weight_numel, generator=g, dtype=torch.float64) for _ in range(2))
    x = torch.randn(11, d.irreps_out.dim if transpose else d.irreps_in.dim, generator=g, dtype=torch.float64)
    args = (*lower(d, torch.float64), *backend.graph(edge_index, 11), transpose)
    expected = backend.segment_conv(x, sh, w, *args) + backend.segment_conv(x, sh2, w2, *args)
    assert_close(backend.segment_conv2(x, sh, w, sh2, w2, *args), expected, 1e-13, "segment_conv2")
    with pytest.raises(RuntimeError, match="sh2 and weight2 must match sh and weight"):
        backend.segment_conv2(x, sh, w, sh2, w2[:-1], *args)


@pytest.mark.parametrize("which", [2, 3], ids=["only-d/dsh", "only-d/dw"])
def test_double_backward_of_one_edge_gradient(backend, which):
    """Second derivatives through d/dsh or d/dw alone: the double backward gets one cotangent of
    edge_grads and makes one conv where it otherwise makes the sum of two."""
    d = descriptor("mul32-l1" if interpreted(backend) else "mul3-l3")
    edge_index = random_graph(9, 24, seed=17)
    ref, fused = make_conv(d, "reference", torch.float64), make_conv(d, backend, torch.float64)
    inputs = random_inputs(d, 9, edge_index, torch.float64, seed=18)

    def second(conv):
        ins = [t.detach().requires_grad_() for t in inputs]
        out = conv(*ins, edge_index)
        first = torch.autograd.grad(out.pow(2).sum() / 2, ins, create_graph=True)
        return torch.autograd.grad(first[which - 1].pow(2).sum(), ins)

    for name, a, e in zip(NAMES[4:], second(fused), second(ref)):
        assert_close(a, e, 1e-10, f"{NAMES[which]} then {name}")


def test_native_graph_equals_torch_graph():
    backend = cpu_or_skip()
    edge_index = random_graph(30, 200, seed=13)
    for a, b in zip(backend.graph(edge_index, 30), conv_graph(edge_index, 30)):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="out of range"):
        backend.graph(edge_index, 20)


def test_unavailable_backend_error_names_the_cause(monkeypatch):
    monkeypatch.setenv("NEQUIP_FAST_CONV_BACKEND", "cuda")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="conv backend 'cuda' is unavailable"):
        TensorProductConv(descriptor("mul1-l1"), "cpu")


def test_environment_overrides_configured_backend(monkeypatch):
    monkeypatch.setenv("NEQUIP_FAST_CONV_BACKEND", "reference")
    assert TensorProductConv(descriptor("mul1-l1"), "cpu").backend == "reference"


def cpu_or_skip():
    try:
        return load_backend("cpu")
    except RuntimeError as e:
        pytest.skip(str(e))


def test_export_and_compile():
    """torch.export of the op and its autograd (make_fx, as deploy does), and torch.compile."""
    backend = cpu_or_skip()
    d = descriptor("mul3-l3")
    edge_index = random_graph(8, 20, seed=11)
    plan = lower(d, torch.float64)
    x, sh, w = random_inputs(d, 8, edge_index, torch.float64, seed=12)

    def forward_and_grads(x, sh, w, edge_index, ints, values):
        x, sh, w = (t.detach().requires_grad_(True) for t in (x, sh, w))
        with torch.enable_grad():
            out = fused_conv(backend, x, sh, w, ConvPlan(ints, values, plan.layout),
                             backend.graph(edge_index, x.shape[0]))
            grads = torch.autograd.grad(out.pow(2).sum(), (x, sh, w))
        return (out.detach(), *grads)

    expected = forward_and_grads(x, sh, w, edge_index, plan.ints, plan.values)
    traced = torch.fx.experimental.proxy_tensor.make_fx(forward_and_grads, tracing_mode="symbolic")(
        x, sh, w, edge_index, plan.ints, plan.values)
    ops = {str(n.target) for n in traced.graph.nodes if n.op == "call_function"}
    assert {"nequip_fast.conv_graph.default", "nequip_fast.segment_conv.default",
            "nequip_fast.edge_grads.default"} <= ops
    exported = torch.export.export(traced, (x, sh, w, edge_index, plan.ints, plan.values))
    for a, e in zip(exported.module()(x, sh, w, edge_index, plan.ints, plan.values), expected):
        assert_close(a, e, 1e-12, "exported")

    with default_dtype(torch.float64):
        module = TensorProductConv(d, "cpu")
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    out = compiled(x, sh, w, edge_index)
    (gw,) = torch.autograd.grad(out.pow(2).sum(), w)
    assert_close(out, expected[0], 1e-12, "compiled forward")
    assert_close(gw, expected[3], 1e-12, "compiled backward")


def test_cpu_kernels_at_baseline_isa_without_shuffles(tmp_path):
    """The C++ library as a compiler without ``__builtin_shufflevector`` (GCC < 12: Ubuntu 22.04's
    11, RHEL 9's) builds it, lanes summed in scalar code, and at the baseline x86-64 ISA that CPUs
    without AVX2 run (no per-ISA versions): built in a fresh cache, the CPU cases of this file and
    the fused SiLU's tests must pass in a subprocess, as they do with the versions this machine picks."""
    try:
        load_backend("cpu")
    except RuntimeError as e:
        pytest.skip(str(e))
    run_cpu_comparisons(dict(NEQUIP_FAST_CACHE_DIR=str(tmp_path),
                             NEQUIP_FAST_TEST_CXX_FLAGS="-DNEQUIP_FAST_SHUFFLE=0 -DNEQUIP_FAST_BASELINE_ONLY"),
                        with_silu=True)
    (library,) = tmp_path.rglob("*.so")  # built with the flags (they are part of the cache key) ...
    # ... so the kernels have no per-ISA versions there (the default build has segment_rows_x86_64_v4
    # and silu_f32*.arch_x86_64_v4 ones)
    assert not re.search(rb"(segment_rows|silu_f32)[^\x00]*(_|\.arch_)x86_64_v", library.read_bytes())


@pytest.mark.parametrize("level", [3, 0])
def test_cpu_kernels_at_lower_isa_levels(level):
    """The conv kernels' AVX2 (x86-64-v3, 32-byte vectors) and baseline (SSE2, 16-byte vectors)
    versions, which this machine would not pick, capped by NEQUIP_FAST_CPU_LEVEL: the CPU reference
    comparisons of this file must pass with them too, in a subprocess (the level is read once)."""
    try:
        load_backend("cpu")
    except RuntimeError as e:
        pytest.skip(str(e))
    run_cpu_comparisons(dict(NEQUIP_FAST_CPU_LEVEL=str(level)))


def run_cpu_comparisons(env: dict, with_silu: bool = False) -> None:
    """This file's CPU reference comparisons, test_matmul.py's of matmul_tn (and test_silu.py's) in a subprocess with ``env`` added;
    they must pass. Not the tests that start Python themselves: those processes would build or load
    the library again without ``env``."""
    files = [__file__, str(Path(__file__).with_name("test_matmul.py"))]
    selection = "(cpu and (reference or gradcheck or edge_gradient)) or segment_conv2 or matmul_tn"
    if with_silu:
        files, selection = files + [str(Path(__file__).with_name("test_silu.py"))], selection + " or silu"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *files,
                           "-k", selection],
                          env=dict(os.environ, **env), capture_output=True, text=True, cwd=Path(__file__).parent)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout, proc.stdout[-2000:]


def test_forces_skip_the_gradient_of_the_first_layers_features():
    """The first layer's features are the species embedding's: forces (the gradient to the edge
    vectors) never use their gradient, so that transposed conv is not run (ops.engine), and the
    forces are those of the reference backend."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from conftest import graph_of, random_crystal, small_model
    from nequip_fast.ops import set_backend

    try:
        load_backend("cpu")
    except RuntimeError as e:
        pytest.skip(str(e))

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += func.name() == "nequip_fast::segment_conv"
            return func(*args, **(kwargs or {}))

    model = small_model(num_layers=3)
    graph = graph_of(random_crystal(8), model)
    set_backend(model, "reference")
    reference = model(graph).forces
    set_backend(model, "cpu")
    with Count():
        forces = model(graph).forces
    assert Count.calls == 2 * 3 - 1  # every forward, the transposed convs of layers 2 and 3
    torch.testing.assert_close(forces, reference, rtol=1e-10, atol=1e-10)

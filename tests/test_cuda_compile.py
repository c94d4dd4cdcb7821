"""The CUDA backend (csrc/cuda) on machines without a GPU.

- compile check: tools/check_cuda_compile.sh builds the .cu files for sm_80 and sm_90 (skipped, with
  the reason, where nvcc is absent);
- host emulation: csrc/cuda/host_emulation.cpp replays every warp and lane of both kernels on the
  CPU through the same plan and lane code as the device; compared here with e3nn (reference_conv
  and its autograd). This validates the plan and the index arithmetic, not the launch itself.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nequip_fast.ops.descriptor import ConvDescriptor
from nequip_fast.ops.fused import conv_graph
from nequip_fast.ops.plan import lower
from nequip_fast.ops.reference import reference_conv

ROOT = Path(__file__).resolve().parents[1]


def test_cuda_sources_compile():
    if shutil.which("nvcc") is None and not os.environ.get("NVCC"):
        pytest.skip("nvcc not found: the CUDA sources were not compile-checked")
    result = subprocess.run(
        ["bash", str(ROOT / "tools" / "check_cuda_compile.sh")],
        capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=600,
    )
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: csrc/cuda/conv_kernels.cu" in result.stdout


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Path:
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler to build csrc/cuda/host_emulation.cpp")
    exe = tmp_path_factory.mktemp("cuda_emulation") / "host_emulation"
    subprocess.run([cxx, "-std=c++17", "-O1", "-Wno-unknown-pragmas", f"-I{ROOT / 'csrc' / 'cuda'}",
                    str(ROOT / "csrc" / "cuda" / "host_emulation.cpp"), "-o", str(exe)], check=True)
    return exe


def e3nn_float64(descriptor: ConvDescriptor):
    """The truth in full precision: e3nn keeps its Clebsch-Gordan buffers in the default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return descriptor.e3nn_tensor_product()
    finally:
        torch.set_default_dtype(old)


def random_graph(num_nodes: int, num_edges: int, gen: torch.Generator) -> torch.Tensor:
    """Receiver/sender pairs with self-edges, duplicates and a node (the last) with no edges."""
    edge_index = torch.randint(0, num_nodes - 1, (2, num_edges), generator=gen)
    edge_index[:, 0] = torch.tensor([2, 2])
    edge_index[:, 1] = edge_index[:, 2]
    return edge_index


CASES = [
    # (irreps_in, irreps_sh, irreps_target): multiplicities below, at and above one warp; l up to 5
    ("3x0e+3x1o+3x2e", "0e+1o+2e", "3x0e+3x1o+3x2e"),
    ("32x0e+32x1o", "0e+1o+2e+3o", "32x0e+32x1o+32x2e+32x3o"),
    ("5x0e+40x1o+2x2e+7x3o", "0e+1o+2e+3o", "5x0e+40x1o+2x2e+7x3o+5x1e+40x2o"),
    ("2x0e+3x2e+1x5o", "0e+1o+4e+5o", "2x0e+2x1o+3x4e+1x5o+3x6e+1x7o"),
]


@pytest.mark.parametrize("pairs", [0, 15, 9], ids=["edges", "paired", "paired+unpaired"])
@pytest.mark.parametrize("bits", [64, 32])
@pytest.mark.parametrize("irreps", CASES, ids=lambda c: c[0])
def test_host_emulation_matches_e3nn(emulator, tmp_path, irreps, bits, pairs):
    """Edges [P, 2P) reverse edges [0, P) and share their weight rows (the gradient of a shared row
    sums both edges); the remaining edges have one row each."""
    descriptor = ConvDescriptor.nequip(*irreps)
    gen = torch.Generator().manual_seed(len(descriptor.paths))
    num_nodes, num_edges = 7, 30
    edge_index = random_graph(num_nodes, num_edges, gen)
    edge_index = torch.cat([edge_index[:, :pairs], edge_index[:, :pairs].flip(0), edge_index[:, 2 * pairs:]], dim=1)
    graph = conv_graph(edge_index, num_nodes)
    plan = lower(descriptor, torch.float64)
    fa, fs, fb, fw = (descriptor.irreps_in.dim, descriptor.irreps_sh.dim, descriptor.irreps_out.dim,
                      descriptor.weight_numel)
    x = torch.randn(num_nodes, fa, dtype=torch.float64, generator=gen, requires_grad=True)
    sh = torch.randn(num_edges, fs, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(num_edges - pairs, fw, dtype=torch.float64, generator=gen, requires_grad=True)
    g = torch.randn(num_nodes, fb, dtype=torch.float64, generator=gen)

    header = torch.tensor([len(plan.layout), plan.ints.numel(), plan.values.numel(), num_nodes, num_edges, fa, fs,
                           fw, fb, bits, w.shape[0]], dtype=torch.int64)
    layout = torch.tensor(plan.layout, dtype=torch.int64)
    blob = b"".join(t.detach().contiguous().numpy().tobytes() for t in (
        header, layout, plan.ints, plan.values, graph.edge_index, graph.ptr, graph.perm, x, sh, w, g))
    (tmp_path / "in.bin").write_bytes(blob)
    subprocess.run([str(emulator), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], check=True)
    result = np.fromfile(tmp_path / "out.bin", dtype=np.float64)
    sizes = [num_nodes * fb, num_nodes * fa, num_edges * fs, w.numel()]
    assert result.size == sum(sizes)
    out, out_t, g_sh, g_w = (torch.from_numpy(a) for a in np.split(result, np.cumsum(sizes)[:-1]))

    w_edges = torch.cat((w[:pairs], w[:pairs], w[pairs:]))
    expected = reference_conv(e3nn_float64(descriptor), x, sh, w_edges, edge_index)
    # segment_conv^T(g) = d<g, conv>/dx; edge_grads = d<g, conv>/d(sh, w) per edge.
    ex_t, ex_sh, ex_w = torch.autograd.grad((expected * g).sum(), (x, sh, w))
    tol = dict(rtol=1e-10, atol=1e-10) if bits == 64 else dict(rtol=1e-5, atol=1e-4)
    for name, got, want in [("segment_conv", out, expected), ("segment_conv^T", out_t, ex_t),
                            ("g_sh", g_sh, ex_sh), ("g_w", g_w, ex_w)]:
        torch.testing.assert_close(got.reshape(want.shape), want.detach(), **tol, msg=lambda m: f"{name}: {m}")

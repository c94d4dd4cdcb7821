"""The floor of the convolution: bytes and FLOPs per edge, and the machine's measured peaks.

Counts are for an ideal fused kernel (DESIGN.md §3): every operand is read once and the output
written once, no per-edge message is stored. Dividing them by a measured time gives the fraction
of the machine's bandwidth and FLOP rate that a backend achieves.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from ..ops import ConvDescriptor
from ..ops.matmul import matmul

INDEX_BYTES = 16  # receiver and sender, int64


@dataclass(frozen=True)
class ConvCost:
    """Per edge, for the graph's ratio of nodes to edges."""

    bytes_forward: float
    flops_forward: float
    bytes_forward_backward: float
    flops_forward_backward: float

    def as_dict(self) -> dict:
        return asdict(self)


def conv_cost(descriptor: ConvDescriptor, num_nodes: int, num_edges: int, itemsize: int) -> ConvCost:
    """Forward: read x (per node), Y, w and the edge index, write out (per node).

    FLOPs per path and channel: 2 per CG nonzero (multiply-add of x with Y) and 2 per output
    component (the weight, the sum into the receiver). Backward reads the forward's operands and
    the output gradient and writes the gradients of x, Y and w; its three contractions each cost
    about one forward.
    """
    x, out = descriptor.irreps_in.dim, descriptor.irreps_out.dim
    sh, w = descriptor.irreps_sh.dim, descriptor.weight_numel
    nodes_per_edge = num_nodes / max(num_edges, 1)
    forward = itemsize * (sh + w + nodes_per_edge * (x + out)) + INDEX_BYTES
    backward = itemsize * (2 * (sh + w) + nodes_per_edge * (out + 2 * x)) + INDEX_BYTES
    flops = sum(p.mul * 2 * (len(p.cg) + p.out_dim) for p in descriptor.paths)
    return ConvCost(forward, flops, forward + backward, 4 * flops)


@dataclass(frozen=True)
class MachinePeaks:
    bandwidth: float  # bytes/s of a large tensor copy (read + write)
    flop_rate: float  # FLOP/s of a square matmul in the model dtype (the faster of MKL's and oneDNN's)

    def as_dict(self) -> dict:
        return asdict(self)


def _best_of(fn, repeats: int, sync) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def measure_peaks(dtype: torch.dtype, device: torch.device, copy_mib: int = 128, matmul_n: int = 1024,
                  repeats: int = 5) -> MachinePeaks:
    """Best of ``repeats``: the machine's attainable rates, not its typical ones."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    src = torch.ones(copy_mib * 2**20 // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    copy_s = _best_of(lambda: dst.copy_(src), repeats, sync)
    a = torch.randn(matmul_n, matmul_n, dtype=dtype, device=device)
    # torch's @ (MKL on CPU) and ops.matmul (oneDNN for float32 CPU): on AMD CPUs MKL reaches about
    # half of what oneDNN does, so the machine's attainable rate is the faster of the two
    matmul_s = min(_best_of(lambda: a @ a, repeats, sync), _best_of(lambda: matmul(a, a), repeats, sync))
    return MachinePeaks(2 * src.numel() * 4 / copy_s, 2 * matmul_n**3 / matmul_s)

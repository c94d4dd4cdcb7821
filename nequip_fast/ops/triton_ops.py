"""The ``triton`` backend: Python custom ops ``nequip_fast::triton_segment_conv``/``triton_edge_grads``
around the generated kernels of ``nequip_fast.kernels`` (kernels/).

The kernels are generated per plan orientation with the Clebsch-Gordan values as constants, so
they need the plan's content on the host: ``_kernel_plan`` reads it from the plan tensors on first
use (one device-to-host copy) and keeps it in a cache keyed by the plan's content digest (part of
``layout``), orientation and dtype. A miss rebuilds from the tensors the op was given, so the cache
only saves time; it is not a registry the ops depend on.
"""
from __future__ import annotations

import importlib
import os
from typing import Optional

import torch

from .fused import Backend, register_fake_and_autograd
from .plan import HEADER, ConvPlan, PAIR_COLUMNS, PATH_COLUMNS, PREAMBLE, TERM_COLUMNS


def load() -> tuple[Optional[Backend], str]:
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
    def triton_segment_conv(x: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor, plan: torch.Tensor,
                            values: torch.Tensor, layout: list[int], edge_index: torch.Tensor, ptr: torch.Tensor,
                            perm: torch.Tensor, transpose: bool) -> torch.Tensor:
        d = int(transpose)
        col = edge_index[1 - d][perm[d]]
        kplan = _kernel_plan(kernels, plan, values, tuple(layout), transpose)
        return kernel_segment_conv(kplan, x, sh, weight, ptr[d], perm[d], col)

    @torch.library.custom_op("nequip_fast::triton_edge_grads", mutates_args=())
    def triton_edge_grads(x: torch.Tensor, g: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor,
                          plan: torch.Tensor, values: torch.Tensor, layout: list[int], edge_index: torch.Tensor,
                          ptr: torch.Tensor, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kplan = _kernel_plan(kernels, plan, values, tuple(layout), False)
        return kernel_edge_grads(kplan, x, g, sh, weight, edge_index[1], edge_index[0])

    return register_fake_and_autograd("nequip_fast::triton_segment_conv", "nequip_fast::triton_edge_grads"), ""


def kernel_plan(plan: ConvPlan, transpose: bool):
    """The orientation ``transpose`` of ``plan`` as the Triton kernels read it (``nequip_fast.kernels.Plan``)."""
    return _kernel_plan(importlib.import_module("nequip_fast.kernels"), plan.ints, plan.values, plan.layout, transpose)


# (content digest, orientation, dtype) -> the kernels' host view of that plan orientation.
_KERNEL_PLANS: dict[tuple, object] = {}


def _kernel_plan(kernels, plan: torch.Tensor, values: torch.Tensor, layout: tuple[int, ...], transpose: bool):
    """The orientation ``transpose`` of a ConvPlan as ``kernels.Plan`` (read on the host on first use)."""
    if len(layout) != PREAMBLE + 2 * len(HEADER):
        raise ValueError(f"conv plan layout has {len(layout)} entries, expected {PREAMBLE + 2 * len(HEADER)}")
    key = (layout, transpose, values.dtype)
    if key in _KERNEL_PLANS:
        return _KERNEL_PLANS[key]
    h = dict(zip(HEADER, layout[PREAMBLE + len(HEADER) * transpose:]))
    ints, vals = plan.detach().cpu().tolist(), values.detach().cpu().tolist()
    paths = []
    for p in range(h["paths"]):
        row = ints[h["paths_at"] + p * PATH_COLUMNS:][:PATH_COLUMNS]
        a_off, a_dim, b_off, b_dim, mul, w_off, _, pair_begin, pair_end, _ = row
        cg = []
        for q in range(pair_begin, pair_end):
            a, b, term_begin, term_end = ints[h["pairs_at"] + q * PAIR_COLUMNS:][:PAIR_COLUMNS]
            cg += [(a, ints[h["terms_at"] + t * TERM_COLUMNS + 1], b, vals[h["values_at"] + t])
                   for t in range(term_begin, term_end)]
        paths.append(kernels.Path(a_off, a_dim, b_off, b_dim, mul, w_off, tuple(cg)))
    result = kernels.Plan((layout[1], transpose, str(values.dtype)), tuple(paths), h["a_features"],
                          h["b_features"], h["sh_features"], h["w_features"])
    _KERNEL_PLANS[key] = result
    return result

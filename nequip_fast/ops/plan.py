"""The one lowering of a ``ConvDescriptor`` into the plan that every fused kernel reads.

A ``ConvPlan`` is built once per layer, in Python, for both orientations of the map (the forward
``T`` and its adjoint ``T^T``, ``descriptor.transposed()``, which the x-gradient runs). Kernels see
every path as "gather operand a per edge, reduce into operand b per row" and read these sections of
one int32 tensor (columns as in csrc/plan.h, which the C++ and CUDA kernels include):

- ``groups``   (G, 5)  ``b_off, b_dim, mul, path_begin, path_end``: distinct b blocks in order of
  first appearance; the paths reducing into a block are ``[path_begin, path_end)``
- ``a_blocks`` (A, 3)  ``off, dim, mul``: distinct a blocks (the CPU kernels' layout transposes)
- ``paths``    (P, 10) ``a_off, a_dim, b_off, b_dim, mul, w_off, sh_off, pair_begin, pair_end,
  kptr``, ordered by group
- ``pairs``    (Q, 4)  ``a, b, term_begin, term_end``: runs of terms with one (a, b) component pair,
  ordered by (a, b)
- ``kptr``     per path ``b_dim + 1`` offsets into the terms: the terms of b component kk
- ``terms``    (Z, 2)  ``a component, sh column``; the CG values (path normalisation folded in)
  are ``values[values_at + t]``, in the model's dtype (a buffer that ``Module.to`` casts)
- ``tasks``    (n, 2)  ``group, u0``: 32 channels of one group, the unit of work of a GPU program

Terms are sorted by (b component, a component, sh column) within a path. ``layout`` holds what the
host needs without reading the device tensors: a version, a content digest (Triton keys its
generated kernels on it), then one header per orientation (``HEADER``: section sizes and offsets,
operand widths). It is passed to every op as an ``int[]``, so it is a constant under torch.compile,
torch.export and AOTInductor.
"""
from __future__ import annotations

import hashlib
from typing import NamedTuple

import torch

from .descriptor import ConvDescriptor

PLAN_VERSION = 1
WARP = 32  # channels per task
GROUP_COLUMNS, BLOCK_COLUMNS, PATH_COLUMNS, PAIR_COLUMNS, TERM_COLUMNS, TASK_COLUMNS = 5, 3, 10, 4, 2, 2
HEADER = ("groups", "a_blocks", "paths", "pairs", "terms", "tasks",  # section sizes (rows)
          "a_features", "b_features", "sh_features", "w_features",  # operand widths
          "max_a_block", "uniform_mul", "max_dim",  # largest a_dim * mul; every path's mul, or 0; largest irrep dim
          "groups_at", "a_blocks_at", "paths_at", "pairs_at", "kptr_at", "terms_at", "tasks_at",  # int offsets
          "values_at")
PREAMBLE = 2  # layout = (PLAN_VERSION, digest, *header(forward), *header(transposed))


class ConvPlan(NamedTuple):
    """Both orientations of one descriptor, as the ops take them."""

    ints: torch.Tensor  # int32 sections
    values: torch.Tensor  # CG values in the default dtype at lowering (as e3nn's); Module.to casts them
    layout: tuple[int, ...]

    def to(self, device=None, dtype=None) -> "ConvPlan":
        return self._replace(ints=self.ints.to(device), values=self.values.to(device, dtype))

    def header(self, transpose: bool) -> dict[str, int]:
        start = PREAMBLE + (len(HEADER) if transpose else 0)
        return dict(zip(HEADER, self.layout[start:start + len(HEADER)]))


def _orientation(d: ConvDescriptor, int_base: int, value_base: int) -> tuple[list[int], list[float], dict[str, int]]:
    """The sections of one orientation, offsets counted from ``int_base`` and ``value_base``."""
    paths = d.paths
    group_of, group_heads = [], []
    for p in paths:
        key = next((g for g, h in enumerate(group_heads) if paths[h].out_offset == p.out_offset), None)
        if key is None:
            key = len(group_heads)
            group_heads.append(len(group_of))
        elif (paths[group_heads[key]].out_dim, paths[group_heads[key]].mul) != (p.out_dim, p.mul):
            raise ValueError(f"conv plan: paths reduce into column {p.out_offset} with different shapes")
        group_of.append(key)
    groups, a_blocks, rows, pairs, kptr, terms, values, tasks = [], [], [], [], [], [], [], []
    for g, head in enumerate(group_heads):
        first = len(rows)
        for p, pg in zip(paths, group_of):
            if pg != g:
                continue
            nonzeros = sorted((k, i, j, v) for i, j, k, v in p.cg)  # (b, a, sh) order
            pair_begin, kptr_at, runs = len(pairs), len(kptr), []
            for n, (k, i, j, v) in enumerate(nonzeros):
                if n == 0 or nonzeros[n - 1][:2] != (k, i):
                    runs.append([i, k, len(terms), len(terms)])
                runs[-1][3] += 1
                terms.append((i, p.sh_offset + j))
                values.append(v)
            # Pairs by (a, b): consecutive pairs then update different b rows (the CPU kernel's
            # accumulators) instead of chaining through one.
            pairs += sorted(runs)
            kptr += [len(terms) - len(nonzeros) + sum(1 for z in nonzeros if z[0] < kk) for kk in range(p.out_dim + 1)]
            rows.append((p.in_offset, p.in_dim, p.out_offset, p.out_dim, p.mul, p.weight_offset, p.sh_offset,
                         pair_begin, len(pairs), kptr_at))
            if (p.in_offset, p.in_dim, p.mul) not in a_blocks:
                if any(off == p.in_offset for off, _, _ in a_blocks):
                    raise ValueError(f"conv plan: paths read column {p.in_offset} with different shapes")
                a_blocks.append((p.in_offset, p.in_dim, p.mul))
        h = paths[head]
        groups.append((h.out_offset, h.out_dim, h.mul, first, len(rows)))
        tasks += [(g, u0) for u0 in range(0, h.mul, WARP)]
    muls = {p.mul for p in paths}
    sections = {"groups": groups, "a_blocks": a_blocks, "paths": rows, "pairs": pairs, "kptr": [(k,) for k in kptr],
                "terms": terms, "tasks": tasks}
    header = {"groups": len(groups), "a_blocks": len(a_blocks), "paths": len(rows), "pairs": len(pairs),
              "terms": len(terms), "tasks": len(tasks), "a_features": d.irreps_src.dim,
              "b_features": d.irreps_dst.dim, "sh_features": d.irreps_sh.dim, "w_features": d.weight_numel,
              "max_a_block": max((p.in_dim * p.mul for p in paths), default=0),
              "uniform_mul": muls.pop() if len(muls) == 1 else 0,
              "max_dim": max((max(p.in_dim, p.out_dim) for p in paths), default=0), "values_at": value_base}
    ints, at = [], int_base
    for name, section in sections.items():
        header[f"{name}_at"] = at
        ints += [int(c) for row in section for c in row]
        at = int_base + len(ints)
    return ints, values, header


def lower(descriptor: ConvDescriptor, dtype: torch.dtype | None = None) -> ConvPlan:
    """The plan of ``descriptor`` (forward) and of ``descriptor.transposed()``, its values in
    ``dtype`` (default: the default dtype, as e3nn builds its constants)."""
    forward = descriptor.transposed() if descriptor.transpose else descriptor
    ints_f, values_f, header_f = _orientation(forward, 0, 0)
    ints_t, values_t, header_t = _orientation(forward.transposed(), len(ints_f), len(values_f))
    ints = torch.tensor(ints_f + ints_t, dtype=torch.int32)
    values = torch.tensor(values_f + values_t, dtype=torch.float64)
    if max(ints.abs().max().item() if ints.numel() else 0, header_f["a_features"], header_f["b_features"]) >= 2**30:
        raise ValueError("conv plan: feature widths exceed int32")
    digest = hashlib.sha256(ints.numpy().tobytes() + values.numpy().tobytes()).digest()
    header = [header_f[k] for k in HEADER] + [header_t[k] for k in HEADER]
    layout = (PLAN_VERSION, int.from_bytes(digest[:7], "little"), *header)
    return ConvPlan(ints, values.to(dtype or torch.get_default_dtype()), layout)

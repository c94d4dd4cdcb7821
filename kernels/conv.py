"""Triton kernels of the fused convolution, generated from the plan they are given.

Every derivative level of the convolution is expressed by the op layer through two kernels:

* ``segment_conv``: ``out[r] = sum_{k in segment r} T(x[col[k]], sh[perm[k]], w[perm[k]])`` (or
  ``T^T``), one program per (row, output block, channel block), reduced in registers and stored
  once: no atomics, deterministic, no per-edge outputs.
* ``edge_grads``: the per-edge gradients with respect to ``sh`` and ``weight``.

The path list and the Clebsch-Gordan nonzeros are compile-time constants: the kernel source is
generated per ``Plan`` (one orientation of nequip_fast's ConvPlan, read on the host by the op
layer; cached by its ``digest``, a hash of the plan's content, orientation and dtype), so the sparse contraction is fully unrolled and the only
runtime loops are over edges (and over channel blocks of wide multiplicities). A program works on
a flat tile of ``BLOCK_E`` edges x ``BLOCK_U`` channels (channels fastest, so weight rows are read
contiguously); flat rather than 2-D because it halves Triton's compile time for these long,
unrolled kernels. Row and edge offsets are int64 so that ``N * dim`` and ``E * dim`` may exceed 2^31.
"""
from __future__ import annotations

import functools
import itertools
import linecache
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

_MAX_BLOCK_U = 32  # channels per tile; wider multiplicities are split into channel blocks
_NUM_WARPS = 4
# elements per thread of a tile: measured for sm_90 with ptxas, 2 (float32) and 1 (float64) keep the
# l_max 2-3, 32-channel kernels at or below ~170 registers per thread, without spills
_PER_THREAD = {torch.float32: 2, torch.float64: 1}
_ids = itertools.count()


@dataclass(frozen=True)
class Path:
    """One path as a kernel reads it: ``dst[u, b] += sum c * src[u, a] * sh[j] * w[u]`` over ``(a, j, b, c)``,
    ``j`` the sh column."""

    src_offset: int
    src_dim: int
    dst_offset: int
    dst_dim: int
    mul: int
    weight_offset: int
    cg: tuple[tuple[int, int, int, float], ...]


@dataclass(frozen=True, eq=False)
class Plan:
    """One orientation of a convolution: paths ordered by the dst block they reduce into, and the
    operand widths. Equal ``digest`` means equal content: generated kernels are cached by it."""

    digest: tuple
    paths: tuple[Path, ...]
    d_src: int
    d_dst: int
    d_sh: int
    d_w: int

    def __hash__(self) -> int:
        return hash(self.digest)

    def __eq__(self, other) -> bool:
        return isinstance(other, Plan) and other.digest == self.digest


def _block_u(mul: int) -> int:
    return min(triton.next_power_of_2(mul), _MAX_BLOCK_U)


def _const(value: float) -> str:
    # A bare float literal is an fp32 constant in Triton; tl.full keeps float64 exact.
    return f"tl.full([], {value!r}, dt)"


def _weighted_sum(pairs) -> str:
    """``c0 * v0 + c1 * v1 + ...`` for ``(coefficient, variable name)`` pairs."""
    return " + ".join(f"{_const(c)} * {v}" for c, v in pairs)


def _compile(source: str, name: str):
    """Exec generated source as a module; linecache makes it visible to Triton's inspect and to tracebacks."""
    filename = f"<nequip_fast.kernels.generated.{name}.{next(_ids)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace = {"__name__": f"nequip_fast.kernels.generated.{name}", "triton": triton, "tl": tl}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


# Generated kernels call only Triton builtins, no @triton.jit library helpers (tl.zeros, tl.sum): those
# are decorated when triton is imported, so they cannot be interpreted when TRITON_INTERPRET=1 was set
# after something (e3nn, via torch) imported triton. _sum_combine is what tl.sum reduces with, and the
# interpreter maps it to numpy's sum.
_HEADER = """import triton
import triton.language as tl


@triton.jit
def _sum(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._sum_combine)

"""


def _segment_source(terms, d_src: int, d_dst: int, d_sh: int, d_w: int) -> tuple[str, int]:
    """Source of the segment kernel and its number of tasks (output block x channel block).

    Terms writing the same output block form one group: they share its accumulators, so each
    output element is stored exactly once. ``program_id(1)`` selects the task; each task's code
    sits in its own flat ``if`` (an ``elif`` chain nests every task in the previous one's else
    region, which made compiling an l_max 3 kernel 3.6x slower).
    """
    groups: dict[tuple[int, int, int], list[Path]] = {}
    for t in terms:
        groups.setdefault((t.dst_offset, t.dst_dim, t.mul), []).append(t)
    lines = [
        _HEADER,
        "@triton.jit",
        "def segment_kernel(x_ptr, sh_ptr, w_ptr, out_ptr, row_ptr, col_ptr, perm_ptr, pairs,"
        " BLOCK_E: tl.constexpr):",
        "    dt = out_ptr.dtype.element_ty",
        "    row = tl.program_id(0).to(tl.int64)",
        "    task = tl.program_id(1)",
        "    start = tl.load(row_ptr + row)",
        "    end = tl.load(row_ptr + row + 1)",
    ]
    num_tasks = 0
    for (dst_offset, dst_dim, mul), group in groups.items():
        bu = _block_u(mul)
        for u0 in range(0, mul, bu):
            lines += [
                f"    if task == {num_tasks}:  # output columns {dst_offset}.., channels {u0}..{min(u0 + bu, mul) - 1}",
                f"        i = tl.arange(0, BLOCK_E * {bu})  # flat [edge, channel] tile",
                f"        u = {u0} + i % {bu}",
                f"        u_mask = u < {mul}",
            ]
            lines += [f"        acc{b} = tl.full([BLOCK_E * {bu}], 0, dt)" for b in range(dst_dim)]
            lines += [
                "        for e0 in range(start, end, BLOCK_E):",
                f"            k = e0 + i // {bu}",
                "            mask = (k < end) & u_mask",
                "            edge = tl.load(perm_ptr + k, mask=mask, other=0)",
                f"            x_row = x_ptr + tl.load(col_ptr + k, mask=mask, other=0) * {d_src}",
                f"            sh_row = sh_ptr + edge * {d_sh}",
                f"            w_row = w_ptr + {_weight_row('edge')} * {d_w} + u",
            ]
            loaded: set[int] = set()  # SH components, loaded at first use so only live ones hold registers
            for t in group:
                for j in sorted({j for _, j, _, _ in t.cg} - loaded):
                    loaded.add(j)
                    lines.append(f"            y{j} = tl.load(sh_row + {j}, mask=mask, other=0.0)")
                lines.append(f"            w = tl.load(w_row + {t.weight_offset}, mask=mask, other=0.0)")
                lines += [
                    f"            xw{a} = tl.load(x_row + u * {t.src_dim} + {t.src_offset + a}, mask=mask,"
                    " other=0.0) * w"
                    for a in sorted({a for a, _, _, _ in t.cg})
                ]
                by_ab: dict[tuple[int, int], list] = {}
                for a, j, b, c in t.cg:
                    by_ab.setdefault((a, b), []).append((c, f"y{j}"))
                lines += [f"            acc{b} += ({_weighted_sum(pairs)}) * xw{a}"
                          for (a, b), pairs in sorted(by_ab.items())]
            lines += [
                f"        u = {u0} + tl.arange(0, {bu})",
                f"        out = out_ptr + row * {d_dst} + {dst_offset} + u * {dst_dim}",
            ]
            lines += [f"        tl.store(out + {b}, _sum(tl.reshape(acc{b}, [BLOCK_E, {bu}]), 0), mask=u < {mul})"
                      for b in range(dst_dim)]
            num_tasks += 1
    return "\n".join(lines) + "\n", num_tasks


def _edge_grads_source(terms, d_in: int, d_out: int, d_sh: int, d_w: int) -> tuple[str, int]:
    """Source of the per-edge gradient kernel (one program per block of edges, all paths) and its tile width.

    Per path ``t_j = sum c * x[a] * g[b]`` (one tile per SH component j); ``g_w = sum_j y_j t_j`` is
    stored directly and ``w t_j`` is accumulated per SH component over all paths and reduced over
    channels once at the end. Paths of equal multiplicity share one loop over channel blocks, so
    each x and g component is loaded once per block.
    """
    bu = max(_block_u(t.mul) for t in terms)
    by_mul: dict[int, list[Path]] = {}
    for t in terms:
        by_mul.setdefault(t.mul, []).append(t)
    used_sh = sorted({j for t in terms for _, j, _, _ in t.cg})
    lines = [
        _HEADER,
        "@triton.jit",
        "def edge_grads_kernel(x_ptr, g_ptr, sh_ptr, w_ptr, sender_ptr, receiver_ptr, g_sh_ptr, g_w_ptr, num_edges,"
        " pairs, BLOCK_E: tl.constexpr):",
        "    dt = g_w_ptr.dtype.element_ty",
        f"    i = tl.arange(0, BLOCK_E * {bu})  # flat [edge, channel] tile",
        f"    e = tl.program_id(0).to(tl.int64) * BLOCK_E + i // {bu}",
        "    e_mask = e < num_edges",
        f"    x_row = x_ptr + tl.load(sender_ptr + e, mask=e_mask, other=0) * {d_in}",
        f"    g_row = g_ptr + tl.load(receiver_ptr + e, mask=e_mask, other=0) * {d_out}",
        f"    w_row = w_ptr + {_weight_row('e')} * {d_w}",
        f"    g_w_row = g_w_ptr + e * {d_w}",
    ]
    lines += [f"    y{j} = tl.load(sh_ptr + e * {d_sh} + {j}, mask=e_mask, other=0.0)" for j in used_sh]
    lines += [f"    gy{j} = tl.full([BLOCK_E * {bu}], 0, dt)" for j in used_sh]
    for m, (mul, group) in enumerate(by_mul.items()):
        lines += [
            f"    for u0 in range(0, {mul}, {bu}):",
            f"        u{m} = u0 + i % {bu}",
            f"        mask{m} = e_mask & (u{m} < {mul})",
        ]
        loaded: set[str] = set()  # x and g components, loaded at first use so only live ones hold registers
        for t in group:
            by_ja: dict[int, dict[int, list]] = {}  # t_j = sum_a x_a * (sum_b c g_b)
            for a, j, b, c in t.cg:
                g_b = f"g{m}_{t.dst_offset + b}"
                by_ja.setdefault(j, {}).setdefault(t.src_offset + a, []).append((c, g_b))
            needed = {("x", t.src_offset + a, t.src_dim) for a, _, _, _ in t.cg}
            needed |= {("g", t.dst_offset + b, t.dst_dim) for _, _, b, _ in t.cg}
            for operand, col, dim in sorted(needed):
                if f"{operand}{col}" not in loaded:
                    loaded.add(f"{operand}{col}")
                    lines.append(f"        {operand}{m}_{col} = tl.load({operand}_row + u{m} * {dim} + {col},"
                                 f" mask=mask{m}, other=0.0)")
            for j, by_a in sorted(by_ja.items()):
                t_j = " + ".join(f"x{m}_{a} * ({_weighted_sum(pairs)})" for a, pairs in sorted(by_a.items()))
                lines.append(f"        t{j} = {t_j}")
            g_w = " + ".join(f"y{j} * t{j}" for j in sorted(by_ja))
            lines += [
                f"        w = tl.load(w_row + {t.weight_offset} + u{m}, mask=mask{m}, other=0.0)",
                f"        tl.store(g_w_row + {t.weight_offset} + u{m}, {g_w}, mask=mask{m})",
            ]
            lines += [f"        gy{j} += t{j} * w" for j in sorted(by_ja)]
    lines += [
        "    e = tl.program_id(0).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)",
        f"    g_sh_row = g_sh_ptr + e * {d_sh}",
    ]
    lines += [
        f"    tl.store(g_sh_row + {j}, "
        + (f"_sum(tl.reshape(gy{j}, [BLOCK_E, {bu}]), 1)" if j in used_sh else "tl.full([BLOCK_E], 0, dt)")
        + ", mask=e < num_edges)"
        for j in range(d_sh)
    ]
    return "\n".join(lines) + "\n", bu


@dataclass(frozen=True)
class _Segment:
    kernel: object
    num_tasks: int
    max_block_u: int
    covers_output: bool  # else rows are pre-zeroed: some output blocks receive no path
    d_src: int
    d_dst: int


def _interpreting(device: torch.device) -> bool:
    """Whether kernels run in Triton's interpreter; part of the kernel cache key, as it is read at generation."""
    interpret = bool(triton.knobs.runtime.interpret)
    if device.type == "cpu" and not interpret:
        raise RuntimeError("the triton backend needs a GPU; on CPU use the cpu backend, or set TRITON_INTERPRET=1 "
                           "(Triton's slow interpreter, for tests)")
    return interpret


@functools.cache
def _segment(plan: Plan, interpret: bool) -> _Segment:
    source, num_tasks = _segment_source(plan.paths, plan.d_src, plan.d_dst, plan.d_sh, plan.d_w)
    covered = {(t.dst_offset, t.mul * t.dst_dim) for t in plan.paths}
    return _Segment(
        kernel=_compile(source, "segment")["segment_kernel"],
        num_tasks=num_tasks,
        max_block_u=max(_block_u(t.mul) for t in plan.paths),
        covers_output=sum(size for _, size in covered) == plan.d_dst,
        d_src=plan.d_src,
        d_dst=plan.d_dst,
    )


@dataclass(frozen=True)
class _EdgeGrads:
    kernel: object
    block_u: int


@functools.cache
def _edge_grads(plan: Plan, interpret: bool) -> _EdgeGrads:
    source, block_u = _edge_grads_source(plan.paths, plan.d_src, plan.d_dst, plan.d_sh, plan.d_w)
    return _EdgeGrads(_compile(source, "edge_grads")["edge_grads_kernel"], block_u)


def _tile(dtype: torch.dtype) -> int:
    return 32 * _NUM_WARPS * _PER_THREAD[dtype]


def _num_warps(tile: int, dtype: torch.dtype) -> int:
    """Fewer warps for small tiles (low-degree graphs, few channels) instead of idle threads."""
    return max(1, min(_NUM_WARPS, tile // (32 * _PER_THREAD[dtype])))


def _check_features(name: str, t: torch.Tensor, rows: int | None, dim: int, dtype: torch.dtype) -> torch.Tensor:
    if t.dim() != 2 or t.shape[1] != dim or (rows is not None and t.shape[0] != rows):
        raise ValueError(f"{name}: expected shape ({'*' if rows is None else rows}, {dim}), got {tuple(t.shape)}")
    if t.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    return t.contiguous()


def _check_index(name: str, t: torch.Tensor, length: int) -> torch.Tensor:
    if t.dim() != 1 or t.shape[0] != length or t.dtype != torch.int64:
        raise ValueError(f"{name}: expected an int64 vector of length {length}, got {t.dtype} {tuple(t.shape)}")
    return t.contiguous()


def _weight_row(e: str) -> str:
    """Triton source of the weight row of edge ``e``. Edge layout [P edges, their P reverses, U
    unpaired], E = 2P + U, with R = E - P weight rows (``pairs`` = P = E - R; 0: one row per edge):
    a pair's two edges share one row."""
    return f"tl.where({e} < pairs, {e}, {e} - pairs)"


def _pair_sums(g_w: torch.Tensor, rows: int) -> torch.Tensor:
    """Per-edge ``g_w`` (E rows) -> per weight row (``_weight_row``): row k gets edge k + P, and edge k if k < P."""
    pairs = g_w.shape[0] - rows
    if pairs == 0:
        return g_w
    out = g_w[pairs:].clone()
    out[:pairs] += g_w[:pairs]
    return out


def _check_weight(weight: torch.Tensor, num_edges: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """E - P rows for P pairs (``_weight_row``): between ceil(E/2) and E."""
    if weight.dim() == 2 and 2 * weight.shape[0] >= num_edges and weight.shape[0] <= num_edges:
        return _check_features("weight", weight, None, dim, dtype)
    raise ValueError(f"weight: expected between {(num_edges + 1) // 2} and {num_edges} rows (E - P for P edge pairs) "
                     f"of {dim} columns, got {tuple(weight.shape)}")


def segment_conv(
    plan: Plan,
    x: torch.Tensor,
    sh: torch.Tensor,
    weight: torch.Tensor,
    row_ptr: torch.Tensor,
    perm: torch.Tensor,
    col: torch.Tensor,
) -> torch.Tensor:
    """``out[r] = sum_{k in [row_ptr[r], row_ptr[r+1])} T(x[col[k]], sh[e], weight[e])``, ``e = perm[k]``.

    ``T`` is the plan's map (``x`` has ``plan.d_src`` columns); edge ``e`` reads weight row
    ``_weight_row(e)``. Returns ``(len(row_ptr) - 1, plan.d_dst)``.
    """
    seg = _segment(plan, _interpreting(x.device))
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"x: expected float32 or float64, got {x.dtype}")
    num_edges = sh.shape[0] if sh.dim() == 2 else -1
    x = _check_features("x", x, None, seg.d_src, x.dtype)
    sh = _check_features("sh", sh, None, plan.d_sh, x.dtype)
    weight = _check_weight(weight, num_edges, plan.d_w, x.dtype)
    perm, col = _check_index("perm", perm, num_edges), _check_index("col", col, num_edges)
    if row_ptr.dim() != 1 or row_ptr.shape[0] < 1 or row_ptr.dtype != torch.int64:
        raise ValueError(f"row_ptr: expected a non-empty int64 vector, got {row_ptr.dtype} {tuple(row_ptr.shape)}")
    row_ptr = row_ptr.contiguous()
    rows = row_ptr.shape[0] - 1
    out = (x.new_empty if seg.covers_output else x.new_zeros)(rows, seg.d_dst)
    if rows == 0:
        return out
    avg_degree = -(-num_edges // rows)
    block_e = max(1, min(_tile(x.dtype) // seg.max_block_u, triton.next_power_of_2(max(avg_degree, 1))))
    num_warps = _num_warps(block_e * seg.max_block_u, x.dtype)
    seg.kernel[(rows, seg.num_tasks)](x, sh, weight, out, row_ptr, col, perm, num_edges - weight.shape[0],
                                      BLOCK_E=block_e, num_warps=num_warps)
    return out


def edge_grads(
    plan: Plan,
    x: torch.Tensor,
    g: torch.Tensor,
    sh: torch.Tensor,
    weight: torch.Tensor,
    sender: torch.Tensor,
    receiver: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-edge gradients ``(g_sh, g_w)`` of ``sum_e <g[receiver[e]], T(x[sender[e]], sh[e], weight[e])>``;
    a pair's weight row (``_weight_row``) gets the sum over its two edges."""
    kern = _edge_grads(plan, _interpreting(x.device))
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"x: expected float32 or float64, got {x.dtype}")
    num_edges = sh.shape[0] if sh.dim() == 2 else -1
    x = _check_features("x", x, None, plan.d_src, x.dtype)
    g = _check_features("g", g, None, plan.d_dst, x.dtype)
    sh = _check_features("sh", sh, None, plan.d_sh, x.dtype)
    weight = _check_weight(weight, num_edges, plan.d_w, x.dtype)
    sender, receiver = _check_index("sender", sender, num_edges), _check_index("receiver", receiver, num_edges)
    g_sh, g_w = sh.new_empty(num_edges, plan.d_sh), weight.new_empty(num_edges, plan.d_w)
    if num_edges == 0:
        return g_sh, g_w[: weight.shape[0]]
    block_e = _tile(x.dtype) // kern.block_u
    kern.kernel[(triton.cdiv(num_edges, block_e),)](
        x, g, sh, weight, sender, receiver, g_sh, g_w, num_edges, num_edges - weight.shape[0], BLOCK_E=block_e,
        num_warps=_num_warps(block_e * kern.block_u, x.dtype),
    )
    return g_sh, _pair_sums(g_w, weight.shape[0])

"""A layer's epilogue, linear_2 + self-connection + gate, as matmuls per irrep and one gate pass;
and linear_1 the same way.

e3nn computes the epilogue with three modules: ``o3.Linear`` (an einsum per path), a
``FullyConnectedTensorProduct`` of the node features with the species one-hot (the per-species
self-connection) and ``Gate`` (split, activations, an elementwise tensor product, cat), each a pass
over the node features with its own autograd nodes. Both maps are linear in their inputs, so for
one irrep the convolution output and the features times the one-hot are row blocks of one matrix
product, accumulated into one output per irrep (torch's ``@``: MKL on CPU; oneDNN, ``ops.matmul``,
gained 1-2% of an E+F call (within the noise) on these node-level products and cost a cached
primitive per shape, ~0.5 MiB each, made mid-call: benchmarks/RESULTS.md, issue 14 memory); the
gate then reads pieces of it. The weights stay the e3nn modules' (same state-dict keys, same
upstream weight transfer); they are assembled into the per-irrep matrices on every call (a few
small ops on parameters of a few kB), so training sees the same parameters and export folds them.
Pure torch: autograd gives the backward and the double backward, and torch.export understands it.
"""
import math
from typing import Callable, NamedTuple, Optional

import torch
from e3nn import o3
from e3nn.nn import Gate


class _Block(NamedTuple):
    """Rows ``mul_in`` (x ``num_species`` for the self-connection) by columns ``mul_out`` of a
    per-irrep matrix: a view of one e3nn path's weights times its constant, or zeros (no path)."""
    source: int  # 0: linear_2's weight, 1: the self-connection's, -1: none
    offset: int
    rows: int
    cols: int
    scale: float


class _Group(NamedTuple):
    """Everything of one irrep: its inputs (indices of linear_2's and of the self-connection's input
    entries, with multiplicities), the matrix as row blocks of column blocks, the permutation of
    its columns (None when the identity), and the widths of the column pieces the gate reads."""
    dim: int
    conv: tuple[tuple[int, int], ...]
    features: tuple[tuple[int, int], ...]
    blocks: tuple[tuple[_Block, ...], ...]
    cols: int
    perm: Optional[tuple[int, ...]]
    pieces: tuple[int, ...]


class _Act(NamedTuple):
    """``f(x) * cst`` as e3nn's ``normalize2mom`` evaluates it (no multiply when it is the identity)."""
    f: Callable
    cst: Optional[float]


def _act(act) -> _Act:
    if act is None:
        raise ValueError("fused epilogue: a gate path without activation is not supported")
    return _Act(act.f, None if act._is_id else act.cst)


def _apply(act: _Act, x: torch.Tensor) -> torch.Tensor:
    y = act.f(x)
    return y if act.cst is None else y.mul(act.cst)


def _channels(irreps: o3.Irreps) -> list[tuple[int, o3.Irrep]]:
    """(flat start, irrep) of every channel of a feature vector."""
    out, start = [], 0
    for mul, ir in irreps:
        out += [(start + u * ir.dim, ir) for u in range(mul)]
        start += mul * ir.dim
    return out


def _linear_paths(linear: o3.Linear, scale: float) -> dict[tuple[int, int, int], _Block]:
    """(0, input entry, output entry) -> the path's block of ``linear``'s weight, times ``scale``."""
    if any(ins.i_in == -1 for ins in linear.instructions):
        raise ValueError("fused linear: biases are not supported")
    paths, offset = {}, 0
    for ins in linear.instructions:
        mul_in, mul_out = ins.path_shape
        paths[0, ins.i_in, ins.i_out] = _Block(0, offset, mul_in, mul_out, ins.path_weight * scale)
        offset += mul_in * mul_out
    return paths


def _inputs_and_blocks(ir: o3.Irrep, paths: dict, outs: list[tuple[int, int]], irreps_in: o3.Irreps,
                       features: o3.Irreps = o3.Irreps(""), num_species: int = 0):
    """For output entries ``outs`` (index, multiplicity) of irrep ``ir``: the entries of ``irreps_in``
    (source 0) and ``features`` (source 1, times ``num_species``) that feed them, and their matrix as
    row blocks (one per input entry) of column blocks (one per output entry)."""
    conv = tuple((i, mul) for i, (mul, other) in enumerate(irreps_in) if other == ir)
    feats = tuple((i, mul) for i, (mul, other) in enumerate(features) if other == ir)
    blocks = []
    for source, inputs in ((0, conv), (1, feats)):
        for i_in, mul_in in inputs:
            rows = mul_in * (num_species if source else 1)
            blocks.append(tuple(paths.get((source, i_in, i_out), _Block(-1, 0, rows, mul_out, 0.0))
                                for i_out, mul_out in outs))
    return conv, feats, tuple(blocks)


def _row_weights(group: _Group, weights: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """The group's matrix, one row block (input entry) at a time, columns in the group's order."""
    out = []
    for blocks in group.blocks:
        cols = [weights[b.source].narrow(0, b.offset, b.rows * b.cols).view(b.rows, b.cols) * b.scale
                if b.source >= 0 else weights[0].new_zeros(b.rows, b.cols) for b in blocks]
        w = cols[0] if len(cols) == 1 else torch.cat(cols, dim=1)
        out.append(w if group.perm is None else w[:, list(group.perm)])
    return out


def _products(groups: tuple[_Group, ...], hs: tuple[torch.Tensor, ...], xs: tuple[torch.Tensor, ...],
              attrs: Optional[torch.Tensor], weights: tuple[torch.Tensor, ...], n: int
              ) -> list[tuple[torch.Tensor, ...]]:
    """Per irrep, ``[h | x (x) attrs] @ W`` as (n, dim, columns), split into its pieces: one matmul
    (accumulated) per input entry, whose (n * dim, mul) operand is that entry transposed. ``hs``,
    ``xs``: the inputs split by entry, so that their backward is one cat (a slice's fills a zero
    tensor of the whole input)."""
    out = []
    for group in groups:
        d = group.dim
        parts = [hs[i].view(n, mul, d) for i, mul in group.conv]
        if attrs is not None:
            s = attrs.shape[1]
            parts += [(xs[i].view(n, mul, 1, d) * attrs.view(n, 1, s, 1)).view(n, mul * s, d)
                      for i, mul in group.features]
        y = None
        for part, w in zip(parts, _row_weights(group, weights)):
            a = part.transpose(1, 2).reshape(n * d, part.shape[1])
            y = a @ w if y is None else y + a @ w
        y = hs[0].new_zeros(n * d, group.cols) if y is None else y
        y = y.view(n, d, group.cols)
        # no split into one piece: export re-traces the backward's cat of it with other strides
        out.append(torch.split(y, group.pieces, dim=2) if len(group.pieces) > 1 else (y,))
    return out


class IrrepLinear(torch.nn.Module):
    """``o3.Linear`` (no biases) as one matmul per output entry and input entry of its irrep; its
    weight comes as an argument of ``forward``. e3nn's is an einsum per path and a slice per input."""

    def __init__(self, linear: o3.Linear):
        super().__init__()
        paths, groups = _linear_paths(linear, 1.0), []
        for i_out, (mul, ir) in enumerate(linear.irreps_out):  # a group per output entry: one piece each
            conv, feats, blocks = _inputs_and_blocks(ir, paths, [(i_out, mul)], linear.irreps_in)
            groups.append(_Group(ir.dim, conv, feats, blocks, mul, None, (mul,)))
        self.groups = tuple(groups)
        self.sizes = tuple(mul * ir.dim for mul, ir in linear.irreps_in)

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        pieces = _products(self.groups, torch.split(x, self.sizes, dim=1), (), None, (weight,), n)
        out = [y.transpose(1, 2).reshape(n, -1) for y, in pieces]
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)


class Epilogue(torch.nn.Module):
    """``gate(linear(h * norm) + self_connection(x, attrs))`` from the given e3nn modules' structure;
    their weights come as arguments of ``forward``."""

    def __init__(self, linear: o3.Linear, self_connection: o3.FullyConnectedTensorProduct, gate: Gate,
                 norm: float):
        super().__init__()
        if linear.irreps_out != gate.irreps_in or self_connection.irreps_out != gate.irreps_in:
            raise ValueError(f"fused epilogue: linear -> {linear.irreps_out} and self-connection -> "
                             f"{self_connection.irreps_out} must both give the gate's input {gate.irreps_in}")
        (num_species, attr_ir), = self_connection.irreps_in2
        if attr_ir != o3.Irrep("0e"):
            raise ValueError("fused epilogue: needs scalar attributes")
        irreps_out = linear.irreps_out

        paths = _linear_paths(linear, norm)  # (source, input entry, output entry) -> _Block
        offset = 0
        for ins in self_connection.instructions:
            mul_in, _, mul_out = ins.path_shape
            if ins.connection_mode != "uvw" or not ins.has_weight:
                raise ValueError(f"fused epilogue: self-connection path {ins} is not a weighted uvw path")
            # w3j(l, 0, l) is the identity / sqrt(2l+1); component normalisation put sqrt(2l+1) in path_weight
            dim = self_connection.irreps_out[ins.i_out].ir.dim
            paths[1, ins.i_in1, ins.i_out] = _Block(1, offset, mul_in * num_species, mul_out,
                                                    ins.path_weight / math.sqrt(dim))
            offset += mul_in * num_species * mul_out

        # columns of each irrep in the order the gate reads them: scalars, gates, gated
        out_channels = _channels(irreps_out)
        natural = {}  # flat start -> column within its irrep, in linear_2's output order
        for start, ir in out_channels:
            natural[start] = sum(1 for s, other in out_channels if other == ir and s < start)
        sorted_in = gate.sc.cut.irreps_in
        roles = []  # per role (scalars, gates, gated): the flat starts of its channels in order
        sorted_starts = [sorted_in[:i].dim for i in range(len(sorted_in))]
        for entries in gate.sc.cut.instructions:
            roles.append([sorted_starts[i] + u * sorted_in[i].ir.dim for i in entries for u in range(sorted_in[i].mul)])
        order, irrep_of = {}, dict(out_channels)  # irrep -> flat starts in gate order
        for starts in roles:
            for start in starts:
                order.setdefault(irrep_of[start], []).append(start)

        groups, column = [], {}  # flat start -> (group, column)
        for ir in order:
            perm = tuple(natural[s] for s in order[ir])
            for c, start in enumerate(order[ir]):
                column[start] = (len(groups), c)
            outs = [(i, mul) for i, (mul, other) in enumerate(irreps_out) if other == ir]
            conv, feats, blocks = _inputs_and_blocks(ir, paths, outs, linear.irreps_in, self_connection.irreps_in1,
                                                     num_species)
            groups.append([ir.dim, conv, feats, blocks, len(perm), None if perm == tuple(range(len(perm))) else perm])
        self.h_sizes = tuple(mul * ir.dim for mul, ir in linear.irreps_in)
        self.x_sizes = tuple(mul * ir.dim for mul, ir in self_connection.irreps_in1)

        # gate: activated scalars, activated gates, gated channels times their gate; runs of adjacent
        # columns of one group with one activation become one piece of a split (whose backward is
        # one cat, where a slice's would fill a zero tensor of the whole input per slice)
        def runs(starts, acts):
            out = []
            for start, act in zip(starts, acts):
                g, c = column[start]
                if out and out[-1][0] == g and out[-1][2] == c and out[-1][3] == act:
                    out[-1][2] += 1
                else:
                    out.append([g, c, c + 1, act])
            return tuple(tuple(r) for r in out)

        def channel_acts(activation):
            return [_act(act) for mul, _, act in activation.paths for _ in range(mul)]

        scalars, gates, gated = roles
        self.scalar_runs = runs(scalars, channel_acts(gate.act_scalars))
        self.gate_runs = runs(gates, channel_acts(gate.act_gates))
        gated_runs = runs(gated, [None] * len(gated))
        all_runs = self.scalar_runs + self.gate_runs + gated_runs
        piece = {}  # (group, first column) -> piece index
        for g, group in enumerate(groups):
            starts = sorted(c0 for rg, c0, _, _ in all_runs if rg == g)
            piece.update({(g, c0): i for i, c0 in enumerate(starts)})
            group.append(tuple(c1 - c0 for c0, c1 in zip(starts, starts[1:] + [group[4]])))
        self.groups = tuple(_Group(*group) for group in groups)
        self.scalar_runs = tuple((g, piece[g, c0], act) for g, c0, _, act in self.scalar_runs)
        self.gate_runs = tuple((g, piece[g, c0], act) for g, c0, _, act in self.gate_runs)
        self.gated_runs = tuple((g, piece[g, c0]) for g, c0, _, _ in gated_runs)
        self.gate_sizes = tuple(c1 - c0 for _, c0, c1, _ in gated_runs)  # gates per gated piece

    def forward(self, h: torch.Tensor, x: torch.Tensor, attrs: torch.Tensor, linear_weight: torch.Tensor,
                self_connection_weight: torch.Tensor) -> torch.Tensor:
        """``h``: convolution output of the local atoms, ``x``: the layer's input features, ``attrs``:
        species one-hot; rows are atoms. Returns the gate's output."""
        n = x.shape[0]
        pieces = _products(self.groups, torch.split(h, self.h_sizes, dim=1), torch.split(x, self.x_sizes, dim=1),
                           attrs, (linear_weight, self_connection_weight), n)
        out = [_apply(act, pieces[g][p].view(n, -1)) for g, p, act in self.scalar_runs]
        if self.gated_runs:
            gates = [_apply(act, pieces[g][p].view(n, -1)) for g, p, act in self.gate_runs]
            gates = torch.split(gates[0] if len(gates) == 1 else torch.cat(gates, dim=1), self.gate_sizes, dim=1)
            for (g, p), gate in zip(self.gated_runs, gates):
                out.append((pieces[g][p] * gate.unsqueeze(1)).transpose(1, 2).reshape(n, -1))
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)

"""The one description of a NequIP convolution tensor product that every backend executes.

The convolution is e3nn's ``TensorProduct`` in ``uvu`` mode between node features (``irreps_in``)
and edge spherical harmonics (``irreps_sh``), with one weight per (path, channel) coming from the
radial MLP. A ``ConvDescriptor`` is built once per layer and holds everything a kernel needs:
offsets of each path's operands, its weight slice, and the Clebsch-Gordan nonzeros already scaled
by e3nn's path normalisation, so that the same weights give the same numbers on every backend.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import torch
from e3nn import o3


@dataclass(frozen=True)
class Path:
    """One ``(i_in, i_sh) -> i_out`` instruction: ``out[u, k] += sum_ij cg[i, j, k] x[u, i] y[j] w[u]``."""

    in_offset: int
    in_dim: int
    sh_offset: int
    sh_dim: int
    out_offset: int
    out_dim: int
    mul: int
    weight_offset: int
    cg: tuple[tuple[int, int, int, float], ...]  # nonzeros (i, j, k, value), path weight folded in

    def transposed(self) -> "Path":
        """The adjoint path: ``in[u, i] += sum_jk cg[i, j, k] out[u, k] y[j] w[u]``."""
        return replace(self, in_offset=self.out_offset, in_dim=self.out_dim, out_offset=self.in_offset,
                       out_dim=self.in_dim, cg=tuple((k, j, i, v) for i, j, k, v in self.cg))


@dataclass(frozen=True)
class ConvDescriptor:
    """``irreps_in``, ``irreps_out`` and ``instructions`` describe the forward map; ``transpose``
    selects its adjoint (``irreps_out -> irreps_in``, the x-gradient), whose ``paths`` are the
    forward paths transposed. Both lower to one ``plan.ConvPlan``."""

    irreps_in: o3.Irreps
    irreps_sh: o3.Irreps
    irreps_out: o3.Irreps
    instructions: tuple[tuple[int, int, int], ...]
    transpose: bool = False

    @staticmethod
    def nequip(irreps_in, irreps_sh, irreps_target) -> "ConvDescriptor":
        """All ``in x sh`` paths whose output irrep occurs in ``irreps_target`` (upstream NequIP's rule).

        Every path gets its own block of ``mul`` output channels; the output irreps are sorted by
        irrep as upstream NequIP does, so a following ``Linear`` sees the same layout.
        """
        irreps_in, irreps_sh, irreps_target = o3.Irreps(irreps_in), o3.Irreps(irreps_sh), o3.Irreps(irreps_target)
        targets = {ir for _, ir in irreps_target}
        mid, raw = [], []
        for i, (mul, ir_in) in enumerate(irreps_in):
            for j, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in targets:
                        raw.append((i, j, len(mid)))
                        mid.append((mul, ir_out))
        irreps_out, perm, _ = o3.Irreps(mid).sort()
        instructions = tuple((i, j, perm[k]) for i, j, k in raw)
        return ConvDescriptor(irreps_in, irreps_sh, irreps_out, instructions)

    def __post_init__(self):
        if any(mul != 1 for mul, _ in self.irreps_sh):
            raise ValueError(f"spherical harmonics irreps must have multiplicity 1, got {self.irreps_sh}")
        for i, j, k in self.instructions:
            if self.irreps_in[i].mul != self.irreps_out[k].mul:
                raise ValueError(f"uvu path {(i, j, k)} needs equal input and output multiplicity")

    def transposed(self) -> "ConvDescriptor":
        return replace(self, transpose=not self.transpose)

    @property
    def irreps_src(self) -> o3.Irreps:
        """The operand gathered per edge (``irreps_in``, or ``irreps_out`` when transposed)."""
        return self.irreps_out if self.transpose else self.irreps_in

    @property
    def irreps_dst(self) -> o3.Irreps:
        """The operand reduced per row."""
        return self.irreps_in if self.transpose else self.irreps_out

    def e3nn_tensor_product(self) -> o3.TensorProduct:
        """The e3nn module that defines the truth for the forward map (per-edge weights, no internal ones)."""
        return o3.TensorProduct(
            self.irreps_in,
            self.irreps_sh,
            self.irreps_out,
            [(i, j, k, "uvu", True) for i, j, k in self.instructions],
            shared_weights=False,
            internal_weights=False,
        )

    @cached_property
    def paths(self) -> tuple[Path, ...]:
        if self.transpose:
            return tuple(p.transposed() for p in self.transposed().paths)
        tp = self.e3nn_tensor_product()
        in_slices, sh_slices, out_slices = self.irreps_in.slices(), self.irreps_sh.slices(), self.irreps_out.slices()
        paths, weight_offset = [], 0
        for ins in tp.instructions:
            mul, ir_in = self.irreps_in[ins.i_in1]
            ir_sh, ir_out = self.irreps_sh[ins.i_in2].ir, self.irreps_out[ins.i_out].ir
            cg = o3.wigner_3j(ir_in.l, ir_sh.l, ir_out.l, dtype=torch.float64) * ins.path_weight
            nonzeros = tuple(
                (int(i), int(j), int(k), float(cg[i, j, k])) for i, j, k in (cg.abs() > 1e-12).nonzero().tolist()
            )
            paths.append(
                Path(
                    in_offset=in_slices[ins.i_in1].start,
                    in_dim=ir_in.dim,
                    sh_offset=sh_slices[ins.i_in2].start,
                    sh_dim=ir_sh.dim,
                    out_offset=out_slices[ins.i_out].start,
                    out_dim=ir_out.dim,
                    mul=mul,
                    weight_offset=weight_offset,
                    cg=nonzeros,
                )
            )
            weight_offset += mul
        return tuple(paths)

    @property
    def weight_numel(self) -> int:
        return sum(p.mul for p in self.paths)

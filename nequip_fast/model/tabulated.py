"""Radial tabulation for inference: each layer's radial network as a piecewise-cubic table.

Every layer's per-edge weights ``w = RadialMLP(Bessel(x) * cutoff(x))`` depend on the normalised
edge length ``x = r / r_c`` alone (``r_c``: r_max, or the species pair's cutoff). ``tabulate(model)``
returns a copy of a ``Potential`` whose radial embedding only normalises the lengths
(``NormalisedLength``) and whose radial MLPs are ``TabulatedRadial`` tables: cubic Hermite
interpolation on a uniform grid over x in [0, 1] of the MLP's value and exact (forward mode)
derivative at the knots, computed in float64. The tabulated energy is a C1 piecewise polynomial
in r that autograd differentiates exactly, so forces stay its exact gradient.

The grid is the coarsest uniform one whose error, checked on a dense grid against the float64
MLP, stays within ``tolerance`` for the weights and for their r-derivative (what forces see),
each relative to the layer's largest value; the derivative's O(h^3) error sets the size.
Substitution swaps submodules with the same call contract and leaves forward signatures alone.
Training keeps the MLP: the tables are buffers, not parameters.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..ops import auto_backend, convolutions
from ..ops import table as table_ops
from .potential import Potential
from .radial import EdgeCutoffs

# Relative to the largest weight (slope): float32 results then change by less than their own rounding.
DEFAULT_TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-8}
MAX_INTERVALS = 1 << 16
CHECK_POINTS = 7  # interior points per interval where the error is checked (the Hermite error peaks at t = 1/2)


class NormalisedLength(torch.nn.Module):
    """Stands in for ``RadialEmbedding`` in a tabulated model (same call): ``x = r / r_c`` as one
    column, the input every ``TabulatedRadial`` reads."""

    def __init__(self, cutoffs: EdgeCutoffs):
        super().__init__()
        self.cutoffs = cutoffs

    def forward(self, r: torch.Tensor, species: Optional[torch.Tensor] = None,
                edge_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.cutoffs(r, species, edge_index).unsqueeze(-1)


class TabulatedRadial(torch.nn.Module):
    """``(rows, 1)`` normalised edge lengths ``x`` -> ``(rows, W)`` weights from a cubic per interval
    of a uniform grid over [0, 1].

    Row ``4 i + k`` of ``table`` holds the ``t**k`` coefficients on interval ``i`` (``t`` in
    [0, 1]), so one ``embedding_bag`` gathers the four rows of each edge and sums them weighted
    by ``t**k``: no ``(rows, 4, W)`` intermediate. With ``fused_lookup`` (set by ``tabulate`` where
    the model's convs run on the ops library; not saved) CPU lookups are ``ops.table``'s op, whose
    backward (d/dt) is one pass over the rows. Lengths are clamped to ``[0, 1]`` with tensor ops only
    (no data-dependent branches, so it exports); beyond x = 1 the table is its end value, the MLP's zero.
    """

    def __init__(self, coefficients: torch.Tensor):
        super().__init__()
        num_intervals, _, width = coefficients.shape
        self.register_buffer("table", coefficients.reshape(num_intervals * 4, width).contiguous())
        self.num_intervals = num_intervals
        self.fused_lookup = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = (x.squeeze(-1) * float(self.num_intervals)).clamp(0.0, float(self.num_intervals))
        interval = u.detach().floor().clamp(max=self.num_intervals - 1)
        lookup = table_ops.table_lookup if self.fused_lookup and table_ops.fused(u) else table_ops.embedding_bag_lookup
        return lookup(interval.long(), u - interval, self.table)

    def extra_repr(self) -> str:
        return f"intervals={self.num_intervals}, width={self.table.shape[-1]}"


@dataclass(frozen=True)
class LayerTable:
    """One layer's table and its error against the float64 MLP on the check grid."""

    intervals: int
    max_abs_error: float  # of the weights
    max_relative_error: float  # the same over the layer's largest |weight|
    max_relative_slope_error: float  # of dw/dr (what forces see) over the largest |dw/dr|
    table_bytes: int


@dataclass(frozen=True)
class TabulationReport:
    tolerance: float
    layers: tuple[LayerTable, ...]

    @property
    def max_relative_error(self) -> float:
        return max(max(layer.max_relative_error, layer.max_relative_slope_error) for layer in self.layers)

    def summary(self) -> str:
        """One line, e.g. for deployed metadata: intervals per layer and the worst relative errors."""
        intervals = ",".join(str(layer.intervals) for layer in self.layers)
        kib = sum(layer.table_bytes for layer in self.layers) / 1024
        value = max(layer.max_relative_error for layer in self.layers)
        slope = max(layer.max_relative_slope_error for layer in self.layers)
        return (f"cubic Hermite over x = r / r_c in [0, 1], intervals {intervals}, max relative error of the weights "
                f"{value:.1e} and of their r-derivative {slope:.1e} (tolerance {self.tolerance:.0e}), {kib:.0f} KiB")


def _radial_functions(model: Potential) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """Per layer, ``x -> w(x)`` in float64 through the model's own embedding and MLP modules."""
    energy = model.energy_model
    embedding = copy.deepcopy(energy.radial).to("cpu", torch.float64)
    mlps = [copy.deepcopy(layer.block.radial_mlp).to("cpu", torch.float64) for layer in energy.layers]
    return [lambda x, mlp=mlp: mlp(embedding.encode(x)) for mlp in mlps]


def _knots(f, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and d/dx at ``x = j / n``; at ``x = 0``, where ``sin(kx)/x`` is 0/0, the even
    basis' limit: the value at a tiny x (exact to float64) and slope 0."""
    x = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
    x[0] = 1e-9
    with torch.no_grad():
        values, slopes = torch.func.jvp(f, (x,), (torch.ones_like(x),))
    slopes[0] = 0.0
    return values, slopes


def hermite_coefficients(values: torch.Tensor, slopes: torch.Tensor, spacing: float) -> torch.Tensor:
    """``(n + 1, W)`` knot values and slopes -> ``(n, 4, W)`` power coefficients in ``t = (x - x_i) / h``."""
    y0, y1 = values[:-1], values[1:]
    m0, m1 = slopes[:-1] * spacing, slopes[1:] * spacing
    return torch.stack((y0, m0, 3 * (y1 - y0) - 2 * m0 - m1, 2 * (y0 - y1) + m0 + m1), dim=1)


def _check_error(f, coefficients: torch.Tensor) -> tuple[float, float, float]:
    """On ``CHECK_POINTS`` interior points per interval: max |table - f|, and it and
    max |table' - f'| relative to max |f| and max |f'| there."""
    n = coefficients.shape[0]
    t = torch.arange(1, CHECK_POINTS + 1, dtype=torch.float64) / (CHECK_POINTS + 1)
    x = ((torch.arange(n, dtype=torch.float64)[:, None] + t) / n).reshape(-1)
    derivative = torch.stack((coefficients[:, 1], 2 * coefficients[:, 2], 3 * coefficients[:, 3],
                              torch.zeros_like(coefficients[:, 0])), dim=1) * n
    with torch.no_grad():
        exact, exact_slope = torch.func.jvp(f, (x,), (torch.ones_like(x),))
        approx = TabulatedRadial(coefficients)(x.unsqueeze(-1))
        approx_slope = TabulatedRadial(derivative)(x.unsqueeze(-1))
    value = float((approx - exact).abs().max()), float(exact.abs().max())
    slope = float((approx_slope - exact_slope).abs().max()), float(exact_slope.abs().max())
    return value[0], value[0] / value[1] if value[1] > 0 else 0.0, slope[0] / slope[1] if slope[1] > 0 else 0.0


def _tabulate_layer(f, tolerance: float, dtype: torch.dtype) -> tuple[torch.Tensor, LayerTable]:
    """Refine the grid until weights and slopes are within tolerance on the check grid. Their
    errors scale as h^4 and h^3, so each step predicts the size that suffices (with a margin)."""
    n = 32
    while True:
        values, slopes = _knots(f, n)
        coefficients = hermite_coefficients(values, slopes, 1.0 / n)
        error, relative, slope_relative = _check_error(f, coefficients)
        if max(relative, slope_relative) <= tolerance:
            table = coefficients.to(dtype)
            return table, LayerTable(n, error, relative, slope_relative, table.numel() * table.element_size())
        if n >= MAX_INTERVALS:
            raise ValueError(f"radial tabulation: {MAX_INTERVALS} intervals still give a relative error of "
                             f"{max(relative, slope_relative):.1e} > tolerance {tolerance:.0e}; the radial network is "
                             f"too rough to tabulate: raise the tolerance or deploy without tabulation")
        grow = max((relative / tolerance) ** 0.25, (slope_relative / tolerance) ** (1 / 3))
        n = min(MAX_INTERVALS, max(2 * n, math.ceil(1.2 * n * grow)))


def tabulate(model: Potential, tolerance: float | None = None) -> Potential:
    """A copy of ``model`` whose radial networks are tables (inference only); ``model`` is unchanged.

    ``tolerance``: max error of the weights and of their r-derivative, each relative to the
    layer's largest value (default 1e-6 in float32, 1e-8 in float64). The copy's
    ``radial_table`` is the ``TabulationReport``.
    """
    if is_tabulated(model):
        raise ValueError("the model is already tabulated")
    dtype = model.dtype
    tolerance = DEFAULT_TOLERANCE[dtype] if tolerance is None else float(tolerance)
    if not tolerance > 0:
        raise ValueError(f"radial tabulation tolerance must be positive, got {tolerance}")
    device = next(model.parameters()).device
    tables = [_tabulate_layer(f, tolerance, dtype) for f in _radial_functions(model)]

    energy = model.energy_model
    radial, mlps = energy.radial, [layer.block.radial_mlp for layer in energy.layers]
    try:  # deep-copy the rest of the model without the modules the tables replace
        energy.radial = NormalisedLength(radial.cutoffs)
        for layer in energy.layers:
            layer.block.radial_mlp = torch.nn.Identity()
        out = copy.deepcopy(model)
    finally:
        energy.radial = radial
        for layer, mlp in zip(energy.layers, mlps):
            layer.block.radial_mlp = mlp
    # the lookup op where the convs already need the ops library (a deployed file loads it for them)
    backends = {auto_backend(device) if conv.backend == "auto" else conv.backend for conv in convolutions(out)}
    fused_lookup = backends <= {"cpu", "cuda"} and table_ops.load()
    for layer, (coefficients, _) in zip(out.energy_model.layers, tables):
        layer.block.radial_mlp = TabulatedRadial(coefficients).to(device)
        layer.block.radial_mlp.fused_lookup = fused_lookup
    out.radial_table = TabulationReport(tolerance, tuple(report for _, report in tables))
    return out.eval()


def is_tabulated(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a ``Potential`` made by ``tabulate``."""
    return isinstance(getattr(getattr(model, "energy_model", None), "radial", None), NormalisedLength)

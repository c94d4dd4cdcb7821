"""Edge length encoding: Bessel functions times a smooth polynomial cutoff (upstream NequIP's).

Both act on the normalised length ``x = r / r_c``, where the cutoff ``r_c`` is ``r_max`` or, with
per-edge-type cutoffs, the cutoff of the edge's (centre, neighbour) species pair (upstream's rule).
"""
import math
from typing import Optional, Sequence

import torch
from e3nn.math import normalize2mom

from ..ops.matmul import bucketed, matmul, silu_matmul


class EdgeCutoffs(torch.nn.Module):
    """``r / r_c`` per edge: ``r_c`` is ``r_max``, or the (centre, neighbour) species pair's cutoff."""

    def __init__(self, r_max: float, per_edge_type_cutoff: Sequence[Sequence[float]] = ()):
        super().__init__()
        self.r_max = float(r_max)
        self.num_species = len(per_edge_type_cutoff)
        # symmetric cutoffs keep both edges of a pair alike, so the radial networks may run once per pair
        self.symmetric = all(per_edge_type_cutoff[a][b] == per_edge_type_cutoff[b][a]
                             for a in range(self.num_species) for b in range(self.num_species))
        inverse = torch.tensor(per_edge_type_cutoff, dtype=torch.float64).reciprocal().reshape(-1)
        self.register_buffer("inverse", inverse.to(torch.get_default_dtype()) if self.num_species else None,
                             persistent=False)  # derived from the config

    def forward(self, r: torch.Tensor, species: Optional[torch.Tensor] = None,
                edge_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``edge_index`` may hold more edges than ``r``: its first ``len(r)`` belong to ``r``."""
        if self.inverse is None:
            return r * (1.0 / self.r_max)
        types = species[edge_index[:, : r.shape[0]]]
        return r * self.inverse[types[0] * self.num_species + types[1]]


class BesselBasis(torch.nn.Module):
    """``2/r_max * sin(n pi x) / (x r_max)`` of ``x = r / r_c`` for n = 1..num_basis (for ``r_c = r_max``:
    ``2/r_max * sin(n pi r / r_max) / r``), frequencies ``n pi`` optionally trainable."""

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = True):
        super().__init__()
        self.r_max = float(r_max)
        self.prefactor = 2.0 / (self.r_max * self.r_max)
        weights = torch.linspace(1.0, num_basis, num_basis) * math.pi
        if trainable:
            self.bessel_weights = torch.nn.Parameter(weights)
        else:
            self.register_buffer("bessel_weights", weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(-1)
        return self.prefactor * torch.sin(self.bessel_weights * x) / x


class PolynomialCutoff(torch.nn.Module):
    """Envelope of ``x = r / r_c`` that goes to zero at x = 1 with p continuous derivatives
    (Klicpera et al., DimeNet)."""

    def __init__(self, p: float = 6):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p
        out = (
            1.0
            - (p + 1.0) * (p + 2.0) / 2.0 * torch.pow(x, p)
            + p * (p + 2.0) * torch.pow(x, p + 1.0)
            - p * (p + 1.0) / 2.0 * torch.pow(x, p + 2.0)
        )
        return out * (x < 1.0)


class RadialEmbedding(torch.nn.Module):
    def __init__(self, r_max: float, num_basis: int, trainable: bool, p: int,
                 per_edge_type_cutoff: Sequence[Sequence[float]] = ()):
        super().__init__()
        self.cutoffs = EdgeCutoffs(r_max, per_edge_type_cutoff)
        self.basis = BesselBasis(r_max, num_basis, trainable)
        self.cutoff = PolynomialCutoff(p)

    def forward(self, r: torch.Tensor, species: Optional[torch.Tensor] = None,
                edge_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.encode(self.cutoffs(r, species, edge_index))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The basis of the normalised length ``x = r / r_c`` (what ``model.tabulated`` tabulates)."""
        return self.basis(x) * self.cutoff(x).unsqueeze(-1)


class RadialMLP(torch.nn.Module):
    """Radial basis -> per-edge tensor-product weights: the function and parameters of e3nn's
    ``FullyConnectedNet`` (N(0, 1) weights scaled by 1/sqrt(fan_in), SiLU normalised to unit second
    moment), with every constant folded into the small weight matrices instead of multiplying the
    (edges x width) activations, which cost as much as the matmuls. A hidden layer is
    ``ops.matmul.silu_matmul``: the fused SiLU (one pass per derivative level on CPU, torch's silu
    elsewhere and under tracing) and the product, for forces without a graph one pass and one product
    each way."""

    def __init__(self, sizes: Sequence[int]):
        super().__init__()
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(fan_in, fan_out)) for fan_in, fan_out in zip(sizes, sizes[1:])
        )
        silu_norm = normalize2mom(torch.nn.functional.silu).cst
        self.scales = tuple((1.0 if k == 0 else silu_norm) / math.sqrt(fan_in) for k, fan_in in enumerate(sizes[:-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        x = bucketed(x)  # the products' row count, once for the chain
        for k, weight in enumerate(self.weights):
            x = matmul(x, weight * self.scales[k]) if k == 0 else silu_matmul(x, weight * self.scales[k])
        return x if x.shape[0] == rows else x[:rows]  # a slice's backward fills and copies, even of all rows

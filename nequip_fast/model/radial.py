"""Edge length encoding: Bessel functions times a smooth polynomial cutoff (upstream NequIP's)."""
import math
from typing import Sequence

import torch
from e3nn.math import normalize2mom


class BesselBasis(torch.nn.Module):
    """``2/r_max * sin(n pi r / r_max) / r`` for n = 1..num_basis, frequencies optionally trainable."""

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = True):
        super().__init__()
        self.r_max = float(r_max)
        self.prefactor = 2.0 / self.r_max
        weights = torch.linspace(1.0, num_basis, num_basis) * math.pi
        if trainable:
            self.bessel_weights = torch.nn.Parameter(weights)
        else:
            self.register_buffer("bessel_weights", weights)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.bessel_weights * r / self.r_max) / r


class PolynomialCutoff(torch.nn.Module):
    """Envelope that goes to zero at r_max with p continuous derivatives (Klicpera et al., DimeNet)."""

    def __init__(self, r_max: float, p: int = 6):
        super().__init__()
        self.r_max = float(r_max)
        self.p = float(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = r / self.r_max
        p = self.p
        out = (
            1.0
            - (p + 1.0) * (p + 2.0) / 2.0 * torch.pow(x, p)
            + p * (p + 2.0) * torch.pow(x, p + 1.0)
            - p * (p + 1.0) / 2.0 * torch.pow(x, p + 2.0)
        )
        return out * (x < 1.0)


class RadialEmbedding(torch.nn.Module):
    def __init__(self, r_max: float, num_basis: int, trainable: bool, p: int):
        super().__init__()
        self.basis = BesselBasis(r_max, num_basis, trainable)
        self.cutoff = PolynomialCutoff(r_max, p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.basis(r) * self.cutoff(r).unsqueeze(-1)


class RadialMLP(torch.nn.Module):
    """Radial basis -> per-edge tensor-product weights: the function and parameters of e3nn's
    ``FullyConnectedNet`` (N(0, 1) weights scaled by 1/sqrt(fan_in), SiLU normalised to unit second
    moment), with every constant folded into the small weight matrices instead of multiplying the
    (edges x width) activations, which cost as much as the matmuls."""

    def __init__(self, sizes: Sequence[int]):
        super().__init__()
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(fan_in, fan_out)) for fan_in, fan_out in zip(sizes, sizes[1:])
        )
        silu_norm = normalize2mom(torch.nn.functional.silu).cst
        self.scales = tuple((1.0 if k == 0 else silu_norm) / math.sqrt(fan_in) for k, fan_in in enumerate(sizes[:-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for k, weight in enumerate(self.weights):
            x = x @ (weight * self.scales[k])
            if k < last:
                x = torch.nn.functional.silu(x)
        return x

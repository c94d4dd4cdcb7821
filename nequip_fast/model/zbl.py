"""ZBL screened nuclear repulsion (Ziegler-Biersack-Littmark), as LAMMPS ``pair zbl`` and upstream
NequIP's ``ZBL`` pair potential: a physical prior that keeps atoms apart where training data has none.

Per edge ``(i, j)``: ``1/2 * k Zi Zj / r * phi(r / a) * envelope(r / r_c)`` with the universal
screening ``phi`` and length ``a = 0.46850 / (Zi^0.23 + Zj^0.23)``, added to atom i's energy; both
edges of a pair together give the full pair energy.
"""
from typing import Sequence

import torch
from ase.data import atomic_numbers

from .radial import EdgeCutoffs, PolynomialCutoff

# e^2 / (4 pi eps0) in energy x Angstrom, LAMMPS's values (update.cpp)
COULOMB = {"metal": 14.399645, "real": 332.06371}
_C = (0.02817, 0.28022, 0.50986, 0.18175)
_D = (-0.20162, -0.40290, -0.94229, -3.19980)


class ZBL(torch.nn.Module):
    def __init__(self, species: Sequence[str], r_max: float, per_edge_type_cutoff: Sequence[Sequence[float]],
                 units: str, polynomial_p: float):
        super().__init__()
        # not persistent: derived from the config
        self.register_buffer("z", torch.tensor([float(atomic_numbers[s]) for s in species]), persistent=False)
        self.half_coulomb = 0.5 * COULOMB[units]
        self.cutoffs = EdgeCutoffs(r_max, per_edge_type_cutoff)
        self.envelope = PolynomialCutoff(polynomial_p)

    def forward(self, r: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor, num_local: int) -> torch.Tensor:
        """Per-atom energies of the ``num_local`` receivers from the lengths of all edges (``species``:
        of every atom an edge names)."""
        z = self.z.to(r.dtype)[species]
        zi, zj = z[edge_index[0]], z[edge_index[1]]
        x = (zi.pow(0.23) + zj.pow(0.23)) * r / 0.46850
        phi = sum(c * torch.exp(d * x) for c, d in zip(_C, _D))
        energy = self.half_coulomb * zi * zj / r * phi * self.envelope(self.cutoffs(r, species, edge_index))
        return torch.zeros(num_local, dtype=r.dtype, device=r.device).index_add(0, edge_index[0], energy)

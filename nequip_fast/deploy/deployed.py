"""A deployed file behind the ``Potential`` call interface, so that ASE and tests use either."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.graph import AtomicGraph
from ..model import Prediction
from ..model.geometry import edge_vectors
from .package import NATIVE_BACKENDS, DeployError, check_program, read_metadata


class DeployedPotential(torch.nn.Module):
    """``model(graph, forces=True, stress=False) -> Prediction`` from a ``.pt2`` written by ``deploy``.

    One structure per call (the exported program sums energy over all its atoms).
    """

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        meta = self.metadata
        if meta["conv_backend"] in NATIVE_BACKENDS:
            from ..ops.fused import load_backend

            load_backend(meta["conv_backend"])  # registers the ops the compiled code calls
        if meta["device"] != "cpu" and not torch.cuda.is_available():
            raise DeployError(f"{self.path} was compiled for {meta['device']}, which this machine lacks")
        self.species = tuple(meta["species"].split())
        self.r_max = float(meta["r_max"])
        self.num_layers = int(meta["num_layers"])
        self.dtype = getattr(torch, meta["dtype"])
        self.device = torch.device(meta["device"])
        self.program = torch._inductor.aoti_load_package(str(self.path))
        check_program(self, meta, str(self.path))

    def forward(self, graph: AtomicGraph, forces: bool = True, stress: bool = False) -> Prediction:
        if graph.num_graphs != 1:
            raise ValueError(f"a deployed model takes one structure at a time, got {graph.num_graphs}")
        edge_vec = edge_vectors(graph.pos, graph.cell, graph.batch, graph.edge_index, graph.edge_shift, self.dtype)
        energy, atomic, f, virial, _ = self.program(
            graph.species.to(self.device), graph.edge_index.to(self.device), edge_vec.to(self.device),
            torch.zeros(0, dtype=torch.long, device=self.device),  # a whole structure: no ghosts
            torch.arange(graph.edge_pairs, edge_vec.shape[0], device=self.device))  # the edges owning a radial row
        virial = virial.unsqueeze(0)
        stress_tensor = None
        if stress:
            volume = torch.linalg.det(graph.cell.to(virial)).abs()
            periodic = bool(graph.pbc.all()) and float(volume) > 0
            stress_tensor = -virial / volume if periodic else torch.full_like(virial, torch.nan)
        return Prediction(energy.reshape(1), atomic, f if forces else None, virial if stress else None,
                          stress_tensor)

"""ASE integration: ``NequIPCalculator`` for single points, MD drivers and optimizers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .allocator import keep_freed_memory
from .data.graph import AtomicGraph
from .model import Potential, load_model
from .model.tabulated import tabulate as tabulated
from .ops import set_backend


class NequIPCalculator(Calculator):
    """Energy, per-atom energies, forces and (for fully periodic cells) stress of a NequIP model.

    ``model_or_path`` is a ``Potential`` (e.g. from ``build_model``) or a path to a saved model,
    a training checkpoint or a deployed ``.pt2`` file (``nequip-fast deploy``). Species are
    matched by element symbol, so the Atoms may list elements in any order; an element the
    model does not know is an error naming it. ``backend`` runs the convolutions of a model on
    those kernels (``nequip_fast.ops.BACKENDS``; a deployed file has its kernels compiled in).

    ``tabulate=True`` replaces the radial networks of a ``Potential`` by tables
    (``model.tabulated.tabulate``, within ``tabulate_tolerance``): faster, not bitwise the same.
    A deployed file was tabulated (or not) when it was deployed.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, model_or_path: Potential | str | Path, device: str = "cpu", backend: str | None = None,
                 tabulate: bool = False, tabulate_tolerance: float | None = None, **kwargs):
        super().__init__(**kwargs)
        keep_freed_memory()  # MD calls this calculator thousands of times with same-sized temporaries
        model = model_or_path if isinstance(model_or_path, torch.nn.Module) else _load(model_or_path, backend)
        if backend is not None and isinstance(model, Potential):
            set_backend(model, backend)
        if tabulate:
            if not isinstance(model, Potential):
                raise ValueError("tabulate=True needs a model or checkpoint; a deployed .pt2 is tabulated (or not) "
                                 "by `nequip-fast deploy --tabulate/--no-tabulate`")
            model = tabulated(model, tabulate_tolerance)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(atoms.pbc.all())
        graph = AtomicGraph.from_atoms(atoms, self.model.species, self.model.r_max, dtype=self.model.dtype)
        out = self.model(graph.to(self.device), forces=True, stress=periodic)
        energy = float(out.energy.detach().sum())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out.atomic_energy.detach().cpu().double().numpy(),
            "forces": out.forces.detach().cpu().double().numpy(),
        }
        if periodic:
            stress = out.stress[0].detach().cpu().double().numpy()
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)


def _load(path: str | Path, backend: str | None) -> torch.nn.Module:
    if Path(path).suffix == ".pt2":
        from .deploy import DeployedPotential

        if backend is not None:
            raise ValueError(f"{path}: a deployed file runs the kernels compiled into it; redeploy with "
                             f"`nequip-fast deploy --backend {backend}` instead of passing backend=")
        return DeployedPotential(path)
    return load_model(path, backend=backend)

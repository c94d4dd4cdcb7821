"""Import an upstream NequIP 0.19 model file (``.ckpt`` from ``nequip-train``, ``.nequip.zip`` from
``nequip-package``) as a nequip_fast model, checked to compute the same energy, forces and stress.

Loading an upstream file runs upstream's loader: a checkpoint is unpickled (``weights_only=False``)
and rebuilt with the installed ``nequip`` code, a package carries and runs its own Python code.
Import only files you trust, as you would load them with upstream NequIP itself.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from ase import Atoms

import nequip_fast

from ..data import AtomicGraph
from ..model import ModelConfig, Potential, build_model
from ..model.io import atomic_save, model_state
from . import upstream

TOLERANCE = 1e-10  # relative, float64


class ImportFailed(RuntimeError):
    """The file cannot be imported (missing upstream NequIP, unreadable, or results that differ)."""


@dataclass(frozen=True)
class Check:
    """Largest relative differences, nequip_fast vs upstream, on one generated structure."""

    dtype: str
    energy: float
    forces: float
    stress: float
    atoms: int
    edges: int

    @property
    def worst(self) -> float:
        return max(self.energy, self.forces, self.stress)

    def line(self) -> str:
        return (f"{self.dtype}: energy {self.energy:.1e}, forces {self.forces:.1e}, stress {self.stress:.1e} "
                f"(max |difference| / max |upstream value|; {self.atoms} atoms, {self.edges} edges)")


def load_upstream(path: str | Path, model_key: str = "sole_model") -> torch.nn.Module:
    """The eager upstream ``GraphModel`` of a checkpoint or package file (upstream's own loader)."""
    if not upstream.available():
        raise ImportFailed("importing an upstream model needs upstream NequIP: pip install nequip==0.19.1")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"upstream model file {path} does not exist")
    from nequip.model.saved_models.load_utils import load_saved_model

    try:
        with upstream.upstream_state(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # upstream's loaders warn about packaging internals
            model = load_saved_model(str(path), model_key=model_key)
    except Exception as exc:
        raise ImportFailed(f"upstream NequIP could not load {path}: {type(exc).__name__}: {exc}") from exc
    return model.eval()


def float64_twin(up_model: torch.nn.Module, cfg: ModelConfig) -> torch.nn.Module:
    """Upstream's model of ``cfg`` built in float64 with the weights of ``up_model``: a float32 model
    cast to float64 would keep its float32-rounded constants (Clebsch-Gordan, normalisations)."""
    twin = upstream.build(ModelConfig.from_dict({**cfg.to_dict(), "dtype": "float64"}))
    try:
        twin.load_state_dict(up_model.state_dict())
    except RuntimeError as exc:
        raise ImportFailed(f"upstream's own float64 build of the imported config does not take the file's "
                           f"weights, so the config was misread: {exc}") from exc
    return twin.eval()


def probe_structure(species: Sequence[str], r_max: float, seed: int = 0) -> Atoms:
    """A periodic triclinic structure with every species, about 30 neighbours per atom, and
    distances spread from 0.3 r_max up (so per-edge-type cutoffs and the ZBL term are exercised)."""
    rng = np.random.default_rng(seed)
    n = max(8, 3 * len(species))
    spacing = 0.5 * r_max
    cell = np.diag([spacing * n ** (1 / 3)] * 3) + rng.uniform(-0.1, 0.1, (3, 3)) * spacing
    symbols = [species[k % len(species)] for k in range(n)]
    for _ in range(1000):
        atoms = Atoms(symbols, scaled_positions=rng.uniform(0, 1, (n, 3)), cell=cell, pbc=True)
        distances = atoms.get_all_distances(mic=True) + np.eye(n) * r_max
        if distances.min() > 0.3 * r_max:
            return atoms
    raise RuntimeError("could not place the probe atoms")  # unreachable for n >= 8 at this density


def compare(up_model: torch.nn.Module, model: Potential, atoms: Atoms) -> Check:
    graph = AtomicGraph.from_atoms(atoms, model.species, model.r_max, dtype=model.dtype)
    data = upstream.graph_data(graph)
    data["pos"] = data["pos"].clone()
    out = up_model(data)
    pred = model(graph, forces=True, stress=True)

    def rel(a, b):
        a, b = a.detach().double(), b.detach().double().reshape(a.shape)
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))

    return Check(str(model.dtype).replace("torch.", ""), rel(pred.energy, out["total_energy"]),
                 rel(pred.forces, out["forces"]), rel(pred.stress, out["stress"]),
                 graph.pos.shape[0], graph.edge_index.shape[1])


def convert(up_model: torch.nn.Module, species: Optional[Sequence[str]] = None, dtype: Optional[str] = None,
            conv_backend: str = "auto", seed: int = 0) -> tuple[Potential, list[Check]]:
    """The nequip_fast model of an upstream model, and its checks: float64 (for a float32 model,
    against upstream's float64 build with its weights), and, for a float32 model, float32 against
    the model as it was."""
    cfg = upstream.config_from_upstream(up_model, species, dtype)
    model64 = build_model(ModelConfig.from_dict({**cfg.to_dict(), "dtype": "float64"}), conv_backend)
    native = str(getattr(up_model, "model_dtype", torch.float64)).replace("torch.", "")
    up64 = up_model if native == "float64" else float64_twin(up_model, cfg)
    upstream.transfer_weights(up64, model64)  # from float64: upstream's MLP constants are in the model dtype
    atoms = probe_structure(cfg.species, cfg.r_max, seed)
    checks = [compare(up64, model64, atoms)]
    if checks[0].worst > TOLERANCE:
        raise ImportFailed(f"the imported model differs from upstream's: {checks[0].line()} > {TOLERANCE:g}; "
                           "please report this with the model's config")
    if cfg.dtype == "float64":
        model = model64
    else:
        model = build_model(cfg, conv_backend)
        model.load_state_dict({k: v.to(model.dtype) if v.is_floating_point() else v
                               for k, v in model64.state_dict().items()})
    if native != "float64" and cfg.dtype == native:
        checks.append(compare(up_model, model, atoms))
    return model, checks


def import_file(path: str | Path, output: str | Path, species: Optional[Sequence[str]] = None,
                dtype: Optional[str] = None, model_key: str = "sole_model") -> tuple[Potential, list[Check]]:
    """Read an upstream file, convert and check it, write a nequip_fast model file to ``output``."""
    up_model = load_upstream(path, model_key)
    model, checks = convert(up_model, species, dtype)
    state = model_state(model)
    state["imported_from"] = {"path": str(path), "upstream_nequip": upstream.version(),
                              "nequip_fast": nequip_fast.__version__,
                              "checks": [c.line() for c in checks]}
    atomic_save(state, output)
    return model, checks

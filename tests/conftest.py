"""Shared test helpers: small models and random, physically sensible structures."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from nequip_fast.data import AtomicGraph
from nequip_fast.model import build_model
from nequip_fast.ops import native
from nequip_fast.ops.fused import load_backend

torch.set_num_threads(1)  # test systems are tiny: more threads only add contention
# Extra compiler flags for the C++ library, for tests that build and check other variants of it in
# a subprocess with their own cache (test_fused_ops.py::test_cpu_kernels_at_baseline_isa_without_shuffles).
native.CXX_FLAGS += tuple(os.environ.get("NEQUIP_FAST_TEST_CXX_FLAGS", "").split())

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def small_config(**overrides) -> dict:
    config = dict(species=["H", "C", "O"], r_max=3.5, num_layers=2, l_max=1, num_features=8,
                  radial_mlp_width=16, readout_features=8, avg_num_neighbors=6.0, dtype="float64")
    config.update(overrides)
    return config


def small_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(small_config(**overrides))


def random_positions(n: int, box: float, rng: np.random.Generator, min_dist: float = 0.9) -> np.ndarray:
    """Uniform random points at least ``min_dist`` apart (rejection sampling)."""
    points = []
    while len(points) < n:
        p = rng.uniform(0, box, 3)
        if all(np.linalg.norm(p - q) >= min_dist for q in points):
            points.append(p)
    return np.array(points)


def random_molecule(n: int = 7, seed: int = 0, symbols=("H", "C", "O")) -> Atoms:
    rng = np.random.default_rng(seed)
    return Atoms(rng.choice(symbols, n).tolist(), positions=random_positions(n, 3.0, rng))


def random_crystal(n: int = 6, seed: int = 0, symbols=("H", "C", "O")) -> Atoms:
    """A periodic triclinic cell small enough that atoms see their own images."""
    rng = np.random.default_rng(seed)
    cell = np.diag([3.2, 3.4, 3.6]) + rng.uniform(-0.4, 0.4, (3, 3))
    frac = rng.uniform(0, 1, (n, 3))
    atoms = Atoms(rng.choice(symbols, n).tolist(), scaled_positions=frac, cell=cell, pbc=True)
    # push apart any near-overlaps so that the neighbour-list check does not trigger
    for _ in range(200):
        d = atoms.get_all_distances(mic=True) + np.eye(n) * 10
        if d.min() >= 0.9:
            return atoms
        i, j = np.unravel_index(np.argmin(d), d.shape)
        atoms.positions[i] += rng.normal(0, 0.3, 3)
    raise RuntimeError("could not build a crystal without overlaps")


def graph_of(atoms: Atoms, model) -> AtomicGraph:
    return AtomicGraph.from_atoms(atoms, model.species, model.r_max, dtype=model.dtype)


@pytest.fixture(params=["cpu", "triton"])
def backend(request):
    """Each fused backend that loads here; the others are skipped with the reason."""
    try:
        load_backend(request.param)
    except RuntimeError as e:
        pytest.skip(str(e))
    return request.param


def interpreted(backend):
    """The Triton interpreter runs kernels in numpy: keep its cases small (GPUs run them all)."""
    return backend == "triton" and not torch.cuda.is_available()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference datasets not found at {SHARED_DATA} (they live in the project's shared/ folder)")
    return SHARED_DATA

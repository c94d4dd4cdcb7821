"""Deploy round trip: checkpoint vs deployed .pt2 in Python, metadata and its errors.

Compiling a model takes 10 s to minutes, so each (dtype, backend) is deployed once per session
(``deployed_model``, shared with test_lammps.py through the session's temporary folder).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk

from conftest import random_molecule, small_model
from nequip_fast.ase import NequIPCalculator
from nequip_fast.cli import main as cli_main
from nequip_fast.deploy import DeployError, DeployedPotential, read_metadata
from nequip_fast.data import AtomicGraph
from nequip_fast.model import save_model

SPECIES = ["Cu", "O"]


def deployed_model(base: Path, dtype: str, backend: str = "reference") -> tuple[Path, Path]:
    """(checkpoint, deployed file) of a tiny Cu/O model, made through the CLI on first use."""
    folder = base / f"deployed_{dtype}_{backend}"
    checkpoint, pt2 = folder / "model.pt", folder / "model.pt2"
    if not pt2.is_file():
        model = small_model(seed=1, species=SPECIES, r_max=4.0, dtype=dtype)
        save_model(model, checkpoint)
        assert cli_main(["deploy", str(checkpoint), str(pt2), "--backend", backend]) == 0
    return checkpoint, pt2


@pytest.fixture(scope="session")
def deployed64(tmp_path_factory):
    return deployed_model(tmp_path_factory.getbasetemp(), "float64")


def cu_vacancy(seed: int = 0):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    del atoms[5]
    atoms.symbols[3] = "O"
    atoms.rattle(0.05, seed=seed)
    return atoms


def cu_o_molecule():
    atoms = random_molecule(7, seed=3, symbols=("Cu", "O"))
    atoms.positions *= 1.6  # Cu-O bonds are ~1.8 A
    return atoms


@pytest.mark.parametrize("make_atoms", [cu_vacancy, cu_o_molecule])
def test_round_trip_matches_checkpoint(deployed64, make_atoms):
    checkpoint, pt2 = deployed64
    atoms = make_atoms()
    expected = NequIPCalculator(checkpoint)
    got = NequIPCalculator(pt2)
    assert isinstance(got.model, DeployedPotential)
    props = ["energy", "energies", "forces"] + (["stress"] if atoms.pbc.all() else [])
    expected.calculate(atoms, props)
    got.calculate(atoms, props)
    for key in props:
        np.testing.assert_allclose(got.results[key], expected.results[key], rtol=1e-10, atol=1e-10, err_msg=key)


def test_deployed_program_pairs_any_number_of_edges(deployed64):
    """The pair count is an input: every edge paired, some pairs then unpaired edges, none: equal results."""
    checkpoint, pt2 = deployed64
    deployed = DeployedPotential(pt2)
    graph = AtomicGraph.from_atoms(cu_vacancy(), SPECIES, deployed.r_max, dtype=torch.float64)
    half, num_edges = graph.edge_pairs, graph.edge_index.shape[1]
    assert half == num_edges // 2 > 10
    keep = torch.cat([torch.arange(10), torch.arange(half, half + 10), torch.arange(10, half),
                      torch.arange(half + 10, num_edges)])  # 10 pairs, then the rest unpaired
    layouts = [graph] + [AtomicGraph(**{**graph.__dict__, "edge_index": graph.edge_index[:, order],
                                        "edge_shift": graph.edge_shift[order], "edge_pairs": pairs})
                         for order, pairs in ((keep, 10), (torch.arange(num_edges).flip(0), 0))]
    results = [deployed(g, stress=True) for g in layouts]
    for other in results[1:]:
        for key in ("energy", "forces", "virial"):
            torch.testing.assert_close(getattr(other, key), getattr(results[0], key), rtol=0, atol=1e-10)


def test_metadata(deployed64):
    _, pt2 = deployed64
    meta = read_metadata(pt2)
    assert meta["species"].split() == SPECIES
    assert float(meta["r_max"]) == 4.0 and int(meta["num_layers"]) == 2
    assert meta["dtype"] == "float64" and meta["device"] == "cpu" and meta["conv_backend"] == "reference"
    assert meta["torch_version"] == torch.__version__


def test_cli_info(deployed64, capsys):
    _, pt2 = deployed64
    assert cli_main(["deploy", "--info", str(pt2)]) == 0
    assert "species" in capsys.readouterr().out


def rewrite_metadata(src: Path, dst: Path, edit) -> Path:
    """A copy of a deployed file whose AOTInductor metadata went through ``edit(dict)``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("wrapper_metadata.json"):
                meta = json.loads(data)
                edit(meta)
                data = json.dumps(meta).encode()
            zout.writestr(item, data)
    return dst


def other_torch(meta):
    meta["torch_version"] = "1.13.1"


def older_format(meta):
    meta["format"] = "nequip_fast.deployed.v2"  # before the edge-pair input


def no_r_max(meta):
    del meta["r_max"]


def not_ours(meta):
    meta["format"] = "something.else"


@pytest.mark.parametrize("edit, message", [
    (other_torch, "deployed with torch 1.13.1"),
    (no_r_max, "metadata lacks r_max"),
    (older_format, "deployed by another nequip_fast version"),
    (not_ours, "is not a deployed nequip_fast model"),
])
def test_bad_metadata_is_a_clear_error(deployed64, tmp_path, edit, message):
    bad = rewrite_metadata(deployed64[1], tmp_path / "bad.pt2", edit)
    with pytest.raises(DeployError, match=message):
        NequIPCalculator(bad)


def test_corrupt_or_missing_file(tmp_path):
    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(b"PK\x03\x04 this is not a model")
    with pytest.raises(DeployError, match="is not a deployed nequip_fast model"):
        read_metadata(corrupt)
    with pytest.raises(DeployError, match="does not exist"):
        read_metadata(tmp_path / "missing.pt2")
    assert cli_main(["deploy", str(tmp_path / "missing.pt"), str(tmp_path / "out.pt2")]) == 2

"""Bad input raises an error that names the cause; nothing passes silently."""
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from conftest import graph_of, small_config, small_model
from nequip_fast.data import GeometryError, UnknownSpeciesError
from nequip_fast.data.dataset import DatasetError, read_structures
from nequip_fast.model import build_model


def water():
    return Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])


def test_unknown_species_is_named():
    model = small_model(species=["H", "O"])
    with pytest.raises(UnknownSpeciesError, match=r"\['N'\]"):
        graph_of(Atoms("NH3", positions=np.eye(4, 3) * 1.1), model)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_positions(bad):
    atoms = water()
    atoms.positions[1, 2] = bad
    with pytest.raises(GeometryError, match=r"non-finite.*atom\(s\) \[1\]"):
        graph_of(atoms, small_model(species=["H", "O"]))


def test_overlapping_atoms_are_named():
    atoms = water()
    atoms.positions[2] = atoms.positions[1]
    with pytest.raises(GeometryError, match="atoms [12] and [12] are 0 A apart"):
        graph_of(atoms, small_model(species=["H", "O"]))


def test_overlap_through_periodic_image():
    atoms = Atoms("H2", positions=[[0, 0, 0], [2.99, 0, 0]], cell=[3.0, 3.0, 3.0], pbc=True)
    with pytest.raises(GeometryError, match="overlapping"):
        graph_of(atoms, small_model(species=["H"]))


def test_empty_structure():
    with pytest.raises(GeometryError, match="no atoms"):
        graph_of(Atoms(), small_model())


def test_degenerate_periodic_cell():
    atoms = Atoms("H", positions=[[0, 0, 0]], cell=[[1, 0, 0], [2, 0, 0], [0, 0, 1]], pbc=True)
    with pytest.raises(GeometryError, match="degenerate cell"):
        graph_of(atoms, small_model(species=["H"]))


def labelled(atoms, **results):
    atoms = atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def test_missing_forces_names_file_and_frame(tmp_path):
    path = tmp_path / "data.extxyz"
    good = labelled(water(), energy=-1.0, forces=np.zeros((3, 3)))
    bad = labelled(water(), energy=-2.0)
    write(path, [good, good, bad])
    with pytest.raises(DatasetError, match=r"data.extxyz frame 2: missing 'forces'"):
        read_structures(path)
    assert len(read_structures(path, require=("energy",))) == 3


def test_missing_energy_and_nan_labels(tmp_path):
    path = tmp_path / "d.extxyz"
    write(path, [labelled(water(), forces=np.zeros((3, 3)))])
    with pytest.raises(DatasetError, match="frame 0: missing 'energy'"):
        read_structures(path)
    write(path, [labelled(water(), energy=np.nan, forces=np.zeros((3, 3)))])
    with pytest.raises(DatasetError, match="frame 0: 'energy' contains NaN"):
        read_structures(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_structures(tmp_path / "nope.extxyz")
    junk = tmp_path / "junk.extxyz"
    junk.write_text("3\nnot a header\nH 0 0\n")
    with pytest.raises(DatasetError, match="cannot read"):
        read_structures(junk)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"num_layer": 3}, "unknown model config key.*num_layer"),
        ({"l_max": "2"}, "'l_max' must be int"),
        ({"r_max": -1.0}, "'r_max' must be positive"),
        ({"dtype": "float16"}, "'dtype' must be one of"),
        ({"species": ["H", "Xx"]}, "'Xx' is not a chemical element"),
        ({"species": ["H", "H"]}, "lists an element twice"),
        ({"per_species_shifts": [1.0]}, "needs one number per species"),
        ({"per_species_shifts": {"H": 1.0}}, r"missing species \['C', 'O'\]"),
        ({"conv_backend": "gpu_magic"}, "'conv_backend' must be one of"),
    ],
)
def test_config_errors_name_the_key(override, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build_model(small_config(**override))


def test_config_requires_species():
    config = small_config()
    del config["species"]
    with pytest.raises(ValueError, match="needs 'species'"):
        build_model(config)

"""Reading the reference datasets and the statistics that set a model's normalisation."""
import numpy as np
import pytest
from ase.neighborlist import neighbor_list as ase_neighbor_list

from nequip_fast.data import batch_graphs
from nequip_fast.data.dataset import read_structures, species_of, to_graphs
from nequip_fast.data.statistics import avg_num_neighbors, force_rms, per_species_energy_shifts


def test_ethanol_molecule_dataset(shared_data):
    frames = read_structures(shared_data / "ethanol_gfn2_500K.extxyz", index=":40")
    species = species_of(frames)
    assert species == ["H", "C", "O"]
    graphs = to_graphs(frames, species, 4.0)
    assert all(not g.pbc.any() for g in graphs)
    expected = np.mean([len(ase_neighbor_list("i", a, 4.0)) / len(a) for a in frames])
    assert avg_num_neighbors(graphs) == pytest.approx(expected)
    np.testing.assert_allclose(force_rms(graphs), np.sqrt(np.mean([np.mean(a.get_forces() ** 2) for a in frames])))
    batch = batch_graphs(graphs[:3])
    assert batch.energy.shape == (3,) and batch.forces.shape == (27, 3) and batch.stress is None


def test_copper_dataset_with_stress(shared_data):
    frames = read_structures(shared_data / "cu_emt.extxyz", index=":5", require=("energy", "forces", "stress"))
    graphs = to_graphs(frames, ["Cu"], 5.0)
    g = graphs[0]
    assert g.pbc.all() and g.stress.shape == (1, 3, 3)
    np.testing.assert_allclose(g.stress[0, 0, 1].item(), frames[0].get_stress()[5])  # Voigt xy
    shifts = per_species_energy_shifts(graphs, 1)  # one species: the mean energy per atom
    assert shifts[0] == pytest.approx(np.mean([a.get_potential_energy() / len(a) for a in frames]))


def test_energy_shifts_recover_per_species_energies():
    """Least squares finds exact per-species energies when energies are additive."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(0)
    true = {"H": -13.6, "C": -1030.0, "O": -2040.0}
    frames = []
    for _ in range(6):
        symbols = rng.choice(list(true), 5).tolist()
        atoms = Atoms(symbols, positions=np.arange(15).reshape(5, 3) * 1.0)
        atoms.calc = SinglePointCalculator(atoms, energy=sum(true[s] for s in symbols), forces=np.zeros((5, 3)))
        frames.append(atoms)
    graphs = to_graphs(frames, list(true), 2.0)
    np.testing.assert_allclose(per_species_energy_shifts(graphs, 3), list(true.values()), rtol=1e-10)

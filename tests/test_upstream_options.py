"""The model options that upstream NequIP has (natural parity, per-l multiplicities, type embedding
width, readout MLP, per-edge-type cutoffs, per-species avg_num_neighbors, trainable scales/shifts,
ZBL): equivariance, exact derivatives, fused == reference, and what each option means physically."""
import numpy as np
import pytest
import torch
from ase import Atoms
from scipy.spatial.transform import Rotation

from conftest import graph_of, random_crystal, random_molecule, small_config
from nequip_fast.data import batch_graphs
from nequip_fast.model import ModelConfig, build_model
from nequip_fast.model.zbl import COULOMB

OPTION_SETS = {
    "natural parity, uneven l_max 3": dict(parity="natural", l_max=3, num_features=[6, 4, 3, 2]),
    # l_max 4: the highest order upstream offers, where CG paths (and any kernel's tiling) are largest
    "natural parity, uneven l_max 4": dict(parity="natural", l_max=4, num_features=[5, 4, 3, 2, 2],
                                           type_embed_num_features=3),
    "both parities, uneven l_max 4, ZBL, cutoffs": dict(
        l_max=4, num_features=[4, 3, 2, 2, 1], zbl=True, per_edge_type_cutoff={"H": 2.8, "O": {"C": 3.0}}),
    "cutoffs, ZBL, readout MLP": dict(
        l_max=2, num_features=[5, 3, 2], per_edge_type_cutoff={"H": 2.5, "C": {"O": 3.0}, "O": {"C": 2.0}},
        zbl=True, zbl_polynomial_p=5.0, readout_mlp_depth=2, readout_features=6, readout_nonlinearity="silu"),
    "per-species norm, embedding, trainable scale/shift": dict(
        parity="natural", l_max=2, type_embed_num_features=5, avg_num_neighbors={"H": 3.0, "C": 6.0, "O": 9.0},
        per_species_scales=[1.5, 0.5, 2.0], per_species_shifts=[0.1, -0.2, 0.3], per_species_scales_trainable=True,
        per_species_shifts_trainable=True, readout_mlp_depth=1, readout_nonlinearity="gelu", radial_mlp_depth=1,
        polynomial_p=4, bessel_trainable=False),
}


def model_with(backend="reference", seed=0, **options):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(seed)
        return build_model(small_config(conv_backend=backend, **options))
    finally:
        torch.set_default_dtype(old)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("name", OPTION_SETS)
def test_equivariant_under_rotation_inversion_translation_permutation(name):
    model = model_with(seed=1, **OPTION_SETS[name])
    atoms = random_crystal(seed=2)
    base = model(graph_of(atoms, model), stress=True)
    rng = np.random.default_rng(0)
    rot = Rotation.random(random_state=4).as_matrix()
    perm = rng.permutation(len(atoms))
    # natural parity keeps O(3) (like parity on): mirror images get the same energy
    for matrix in (rot, -rot, -np.eye(3)):
        moved = atoms.copy()
        moved.positions = atoms.positions @ matrix.T + rng.normal(size=3)
        moved.set_cell(atoms.cell.array @ matrix.T, scale_atoms=False)
        moved = moved[perm]
        out = model(graph_of(moved, model), stress=True)
        r = torch.as_tensor(matrix)
        assert rel_err(out.energy, base.energy) < 1e-10
        assert rel_err(out.forces, (base.forces @ r.T)[perm]) < 1e-10
        assert rel_err(out.stress[0], r @ base.stress[0] @ r.T) < 1e-10


@pytest.mark.parametrize("name", OPTION_SETS)
def test_forces_and_stress_are_finite_difference_derivatives(name):
    model = model_with(seed=2, **OPTION_SETS[name])
    atoms = random_crystal(n=5, seed=5)
    out = model(graph_of(atoms, model), stress=True)

    def energy(a):
        return float(model(graph_of(a, model), forces=False).energy.detach())

    h, fd = 1e-5, np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, k] += h
            minus.positions[i, k] -= h
            fd[i, k] = -(energy(plus) - energy(minus)) / (2 * h)
    np.testing.assert_allclose(out.forces.detach().numpy(), fd, atol=1e-7, rtol=1e-6)
    assert np.abs(fd).max() > 1e-3
    strain = np.zeros((3, 3))
    strain[0, 1] = strain[1, 0] = h / 2
    energies = []
    for sign in (1, -1):
        deformed = atoms.copy()
        deformed.set_cell(atoms.cell.array @ (np.eye(3) + sign * strain), scale_atoms=True)
        energies.append(energy(deformed))
    fd_stress = (energies[0] - energies[1]) / (2 * h) / atoms.get_volume()
    assert abs(out.stress[0, 0, 1].item() - fd_stress) < 1e-7 * max(1.0, abs(fd_stress))


@pytest.mark.parametrize("name", OPTION_SETS)
def test_fused_equals_reference_with_training_gradients(backend, name):
    if backend == "triton" and not torch.cuda.is_available():
        pytest.skip("the Triton interpreter is too slow for these sizes (runs on GPU)")
    ref = model_with("reference", seed=3, **OPTION_SETS[name])
    fused = model_with(backend, seed=3, **OPTION_SETS[name])
    fused.load_state_dict(ref.state_dict())
    graph = batch_graphs([graph_of(random_crystal(seed=1), ref), graph_of(random_molecule(seed=2), ref)])
    target = torch.randn(graph.pos.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    results = []
    for model in (ref, fused):
        model.zero_grad()
        out = model(graph, stress=True, create_graph=True)
        (out.energy.pow(2).sum() + (out.forces - target).pow(2).sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((out.energy.detach(), out.forces.detach(), out.stress[0].detach(), grads))
    for what, a, b in zip(("energy", "forces", "stress", "parameter gradients"), results[1], results[0]):
        assert rel_err(a, b) < 1e-10, f"{what}: {rel_err(a, b):.1e}"


def test_trainable_scales_and_shifts_are_parameters_and_train():
    model = model_with(**OPTION_SETS["per-species norm, embedding, trainable scale/shift"])
    names = {n for n, _ in model.named_parameters()}
    assert {"energy_model.scales", "energy_model.shifts"} <= names
    fixed = model_with()
    assert "energy_model.scales" not in {n for n, _ in fixed.named_parameters()}
    assert "energy_model.scales" in fixed.state_dict()  # same checkpoint keys either way


def test_zbl_dimer_is_the_lammps_pair_energy():
    """With every network weight zero the model is ZBL alone: check it against LAMMPS's formula."""
    model = model_with(species=["C", "O"], zbl=True, r_max=3.0)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    r, rc, p = 1.1, 3.0, 6.0
    atoms = Atoms("CO", positions=[[0, 0, 0], [r, 0, 0]])
    energy = float(model(graph_of(atoms, model), forces=False).energy.detach())
    zi, zj = 6.0, 8.0
    a = 0.46850 / (zi ** 0.23 + zj ** 0.23)
    x = r / a
    phi = 0.18175 * np.exp(-3.19980 * x) + 0.50986 * np.exp(-0.94229 * x) + 0.28022 * np.exp(-0.40290 * x) \
        + 0.02817 * np.exp(-0.20162 * x)
    u = r / rc
    envelope = 1 - (p + 1) * (p + 2) / 2 * u ** p + p * (p + 2) * u ** (p + 1) - p * (p + 1) / 2 * u ** (p + 2)
    expected = COULOMB["metal"] * zi * zj / r * phi * envelope
    assert abs(energy - expected) < 1e-10 * expected


def test_per_edge_type_cutoff_removes_the_pair_beyond_it():
    """An H-C pair at 2.8 A: inside r_max 3.5, outside the H-centred cutoff 2.5 but inside C-H's 3.0.
    The H atom sees no neighbour (its isolated energy); the C atom does."""
    model = model_with(seed=4, species=["H", "C"], per_edge_type_cutoff={"H": 2.5})
    pair = model(graph_of(Atoms("HC", positions=[[0, 0, 0], [2.8, 0, 0]]), model))
    lone_h = model(graph_of(Atoms("H", positions=[[0, 0, 0]]), model))
    lone_c = model(graph_of(Atoms("C", positions=[[0, 0, 0]]), model))
    torch.testing.assert_close(pair.atomic_energy[0], lone_h.atomic_energy[0], atol=1e-12, rtol=0)
    assert abs(pair.atomic_energy[1] - lone_c.atomic_energy[0]) > 1e-6


def test_asymmetric_cutoffs_do_not_depend_on_edge_order():
    """Asymmetric cutoffs make the two edges of a pair differ, so the radial network runs per edge."""
    model = model_with(seed=5, **OPTION_SETS["cutoffs, ZBL, readout MLP"])
    graph = graph_of(random_crystal(seed=6), model)
    paired = model(graph)
    order = torch.randperm(graph.edge_index.shape[1], generator=torch.Generator().manual_seed(1))
    graph.edge_index, graph.edge_shift = graph.edge_index[:, order], graph.edge_shift[order]
    graph.edge_pairs = 0  # the shuffled edges are no longer laid out in pairs
    shuffled = model(graph)
    assert rel_err(shuffled.energy, paired.energy) < 1e-12 and rel_err(shuffled.forces, paired.forces) < 1e-12


def test_config_round_trip_and_errors():
    cfg = ModelConfig.from_dict(small_config(**OPTION_SETS["cutoffs, ZBL, readout MLP"]))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.per_edge_type_cutoff[0] == (2.5, 2.5, 2.5) and cfg.per_edge_type_cutoff[1][2] == 3.0
    for bad, words in ((dict(num_features=[4, 4, 4]), "num_features"), (dict(parity="odd"), "parity"),
                       (dict(per_edge_type_cutoff={"N": 2.0}), "unknown species"),
                       (dict(per_edge_type_cutoff={"H": 9.0}), "<= r_max"),
                       (dict(readout_nonlinearity="relu"), "readout_nonlinearity"),
                       (dict(avg_num_neighbors=[1.0, 2.0]), "avg_num_neighbors")):
        with pytest.raises((ValueError, TypeError), match=words):
            ModelConfig.from_dict(small_config(**bad))


def test_subdomains_with_ghosts_equal_whole_structure():
    """Per-edge-type cutoffs and ZBL need the neighbours' species: ghosts get theirs by the exchange."""
    from nequip_fast.deploy.domains import decompose, evaluate
    from nequip_fast.deploy.export import EdgePotential
    from test_domains import crystal

    model = model_with(seed=6, species=["Cu", "O"], r_max=4.0, per_edge_type_cutoff={"Cu": {"O": 3.0}, "O": 3.5},
                       zbl=True, avg_num_neighbors={"Cu": 12.0, "O": 8.0}, parity="natural", l_max=2)
    program, atoms = EdgePotential(model), crystal()
    whole = evaluate(program, decompose(atoms, model.species, model.r_max, (1, 1, 1)), torch.float64)
    parts = decompose(atoms, model.species, model.r_max, (2, 2, 1))
    split = evaluate(program, parts, torch.float64)
    assert parts.ghosts.shape[0] > 0
    assert abs(split.energy - whole.energy) <= 1e-10 * abs(whole.energy)
    for key in ("atomic_energy", "forces", "virial"):
        torch.testing.assert_close(getattr(split, key), getattr(whole, key), rtol=1e-10, atol=1e-10, msg=key)



def test_nve_conserves_energy_at_l_max_3_with_upstream_options():
    """Velocity Verlet in float64 on the fused cpu kernels with natural parity, uneven multiplicities,
    ZBL and a per-edge-type cutoff that vibrating pairs cross: a published fused kernel gave
    non-conservative forces at l_max 3, and a cutoff or ZBL term without its exact derivative drifts.
    (A tiny curl force of 0.01 eV/A^2 added to these forces drifts 2e-3 eV/atom here.)"""
    from ase import units
    from ase.build import bulk
    from ase.md.velocitydistribution import thermalize_momenta
    from ase.md.verlet import VelocityVerlet
    from nequip_fast.ase import NequIPCalculator

    # rocksalt a = 4.6: Na-Cl pairs at 2.3, like pairs at 3.25 around the Na-Na / Na-Cl cutoff 3.2
    model = model_with("cpu", seed=7, species=["Na", "Cl"], r_max=4.0, parity="natural", l_max=3,
                       num_features=[8, 6, 4, 2], zbl=True, per_edge_type_cutoff={"Na": 3.2, "Cl": {"Na": 3.6}},
                       per_species_scales=0.1)
    atoms = bulk("NaCl", "rocksalt", a=4.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.calc = NequIPCalculator(model)
    thermalize_momenta(atoms, temperature_K=600, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    energies, sodium_pairs = [], []
    sodium = np.flatnonzero(atoms.numbers == 11)

    def record():
        energies.append(atoms.get_total_energy())
        sodium_pairs.append(atoms.get_all_distances(mic=True)[np.ix_(sodium, sodium)][np.triu_indices(len(sodium), 1)])

    dyn.attach(record, interval=5)
    dyn.run(300)
    energies = np.array(energies) / len(atoms)
    assert atoms.get_kinetic_energy() / len(atoms) > 1e-2  # atoms actually moved
    inside = np.array(sodium_pairs) < 3.2
    assert (inside[1:] != inside[:-1]).sum() > 0, "no Na-Na pair crossed its cutoff"
    drift = abs(energies[-1] - energies[0])
    assert drift < 1e-4, f"energy drift {drift:.2e} eV/atom"
    assert np.ptp(energies) < 3e-4, f"energy fluctuation {np.ptp(energies):.2e} eV/atom"

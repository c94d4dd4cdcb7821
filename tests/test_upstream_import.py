"""Importing upstream NequIP (0.19.1, in the test extra) models: a grid of upstream configurations
converted and checked (energy, forces, stress equal in float64), and the two upstream file kinds,
a ``nequip-train`` checkpoint and a ``nequip-package`` file, through ``nequip-fast import``."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import e3nn
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

import nequip  # noqa: F401  (the test extra installs upstream NequIP; these tests must not skip)
from nequip_fast.ase import NequIPCalculator
from nequip_fast.cli import main
from nequip_fast.data import AtomicGraph
from nequip_fast.interop import upstream
from nequip_fast.interop.importer import TOLERANCE, convert, load_upstream, probe_structure
from nequip_fast.model import ModelConfig, load_model

BIN = Path(sys.executable).parent

# Each case: nequip_fast config keys of an upstream NequIPGNNModel (built in Python through
# upstream.build_kwargs) plus upstream-only keyword arguments.
GRID = {
    "l_max 1, parity on, 1 species": dict(species=["Cu"], l_max=1, parity=True, num_features=4),
    "l_max 2, natural parity, uneven, float32": dict(
        species=["Cu", "Ni"], l_max=2, parity="natural", num_features=[6, 4, 2], dtype="float32",
        per_edge_type_cutoff={"Cu": {"Ni": 3.2}, "Ni": 3.6}),
    "l_max 3, parity on, uneven, ZBL, 3 species": dict(
        species=["H", "C", "O"], l_max=3, parity=True, num_features=[4, 3, 2, 2], zbl=True,
        avg_num_neighbors={"H": 5.0, "C": 8.0, "O": 7.0}, readout_mlp_depth=1, readout_features=3,
        readout_nonlinearity="gelu", per_species_shifts_trainable=True),
    "l_max 3, natural parity, cutoffs + ZBL, deep radial, 2 species": dict(
        species=["C", "O"], l_max=3, parity="natural", num_features=[5, 3, 2, 1], type_embed_num_features=3,
        per_edge_type_cutoff={"C": 3.0}, zbl=True, zbl_units="real", radial_mlp_depth=2, radial_mlp_width=6,
        bessel_trainable=True, polynomial_p=5, per_species_scales_trainable=True),
    "one layer, linear deep readout": dict(
        species=["Al", "Cu"], num_layers=1, l_max=2, parity=True, num_features=3, readout_mlp_depth=2,
        readout_features=4, readout_nonlinearity=None),
}


def grid_config(case: dict) -> ModelConfig:
    base = dict(r_max=4.0, num_layers=2, radial_mlp_depth=1, radial_mlp_width=8, num_bessels=6,
                bessel_trainable=False, avg_num_neighbors=6.0, readout_mlp_depth=0, dtype="float64",
                per_species_scales=0.7, per_species_shifts=-1.5)
    return ModelConfig.from_dict({**base, **case})


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Upstream initialises some weights to constants (shifts, Bessel roots): make every weight count."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(model.parameters()) + [b for n, b in model.named_buffers() if "bessel" in n]:
            tensor.mul_(1 + 0.2 * torch.rand(tensor.shape, generator=gen, dtype=torch.float64).to(tensor.dtype))
    return model


@pytest.mark.parametrize("name", GRID)
def test_grid_of_upstream_models_imports_exactly(name):
    cfg = grid_config(GRID[name])
    state = e3nn.get_optimization_defaults(), torch.get_default_dtype()
    up = upstream.build(cfg, seed=1)
    assert (e3nn.get_optimization_defaults(), torch.get_default_dtype()) == state  # upstream's globals undone
    assert upstream.config_from_upstream(up) == cfg  # every option read back from upstream's modules
    model, checks = convert(perturbed(up, seed=2))
    assert model.config.to_dict() | {"per_species_shifts": [], "per_species_scales": []} == \
        cfg.to_dict() | {"per_species_shifts": [], "per_species_scales": []}  # trainable ones were perturbed
    assert checks[0].dtype == "float64" and checks[0].worst < TOLERANCE, checks[0].line()
    if cfg.dtype == "float32":  # also against the upstream float32 model as it is
        assert checks[1].dtype == "float32" and checks[1].worst < 1e-5, checks[1].line()
    probe = probe_structure(cfg.species, cfg.r_max)
    assert set(probe.get_chemical_symbols()) == set(cfg.species)


def test_unrepresentable_upstream_options_are_errors_naming_them():
    from nequip.model import NequIPGNNModel

    cfg = grid_config(dict(species=["Cu", "Ni"], l_max=1, num_features=4))
    kwargs = upstream.build_kwargs(cfg)
    with upstream.upstream_state():
        resnet = NequIPGNNModel(**{**kwargs, "num_layers": 3, "parity": False}, convnet_resnet=True)
        ssp = NequIPGNNModel(**{**kwargs, "readout_mlp_hidden_layers_depth": 1, "readout_mlp_hidden_layers_width": 4,
                                "readout_mlp_nonlinearity": "ssp"})
        renamed = NequIPGNNModel(**{**kwargs, "type_names": ["A1", "B2"], "per_type_energy_scales": None,
                                    "per_type_energy_shifts": None})
    with pytest.raises(upstream.UnsupportedModel, match="convnet_resnet"):
        upstream.config_from_upstream(resnet)
    with pytest.raises(upstream.UnsupportedModel, match="ShiftedSoftplus"):
        upstream.config_from_upstream(ssp)
    with pytest.raises(upstream.UnsupportedModel, match="--species"):
        upstream.config_from_upstream(renamed)
    assert upstream.config_from_upstream(renamed, species=["Cu", "Ni"]).species == ("Cu", "Ni")
    with pytest.raises(upstream.UnsupportedModel, match="SO\\(3\\)"):
        upstream.build_kwargs(ModelConfig.from_dict({**cfg.to_dict(), "parity": False}))


# --- the two upstream file kinds, from a tiny nequip-train run ------------------------------------

TRAIN_CONFIG = """
run: [train]
seed: 1
cutoff_radius: 4.0
model_type_names: [Cu, Ni]
chemical_species: ${model_type_names}
data:
  _target_: nequip.data.datamodule.NequIPDataModule
  seed: ${seed}
  split_dataset:
    dataset:
      _target_: nequip.data.dataset.ASEDataset
      file_path: DATA
      transforms:
        - _target_: nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper
          model_type_names: ${model_type_names}
          chemical_species_to_atom_type_map: ${list_to_identity_dict:${chemical_species}}
        - _target_: nequip.data.transforms.NeighborListTransform
          r_max: ${cutoff_radius}
    train: 4
    val: 2
  train_dataloader: {_target_: torch.utils.data.DataLoader, batch_size: 2}
  val_dataloader: {_target_: torch.utils.data.DataLoader, batch_size: 2}
  stats_manager:
    _target_: nequip.data.CommonDataStatisticsManager
    type_names: ${model_type_names}
trainer:
  _target_: lightning.Trainer
  max_epochs: 1
  enable_progress_bar: false
  logger: false
  callbacks:
    - {_target_: lightning.pytorch.callbacks.ModelCheckpoint, dirpath: "${hydra:runtime.output_dir}", save_last: true}
training_module:
  _target_: nequip.train.EMALightningModule
  loss:
    _target_: nequip.train.EnergyForceStressLoss
    per_atom_energy: true
    coeffs: {total_energy: 1.0, forces: 1.0, stress: 1.0}
  val_metrics:
    _target_: nequip.train.EnergyForceStressMetrics
    coeffs: {total_energy_mae: 1.0, forces_mae: 1.0, stress_mae: 1.0}
  optimizer: {_target_: torch.optim.Adam, lr: 0.01}
  model:
   _target_: nequip_fast.interop.accelerate.enable_nequip_fast
   model:
    _target_: nequip.model.NequIPGNNModel
    seed: ${seed}
    model_dtype: float64
    type_names: ${model_type_names}
    r_max: ${cutoff_radius}
    per_edge_type_cutoff: {Cu: {Ni: 3.5}, Ni: 3.5}
    l_max: 2
    parity: false
    num_layers: 2
    num_features: [6, 4, 2]
    radial_mlp_depth: 1
    radial_mlp_width: 8
    avg_num_neighbors: ${training_data_stats:num_neighbors_mean}
    per_type_energy_shifts: ${training_data_stats:per_atom_energy_mean}
    per_type_energy_scales: ${training_data_stats:forces_rms}
    pair_potential:
      _target_: nequip.nn.pair_potential.ZBL
      units: metal
      chemical_species: ${chemical_species}
"""


def emt_frames(n: int, seed: int = 0):
    """Rattled Cu/Ni fcc cells labelled by ASE's EMT."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
        atoms.symbols[rng.choice(len(atoms), 3, replace=False)] = "Ni"
        atoms.rattle(0.1, seed=seed * 100 + k)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
                                           stress=atoms.get_stress(voigt=False))
        frames.append(atoms)
    return frames


def run(command: list, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def upstream_files(tmp_path_factory):
    """A checkpoint of a one-epoch ``nequip-train`` run (natural parity, uneven multiplicities,
    per-edge-type cutoffs, ZBL, two species) accelerated in place by nequip_fast, and its
    ``nequip-package`` file (packaged without nequip_fast: the acceleration is not persistent)."""
    root = tmp_path_factory.mktemp("upstream")
    write(root / "data.extxyz", emt_frames(6))
    (root / "tiny.yaml").write_text(TRAIN_CONFIG.replace("DATA", str(root / "data.extxyz")))
    run([str(BIN / "nequip-train"), "-cp", str(root), "-cn", "tiny", f"hydra.run.dir={root / 'out'}"], root)
    ckpt = root / "out" / "last.ckpt"
    assert "nequip_fast: fused convolution (auto) in 2 upstream tensor-product layers" in \
        (root / "out" / "train.log").read_text()
    package = root / "tiny.nequip.zip"
    run([str(BIN / "nequip-package"), "build", str(ckpt), str(package)], root)
    return root, ckpt, package


def test_import_checkpoint_and_package_then_evaluate_and_ase(upstream_files, capsys):
    root, ckpt, package = upstream_files
    models = {}
    for source in (ckpt, package):
        out = root / f"{source.name}.pt"
        assert main(["import", str(source), "-o", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "agreement with upstream, float64" in printed and f"wrote {out}" in printed
        models[source.suffix] = load_model(out)
    cfg = models[".ckpt"].config
    assert cfg.parity == "natural" and cfg.num_features == (6, 4, 2) and cfg.zbl
    assert cfg.per_edge_type_cutoff == ((4.0, 3.5), (3.5, 3.5))
    # nequip-package packages the checkpoint's EMA weights, the checkpoint loader loads them too
    for a, b in zip(models[".ckpt"].state_dict().values(), models[".zip"].state_dict().values()):
        assert torch.equal(a, b)

    test = root / "test.extxyz"
    write(test, emt_frames(2, seed=5))
    assert main(["evaluate", str(root / "last.ckpt.pt"), str(test)]) == 0
    assert "forces" in capsys.readouterr().out
    atoms = emt_frames(1, seed=7)[0]
    atoms.calc = NequIPCalculator(str(root / "tiny.nequip.zip.pt"))
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    up = load_upstream(package)  # the ASE path agrees with upstream's model itself
    graph = AtomicGraph.from_atoms(atoms, cfg.species, cfg.r_max, dtype=torch.float64)
    out = up(upstream.graph_data(graph))
    assert abs(energy - out["total_energy"].item()) < 1e-10 * abs(energy)
    np.testing.assert_allclose(forces, out["forces"].detach().numpy(), atol=1e-10 * np.abs(forces).max())


def test_import_errors_are_one_line(tmp_path, capsys):
    assert main(["import", str(tmp_path / "missing.ckpt"), "-o", str(tmp_path / "m.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["import", str(junk), "-o", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert "could not load" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.pt").exists()


def test_imported_model_deploys(upstream_files):
    """The deployed file of an imported model (natural parity, uneven, cutoffs, ZBL) computes what it does."""
    root, ckpt, _ = upstream_files
    model_file, pt2 = root / "deploy_me.pt", root / "deployed.pt2"
    assert main(["import", str(ckpt), "-o", str(model_file)]) == 0
    assert main(["deploy", str(model_file), str(pt2)]) == 0
    atoms = emt_frames(1, seed=9)[0]
    results = []
    for path in (model_file, pt2):
        atoms.calc = NequIPCalculator(str(path))
        results.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
    (e1, f1, s1), (e2, f2, s2) = results
    assert abs(e1 - e2) < 1e-10 * abs(e1)
    np.testing.assert_allclose(f2, f1, atol=1e-10 * np.abs(f1).max())
    np.testing.assert_allclose(s2, s1, atol=1e-10 * np.abs(s1).max())

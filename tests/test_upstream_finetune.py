"""Fine-tuning (``training.init_from``): an imported upstream model trained further on new frames,
with a species the source model does not know."""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ase.io import write

from test_upstream_import import emt_frames
from nequip_fast.ase import NequIPCalculator
from nequip_fast.cli import main
from nequip_fast.data import AtomicGraph
from nequip_fast.interop import upstream
from nequip_fast.interop.importer import convert
from nequip_fast.model import ModelConfig, load_model, save_model
from nequip_fast.train import ConfigError, load_config, train
from nequip_fast.train.finetune import extended_model


def pure_cu(n: int, seed: int):
    frames = emt_frames(n, seed=seed)
    for atoms in frames:
        atoms.symbols[:] = "Cu"  # labels are recomputed below
    return [_relabel(a) for a in frames]


def _relabel(atoms):
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms.calc = EMT()
    atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
    return atoms


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    """A Cu model imported from upstream (natural parity, uneven multiplicities, ZBL)."""
    cfg = ModelConfig.from_dict(dict(species=["Cu"], r_max=4.0, num_layers=2, l_max=1, parity="natural",
                                     num_features=[6, 3], radial_mlp_depth=1, radial_mlp_width=8, zbl=True,
                                     avg_num_neighbors=12.0, per_species_shifts=-0.1, per_species_scales=0.3,
                                     dtype="float64"))
    model, _ = convert(upstream.build(cfg, seed=2))
    path = tmp_path_factory.mktemp("finetune") / "imported.pt"
    save_model(model, path)
    return path


def force_rmse(model, frames) -> float:
    errors = []
    for atoms in frames:
        graph = AtomicGraph.from_atoms(atoms, model.species, model.r_max, dtype=model.dtype)
        errors.append((model(graph).forces.detach().numpy() - atoms.get_forces()).ravel())
    return float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))


def run_config(tmp_path: Path, frames, init_from: Path, **model) -> Path:
    write(tmp_path / "train.extxyz", frames)
    config = {"data": {"train": "train.extxyz", "n_val": 2, "seed": 1},
              "model": model,
              "training": {"epochs": 6, "batch_size": 2, "lr": 0.01, "ema_decay": 0.0, "init_from": str(init_from),
                           "lr_schedule": "constant"},
              "output": {"directory": str(tmp_path / "run")}}
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_extended_model_keeps_the_source_on_known_species(imported):
    source = load_model(imported)
    frames = emt_frames(4, seed=3)  # Cu with Ni
    graphs = [AtomicGraph.from_atoms(a, ["Ni", "Cu"], 4.0, targets=True) for a in frames]
    model = extended_model(source, ["Ni", "Cu"], graphs, {})
    assert model.species == ("Cu", "Ni")
    cu = pure_cu(1, seed=4)[0]
    a = source(AtomicGraph.from_atoms(cu, source.species, 4.0))
    b = model(AtomicGraph.from_atoms(cu, model.species, 4.0))
    assert abs(float((a.energy - b.energy).detach())) < 1e-12 * abs(float(a.energy.detach()))
    torch.testing.assert_close(b.forces, a.forces, rtol=0, atol=1e-12)
    # the new shift fits the energies with Cu's shift held
    shift_ni = model.config.per_species_shifts[1]
    residual = [float(g.energy.sum()) - (g.species == 1).sum().item() * -0.1 for g in graphs]
    n_ni = [(g.species == 0).sum().item() for g in graphs]
    assert abs(shift_ni - np.dot(n_ni, residual) / np.dot(n_ni, n_ni)) < 1e-8


def test_finetuning_lowers_the_error_and_adds_a_species(imported, tmp_path, capsys):
    frames = emt_frames(8, seed=6)
    before = force_rmse(load_model(imported), pure_cu(4, seed=7))
    out = train(load_config(run_config(tmp_path, frames, imported)))
    tuned = load_model(out / "best.pt")
    assert tuned.species == ("Cu", "Ni") and tuned.config.zbl and tuned.config.parity == "natural"
    after = force_rmse(tuned, pure_cu(4, seed=7))
    assert after < before, (before, after)
    test = tmp_path / "test.extxyz"
    write(test, emt_frames(2, seed=8))
    assert main(["evaluate", str(out / "best.pt"), str(test)]) == 0
    assert "forces on Ni" in capsys.readouterr().out
    atoms = emt_frames(1, seed=9)[0]
    atoms.calc = NequIPCalculator(str(out / "best.pt"))
    assert np.isfinite(atoms.get_potential_energy())


def test_init_from_rejects_architecture_keys(imported, tmp_path):
    with pytest.raises(ConfigError, match="model.l_max: with training.init_from"):
        train(load_config(run_config(tmp_path, emt_frames(4), imported, l_max=2)))


def test_frozen_weights_stay_bit_identical(imported, tmp_path, capsys):
    config = run_config(tmp_path, pure_cu(6, seed=10), imported)
    raw = yaml.safe_load(config.read_text())
    raw["training"].update(epochs=2, freeze=["layers.0.*", "energy_model.readout*"])
    config.write_text(yaml.safe_dump(raw))
    out = train(load_config(config))
    assert "frozen (training.freeze): " in capsys.readouterr().out
    source = dict(load_model(imported).named_parameters())
    for file in ("best.pt", "last.pt"):
        tuned = dict(load_model(out / file).named_parameters())
        frozen = [n for n in tuned if n.startswith(("energy_model.layers.0.", "energy_model.readout"))]
        moved = [n for n in tuned if n not in frozen and not torch.equal(tuned[n], source[n])]
        assert len(frozen) >= 4 and all(torch.equal(tuned[n], source[n]) for n in frozen), file
        assert any(n.startswith("energy_model.layers.1.") for n in moved), file  # the others trained


def test_freeze_errors(imported, tmp_path):
    config = run_config(tmp_path, pure_cu(4, seed=11), imported)
    raw = yaml.safe_load(config.read_text())
    raw["training"]["freeze"] = ["layers.0.*", "layer.1.*"]
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"training.freeze: 'layer.1.\*' matches no parameter of the model; "
                                          r"its parameters are .*layers.N.block.linear_1.weight"):
        train(load_config(config))
    raw["training"]["freeze"] = ["layers.*", "*"]
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="freeze every parameter: nothing to train"):
        train(load_config(config))
    del raw["training"]["init_from"]
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="training.freeze: needs training.init_from"):
        load_config(config)
    raw["training"]["freeze"] = [3]
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="training.freeze: expected a list of strings, got"):
        load_config(config)

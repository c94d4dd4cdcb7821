"""Training from YAML: config validation, bad input, a tiny end-to-end run, bit-exact resume."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from conftest import random_molecule
from nequip_fast.cli import main
from nequip_fast.data.dataset import DatasetError
from nequip_fast.model import load_model
from nequip_fast.train import ConfigError, Trainer, load_config, parse_config, train
from nequip_fast.train.data import load_splits, split_sizes
from nequip_fast.train.schedule import LRSchedule

TINY_MODEL = dict(r_max=3.0, num_layers=1, l_max=1, num_features=4, radial_mlp_width=8, readout_features=4,
                  avg_num_neighbors="auto", per_species_shifts="auto", per_species_scales="auto", dtype="float64")


def labelled(atoms, stress: bool = False):
    """Atoms with EMT energy/forces (and stress) stored as plain labels."""
    atoms.calc = EMT()
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if stress:
        results["stress"] = atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def molecules(n: int = 12) -> list:
    return [labelled(random_molecule(5 + k % 3, seed=k)) for k in range(n)]


def copper(n: int = 6, repeats=(1, 2)) -> list:
    """Rattled fcc Cu cells of 4 x repeats[k % len(repeats)] atoms, with EMT labels and stress."""
    frames = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (1, 1, repeats[k % len(repeats)])
        atoms.rattle(0.05, seed=k)
        frames.append(labelled(atoms, stress=True))
    return frames


def write_config(tmp_path: Path, frames=None, **sections) -> Path:
    """A runnable tiny config; ``sections`` update the data/model/training/output dicts."""
    data_file = tmp_path / "data.extxyz"
    write(data_file, frames if frames is not None else molecules())
    raw = {"data": {"train": str(data_file), "n_train": 6, "n_val": 3, "n_test": "rest"},
           "model": dict(TINY_MODEL),
           "training": {"epochs": 2, "batch_size": 2, "lr": 0.01, "warmup_steps": 2, "num_threads": 1},
           "output": {"directory": str(tmp_path / "run")}}
    for name, values in sections.items():
        raw[name].update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# --- config validation: one message naming the key -------------------------------------------

@pytest.mark.parametrize("raw, message", [
    ({"training": {"lr": "abc"}}, r"training\.lr: expected a number, got 'abc'"),
    ({"training": {"lrr": 0.1}}, r"training\.lrr: unknown key; did you mean 'lr'\?"),
    ({"training": {"epochs": 2.5}}, r"training\.epochs: expected an integer, got 2\.5"),
    ({"training": {"optimizer": "sgd"}}, r"training\.optimizer: expected one of adam, adamw, got 'sgd'"),
    ({"training": {"ema_decay": 1.5}}, r"training\.ema_decay: must be in \[0, 1\)"),
    ({"training": {"batch_size": 0}}, r"training\.batch_size: must be positive"),
    ({"model": {"num_layer": 3}}, r"model\.num_layer: unknown key; did you mean 'num_layers'\?"),
    ({"model": {"l_max": "two"}}, r"model: .*'l_max' must be int"),
    ({"data": {"n_val": "all"}}, r"data\.n_val: expected a count, a fraction or 'rest', got 'all'"),
    ({"data": {"n_val": "rest"}}, r"only one of n_train, n_val, n_test can be 'rest'"),
    ({"outputs": {}}, r"outputs: unknown key; did you mean 'output'\?"),
])
def test_config_errors_name_the_key(raw, message):
    base = {"data": {"train": "x.extxyz"}}
    for name, values in raw.items():
        base[name] = {**base.get(name, {}), **values}
    with pytest.raises(ConfigError, match=message):
        parse_config(base)


def test_config_needs_train_file_and_fills_defaults(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.train: required value is missing"):
        parse_config({"data": {}})
    config = load_config(write_config(tmp_path))
    assert config.training.optimizer == "adam" and config.training.ema_decay == 0.99
    assert config.data.seed == 0 and Path(config.data.train).is_absolute()


def test_split_sizes():
    assert split_sizes(100, {"n_train": 0.5, "n_val": 10, "n_test": "rest"}) == {"n_train": 50, "n_val": 10, "n_test": 40}
    with pytest.raises(ConfigError, match="ask for 120 frames"):
        split_sizes(100, {"n_train": 100, "n_val": 20, "n_test": 0})


def test_splits_are_seeded_and_separate_files_are_used_whole(tmp_path):
    write(tmp_path / "val.extxyz", molecules(4))
    write(tmp_path / "test.extxyz", molecules(2))
    config = load_config(write_config(tmp_path, data={"n_train": 0.5, "n_val": None, "n_test": 0,
                                                      "val": "val.extxyz", "test": "test.extxyz"}))
    splits, species = load_splits(config.data, ("energy", "forces"), None, 3.0, torch.float64)
    assert species == ("H", "C", "O")
    assert [len(splits[k].graphs) for k in ("train", "val", "test")] == [6, 4, 2]
    again, _ = load_splits(config.data, ("energy", "forces"), None, 3.0, torch.float64)
    assert [a.positions.tolist() for a in again["train"].frames] == [a.positions.tolist() for a in splits["train"].frames]


def test_schedule_warmup_then_plateau():
    cfg = parse_config({"data": {"train": "x"}, "training": {"lr": 1.0, "warmup_steps": 4, "plateau_patience": 1,
                                                             "plateau_factor": 0.5}}).training
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = LRSchedule(optimizer, cfg)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(4):
        schedule.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == [0.25, 0.5, 0.75, 1.0, 1.0]
    for metric in (1.0, 2.0, 2.0):  # improvement, then two bad epochs > patience 1
        schedule.epoch_end(metric)
    assert optimizer.param_groups[0]["lr"] == 0.5


# --- bad input: the message names the cause --------------------------------------------------

def frame_without_forces():
    frames = molecules()
    frames[4].calc = SinglePointCalculator(frames[4], energy=frames[4].get_potential_energy())
    return frames


def frame_with_nan():
    frames = molecules()
    frames[2].calc.results["forces"][0, 1] = np.nan
    return frames


@pytest.mark.parametrize("frames, sections, error, message", [
    (None, {"data": {"train": "/nonexistent/data.extxyz"}}, DatasetError, r"/nonexistent/data\.extxyz does not exist"),
    (frame_without_forces(), {}, DatasetError, r"frame 4: missing 'forces'"),
    (frame_with_nan(), {}, DatasetError, r"frame 2: 'forces' contains NaN"),
    (None, {"model": {"species": ["H", "O"]}}, DatasetError, r"species \['C'\] not in the model's species"),
    (None, {"data": {"n_train": 0}}, ConfigError, r"data\.n_train: the train split is empty"),
    (None, {"data": {"n_val": 0}}, ConfigError, r"data\.n_val: the val split is empty"),
    (None, {"data": {"n_train": 20}}, ConfigError, r"ask for 23 frames .* but the file has 12"),
    (None, {"training": {"metric": "stress_mae"}}, ConfigError, r"training\.metric: 'stress_mae' needs stress labels"),
])
def test_bad_input_is_named(tmp_path, frames, sections, error, message):
    with pytest.raises(error, match=message):
        train(load_config(write_config(tmp_path, frames, **sections)))


def test_malformed_file_is_named(tmp_path):
    config = write_config(tmp_path)
    Path(load_config(config).data.train).write_text("3\nnot an extxyz comment line\nH 0 0\n")
    with pytest.raises(DatasetError, match=r"cannot read .*data\.extxyz"):
        train(load_config(config))


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    config = write_config(tmp_path, output={"directory": str(blocker / "run")})
    assert main(["train", str(config)]) == 2
    assert "output.directory: cannot write to" in capsys.readouterr().err


def test_resume_without_a_run(tmp_path, capsys):
    assert main(["train", str(write_config(tmp_path)), "--resume"]) == 2
    assert re.search(r"no checkpoint to resume from: .*last\.pt does not exist", capsys.readouterr().err)


def test_config_typo_through_the_cli(tmp_path, capsys):
    config = write_config(tmp_path, training={"epoch": 3})
    assert main(["train", str(config)]) == 2
    assert "training.epoch: unknown key; did you mean 'epochs'?" in capsys.readouterr().err


# --- a tiny run end to end, and resume --------------------------------------------------------

def test_train_end_to_end_with_stress(tmp_path, capsys):
    config = write_config(tmp_path, copper(), data={"n_train": 3, "n_val": 2, "n_test": 1},
                          training={"metric": "stress_mae"})
    assert main(["train", str(config)]) == 0
    out = tmp_path / "run"
    shown = capsys.readouterr().out
    assert "epoch 2/2" in shown and "S " in shown and "stress" in (out / "test_metrics.txt").read_text()
    for name in ("best.pt", "last.pt", "log.csv", "config.yaml", "learning_curves.png", "parity_test.png"):
        assert (out / name).is_file(), name
    assert len((out / "log.csv").read_text().splitlines()) == 3
    assert list((out / "tensorboard").iterdir())
    resolved = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert resolved["species"] == ["Cu"] and resolved["avg_num_neighbors"] > 1
    # a checkpoint is a model file: load_model and the ASE calculator read it directly
    from nequip_fast.ase import NequIPCalculator

    atoms = read(load_config(config).data.train, 0)
    atoms.calc = NequIPCalculator(out / "last.pt")
    assert np.isfinite(atoms.get_stress()).all()
    assert load_model(out / "best.pt").species == ("Cu",)
    # starting again over a finished run is refused unless resuming
    assert main(["train", str(config)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def final_weights(directory: Path) -> dict:
    return torch.load(directory / "last.pt", weights_only=True)


def test_resume_after_interruption_is_bit_exact(tmp_path, monkeypatch):
    """Stop a run in the middle of epoch 2; resuming must reproduce the uninterrupted run."""
    straight = load_config(write_config(tmp_path, training={"epochs": 3}))
    train(straight)
    reference = final_weights(tmp_path / "run")

    broken = dataclasses.replace(straight, output=dataclasses.replace(straight.output,
                                                                      directory=str(tmp_path / "broken")))
    steps_per_epoch = 3  # 6 training structures, batch size 2
    real_step, calls = Trainer.step, []

    def crash_in_epoch_2(self, graph):
        calls.append(1)
        if len(calls) == steps_per_epoch + 2:
            raise KeyboardInterrupt
        return real_step(self, graph)

    monkeypatch.setattr(Trainer, "step", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(broken)
    monkeypatch.setattr(Trainer, "step", real_step)
    assert torch.load(tmp_path / "broken" / "last.pt", weights_only=True)["training"]["epoch"] == 1
    torch.manual_seed(1234)  # a resumed process starts with other RNG state; the checkpoint restores it
    train(broken, resume=True)
    resumed = final_weights(tmp_path / "broken")

    for key in ("state_dict",):
        for name, tensor in reference[key].items():
            assert torch.equal(tensor, resumed[key][name]), name
    for name, tensor in reference["training"]["model"].items():
        assert torch.equal(tensor, resumed["training"]["model"][name]), name
    assert [r["val_loss"] for r in reference["training"]["history"]] == \
        [r["val_loss"] for r in resumed["training"]["history"]]
    assert len((tmp_path / "broken" / "log.csv").read_text().splitlines()) == 4


def test_disk_full_is_named(tmp_path, monkeypatch, capsys):
    from nequip_fast.train import checkpoint

    def full(obj, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "atomic_save", full)
    assert main(["train", str(write_config(tmp_path, training={"epochs": 1}))]) == 2
    assert re.search(r"cannot write checkpoint .*last\.pt: No space left on device", capsys.readouterr().err)

"""Issue 15, "nothing silently wrong": each failure a skeptical user found, kept fixed.

Every test here failed on the code before its fix (see tests/README.md for the whole table).
"""
from __future__ import annotations

import fcntl
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from nequip_fast.cli import main
from nequip_fast.data.dataset import DatasetError, read_structures
from nequip_fast.train import ConfigError, Trainer, load_config, parse_config, train
from nequip_fast.train import checkpoint as checkpoint_module
from test_evaluate import model_and_data  # noqa: F401 (fixture)
from test_lammps import plugin  # noqa: F401 (fixture)
from test_train import copper, molecules, write_config


def run_cli(capsys, *argv) -> tuple[int, str]:
    """(exit code, stderr) of ``nequip-fast ARGV``; a CLI error is one line without a traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    if code != 0:
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return code, err


def edit_yaml(path: Path, **sections) -> None:
    raw = yaml.safe_load(path.read_text())
    for name, values in sections.items():
        raw[name].update(values)
    path.write_text(yaml.safe_dump(raw))


# --- 1: --resume with changed settings ---------------------------------------------------------

def test_resume_with_changed_settings(tmp_path, capsys):
    config = write_config(tmp_path, training={"epochs": 1})
    assert main(["train", str(config)]) == 0
    recorded = (tmp_path / "run" / "config.yaml").read_text()
    edit_yaml(config, model={"r_max": 3.5, "num_features": 8}, training={"lr": 0.001, "epochs": 2})
    code, err = run_cli(capsys, "train", config, "--resume")
    assert code == 2
    for key in ("model.r_max 3.0 -> 3.5", "model.num_features 4 -> 8", "training.lr 0.01 -> 0.001"):
        assert key in err, err
    assert "training.epochs" not in err  # raising epochs is how a run is extended
    assert (tmp_path / "run" / "config.yaml").read_text() == recorded  # nothing rewritten
    # a species order other than the run's is a changed model too
    edit_yaml(config, model={"r_max": 3.0, "num_features": 4, "species": ["O", "C", "H"]}, training={"lr": 0.01})
    code, err = run_cli(capsys, "train", config, "--resume")
    assert code == 2 and "model.species ['H', 'C', 'O'] -> ['O', 'C', 'H']" in err
    # --accept-changes takes a new lr (and uses it), never a changed model
    edit_yaml(config, model={"species": ["H", "C", "O"]}, training={"lr": 0.002, "epochs": 2})
    code, err = run_cli(capsys, "train", config, "--resume")
    assert code == 2 and "--accept-changes takes the new training.lr" in err
    code, err = run_cli(capsys, "train", config, "--resume", "--accept-changes")
    assert code == 0, err
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["training"]["history"][-1]["lr"] == pytest.approx(0.002)  # the new lr is used, not the saved one
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["training"]["lr"] == 0.002
    # the model section cannot be accepted
    edit_yaml(config, model={"num_layers": 2}, training={"epochs": 3})
    code, err = run_cli(capsys, "train", config, "--resume", "--accept-changes")
    assert code == 2 and "model.num_layers 1 -> 2" in err


# --- 2: two runs into one directory -------------------------------------------------------------

def test_second_run_into_the_same_directory_is_refused(tmp_path, capsys):
    config = write_config(tmp_path, training={"epochs": 1})
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as held:  # what a running `nequip-fast train` holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, err = run_cli(capsys, "train", config)
        assert code == 2 and "is in use by another nequip-fast train" in err
        code, err = run_cli(capsys, "train", config, "--resume")
        assert code == 2 and "is in use by another nequip-fast train" in err
    assert not (out / "last.pt").exists()
    # a lock file left by a killed run holds no lock: it does not block
    assert run_cli(capsys, "train", config)[0] == 0


# --- 3: last.pt and best.pt as one commit; temp files of a kill are cleaned -----------------------

def test_kill_between_checkpoint_writes_is_repaired(tmp_path, monkeypatch, capsys):
    straight = load_config(write_config(tmp_path, training={"epochs": 2}))
    train(straight)
    reference = torch.load(tmp_path / "run" / "best.pt", weights_only=True)

    broken = tmp_path / "broken"
    real_save = checkpoint_module.save

    def killed_at_the_last_best_write(state, path):
        if Path(path).name == "best.pt" and state["epoch"] == reference["epoch"]:
            raise KeyboardInterrupt  # the process dies after last.pt, before best.pt
        real_save(state, path)

    monkeypatch.setattr(checkpoint_module, "save", killed_at_the_last_best_write)
    config = write_config(tmp_path, training={"epochs": reference["epoch"]}, output={"directory": str(broken)})
    assert main(["train", str(config)]) == 130
    monkeypatch.setattr(checkpoint_module, "save", real_save)
    (broken / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # left by a kill -9 in a write
    capsys.readouterr()
    assert main(["train", str(config), "--resume"]) == 0
    assert "repaired best.pt" in capsys.readouterr().out
    best = torch.load(broken / "best.pt", weights_only=True)
    assert best["epoch"] == reference["epoch"]
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(tensor, best["state_dict"][name]), name
    assert not list(broken.glob(".*.tmp"))


def test_last_checkpoint_holds_the_averaged_weights(tmp_path):
    """last.pt is also a model file: its top-level weights are the averaged ones, as documented."""
    config = load_config(write_config(tmp_path, training={"epochs": 1}))
    train(config)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    trained = last["training"]["model"]
    changed = [k for k in best["state_dict"] if not torch.equal(best["state_dict"][k], trained[k])]
    assert changed, "EMA weights should differ from the training weights"
    for name in best["state_dict"]:
        assert torch.equal(last["state_dict"][name], best["state_dict"][name]), name


# --- 4: an element of the test data that training never saw ---------------------------------------

def test_element_absent_from_training_is_refused(tmp_path):
    nitrogen = molecules(3)
    for atoms in nitrogen:
        atoms.symbols[0] = "N"
    write(tmp_path / "test.extxyz", nitrogen)
    config = write_config(tmp_path, data={"n_train": 9, "n_val": 3, "n_test": 0, "test": "test.extxyz"})
    with pytest.raises(DatasetError, match=r"test\.extxyz.*element N is not in the training split"):
        train(load_config(config))


# --- 6, 11: evaluate --------------------------------------------------------------------------------

def test_evaluate_refuses_mixed_labels(model_and_data, capsys):
    _, data, tmp_path = model_and_data
    frames = molecules(6)
    for atoms in frames[3:]:
        atoms.calc = None
    write(data, frames)
    code, err = run_cli(capsys, "evaluate", tmp_path / "model.pt", data)
    assert code == 2 and re.search(r"data\.extxyz frame 3: no 'energy' label, but frame 0 has one", err), err


def test_evaluate_unlabelled_data(model_and_data, capsys):
    _, data, tmp_path = model_and_data
    frames = molecules(3)
    for atoms in frames:
        atoms.calc = None
    write(data, frames)
    code, err = run_cli(capsys, "evaluate", tmp_path / "model.pt", data)
    assert code == 2 and "no energy, forces or stress labels: nothing to score" in err
    out = tmp_path / "pred.extxyz"
    assert run_cli(capsys, "evaluate", tmp_path / "model.pt", data, "--output", out)[0] == 0
    assert len(read_structures(out, require=("energy", "forces"))) == 3


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size: must be a positive integer, got '0'"),
    (["--batch-size", "-3"], "--batch-size: must be a positive integer, got '-3'"),
])
def test_evaluate_bad_batch_size(model_and_data, capsys, args, message):
    _, data, tmp_path = model_and_data
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(tmp_path / "model.pt"), str(data), *args])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_evaluate_bad_output_and_device(model_and_data, capsys, monkeypatch):
    _, data, tmp_path = model_and_data
    import nequip_fast.train.evaluate as evaluation

    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking --output"))
    code, err = run_cli(capsys, "evaluate", tmp_path / "model.pt", data, "--output", tmp_path / "no" / "pred.extxyz")
    assert code == 2 and "--output: directory" in err and "does not exist" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = run_cli(capsys, "evaluate", tmp_path / "model.pt", data, "--device", "cuda")
    assert code == 2 and "--device cuda: CUDA is not available" in err
    code, err = run_cli(capsys, "evaluate", tmp_path / "model.pt", data, "--device", "gpu")
    assert code == 2 and "--device gpu" in err


# --- 9: divergence -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_config_numbers_are_refused(value):
    with pytest.raises(ConfigError, match=r"training\.lr: expected a finite number"):
        parse_config({"data": {"train": "x"}, "training": {"lr": value}})
    with pytest.raises(ConfigError, match=r"training\.weight_decay: expected a finite number"):
        parse_config({"data": {"train": "x"}, "training": {"weight_decay": value}})


def test_diverging_run_stops_at_the_first_non_finite_loss(tmp_path, capsys, monkeypatch):
    real_step, steps = Trainer.step, []

    def blows_up_in_epoch_2(self, graph):
        steps.append(1)
        if len(steps) == 3 + 2:  # 3 steps per epoch: the second step of epoch 2
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("inf"))  # what lr: 1e8 does
        return real_step(self, graph)

    monkeypatch.setattr(Trainer, "step", blows_up_in_epoch_2)
    config = write_config(tmp_path, training={"epochs": 4})
    code, err = run_cli(capsys, "train", config)
    assert code == 1 and "training diverged in epoch 2: the training loss is nan" in err, err
    assert "lower training.lr" in err and len(steps) == 6
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["training"]["epoch"] == 1  # the broken epoch is not saved


# --- 10: unreadable checkpoints ---------------------------------------------------------------------

class NotPlainData:
    pass


def test_unreadable_checkpoints_are_one_line(tmp_path, capsys):
    config = write_config(tmp_path, training={"epochs": 1})
    assert main(["train", str(config)]) == 0
    edit_yaml(config, training={"epochs": 2})
    last, best = tmp_path / "run" / "last.pt", tmp_path / "run" / "best.pt"
    good = last.read_bytes()
    cases = {
        "truncated": (lambda: last.write_bytes(good[:2000]),
                      r"last\.pt is not a readable checkpoint \(truncated or not written by torch\.save"),
        "random": (lambda: last.write_bytes(np.random.default_rng(0).bytes(5000)), r"last\.pt is not a readable checkpoint"),
        "model file": (lambda: last.write_bytes(best.read_bytes()), r"last\.pt is a model file without training state"),
        "a list": (lambda: torch.save([1, 2, 3], last), r"last\.pt is not a nequip_fast checkpoint"),
        "an object": (lambda: torch.save({"training": NotPlainData()}, last),
                      r"last\.pt holds Python objects, not plain data; refused"),
        "old keys": (lambda: torch.save({"model_config": {}, "state_dict": {}, "training": {"epoch": 1}}, last),
                     r"last\.pt: training state lacks model, optimizer"),
    }
    for name, (damage, message) in cases.items():
        damage()
        code, err = run_cli(capsys, "train", config, "--resume")
        assert code == 2 and re.search(message, err), (name, err)
        assert "weights_only=False" not in err
    best.write_bytes(np.random.default_rng(1).bytes(3000))
    code, err = run_cli(capsys, "evaluate", best, tmp_path / "data.extxyz")
    assert code == 2 and "best.pt is not a readable checkpoint" in err and "weights_only=False" not in err


# --- 12: extxyz errors name file, frame and line ----------------------------------------------------

def extxyz_lines(tmp_path) -> list[str]:
    path = tmp_path / "ok.extxyz"
    write(path, molecules(3))  # 5, 6 and 7 atoms: frames start at lines 1, 8 and 16
    return path.read_text().splitlines(keepends=True)


def test_truncated_extxyz_names_frame_and_line(tmp_path):
    path = tmp_path / "d.extxyz"
    path.write_text("".join(extxyz_lines(tmp_path)[:20]))
    with pytest.raises(DatasetError, match=r"d\.extxyz frame 2 \(line 16\): declares 7 atoms but the file ends "
                                           r"after 3 of them \(line 20\)"):
        read_structures(path)


def test_malformed_extxyz_atom_line_names_frame_and_line(tmp_path):
    lines = extxyz_lines(tmp_path)
    fields = lines[11].split()
    fields[2] = "1.0x"
    lines[11] = " ".join(fields) + "\n"
    path = tmp_path / "d.extxyz"
    path.write_text("".join(lines))
    with pytest.raises(DatasetError, match=r"d\.extxyz frame 1, line 12: column 'pos' .*'1\.0x' is not a number"):
        read_structures(path)
    lines[11] = " ".join(fields[:5]) + "\n"
    path.write_text("".join(lines))
    with pytest.raises(DatasetError, match=r"d\.extxyz frame 1, line 12: expected 7 columns .* got 5"):
        read_structures(path)
    lines[7] = "six\n"
    path.write_text("".join(lines))
    with pytest.raises(DatasetError, match=r"d\.extxyz frame 1, line 8: expected the number of atoms, got 'six'"):
        read_structures(path)


def test_missing_stress_names_the_frame_in_the_file(tmp_path):
    frames = copper(6)
    frames[4].calc = SinglePointCalculator(frames[4], energy=frames[4].get_potential_energy(),
                                           forces=frames[4].get_forces())
    config = write_config(tmp_path, frames, data={"n_train": 3, "n_val": 2, "n_test": 1})
    with pytest.raises(DatasetError, match=r"data\.extxyz frame 4: no 'stress' label, but frame 0 has one"):
        train(load_config(config))


# --- 13: Ctrl-C before anything was saved -----------------------------------------------------------

def test_interrupt_before_the_first_epoch(tmp_path, capsys, monkeypatch):
    def interrupted(self, graph):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "step", interrupted)
    code, err = run_cli(capsys, "train", write_config(tmp_path))
    assert code == 130 and "before the first epoch finished; nothing was saved" in err
    assert "last.pt" not in err


# --- 5, 14: deployed files: metadata checked against the program; trusted like programs -----------

@pytest.fixture(scope="module")
def deployed_file(tmp_path_factory) -> Path:
    from test_deploy import deployed_model

    return deployed_model(tmp_path_factory.getbasetemp(), "float64")[1]  # compiled once per session


def forged(meta: dict, **fields) -> None:
    """Metadata describing another model, made consistent (model_config, fingerprint) as a mixed-up
    deployment would be: only the program itself can tell."""
    from nequip_fast.deploy.package import fingerprint

    config = json.loads(meta["model_config"])
    for key, value in fields.items():
        config[key] = value
        meta[key] = " ".join(value) if key == "species" else str(value)
    meta["model_config"] = json.dumps(config)
    if "fingerprint" in meta:
        meta["fingerprint"] = fingerprint(meta)


@pytest.mark.parametrize("fields", [{"species": ["O", "Cu"]}, {"r_max": 5.0}, {"dtype": "float32"},
                                    {"species": ["Cu", "O", "H"]}])
def test_deployed_metadata_must_match_the_program(deployed_file, tmp_path, fields):
    from nequip_fast.ase import NequIPCalculator
    from nequip_fast.deploy import DeployError
    from test_deploy import rewrite_metadata

    bad = rewrite_metadata(deployed_file, tmp_path / "bad.pt2", lambda meta: forged(meta, **fields))
    with pytest.raises(DeployError, match="the compiled program is not the model its metadata describes"):
        NequIPCalculator(bad)


def test_edited_metadata_is_refused_before_loading(deployed_file, tmp_path, monkeypatch, capsys):
    from nequip_fast.ase import NequIPCalculator
    from nequip_fast.deploy import DeployError
    from test_deploy import rewrite_metadata

    def edit(meta):
        meta["r_max"] = "5.0"

    bad = rewrite_metadata(deployed_file, tmp_path / "bad.pt2", edit)
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda *a: pytest.fail("loaded before checking"))
    with pytest.raises(DeployError, match="metadata was changed after deployment"):
        NequIPCalculator(bad)
    code, err = run_cli(capsys, "deploy", "--info", bad)
    assert code == 2 and "metadata was changed after deployment" in err
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "trusted like programs" in readme
    with pytest.raises(SystemExit):
        main(["deploy", "--help"])
    assert "trust model files like programs" in " ".join(capsys.readouterr().out.split())


def test_sigterm_exits_cleanly(tmp_path, capsys, monkeypatch):
    import os
    import signal

    real_step, steps = Trainer.step, []

    def terminated_in_epoch_2(self, graph):
        steps.append(1)
        if len(steps) == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # what a batch system sends at its time limit
        return real_step(self, graph)

    monkeypatch.setattr(Trainer, "step", terminated_in_epoch_2)
    code, err = run_cli(capsys, "train", write_config(tmp_path))
    assert code == 143 and re.search(r"terminated \(SIGTERM\); finished epochs are in .*last\.pt", err), err
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["training"]["epoch"] == 1


# --- found in the round of tests/README.md ------------------------------------------------------------

def test_yaml_pitfalls(tmp_path):
    config = write_config(tmp_path)
    text = config.read_text()
    config.write_text(text.replace("lr: 0.01", "lr: 0.01\n  lr: 0.5"))
    with pytest.raises(ConfigError, match="key 'lr' is given twice"):
        load_config(config)
    config.write_text(text.replace("lr: 0.01", "lr: 1e-3"))  # PyYAML reads 1e-3 as text
    assert load_config(config).training.lr == 0.001
    with pytest.raises(ConfigError, match=r"data\.index: expected an ase\.io index"):
        parse_config({"data": {"train": "x", "index": "first"}})


def test_cutoff_without_neighbours_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.r_max: no atom of the training split has a neighbour within"):
        train(load_config(write_config(tmp_path, model={"r_max": 0.5})))


def test_commands_check_devices_and_paths_first(model_and_data, capsys, monkeypatch):
    _, data, tmp_path = model_and_data
    code, err = run_cli(capsys, "evaluate", tmp_path / "model.pt", data, "--output", tmp_path)
    assert code == 2 and "is a directory" in err
    code, err = run_cli(capsys, "evaluate", tmp_path / "model.pt", data, "--index", "50")
    assert code == 2 and "index '50' selects no frame (6 frames)" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = run_cli(capsys, "deploy", tmp_path / "model.pt", tmp_path / "m.pt2", "--device", "cuda")
    assert code == 2 and "--device cuda: CUDA is not available" in err


# --- the LAMMPS plugin: checked metadata, no NaN from overlapping atoms -----------------------------

def edit_r_max(meta: dict) -> None:
    meta["r_max"] = "5.0"


@pytest.mark.parametrize("case, message", [
    ("edited metadata", "its metadata was changed after deployment (the fingerprint does not match)"),
    ("overlapping atoms", "two atoms are 0.000000 A apart (closer than 0.1 A)"),
])
def test_lammps_refuses_what_python_refuses(plugin, deployed_file, tmp_path, case, message):
    from lammps_run import LammpsError, run_lammps
    from test_deploy import cu_vacancy, rewrite_metadata
    from test_lammps import write_data

    atoms, model = cu_vacancy(), deployed_file
    if case == "edited metadata":
        model = rewrite_metadata(deployed_file, tmp_path / "edited.pt2", edit_r_max)
    else:
        atoms.positions[1] = atoms.positions[0]  # was a NaN energy, and LAMMPS went on
    write_data(atoms, tmp_path / "data.lmp", ["Cu", "O"])
    script = f"""units metal
atom_style atomic
newton on
read_data data.lmp
plugin load {plugin}
pair_style nequip
pair_coeff * * {model} Cu O
run 0
"""
    with pytest.raises(LammpsError) as failure:
        run_lammps(script, tmp_path)
    assert message in failure.value.log


@pytest.mark.parametrize("offset", [1e5, 1e7])
def test_float32_model_far_from_the_origin(offset):
    """Item 7: a float32 model forms edge vectors in float64 (then casts), so a molecule shifted far
    from the origin gets the same energy and forces; before, float32 positions lost the bond lengths
    (1e-2 eV/A force error at 1e5 A, 0.17 eV energy error at 1e7 A)."""
    from conftest import random_molecule, small_model
    from nequip_fast.ase import NequIPCalculator

    model = small_model(seed=7, dtype="float32")
    atoms = random_molecule(9, seed=2)
    near = atoms.copy()
    near.calc = NequIPCalculator(model)
    far = atoms.copy()
    far.positions += offset
    far.calc = NequIPCalculator(model)
    assert abs(far.get_potential_energy() - near.get_potential_energy()) < 1e-5
    np.testing.assert_allclose(far.get_forces(), near.get_forces(), atol=1e-5)

"""``nequip-fast evaluate``: metrics table, per-species force errors, predictions file, bad input."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from ase.io import read, write

from nequip_fast.cli import main
from nequip_fast.data.dataset import read_structures, to_graphs
from nequip_fast.model import build_model, save_model
from nequip_fast.train.data import Batches
from nequip_fast.train.evaluate import evaluate
from nequip_fast.train.trainer import resolve_model_config
from test_train import TINY_MODEL, copper, molecules


@pytest.fixture
def model_and_data(tmp_path):
    frames = molecules(6)
    data = tmp_path / "data.extxyz"
    write(data, frames)
    torch.manual_seed(0)
    graphs = to_graphs(frames, ["H", "C", "O"], TINY_MODEL["r_max"])
    model = build_model(resolve_model_config(TINY_MODEL, ["H", "C", "O"], graphs))
    save_model(model, tmp_path / "model.pt")
    return model, data, tmp_path


def test_metrics_table_and_predictions(model_and_data, capsys):
    model, data, tmp_path = model_and_data
    out = tmp_path / "pred.extxyz"
    assert main(["evaluate", str(tmp_path / "model.pt"), str(data), "--output", str(out), "--batch-size", "4"]) == 0
    table = capsys.readouterr().out
    for row in ("energy per atom", "forces on H", "forces on C", "forces on O", "meV/A"):
        assert row in table
    predicted, reference = read(out, ":"), read(data, ":")
    assert len(predicted) == len(reference)
    np.testing.assert_allclose(predicted[3].info["REF_energy"], reference[3].get_potential_energy())
    np.testing.assert_allclose(predicted[3].arrays["REF_forces"], reference[3].get_forces())
    # the table's force MAE is the mean absolute difference of the written predictions
    mae = np.mean(np.concatenate([np.abs(p.get_forces() - r.get_forces()).ravel()
                                  for p, r in zip(predicted, reference)]))
    assert f"{1e3 * mae:.3f}" in table


def test_batching_does_not_change_metrics(model_and_data):
    model, data, _ = model_and_data
    graphs = to_graphs(read_structures(data), model.species, model.r_max)
    one = evaluate(model, Batches(graphs, 1, False).epoch(0)).metrics
    many = evaluate(model, Batches(graphs, 5, False).epoch(0)).metrics
    assert one.keys() == many.keys()
    for key in one:
        assert one[key] == pytest.approx(many[key], rel=1e-10), key


def test_stress_metrics(tmp_path, capsys):
    frames = copper(3)
    write(tmp_path / "cu.extxyz", frames)
    torch.manual_seed(0)
    graphs = to_graphs(frames, ["Cu"], TINY_MODEL["r_max"])
    save_model(build_model(resolve_model_config(TINY_MODEL, ["Cu"], graphs)), tmp_path / "cu.pt")
    assert main(["evaluate", str(tmp_path / "cu.pt"), str(tmp_path / "cu.extxyz")]) == 0
    assert "meV/A^3" in capsys.readouterr().out


@pytest.mark.parametrize("case, message", [
    ("missing_model", "model file .*nope.pt does not exist"),
    ("missing_data", "data file .*nope.extxyz does not exist"),
    ("unknown_species", r"species \['Cu'\] not in the model's species"),
])
def test_bad_input(model_and_data, capsys, case, message):
    model, data, tmp_path = model_and_data
    model_path = tmp_path / ("nope.pt" if case == "missing_model" else "model.pt")
    data_path = tmp_path / "nope.extxyz" if case == "missing_data" else data
    if case == "unknown_species":
        write(tmp_path / "cu.extxyz", copper(1))
        data_path = tmp_path / "cu.extxyz"
    assert main(["evaluate", str(model_path), str(data_path)]) == 2
    assert re.search(message, capsys.readouterr().err)

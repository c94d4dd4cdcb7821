"""The example configs run on data the repository ships: every path resolves inside the clone
and the splits fit the files (the data a `nequip-fast train examples/X.yaml` would load). ~10 s."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nequip_fast.train.config import load_config
from nequip_fast.train.data import load_splits

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "examples").glob("*.yaml"))


def test_every_example_is_checked():
    assert {p.name for p in CONFIGS} >= {"demo.yaml", "ethanol.yaml", "cu_emt.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_example_data_is_bundled(config):
    cfg = load_config(config)
    for key in ("train", "val", "test"):
        path = getattr(cfg.data, key)
        if path is None:
            continue
        resolved = Path(path).resolve()
        assert resolved.is_relative_to(ROOT), f"{config.name}: data.{key} = {path} lies outside the repository"
        assert resolved.is_file(), f"{config.name}: data.{key} = {path} does not exist"
    stress = cfg.training.stress_weight > 0 and config.name == "cu_emt.yaml"
    require = ("energy", "forces", "stress") if stress else ("energy", "forces")
    splits, species = load_splits(cfg.data, require, None, float(cfg.model.get("r_max", 5.0)), torch.float32)
    assert len(splits["train"].frames) > 0 and len(splits["val"].frames) > 0
    if config.name == "ethanol.yaml":  # the NequIP paper's setting
        assert (len(splits["train"].frames), len(splits["val"].frames)) == (1000, 100)
        assert set(species) == {"C", "H", "O"}
    if config.name == "cu_emt.yaml":
        assert species == ("Cu",) and len(splits["test"].frames) > 0

"""Everything a benchmark process needs to rebuild the same model and structure (also in a subprocess)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..data import AtomicGraph
from ..data.statistics import avg_num_neighbors
from ..model import ModelConfig
from .system import SystemSpec, build_system


@dataclass(frozen=True)
class Setup:
    """``model``: model config keys (``species`` and ``avg_num_neighbors`` default to the system's);
    ``model_file``: a saved model or checkpoint, whose config and weights win over ``model``, or a
    deployed ``.pt2``, whose config the other cases take (its weights stay inside the compiled code)."""

    model: dict
    system: SystemSpec
    model_file: Optional[str] = None
    device: str = "cpu"
    threads: int = 1
    stress: bool = False

    @property
    def deployed(self) -> bool:
        return self.model_file is not None and self.model_file.endswith(".pt2")

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Setup":
        return Setup(**{**d, "system": SystemSpec(**d["system"])})

    def with_atoms(self, atoms: int) -> "Setup":
        return dataclasses.replace(self, system=self.system.with_atoms(atoms))

    def prepare(self) -> tuple[ModelConfig, Optional[dict], AtomicGraph]:
        """The model config, its saved weights (or None) and the structure's graph."""
        atoms = build_system(self.system)
        state = None
        if self.deployed:
            from ..deploy import read_metadata

            config = json.loads(read_metadata(self.model_file)["model_config"])
        elif self.model_file is not None:
            state = torch.load(self.model_file, map_location="cpu", weights_only=True)
            config = dict(state["model_config"])
            state = state["state_dict"]
        else:
            config = dict(self.model)
            config.setdefault("species", sorted(set(atoms.get_chemical_symbols())))
        r_max = config.get("r_max", ModelConfig.r_max)
        graph = AtomicGraph.from_atoms(atoms, config["species"], r_max)
        if config.get("avg_num_neighbors", "auto") == "auto":
            config["avg_num_neighbors"] = round(avg_num_neighbors([graph]), 3)
        for key in ("per_species_shifts", "per_species_scales"):
            if config.get(key) == "auto":  # training-time statistics: a benchmark has no labels
                del config[key]
        return ModelConfig.from_dict(config), state, graph

"""The NequIP model: ``build_model(config)`` -> ``Potential`` (energy, forces, stress)."""
from typing import Any, Mapping

import torch

from .config import ModelConfig
from .potential import Potential, Prediction


def build_model(config: Mapping[str, Any]) -> Potential:
    """A NequIP ``Potential`` from the keys of a YAML ``model:`` section (see ``ModelConfig``)."""
    cfg = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
    dtype = getattr(torch, cfg.dtype)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # e3nn builds its constants (e.g. Clebsch-Gordan) in the default dtype
    try:
        return Potential(cfg)
    finally:
        torch.set_default_dtype(previous)


from .io import load_model, save_model  # noqa: E402  (io needs build_model)

__all__ = ["ModelConfig", "Potential", "Prediction", "build_model", "load_model", "save_model"]

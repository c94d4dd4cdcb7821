"""The NequIP model: ``build_model(config)`` -> ``Potential`` (energy, forces, stress)."""
from typing import Any, Mapping

import torch

from .config import ModelConfig
from .potential import Potential, Prediction


def build_model(config: Mapping[str, Any]) -> Potential:
    """A NequIP ``Potential`` from the keys of a YAML ``model:`` section (see ``ModelConfig``)."""
    cfg = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
    return Potential(cfg).to(getattr(torch, cfg.dtype))


from .io import load_model, save_model  # noqa: E402  (io needs build_model)

__all__ = ["ModelConfig", "Potential", "Prediction", "build_model", "load_model", "save_model"]

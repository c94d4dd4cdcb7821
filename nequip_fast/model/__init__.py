"""The NequIP model: ``build_model(config)`` -> ``Potential`` (energy, forces, stress)."""
from typing import Any, Mapping, Optional

import torch

from ..ops import resolve_backend, set_backend
from .config import ModelConfig
from .potential import Potential, Prediction


def build_model(config: Mapping[str, Any], backend: Optional[str] = None) -> Potential:
    """A NequIP ``Potential`` from the keys of a YAML ``model:`` section (see ``ModelConfig``).

    ``backend`` picks the convolution kernels (``ops.BACKENDS``, default "auto"): an execution
    setting, not part of the model (``ops.set_backend`` changes it later; checkpoints never hold
    it). A ``conv_backend`` key in a ``config`` mapping is read as the same setting.
    """
    if not isinstance(config, ModelConfig):
        config = dict(config)
        backend = backend or config.pop("conv_backend", None)
        config = ModelConfig.from_dict(config)
    backend = resolve_backend(backend or "auto")  # checked before the model is built
    dtype = getattr(torch, config.dtype)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # e3nn builds its constants (e.g. Clebsch-Gordan) in the default dtype
    try:
        model = Potential(config)
    finally:
        torch.set_default_dtype(previous)
    set_backend(model, backend)
    return model


from .io import load_model, save_model  # noqa: E402  (io needs build_model)

__all__ = ["ModelConfig", "Potential", "Prediction", "build_model", "load_model", "save_model"]

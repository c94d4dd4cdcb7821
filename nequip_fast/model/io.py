"""Saving and loading models as plain data (config + tensors), loadable with ``weights_only``."""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

import nequip_fast

from ..ops import resolve_backend
from .config import ModelConfig
from .potential import Potential


def model_state(model: Potential) -> dict[str, Any]:
    return {
        "nequip_fast_version": nequip_fast.__version__,
        "model_config": model.config.to_dict(),
        "state_dict": model.state_dict(),
    }


def atomic_save(obj: Any, path: str | Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model: Potential, path: str | Path) -> None:
    atomic_save(model_state(model), path)


def model_from_state(state: dict[str, Any], backend: Optional[str] = None) -> Potential:
    """``backend``: the convolution kernels to run (default "auto"; a ``conv_backend`` that older
    checkpoints stored is ignored)."""
    from . import build_model

    model = build_model(ModelConfig.from_dict(state["model_config"]), backend)
    model.load_state_dict(state["state_dict"])
    return model


class ModelFileError(ValueError):
    """A model file or checkpoint that cannot be used; the message names the file and the cause."""


def read_state(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """The plain-data dict of a model file or checkpoint (``weights_only``); each way it can
    fail is one line naming the file, never torch's advice to load without ``weights_only``."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "allowed global" in str(exc) or "Unsupported global" in str(exc):
            raise ModelFileError(f"{path} holds Python objects, not plain data; refused, since loading them could "
                                 f"run code (nequip_fast files hold only tensors, numbers and strings)") from None
        raise ModelFileError(f"{path} is not a readable checkpoint (truncated or not written by torch.save)") from None
    except (RuntimeError, EOFError, KeyError, ValueError) as exc:
        cause = str(exc).split(". ")[0].splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"{path} is not a readable checkpoint (truncated or not written by torch.save: "
                             f"{cause})") from None
    if not isinstance(state, dict):
        raise ModelFileError(f"{path} is not a nequip_fast checkpoint (it holds a {type(state).__name__})")
    return state


def load_model(path: str | Path, map_location: str = "cpu", backend: Optional[str] = None) -> Potential:
    """A model saved by ``save_model`` (or a training checkpoint, which holds the same keys), its
    convolutions on ``backend`` (default "auto")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if path.suffix == ".pt2":
        raise ModelFileError(f"{path} is a deployed model (.pt2): give the checkpoint it was deployed from (.pt); "
                             "NequIPCalculator and LAMMPS load .pt2 files")
    if backend is not None:
        resolve_backend(backend)  # its own error, not one about the file
    state = read_state(path, map_location)
    if "model_config" not in state or "state_dict" not in state:
        raise ModelFileError(f"{path} is not a nequip_fast model or checkpoint (no model_config/state_dict)")
    try:
        return model_from_state(state, backend).eval()
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelFileError(f"{path}: its model_config and weights do not fit ({str(exc).splitlines()[0]})") from None

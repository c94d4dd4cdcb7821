"""Checkpoints: plain data (tensors, numbers, strings, lists, dicts), loaded with ``weights_only``.

The top level holds what ``nequip_fast.model.load_model`` and the ASE calculator read
(``nequip_fast_version``, ``model_config``, ``state_dict`` with the averaged weights), so a
checkpoint is also a model file. ``training`` holds what a resumed run needs.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..model.io import ModelFileError, atomic_save, read_state

LAST, BEST = "last.pt", "best.pt"


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch generator states as plain types."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(state: dict[str, Any], path: Path) -> None:
    """Atomic (temporary file, fsync, rename); a failed write names the file and the reason."""
    try:
        atomic_save(state, path)
    except OSError as exc:
        raise OSError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from exc


# What a resumed run reads from ``training``; a checkpoint without them cannot be continued.
TRAINING_KEYS = ("model", "optimizer", "schedule", "ema", "rng", "epoch", "best", "best_epoch", "history")


def load(path: Path) -> dict[str, Any]:
    """A checkpoint to resume from; anything else is a ``ModelFileError`` naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from: {path} does not exist")
    state = read_state(path)
    if "training" not in state:
        kind = "a model file" if "state_dict" in state else "not a nequip_fast checkpoint"
        raise ModelFileError(f"{path} is {kind} without training state; it cannot be resumed")
    training = state["training"]
    missing = [key for key in TRAINING_KEYS if key not in training] if isinstance(training, dict) else TRAINING_KEYS
    if missing or "model_config" not in state:
        raise ModelFileError(f"{path}: training state lacks {', '.join(missing) or 'model_config'} (written by another "
                             "nequip_fast version, or damaged); it cannot be resumed")
    return state

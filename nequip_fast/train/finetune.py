"""Fine-tuning: ``training.init_from: PATH`` starts a run from a model file's weights (a nequip_fast
model or checkpoint, e.g. one written by ``nequip-fast import``).

The architecture is the source model's; the YAML ``model:`` section may only change the ``dtype``
(the kernels are ``training.conv_backend``). Species of the new data that the source does not know
are added after its own: their energy shifts are fitted to the training energies with the known
species' shifts held fixed, their scale is the mean of the known ones, and their embedding and
self-connection weights start from a fresh initialisation. The known species' weights are copied
so that, before training, the model gives exactly the source's energies on structures made of them.
``training.freeze`` keeps chosen parameters as loaded (``freeze``).
"""
from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from e3nn import o3

from ..data import AtomicGraph
from ..model import ModelConfig, Potential, build_model, load_model
from .config import ConfigError

EXECUTION_KEYS = ("dtype",)


def load_source(path: str | Path, model_section: Mapping[str, Any]) -> Potential:
    unknown = sorted(set(model_section) - set(EXECUTION_KEYS))
    if unknown:
        raise ConfigError(f"model.{unknown[0]}: with training.init_from the architecture comes from {path}; "
                          f"the model section may only set {', '.join(EXECUTION_KEYS)}")
    try:
        return load_model(path)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"training.init_from: {exc}") from None


def extended_model(source: Potential, data_species: Sequence[str], graphs: Sequence[AtomicGraph],
                   model_section: Mapping[str, Any]) -> Potential:
    """The source model over its species plus the new ones of ``data_species`` (``graphs``: the
    training graphs, their species indices in ``data_species`` order)."""
    old = source.config
    new = [s for s in data_species if s not in old.species]
    values = {**old.to_dict(), **model_section, "species": list(old.species) + new}
    if new:
        n = len(old.species)
        values["per_species_shifts"] = list(old.per_species_shifts or (0.0,) * n) + _fit_shifts(
            old, new, data_species, graphs)
        if old.per_species_scales:
            values["per_species_scales"] = list(old.per_species_scales) + [float(np.mean(old.per_species_scales))] * len(new)
        if isinstance(old.avg_num_neighbors, tuple):
            values["avg_num_neighbors"] = list(old.avg_num_neighbors) + [float(np.mean(old.avg_num_neighbors))] * len(new)
        if old.per_edge_type_cutoff:
            values["per_edge_type_cutoff"] = [list(row) + [old.r_max] * len(new) for row in old.per_edge_type_cutoff] \
                + [[old.r_max] * (n + len(new)) for _ in new]
    model = build_model(ModelConfig.from_dict(values))
    _copy_weights(source, model)
    return model


def _fit_shifts(old: ModelConfig, new: list[str], data_species: Sequence[str],
                graphs: Sequence[AtomicGraph]) -> list[float]:
    """Least-squares energy per atom of each new species, the known species at their shifts."""
    shifts = dict(zip(old.species, old.per_species_shifts or (0.0,) * len(old.species)))
    counts, residual = [], []
    for g in graphs:
        if g.energy is None:
            continue
        symbols = [data_species[int(i)] for i in g.species]
        counts.append([symbols.count(s) for s in new])
        residual.append(float(g.energy.sum()) - sum(shifts.get(s, 0.0) for s in symbols))
    counts = np.array(counts, dtype=float)
    if counts.size == 0 or np.linalg.matrix_rank(counts) < len(new):
        raise ConfigError(f"training.init_from: the training energies cannot fix the shifts of the new species {new} "
                          "(each needs frames in which its count varies independently)")
    return [float(v) for v in np.linalg.lstsq(counts, np.array(residual), rcond=None)[0]]


@torch.no_grad()
def _copy_weights(source: Potential, target: Potential) -> None:
    """Same-shaped tensors are copied; modules whose species input grew get the known species'
    weights, rescaled for e3nn's fan-in normalisation (which counts the species)."""
    old_modules, new_modules = dict(source.named_modules()), dict(target.named_modules())
    handled = set()
    for name, module in new_modules.items():
        old = old_modules.get(name)
        if isinstance(module, (o3.Linear, o3.FullyConnectedTensorProduct)) and \
                old.weight.shape != module.weight.shape:
            species_in = "irreps_in" if isinstance(module, o3.Linear) else "irreps_in2"
            known = getattr(old, species_in).dim
            pairs = zip(old.weight_views(yield_instruction=True), module.weight_views(yield_instruction=True))
            for (_, ins_old, w_old), (_, ins_new, w_new) in pairs:
                scale = ins_old.path_weight / ins_new.path_weight
                if isinstance(module, o3.Linear):
                    w_new[:known] = w_old * scale
                else:
                    w_new[:, :known] = w_old * scale
            handled.add(f"{name}.weight" if name else "weight")
    state = target.state_dict()
    for key, value in source.state_dict().items():
        if key in handled or key not in state:
            continue
        if state[key].shape == value.shape:
            state[key].copy_(value)
        elif key.endswith(("scales", "shifts")):
            state[key][: value.shape[0]].copy_(value)
        else:
            raise ConfigError(f"training.init_from: cannot carry {key} {tuple(value.shape)} into {tuple(state[key].shape)}")


def remap_species(graphs: Sequence[AtomicGraph], data_species: Sequence[str], model_species: Sequence[str]) -> None:
    """Re-index the graphs' species from the data's order to the model's (in place)."""
    lookup = torch.tensor([list(model_species).index(s) for s in data_species], dtype=torch.long)
    for g in graphs:
        g.species = lookup[g.species]


def freeze(model: Potential, patterns: Sequence[str]) -> list[str]:
    """Turn off the gradient of every parameter whose name (with or without the leading
    ``energy_model.``) matches one of the glob ``patterns``; returns the frozen names. A pattern
    that matches nothing is an error: a typo must not silently train everything."""
    names = {name: (name, name.removeprefix("energy_model.")) for name, _ in model.named_parameters()}
    frozen = set()
    for pattern in patterns:
        hits = {name for name, forms in names.items() if any(fnmatch.fnmatchcase(f, pattern) for f in forms)}
        if not hits:
            shapes = sorted({re.sub(r"\.\d+(?=\.|$)", ".N", forms[1]) for forms in names.values()})
            raise ConfigError(f"training.freeze: {pattern!r} matches no parameter of the model; its parameters are "
                              f"{', '.join(shapes)} (N: layer or index)")
        frozen |= hits
    if len(frozen) == len(names):
        raise ConfigError(f"training.freeze: {', '.join(map(repr, patterns))} freeze every parameter: nothing to train")
    for name, parameter in model.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    return sorted(frozen)

"""Model hyperparameters: one typed, validated record built from the YAML ``model:`` section."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ase.data import atomic_numbers

from ..ops import BACKENDS

DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class ModelConfig:
    """NequIP hyperparameters. Defaults follow upstream NequIP's recommendations.

    species: element symbols in model order (required).
    r_max: radial cutoff in Angstrom.
    num_layers: number of interaction blocks.
    l_max: highest rotation order of features and spherical harmonics.
    parity: use O(3) irreps (both parities); off gives SO(3) only (chirality is not mirrored).
    num_features: channels per irrep in the hidden features.
    num_bessels, bessel_trainable: radial Bessel basis size, and whether its frequencies train.
    polynomial_p: exponent of the polynomial cutoff envelope.
    radial_mlp_depth, radial_mlp_width: hidden layers of the MLP that maps the basis to TP weights.
    readout_features: scalars in the hidden readout layer.
    avg_num_neighbors: the convolution sum is divided by its square root (compute it from data).
    per_species_shifts, per_species_scales: atomic energy = scale * network output + shift; a
        number (all species) or one value per species (list in model order, or {symbol: value}).
    dtype: "float32" or "float64".
    conv_backend: which kernel runs the convolution: "auto" (fused for the device), "reference" (e3nn),
        "cpu", "triton" or "cuda".
    """

    species: tuple[str, ...]
    r_max: float = 5.0
    num_layers: int = 4
    l_max: int = 1
    parity: bool = True
    num_features: int = 32
    num_bessels: int = 8
    bessel_trainable: bool = True
    polynomial_p: int = 6
    radial_mlp_depth: int = 2
    radial_mlp_width: int = 64
    readout_features: int = 16
    avg_num_neighbors: float = 1.0
    per_species_shifts: tuple[float, ...] = field(default=())
    per_species_scales: tuple[float, ...] = field(default=())
    dtype: str = "float32"
    conv_backend: str = "auto"

    @staticmethod
    def from_dict(config: Mapping[str, Any]) -> "ModelConfig":
        """Validate a plain dict (unknown keys, types and values are errors naming the key)."""
        if not isinstance(config, Mapping):
            raise TypeError(f"model config must be a mapping, got {type(config).__name__}")
        known = {f.name: f for f in dataclasses.fields(ModelConfig)}
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise ValueError(f"unknown model config key(s): {', '.join(unknown)}; known keys: {', '.join(known)}")
        if "species" not in config:
            raise ValueError("model config needs 'species': the element symbols the model knows, e.g. [H, C, O]")
        species = _species(config["species"])
        values: dict[str, Any] = {"species": species}
        for name, f in known.items():
            if name == "species" or name not in config:
                continue
            value = config[name]
            if name in ("per_species_shifts", "per_species_scales"):
                values[name] = _per_species(name, value, species)
            else:
                values[name] = _typed(name, value, f.type)
        cfg = ModelConfig(**values)
        cfg._check()
        return cfg

    def _check(self) -> None:
        positive = ("r_max", "num_layers", "num_features", "num_bessels", "radial_mlp_width", "readout_features",
                    "avg_num_neighbors", "polynomial_p")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"model config '{name}' must be positive, got {getattr(self, name)}")
        if self.l_max < 0:
            raise ValueError(f"model config 'l_max' must be >= 0, got {self.l_max}")
        if self.radial_mlp_depth < 0:
            raise ValueError(f"model config 'radial_mlp_depth' must be >= 0, got {self.radial_mlp_depth}")
        if self.dtype not in DTYPES:
            raise ValueError(f"model config 'dtype' must be one of {DTYPES}, got {self.dtype!r}")
        if self.conv_backend not in BACKENDS:
            raise ValueError(f"model config 'conv_backend' must be one of {BACKENDS}, got {self.conv_backend!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-safe dict that ``from_dict`` reads back to an equal config."""
        out = dataclasses.asdict(self)
        for key in ("species", "per_species_shifts", "per_species_scales"):
            out[key] = list(out[key])
        return out


def _species(value) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"model config 'species' must be a non-empty list of element symbols, got {value!r}")
    for s in value:
        if s not in atomic_numbers or s == "X":
            raise ValueError(f"model config 'species': {s!r} is not a chemical element symbol")
    if len(set(value)) != len(value):
        raise ValueError(f"model config 'species' lists an element twice: {list(value)}")
    return tuple(value)


def _typed(name: str, value, annotation: str):
    kind = {"float": float, "int": int, "bool": bool, "str": str}[annotation]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"model config '{name}' must be {annotation}, got {type(value).__name__} {value!r}")
    return value


def _per_species(name: str, value, species: tuple[str, ...]) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return tuple(float(value) for _ in species)
    if isinstance(value, (list, tuple)) and not value:
        return ()  # unset: shift 0, scale 1
    if isinstance(value, Mapping):
        missing = [s for s in species if s not in value]
        extra = [s for s in value if s not in species]
        if missing or extra:
            raise ValueError(f"model config '{name}': missing species {missing}, unknown species {extra}")
        value = [value[s] for s in species]
    if not isinstance(value, (list, tuple)) or len(value) != len(species):
        raise ValueError(f"model config '{name}' needs one number per species ({len(species)}), got {value!r}")
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"model config '{name}' must hold numbers, got {value!r}") from None

"""Model hyperparameters: one typed, validated record built from the YAML ``model:`` section."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from ase.data import atomic_numbers

DTYPES = ("float32", "float64")
PARITIES = (True, False, "natural")
NONLINEARITIES = ("silu", "tanh", "mish", "gelu")  # of the readout MLP (upstream's names)
ZBL_UNITS = ("metal", "real")
# Keys that older checkpoints hold but that are no model hyperparameters: ignored when read back.
# (The kernel choice is an execution setting: build_model/load_model/NequIPCalculator/deploy take it.)
LEGACY_KEYS = ("conv_backend",)


@dataclass(frozen=True)
class ModelConfig:
    """NequIP hyperparameters. Defaults follow upstream NequIP's recommendations; every option of
    upstream's ``NequIPGNNModel`` that changes the function has a key here (``interop.upstream``
    maps them).

    species: element symbols in model order (required).
    r_max: radial cutoff in Angstrom.
    per_edge_type_cutoff: smaller cutoffs for some (centre, neighbour) species pairs, as upstream:
        ``{A: r}`` (all neighbours of A) or ``{A: {B: r}}``; missing pairs use r_max.
    num_layers: number of interaction blocks.
    l_max: highest rotation order of features and spherical harmonics.
    parity: true: O(3) irreps of both parities; "natural": only 0e, 1o, 2e, ... (upstream's
        ``parity: false``; mirror images get equal energies); false: SO(3) irreps 0e, 1e, 2e, ...
        (chirality-sensitive).
    num_features: channels per irrep of the hidden features: one number, or one per l (l = 0..l_max).
    type_embed_num_features: scalars of the species embedding (default: the l = 0 channels).
    num_bessels, bessel_trainable: radial Bessel basis size, and whether its frequencies train.
    polynomial_p: exponent of the polynomial cutoff envelope.
    radial_mlp_depth, radial_mlp_width: hidden layers of the MLP that maps the basis to TP weights.
    readout_mlp_depth, readout_features, readout_nonlinearity: hidden layers of the per-atom
        readout, their width, and the nonlinearity between them (null: none, then the readout is linear).
    avg_num_neighbors: the convolution sum is divided by its square root (compute it from data); a
        number, or one per species (that of the neighbour whose message is summed, as upstream).
    per_species_shifts, per_species_scales: atomic energy = scale * network output + shift; a
        number (all species) or one value per species (list in model order, or {symbol: value}).
    per_species_shifts_trainable, per_species_scales_trainable: whether they train.
    zbl, zbl_units, zbl_polynomial_p: add the ZBL screened nuclear repulsion (LAMMPS ``pair zbl``
        constants, energies in ``metal`` (eV) or ``real`` (kcal/mol) units) with its own polynomial cutoff.
    dtype: "float32" or "float64".
    """

    species: tuple[str, ...]
    r_max: float = 5.0
    per_edge_type_cutoff: tuple[tuple[float, ...], ...] = field(default=())  # full matrix, or () for none
    num_layers: int = 4
    l_max: int = 1
    parity: Union[bool, str] = True
    num_features: Union[int, tuple[int, ...]] = 32
    type_embed_num_features: Optional[int] = None
    num_bessels: int = 8
    bessel_trainable: bool = True
    polynomial_p: int = 6
    radial_mlp_depth: int = 2
    radial_mlp_width: int = 64
    readout_mlp_depth: int = 1
    readout_features: int = 16
    readout_nonlinearity: Optional[str] = None
    avg_num_neighbors: Union[float, tuple[float, ...]] = 1.0
    per_species_shifts: tuple[float, ...] = field(default=())
    per_species_scales: tuple[float, ...] = field(default=())
    per_species_shifts_trainable: bool = False
    per_species_scales_trainable: bool = False
    zbl: bool = False
    zbl_units: str = "metal"
    zbl_polynomial_p: float = 6.0
    dtype: str = "float32"

    @staticmethod
    def from_dict(config: Mapping[str, Any]) -> "ModelConfig":
        """Validate a plain dict (unknown keys, types and values are errors naming the key)."""
        if not isinstance(config, Mapping):
            raise TypeError(f"model config must be a mapping, got {type(config).__name__}")
        config = {k: v for k, v in config.items() if k not in LEGACY_KEYS}
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
            elif name in _SPECIAL:
                values[name] = _SPECIAL[name](name, value, species)
            else:
                values[name] = _typed(name, value, f.type)
        if values.get("per_edge_type_cutoff"):
            values["per_edge_type_cutoff"] = _cutoff_matrix(values["per_edge_type_cutoff"], species,
                                                            values.get("r_max", 5.0))
        cfg = ModelConfig(**values)
        cfg._check()
        return cfg

    def _check(self) -> None:
        positive = ("r_max", "num_layers", "num_features", "type_embed_num_features", "num_bessels",
                    "radial_mlp_width", "readout_features", "avg_num_neighbors", "polynomial_p", "zbl_polynomial_p")
        for name in positive:
            value = getattr(self, name)
            if value is not None and not all(v > 0 for v in (value if isinstance(value, tuple) else (value,))):
                raise ValueError(f"model config '{name}' must be positive, got {value}")
        if self.l_max < 0:
            raise ValueError(f"model config 'l_max' must be >= 0, got {self.l_max}")
        if isinstance(self.num_features, tuple) and len(self.num_features) != self.l_max + 1:
            raise ValueError(f"model config 'num_features' needs one number per l = 0..l_max ({self.l_max + 1}), "
                             f"got {list(self.num_features)}")
        for name in ("radial_mlp_depth", "readout_mlp_depth"):
            if getattr(self, name) < 0:
                raise ValueError(f"model config '{name}' must be >= 0, got {getattr(self, name)}")
        if self.parity not in PARITIES or not isinstance(self.parity, (bool, str)):
            raise ValueError(f"model config 'parity' must be true, false or \"natural\", got {self.parity!r}")
        if self.readout_nonlinearity is not None and self.readout_nonlinearity not in NONLINEARITIES:
            raise ValueError(f"model config 'readout_nonlinearity' must be null or one of {NONLINEARITIES}, "
                             f"got {self.readout_nonlinearity!r}")
        if self.zbl_units not in ZBL_UNITS:
            raise ValueError(f"model config 'zbl_units' must be one of {ZBL_UNITS}, got {self.zbl_units!r}")
        if any(c > self.r_max for row in self.per_edge_type_cutoff for c in row):
            raise ValueError(f"model config 'per_edge_type_cutoff' values must be <= r_max ({self.r_max})")
        if self.dtype not in DTYPES:
            raise ValueError(f"model config 'dtype' must be one of {DTYPES}, got {self.dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-safe dict that ``from_dict`` reads back to an equal config."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        if self.per_edge_type_cutoff:
            out["per_edge_type_cutoff"] = {a: dict(zip(self.species, row))
                                           for a, row in zip(self.species, self.per_edge_type_cutoff)}
        return out

    @property
    def features_per_l(self) -> tuple[int, ...]:
        """Channels of the hidden features for l = 0..l_max."""
        if isinstance(self.num_features, int):
            return (self.num_features,) * (self.l_max + 1)
        return self.num_features

    @property
    def embed_features(self) -> int:
        return self.type_embed_num_features or self.features_per_l[0]


def _parity(name: str, value, species) -> Union[bool, str]:
    if isinstance(value, bool) or value == "natural":
        return value
    raise ValueError(f"model config 'parity' must be true, false or \"natural\", got {value!r}")


def _int_or_list(name: str, value, species) -> Union[int, tuple[int, ...]]:
    if isinstance(value, (list, tuple)):
        return tuple(_typed(name, v, "int") for v in value)
    return _typed(name, value, "int")


def _optional(annotation: str):
    return lambda name, value, species: None if value is None else _typed(name, value, annotation)


def _number_or_per_species(name: str, value, species) -> Union[float, tuple[float, ...]]:
    if isinstance(value, (Mapping, list, tuple)):
        per = _per_species(name, value, species)
        if not per:
            raise ValueError(f"model config '{name}' needs one number per species ({len(species)}), got {value!r}")
        return per
    return _typed(name, value, "float")


def _cutoffs(name: str, value, species):
    """Upstream's partial dict or a full matrix in model order: checked by ``_cutoff_matrix``."""
    if value is None or (isinstance(value, (Mapping, list, tuple)) and not value):
        return ()
    if not isinstance(value, (Mapping, list, tuple)):
        raise TypeError(f"model config '{name}' must be a mapping {{A: r}} / {{A: {{B: r}}}}, got {value!r}")
    return value


_SPECIAL = {"parity": _parity, "num_features": _int_or_list, "type_embed_num_features": _optional("int"),
            "readout_nonlinearity": _optional("str"), "avg_num_neighbors": _number_or_per_species,
            "per_edge_type_cutoff": _cutoffs}


def _cutoff_matrix(value, species: tuple[str, ...], r_max: float) -> tuple[tuple[float, ...], ...]:
    """Upstream's rule: ``{A: r}`` sets every pair centred on A, ``{A: {B: r}}`` one pair; the rest is r_max."""
    name = "per_edge_type_cutoff"
    if not isinstance(value, Mapping):
        rows = [list(row) for row in value] if all(isinstance(r, (list, tuple)) for r in value) else None
        if rows is None or len(rows) != len(species) or any(len(r) != len(species) for r in rows):
            raise ValueError(f"model config '{name}' as a matrix needs {len(species)}x{len(species)} numbers")
        return tuple(tuple(_typed(name, v, "float") for v in row) for row in rows)
    unknown = [k for k in value if k not in species]
    unknown += [b for v in value.values() if isinstance(v, Mapping) for b in v if b not in species]
    if unknown:
        raise ValueError(f"model config '{name}': unknown species {unknown}")
    matrix = []
    for a in species:
        entry = value.get(a, r_max)
        row = [entry.get(b, r_max) if isinstance(entry, Mapping) else entry for b in species]
        matrix.append(tuple(_typed(name, v, "float") for v in row))
    return tuple(matrix)


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

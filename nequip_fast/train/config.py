"""The training YAML: typed sections, validated completely before any data is read.

A run is described by four sections. Every key has a documented default except
``data.train``; unknown keys, wrong types and impossible values are a ``ConfigError`` whose
message starts with the dotted key (``training.lr: expected a number, got 'abc'``), so a
typo never passes silently.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Union

import yaml

from ..model.config import ModelConfig

AUTO = "auto"
# model keys that may be "auto": computed from the training split
AUTO_MODEL_KEYS = ("avg_num_neighbors", "per_species_shifts", "per_species_scales")
METRICS = ("loss", "energy_mae", "energy_rmse", "forces_mae", "forces_rmse", "stress_mae", "stress_rmse")

SplitSize = Union[int, float, str]  # count, fraction of the file, or "rest"


class ConfigError(ValueError):
    """A config value that cannot work; the message starts with the dotted key."""


@dataclass(frozen=True)
class DataConfig:
    """Where the structures come from and how they are split.

    train: extended XYZ (or anything ase.io reads) with energies and forces; required.
    val, test: optional separate files; without them the splits are drawn from ``train``.
    index: ase.io index of the frames of ``train`` to use (":" all, "::2" every second, ...).
    n_train, n_val, n_test: split sizes drawn at random from ``train``: a count (int), a
        fraction of the frames (float <= 1) or "rest" (what the others leave). Defaults:
        n_val 0.1 (0 when ``val`` is given), n_test 0 (0 when ``test`` is given), n_train "rest".
    seed: seed of the random split (independent of the training seed).
    """

    train: str
    val: Optional[str] = None
    test: Optional[str] = None
    index: str = ":"
    n_train: SplitSize = "rest"
    n_val: Optional[SplitSize] = None
    n_test: SplitSize = 0
    seed: int = 0


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation, schedule and stopping.

    epochs: passes over the training split.
    batch_size: structures per step on each process (torchrun: the step sees batch_size x ranks).
    lr, optimizer, weight_decay: Adam or AdamW (decoupled weight decay) settings.
    energy_weight, forces_weight, stress_weight: loss = sum of weight x MSE of energy per atom
        (eV/atom), force components (eV/A) and stress components (eV/A^3, only for data with stress).
    lr_schedule: "plateau" multiplies the lr by ``plateau_factor`` after ``plateau_patience``
        epochs without improvement of ``metric`` (down to ``min_lr``); "constant" keeps it.
    warmup_steps: the lr rises linearly from lr/warmup_steps to lr over this many steps.
    ema_decay: exponential moving average of the weights used for validation and saved
        models; 0 turns it off.
    metric: validation metric for the schedule, the best checkpoint and early stopping.
    early_stopping_patience: stop after this many epochs without improvement (null: never).
    max_wall_time: seconds; the run stops after the epoch that would otherwise overrun (null: none).
    seed: seeds the model initialisation and the batch order.
    device: "auto" (CUDA if available), "cpu", "cuda" or "cuda:N".
    num_threads: CPU threads for torch (null: torch's default).
    """

    epochs: int = 100
    batch_size: int = 5
    lr: float = 0.005
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = 0.0
    energy_weight: float = 1.0
    forces_weight: float = 1.0
    stress_weight: float = 1.0
    lr_schedule: Literal["plateau", "constant"] = "plateau"
    plateau_patience: int = 10
    plateau_factor: float = 0.5
    min_lr: float = 1e-6
    warmup_steps: int = 0
    ema_decay: float = 0.99
    metric: Literal[METRICS] = "loss"  # type: ignore[valid-type]
    early_stopping_patience: Optional[int] = None
    max_wall_time: Optional[float] = None
    seed: int = 0
    device: str = "auto"
    num_threads: Optional[int] = None


@dataclass(frozen=True)
class OutputConfig:
    """directory: checkpoints, logs and plots go here (created; must be writable)."""

    directory: str = "runs/nequip"


@dataclass(frozen=True)
class TrainConfig:
    """A whole run. ``model`` keeps the ``build_model`` keys, "auto" values still unresolved."""

    data: DataConfig
    model: dict[str, Any] = field(default_factory=dict)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {"data": DataConfig, "model": None, "training": TrainingConfig, "output": OutputConfig}


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML file; relative data paths are relative to the YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    config = parse_config(raw if raw is not None else {})
    return dataclasses.replace(config, data=_rebase_paths(config.data, path.parent))


def parse_config(raw: Any) -> TrainConfig:
    """A ``TrainConfig`` from plain data (the parsed YAML)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config: expected a mapping with sections {', '.join(SECTIONS)}, got {_show(raw)}")
    _reject_unknown(raw, SECTIONS, "")
    if "data" not in raw:
        raise ConfigError("data: missing section; at least `data: {train: FILE}` is required")
    sections = {name: _parse_section(cls, raw.get(name) or {}, name) for name, cls in SECTIONS.items() if cls}
    config = TrainConfig(model=_parse_model(raw.get("model") or {}), **sections)
    _check(config)
    return config


def _parse_section(cls, raw: Any, name: str):
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: expected a mapping of keys, got {_show(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _reject_unknown(raw, fields, f"{name}.")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, f in fields.items():
        if key in raw:
            values[key] = _coerce(raw[key], hints[key], f"{name}.{key}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{name}.{key}: required value is missing")
    return cls(**values)


def _parse_model(raw: Any) -> dict[str, Any]:
    """Check the model keys now (with placeholders for "auto" and species) so typos fail early."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"model: expected a mapping of keys, got {_show(raw)}")
    _reject_unknown(raw, {f.name for f in dataclasses.fields(ModelConfig)}, "model.")
    trial = {k: v for k, v in raw.items() if not (k in AUTO_MODEL_KEYS and v == AUTO)}
    trial.setdefault("species", ["H"])
    for key in ("per_species_shifts", "per_species_scales"):
        if isinstance(trial.get(key), Mapping):
            trial.pop(key)  # symbol-keyed values are checked against the species once they are known
    try:
        ModelConfig.from_dict(trial)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model: {exc}") from None
    return dict(raw)


def _check(config: TrainConfig) -> None:
    t, d = config.training, config.data
    positive = ("epochs", "batch_size", "lr", "plateau_patience", "early_stopping_patience", "max_wall_time",
                "num_threads")
    for key in positive:
        value = getattr(t, key)
        if value is not None and not value > 0:
            raise ConfigError(f"training.{key}: must be positive, got {value}")
    for key in ("weight_decay", "energy_weight", "forces_weight", "stress_weight", "min_lr", "warmup_steps"):
        if getattr(t, key) < 0:
            raise ConfigError(f"training.{key}: must be >= 0, got {getattr(t, key)}")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"training.ema_decay: must be in [0, 1), got {t.ema_decay}")
    if not 0 < t.plateau_factor < 1:
        raise ConfigError(f"training.plateau_factor: must be in (0, 1), got {t.plateau_factor}")
    if t.energy_weight == t.forces_weight == t.stress_weight == 0:
        raise ConfigError("training.energy_weight: all loss weights are 0, nothing to train")
    if not (t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:")):
        raise ConfigError(f"training.device: expected auto, cpu, cuda or cuda:N, got {t.device!r}")
    for key in ("n_train", "n_val", "n_test"):
        value = getattr(d, key)
        if isinstance(value, str) and value != "rest":
            raise ConfigError(f"data.{key}: expected a count, a fraction or 'rest', got {value!r}")
        if isinstance(value, float) and not 0 <= value <= 1:
            raise ConfigError(f"data.{key}: a fraction must be in [0, 1], got {value}")
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"data.{key}: must be >= 0, got {value}")
    if [d.n_train, d.n_val, d.n_test].count("rest") > 1:
        raise ConfigError("data.n_train: only one of n_train, n_val, n_test can be 'rest'")
    if d.val is not None and d.n_val not in (None, 0):
        raise ConfigError("data.n_val: set either a separate data.val file or n_val, not both")
    if d.test is not None and d.n_test != 0:
        raise ConfigError("data.n_test: set either a separate data.test file or n_test, not both")


def _rebase_paths(data: DataConfig, base: Path) -> DataConfig:
    def rebase(p: Optional[str]) -> Optional[str]:
        return p if p is None or Path(p).is_absolute() else str(base / p)

    return dataclasses.replace(data, train=rebase(data.train), val=rebase(data.val), test=rebase(data.test))


def _reject_unknown(raw: Mapping, known, prefix: str) -> None:
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"{prefix}{key}: unknown key{hint}")


def _coerce(value: Any, annotation, key: str):
    """``value`` checked against a type annotation (int, float, bool, str, Optional, Union, Literal)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, choices))}, got {_show(value)}")
        return value
    if origin is Union:
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc).split(": expected ", 1)[1].split(", got")[0])
        raise ConfigError(f"{key}: expected {' or '.join(errors)}, got {_show(value)}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {_show(value)}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {_show(value)}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {_show(value)}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {_show(value)}")
    raise TypeError(f"{key}: unsupported annotation {annotation}")  # a bug in the schema, not the YAML


def _show(value: Any) -> str:
    return "nothing" if value is None else repr(value)

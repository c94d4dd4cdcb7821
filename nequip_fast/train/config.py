"""The training YAML: typed sections, validated completely before any data is read.

A run is described by four sections. Every key has a documented default except
``data.train``; unknown keys, wrong types and impossible values are a ``ConfigError`` whose
message starts with the dotted key (``training.lr: expected a number, got 'abc'``), so a
typo never passes silently.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Union

import yaml

from ..data.dataset import is_ase_index
from ..model.config import ModelConfig
from ..ops import BACKENDS

AUTO = "auto"
# model keys that may be "auto": computed from the training split
AUTO_MODEL_KEYS = ("avg_num_neighbors", "per_species_shifts", "per_species_scales")
METRICS = ("loss", "energy_mae", "energy_rmse", "forces_mae", "forces_rmse", "stress_mae", "stress_rmse")

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
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
    plateau_patience, plateau_factor, min_lr: the "plateau" schedule's settings (above).
    warmup_steps: the lr rises linearly from lr/warmup_steps to lr over this many steps.
    ema_decay: exponential moving average of the weights used for validation and saved
        models; 0 turns it off.
    metric: validation metric for the schedule, the best checkpoint and early stopping.
    early_stopping_patience: stop after this many epochs without improvement (null: never).
    max_wall_time: seconds; the run stops after the epoch that would otherwise overrun (null: none).
    seed: seeds the model initialisation and the batch order.
    device: "auto" (CUDA if available), "cpu", "cuda" or "cuda:N".
    num_threads: CPU threads for torch (null: torch's default).
    init_from: a model file (nequip_fast model or checkpoint, e.g. from ``nequip-fast import``) to
        start from: its architecture and weights; new species in the data are added (``train/finetune.py``).
    freeze: with ``init_from``, parameter-name patterns (globs such as ``layers.0.*``, ``*radial_mlp*``;
        names as in ``model.named_parameters()``, with or without the leading ``energy_model.``)
        whose weights stay as loaded: they get no gradient and are not in the optimizer.
    conv_backend: kernels of the convolution ("auto": fused for the device; "reference", "cpu",
        "triton", "cuda"): how this run executes, not saved with the model.
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
    init_from: Optional[str] = None
    freeze: tuple[str, ...] = ()
    conv_backend: str = "auto"


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
        """Plain data (lists, not tuples): for YAML and ``weights_only`` checkpoints."""
        return _plain(dataclasses.asdict(self))


SECTIONS = {"data": DataConfig, "model": None, "training": TrainingConfig, "output": OutputConfig}


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML file; relative data paths are relative to the YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.load(path.read_text(), Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    config = parse_config(raw if raw is not None else {})
    config = dataclasses.replace(config, data=_rebase_paths(config.data, path.parent))
    if config.training.init_from and not Path(config.training.init_from).is_absolute():  # relative to the YAML, as data
        config = dataclasses.replace(config, training=dataclasses.replace(
            config.training, init_from=str(path.parent / config.training.init_from)))
    return config


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML in which a key given twice is an error (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


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
    if "conv_backend" in raw:
        raise ConfigError("model.conv_backend: the kernel choice is no model hyperparameter any more; "
                          "set training.conv_backend instead")
    _reject_unknown(raw, {f.name for f in dataclasses.fields(ModelConfig)}, "model.")
    for key, value in raw.items():
        numbers = value.values() if isinstance(value, Mapping) else value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise ConfigError(f"model.{key}: expected finite numbers, got {value}")
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
    if t.freeze and not t.init_from:
        raise ConfigError("training.freeze: needs training.init_from (it keeps chosen weights of the model a run "
                          "starts from)")
    if t.conv_backend not in BACKENDS:
        raise ConfigError(f"training.conv_backend: expected one of {', '.join(BACKENDS)}, got {t.conv_backend!r}")
    if not (t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:")):
        raise ConfigError(f"training.device: expected auto, cpu, cuda or cuda:N, got {t.device!r}")
    if not is_ase_index(d.index):
        raise ConfigError(f"data.index: expected an ase.io index such as ':' (all), '::2', '10:20' or '-1', "
                          f"got {d.index!r}")
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
    """``value`` checked against a type annotation (int, float, bool, str, tuple[str, ...], Optional,
    Union, Literal)."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{key}: expected a list of strings, got {_show(value)}")
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
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # PyYAML reads 1e-3 (no dot) as text
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # YAML's .inf and .nan
                raise ConfigError(f"{key}: expected a finite number, got {value}")
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


# Settings a resumed run may change freely: how long it goes, where and how fast it runs.
RESUME_FREE = frozenset({"training.epochs", "training.max_wall_time", "training.early_stopping_patience",
                         "training.device", "training.num_threads", "training.conv_backend",
                         "model.conv_backend"})  # model.conv_backend: in runs of older versions
# Settings ``--resume --accept-changes`` takes (the new values are used): the optimiser's schedule,
# the batches, and data paths (the user vouches that the files are the same).
RESUME_ACCEPTABLE = frozenset({f"training.{key}" for key in (
    "lr", "lr_schedule", "plateau_patience", "plateau_factor", "min_lr", "warmup_steps", "weight_decay", "ema_decay",
    "batch_size", "seed")} | {"data.train", "data.val", "data.test"})


def changed_settings(saved: Optional[Mapping[str, Any]], config: TrainConfig,
                     resolved_model: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, the run's value, the new value)`` of each setting that differs from the run's.

    ``saved`` is the run's ``TrainConfig.to_dict()`` (None for a checkpoint that predates it: then
    only the model is compared, with its resolved config). A model value equal to the run's
    resolved one (say the number an "auto" became, copied from the run's config.yaml) is unchanged.
    """
    new, resolved = _plain(config.to_dict()), _plain(dict(resolved_model))
    changes = []
    for section in ("data", "training") if saved is not None else ():
        for key, value in new[section].items():
            old = _plain(saved.get(section, {})).get(key, value)
            if old != value:
                changes.append((f"{section}.{key}", old, value))
    defaults = {f.name: _plain(f.default) for f in dataclasses.fields(ModelConfig)}
    for key in defaults:
        value = new["model"].get(key, defaults[key])
        if saved is None:
            if value in (None, AUTO):
                continue  # derived from the data, as it was in the run
            old = resolved.get(key)
        else:
            old = _plain(saved.get("model", {})).get(key, defaults[key])
        if value != old and value != resolved.get(key):
            changes.append((f"model.{key}", resolved.get(key) if old in (None, AUTO) else old, value))
    return changes


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively, so that a YAML list equals the tuple it was stored as."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return None if value is dataclasses.MISSING else value

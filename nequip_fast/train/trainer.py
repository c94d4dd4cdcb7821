"""The training loop: steps, validation with averaged weights, checkpoints, stopping, final test."""
from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import yaml
from tqdm import tqdm

from ..data import AtomicGraph
from ..data.statistics import avg_num_neighbors, force_rms, per_species_energy_shifts
from ..model import ModelConfig, Potential, build_model
from ..model.io import ModelFileError, model_from_state, model_state, read_state
from ..ops import set_backend
from . import checkpoint, plots
from .checkpoint import BEST, LAST
from . import finetune
from .config import AUTO, RESUME_ACCEPTABLE, RESUME_FREE, ConfigError, TrainConfig, TrainingConfig, changed_settings
from .data import Batches, Split, labels_present, load_splits
from .distributed import (Dist, all_reduce_sum, barrier, broadcast_parameters, close_group, init_from_env,
                          sum_gradients)
from .ema import EMA
from .evaluate import evaluate, format_table, predict
from .metrics import LossWeights, Metrics, counts, errors, step_loss
from .rundir import RunDirectory
from .runlog import RunLog, summary_line
from .schedule import LRSchedule


class Trainer:
    """Optimizer, schedule and weight average of one model on fixed training/validation graphs.

    ``epoch`` counts finished epochs; ``state_dict``/``load_state_dict`` capture everything
    that a resumed run needs to continue bit for bit.
    """

    def __init__(self, model: Potential, cfg: TrainingConfig, train: Sequence[AtomicGraph],
                 val: Sequence[AtomicGraph], ddp: Dist = Dist(), device: torch.device = torch.device("cpu")):
        self.model, self.cfg, self.ddp, self.device = model, cfg, ddp, device
        self.weights = LossWeights(cfg.energy_weight, cfg.forces_weight, cfg.stress_weight)
        broadcast_parameters(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        self.optimizer = optimizer(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.schedule = LRSchedule(self.optimizer, cfg)
        self.ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.train_batches = Batches(train, cfg.batch_size, True, cfg.seed, ddp.rank, ddp.world_size)
        self.val_batches = Batches(val, cfg.batch_size, False, rank=ddp.rank, world_size=ddp.world_size)
        self.epoch = 0
        self.best, self.best_epoch = math.inf, 0
        self.best_weights: Optional[dict[str, torch.Tensor]] = None  # averaged weights of best_epoch
        self.history: list[dict[str, float]] = []

    def averaged(self):
        """Context in which the model holds the averaged (EMA) weights."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    def step(self, graph: Optional[AtomicGraph]) -> dict[str, torch.Tensor]:
        """One optimizer step on this process's batch (None: nothing this step, still in sync)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        err = errors(predict(self.model, graph, create_graph=True), graph) if graph is not None else {}
        total = all_reduce_sum(counts(err))
        if err:
            step_loss(err, self.weights, total).backward()
        sum_gradients(self.params)
        self.optimizer.step()
        self.schedule.step()
        if self.ema is not None:
            self.ema.update()
        return err

    def train_epoch(self) -> dict[str, float]:
        """Training metrics of one epoch (errors before each step), the lr and the throughput."""
        metrics = Metrics(self.model.species)
        start = time.perf_counter()
        show = self.ddp.main and sys.stderr.isatty()
        with tqdm(total=len(self.train_batches), desc=f"epoch {self.epoch + 1}", unit="batch", leave=False,
                  disable=not show) as bar:
            for graph in self.train_batches.epoch(self.epoch, self.device):
                err = self.step(graph)
                if graph is not None:
                    metrics.add(err, graph.species)
                bar.update()
        seconds = time.perf_counter() - start
        row = {"epoch": self.epoch + 1, "lr": self.schedule.lr, "time_s": seconds,
               "structures_per_s": len(self.train_batches.graphs) / seconds}
        row.update({f"train_{k}": v for k, v in metrics.all_reduce().summary(self.weights).items()})
        return row

    def validate(self) -> dict[str, float]:
        with self.averaged():
            self.model.eval()
            result = evaluate(self.model, self.val_batches.epoch(0, self.device), self.weights,
                              across_processes=True)
        return result.metrics

    def run_epoch(self) -> dict[str, float]:
        """Train and validate one epoch, update schedule and best metric; returns the log row.

        A non-finite loss raises ``DivergedError`` before anything of the epoch is kept."""
        row = self.train_epoch()
        row.update({f"val_{k}": v for k, v in self.validate().items()})
        for split, key in (("training", "train_loss"), ("validation", "val_loss")):
            if not math.isfinite(row[key]):
                raise DivergedError(f"training diverged in epoch {self.epoch + 1}: the {split} loss is {row[key]} "
                                    f"(lr {row['lr']:.3g}); lower training.lr, or check the loss weights and the data; "
                                    + (f"last.pt holds epoch {self.epoch}" if self.epoch else "nothing was saved"))
        self.epoch += 1
        metric = row[f"val_{self.cfg.metric}"]
        self.schedule.epoch_end(metric)
        if metric < self.best:
            self.best, self.best_epoch = metric, self.epoch
            self.best_weights = self.averaged_weights()
        self.history.append(row)
        return row

    def averaged_weights(self) -> dict[str, torch.Tensor]:
        """A copy of the state dict with the averaged weights (a state dict shares the parameters'
        storage, which get the training weights back when ``averaged`` ends)."""
        with self.averaged():
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def best_checkpoint(self) -> dict:
        """best.pt: the model file of the best epoch, with that epoch's log row."""
        return {**model_state(self.model), "state_dict": self.best_weights, "epoch": self.best_epoch,
                "val_metrics": self.history[self.best_epoch - 1]}

    def adopt(self, changed: Sequence[str]) -> None:
        """After ``load_state_dict``: use this config's values of the changed keys (--accept-changes)
        that the loaded state would otherwise override."""
        if "training.lr" in changed:
            self.schedule.restart_from(self.cfg.lr)
        if "training.weight_decay" in changed:
            for group in self.optimizer.param_groups:
                group["weight_decay"] = self.cfg.weight_decay

    def state_dict(self) -> dict:
        """Checkpoint: a model file (averaged weights) plus ``training`` with the resume state."""
        state = {**model_state(self.model), "state_dict": self.averaged_weights()}
        state["training"] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": checkpoint.rng_state(),
            "epoch": self.epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_weights": self.best_weights,
            "history": self.history,
        }
        return state

    def load_state_dict(self, state: dict) -> None:
        training = state["training"]
        self.model.load_state_dict(training["model"])
        self.optimizer.load_state_dict(training["optimizer"])
        self.schedule.load_state_dict(training["schedule"])
        if self.ema is not None and training["ema"] is not None:
            self.ema.load_state_dict(training["ema"])
        checkpoint.set_rng_state(training["rng"])
        self.epoch, self.best, self.best_epoch = training["epoch"], training["best"], training["best_epoch"]
        self.best_weights = training.get("best_weights")  # absent in checkpoints of older versions
        self.history = training["history"]


class DivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and what to change."""


def train(config: TrainConfig, resume: bool = False, accept_changes: bool = False) -> Path:
    """Run (or resume) training as configured; returns the output directory.

    Under torchrun every process runs this; all read the data and build the graphs (cheap next
    to training), each computes its share of every batch, only the main process writes (and
    holds the output directory's lock). ``accept_changes``: a resumed run takes the changed
    settings of ``RESUME_ACCEPTABLE`` instead of refusing them.
    """
    wall_start = time.monotonic()
    cfg = config.training
    device = _device(cfg.device)
    ddp = init_from_env(device)
    if ddp.active and device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(config.output.directory)
    with RunDirectory(out, resume) if ddp.main else contextlib.nullcontext():
        barrier()
        _run(config, resume, accept_changes, out, ddp, device, wall_start)
    barrier()
    close_group(ddp)
    return out


def _run(config: TrainConfig, resume: bool, accept_changes: bool, out: Path, ddp: Dist, device: torch.device,
         wall_start: float) -> None:
    cfg = config.training
    state = checkpoint.load(out / LAST) if resume else None

    source = finetune.load_source(cfg.init_from, config.model) if cfg.init_from and not state else None
    raw_model = state["model_config"] if state else (
        {**source.config.to_dict(), **config.model, "species": None} if source else config.model)
    dtype = getattr(torch, raw_model.get("dtype", ModelConfig.dtype))
    require = ("energy", "forces") if cfg.forces_weight > 0 or raw_model.get("per_species_scales") == AUTO else ("energy",)
    splits, species = load_splits(config.data, require, raw_model.get("species"),
                                  float(raw_model.get("r_max", ModelConfig.r_max)), dtype)
    _check_labels(splits, cfg)
    changed: list[str] = []
    if state:
        changed = _check_resume(state, config, out, accept_changes)
    torch.manual_seed(cfg.seed)
    if source is not None:  # fine-tuning: the source's weights, its species then the data's new ones
        model = finetune.extended_model(source, species, splits["train"].graphs, config.model)
        for split in splits.values():
            finetune.remap_species(split.graphs, species, model.species)
        species, model_cfg = model.species, model.config
    else:
        model_cfg = ModelConfig.from_dict(state["model_config"]) if state else resolve_model_config(
            config.model, species, splits["train"].graphs)
        model = build_model(model_cfg)
    set_backend(model, cfg.conv_backend)
    model = model.to(device)
    frozen = finetune.freeze(model, cfg.freeze) if cfg.freeze else []
    trainer = Trainer(model, cfg, splits["train"].graphs, splits["val"].graphs, ddp, device)
    if state:
        try:
            trainer.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise ModelFileError(f"{out / LAST}: its training state does not fit its model "
                                 f"({str(exc).splitlines()[0]})") from None
        trainer.adopt(changed)
    log = None
    if ddp.main:
        _write_resolved_config(out, config, model_cfg)
        sizes = ", ".join(f"{name} {len(split.frames)}" for name, split in splits.items())
        print(f"nequip-fast train: {sizes} structures; species {' '.join(species)}; "
              f"{sum(p.numel() for p in model.parameters())} parameters; device {device}"
              f"{f'; {ddp.world_size} processes' if ddp.active else ''}; output {out}")
        if frozen:
            print(f"frozen (training.freeze): {len(frozen)} parameter tensors, "
                  f"{sum(p.numel() for p in model.parameters() if not p.requires_grad)} weights")
        if state:
            print(f"resuming after epoch {trainer.epoch} from {out / LAST}")
            _repair_best(out, trainer)
        log = RunLog(out)

    while trainer.epoch < cfg.epochs:
        epoch_start = time.monotonic()
        row = trainer.run_epoch()
        if ddp.main:
            # last.pt is the commit (it holds the best weights too); best.pt follows from it, and a
            # resume rewrites best.pt when a kill came between the two writes
            checkpoint.save({**trainer.state_dict(), "run_config": config.to_dict()}, out / LAST)
            if trainer.best_epoch == trainer.epoch:
                checkpoint.save(trainer.best_checkpoint(), out / BEST)
            log.write(trainer.history)
            print(summary_line(row, cfg.epochs), flush=True)
        now = time.monotonic()
        reason = _stop_reason(trainer, cfg, now - wall_start, now - epoch_start)
        if reason:
            if ddp.main:
                print(f"stopping after epoch {trainer.epoch}: {reason}")
            break
    if ddp.main:
        log.close()
        _final_report(out, splits, cfg, trainer)


def _check_resume(state: dict, config: TrainConfig, out: Path, accept_changes: bool) -> list[str]:
    """The changed settings a resumed run takes; any other change is a ``ConfigError`` listing them all."""
    changes = [c for c in changed_settings(state.get("run_config"), config, state["model_config"])
               if c[0] not in RESUME_FREE]
    refused = [c for c in changes if not (accept_changes and c[0] in RESUME_ACCEPTABLE)]
    listed = ", ".join(f"{key} {old} -> {new}" for key, old, new in refused)
    if refused:
        acceptable = [key for key, _, _ in refused if key in RESUME_ACCEPTABLE]
        hint = (f"; --accept-changes takes the new {', '.join(acceptable)}" if acceptable and not accept_changes
                else "")
        raise ConfigError(f"--resume: the config differs from the run in {out}: {listed}; a resumed run continues "
                          f"that run's model and training, so restore these values (the run's are in "
                          f"{out / 'config.yaml'}) or start a new run in another output.directory{hint}")
    if changes:
        print("resuming with changed settings (--accept-changes): "
              + ", ".join(f"{key} {old} -> {new}" for key, old, new in changes))
    return [key for key, _, _ in changes]


def _repair_best(out: Path, trainer: Trainer) -> None:
    """Make best.pt the best epoch that last.pt records (a kill between the two writes leaves an
    older best.pt, or none)."""
    if trainer.best_weights is None:
        return
    try:
        held = torch.load(out / BEST, map_location="cpu", weights_only=True).get("epoch")
    except Exception:  # missing, truncated or foreign: rewritten below either way
        held = None
    if held != trainer.best_epoch:
        checkpoint.save(trainer.best_checkpoint(), out / BEST)
        print(f"repaired {BEST}: it held {f'epoch {held}' if held else 'no model'}, the run's best is epoch "
              f"{trainer.best_epoch} (the previous run stopped between writing {LAST} and {BEST})")


def resolve_model_config(raw: dict, species: Sequence[str], graphs: Sequence[AtomicGraph]) -> ModelConfig:
    """The model section with its "auto" values computed from the training graphs."""
    values = {**raw, "species": list(species)}
    if avg_num_neighbors(graphs) == 0:
        raise ConfigError(f"model.r_max: no atom of the training split has a neighbour within r_max = "
                          f"{values.get('r_max', ModelConfig.r_max)} A, so the model would learn isolated atoms "
                          "only; raise model.r_max")
    if values.get("avg_num_neighbors") == AUTO:
        values["avg_num_neighbors"] = avg_num_neighbors(graphs)
    if values.get("per_species_shifts") == AUTO:
        values["per_species_shifts"] = per_species_energy_shifts(graphs, len(species)).tolist()
    if values.get("per_species_scales") == AUTO:
        values["per_species_scales"] = force_rms(graphs)
    try:
        return ModelConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model: {exc}") from None


def _stop_reason(trainer: Trainer, cfg: TrainingConfig, elapsed: float, epoch_seconds: float) -> str:
    """Same answer on every process (wall time is decided by the main process)."""
    stop_for_time = cfg.max_wall_time is not None and elapsed + epoch_seconds > cfg.max_wall_time
    if trainer.ddp.active:
        flag = torch.tensor([float(stop_for_time and trainer.ddp.main)], dtype=torch.float64)
        stop_for_time = bool(all_reduce_sum(flag).item())
    if stop_for_time:
        return f"another epoch would pass training.max_wall_time ({cfg.max_wall_time:g} s)"
    patience = cfg.early_stopping_patience
    if patience is not None and trainer.epoch - trainer.best_epoch >= patience:
        return f"no improvement of validation {cfg.metric} for {patience} epochs (early stopping)"
    return ""


def _final_report(out: Path, splits: dict[str, Split], cfg: TrainingConfig, trainer: Trainer) -> None:
    """Best model on the test split (validation split if there is no test split): table, plots."""
    state = trainer.best_checkpoint() if trainer.best_weights is not None else read_state(out / BEST)
    best = model_from_state(state, cfg.conv_backend).to(trainer.device).eval()
    name = "test" if splits["test"].frames else "val"
    graphs = splits[name].graphs
    result = evaluate(best, Batches(graphs, cfg.batch_size, False).epoch(0, trainer.device),
                      trainer.weights, keep=True)
    table = format_table(result.metrics, best.species, f"{name} ({len(graphs)})")
    (out / f"{name}_metrics.txt").write_text(table + "\n")
    plots.learning_curves(trainer.history, out / "learning_curves.png")
    plots.parity([g.to("cpu") for g in graphs], result, out / f"parity_{name}.png", f"{name} set")
    print(f"best epoch {trainer.best_epoch} (validation {cfg.metric} {trainer.best:.4g})")
    print(table)
    print(f"outputs in {out}: {BEST} (model), {LAST} (resume), log.csv, tensorboard/, learning_curves.png, "
          f"parity_{name}.png, {name}_metrics.txt")


def _check_labels(splits: dict[str, Split], cfg: TrainingConfig) -> None:
    stress = {name: labels_present(split.frames, "stress") for name, split in splits.items()}
    if cfg.metric.startswith("stress") and not stress["val"]:
        raise ConfigError(f"training.metric: '{cfg.metric}' needs stress labels in the validation data")
    if cfg.metric.startswith("forces") and cfg.forces_weight == 0 and not labels_present(splits["val"].frames, "forces"):
        raise ConfigError(f"training.metric: '{cfg.metric}' needs force labels in the validation data")


def _write_resolved_config(out: Path, config: TrainConfig, model_cfg: ModelConfig) -> None:
    """The config as run, "auto" values filled in: a record of what was trained."""
    resolved = {**config.to_dict(), "model": model_cfg.to_dict()}
    tmp = out / ".config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
    tmp.replace(out / "config.yaml")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"training.device: {name!r} requested but CUDA is not available")
    return torch.device(name)

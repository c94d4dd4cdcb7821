"""Learning rate: linear warm-up per step, then reduce-on-plateau per epoch.

One small class instead of two chained torch schedulers, which would both write the
optimizer's lr and fight; its state is plain numbers for a ``weights_only`` checkpoint.
"""
from __future__ import annotations

import math

import torch

from .config import TrainingConfig


class LRSchedule:
    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainingConfig):
        self.optimizer = optimizer
        self.warmup_steps, self.plateau = cfg.warmup_steps, cfg.lr_schedule == "plateau"
        self.patience, self.factor, self.min_lr = cfg.plateau_patience, cfg.plateau_factor, cfg.min_lr
        self.base_lr = cfg.lr  # lowered by the plateau rule
        self.steps = 0
        self.best = math.inf
        self.bad_epochs = 0
        self._apply()

    @property
    def lr(self) -> float:
        warm = min(1.0, (self.steps + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return self.base_lr * warm

    def step(self) -> None:
        """After each optimizer step."""
        self.steps += 1
        self._apply()

    def epoch_end(self, metric: float) -> None:
        """After each validation: count epochs without improvement, cut the lr after ``patience``."""
        if metric < self.best:
            self.best, self.bad_epochs = metric, 0
            return
        self.bad_epochs += 1
        if self.plateau and self.bad_epochs > self.patience:
            self.base_lr = max(self.min_lr, self.base_lr * self.factor)
            self.bad_epochs = 0
            self._apply()

    def restart_from(self, lr: float) -> None:
        """Another base lr (a resume that accepts a changed training.lr); the plateau count restarts."""
        self.base_lr, self.bad_epochs = lr, 0
        self._apply()

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "steps": self.steps, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.base_lr, self.steps, self.best, self.bad_epochs = (
            state["base_lr"], state["steps"], state["best"], state["bad_epochs"])
        self._apply()

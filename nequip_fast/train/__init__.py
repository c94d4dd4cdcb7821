"""Training from a YAML config: ``load_config`` -> ``train``; evaluation of trained models."""
from .config import ConfigError, TrainConfig, load_config, parse_config
from .trainer import Trainer, train

__all__ = ["ConfigError", "TrainConfig", "Trainer", "load_config", "parse_config", "train"]

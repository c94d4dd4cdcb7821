"""``nequip-fast train CONFIG [--resume]``: Fit a NequIP potential as a YAML file describes."""
from __future__ import annotations

import argparse
import signal
import sys

EPILOG = """\
The config has four sections; all keys but data.train have defaults.

  data:     train FILE (required), val FILE, test FILE, index ":", n_train "rest",
            n_val 0.1, n_test 0 (count, fraction or "rest"), seed 0
  model:    the build_model keys (species, r_max 5.0, num_layers 4, l_max 1,
            num_features 32, ...); avg_num_neighbors, per_species_shifts and
            per_species_scales may be "auto" (computed from the training split);
            species defaults to all elements in the data
  training: epochs 100, batch_size 5 (per process), lr 0.005, optimizer adam|adamw,
            weight_decay 0, energy_weight 1, forces_weight 1, stress_weight 1,
            lr_schedule plateau|constant, plateau_patience 10, plateau_factor 0.5,
            min_lr 1e-6, warmup_steps 0, ema_decay 0.99, metric loss
            (or energy_mae, forces_mae, forces_rmse, stress_mae, ...),
            early_stopping_patience null, max_wall_time null (s), seed 0,
            device auto, num_threads null
  output:   directory runs/nequip

--resume refuses a config whose model, data or training settings differ from the
run's (listing them); see --accept-changes. One run at a time writes to a directory
(it holds output.directory/.lock).

Writes to output.directory: best.pt (best validation model, loadable by
NequIPCalculator and `nequip-fast evaluate`), last.pt (resume state), log.csv,
tensorboard/, config.yaml (as run), learning_curves.png, parity_test.png,
test_metrics.txt. Multi-process: torchrun --standalone --nproc_per_node N -m nequip_fast train CONFIG
(batch_size structures per process and step; only process 0 writes).
See examples/*.yaml for commented configs.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model from a YAML config", description=__doc__.split(":", 1)[1].strip(),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in output.directory from last.pt (optimizer, schedule, EMA, "
                             "RNG state and epoch); raise training.epochs to train longer")
    parser.add_argument("--accept-changes", action="store_true",
                        help="with --resume: take the changed values of training.lr, lr_schedule, plateau_*, "
                             "min_lr, warmup_steps, weight_decay, ema_decay, batch_size, seed and of the data file "
                             "paths instead of refusing them (other changes to the model, data or training "
                             "sections are always refused; epochs, max_wall_time, early_stopping_patience, device, "
                             "num_threads and training.conv_backend may always change)")
    parser.add_argument("--output", metavar="DIR", help="output directory (overrides output.directory)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from dataclasses import replace
    from pathlib import Path

    from nequip_fast.data.dataset import DatasetError
    from nequip_fast.model.io import ModelFileError
    from nequip_fast.train import ConfigError, load_config, train
    from nequip_fast.train.checkpoint import LAST
    from nequip_fast.train.config import OutputConfig
    from nequip_fast.train.trainer import DivergedError

    if args.accept_changes and not args.resume:
        print("nequip-fast train: error: --accept-changes goes with --resume", file=sys.stderr)
        return 2
    config = None
    previous = signal.signal(signal.SIGTERM, _terminated)  # a batch system's stop: the same clean exit as Ctrl-C
    try:
        config = load_config(args.config)
        if args.output:
            config = replace(config, output=OutputConfig(args.output))
        train(config, resume=args.resume, accept_changes=args.accept_changes)
    except (ConfigError, DatasetError, ModelFileError, FileNotFoundError, OSError) as exc:
        print(f"nequip-fast train: error: {exc}", file=sys.stderr)
        return 2
    except DivergedError as exc:
        print(f"nequip-fast train: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        last = Path(config.output.directory) / LAST if config is not None else None
        if last is not None and last.is_file():
            print(f"nequip-fast train: {how}; finished epochs are in {last}, continue with --resume", file=sys.stderr)
        else:
            print(f"nequip-fast train: {how} before the first epoch finished; nothing was saved", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that writes in progress clean up as for Ctrl-C."""


def _terminated(signum, frame):
    raise Terminated()

"""Train/validation/test splits and the batch iterator (seeded, sharded across processes)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from ase import Atoms

from ..data import AtomicGraph, batch_graphs
from ..data.dataset import DatasetError, read_structures, species_of, to_graphs
from .config import ConfigError, DataConfig, SplitSize


@dataclass
class Split:
    """One split's structures, with labels (for evaluation outputs) and as graphs (for the model)."""

    frames: list[Atoms]
    graphs: list[AtomicGraph]


def load_splits(cfg: DataConfig, require: Sequence[str], species: Optional[Sequence[str]], r_max: float,
                dtype: torch.dtype) -> tuple[dict[str, Split], tuple[str, ...]]:
    """The train/val/test splits as frames and graphs, and the species (all elements in the data
    unless given). Graphs are built per file, so an error names the file and its frame number."""
    paths = {"train": cfg.train, "val": cfg.val, "test": cfg.test}
    files = {name: read_structures(path, cfg.index if name == "train" else ":", require)
             for name, path in paths.items() if path}
    for name, frames in files.items():
        for key in ("energy", "forces", "stress"):
            labels_present(frames, key, _label(paths[name], cfg, name))
    species = tuple(species or species_of([a for frames in files.values() for a in frames]))
    graphs = {name: [g.to(dtype=dtype) for g in to_graphs(frames, species, r_max, _label(paths[name], cfg, name))]
              for name, frames in files.items()}
    n_val = 0 if cfg.val else (0.1 if cfg.n_val is None else cfg.n_val)
    sizes = split_sizes(len(files["train"]), {"n_train": cfg.n_train, "n_val": n_val, "n_test": cfg.n_test})
    order = np.random.default_rng(cfg.seed).permutation(len(files["train"])).tolist()
    bounds = np.cumsum([0, *sizes.values()])
    splits = {}
    for k, name in enumerate(("train", "val", "test")):
        if name in files and name != "train":  # a separate file (its drawn size is 0)
            splits[name] = Split(files[name], graphs[name])
        else:
            chosen = order[bounds[k]: bounds[k + 1]]
            splits[name] = Split([files["train"][i] for i in chosen], [graphs["train"][i] for i in chosen])
    for name, key in (("train", "n_train"), ("val", "n_val")):
        if not splits[name].frames:
            raise ConfigError(f"data.{key}: the {name} split is empty ({len(files['train'])} frames in {cfg.train}"
                              f"{'' if name == 'train' else '; set data.n_val or give data.val'})")
    _check_trained_elements(splits, {name: paths[name] if name in files and name != "train" else
                                     f"the {name} split drawn from {cfg.train}" for name in splits})
    return splits, species


def _check_trained_elements(splits: dict[str, Split], sources: dict[str, str]) -> None:
    """An element that only validation or test structures hold would be scored untrained
    (its energy shift 0): an error, not a number in the table."""
    trained = {s for atoms in splits["train"].frames for s in atoms.get_chemical_symbols()}
    for name in ("val", "test"):
        unseen = sorted({s for atoms in splits[name].frames for s in atoms.get_chemical_symbols()} - trained)
        if unseen:
            what = f"element {unseen[0]} is" if len(unseen) == 1 else f"elements {', '.join(unseen)} are"
            raise DatasetError(f"{sources[name]}: {what} not in the training split, so the model cannot learn "
                               f"{'it' if len(unseen) == 1 else 'them'}; add training structures with "
                               f"{'it' if len(unseen) == 1 else 'them'} or leave those out of the {name} data")


def _label(path: str, cfg: DataConfig, name: str) -> str:
    return f"{path}[{cfg.index}]" if name == "train" and cfg.index != ":" else path


def split_sizes(total: int, requested: dict[str, SplitSize]) -> dict[str, int]:
    """Counts for each split: fractions round down, "rest" takes what is left; overdraw is an error."""
    sizes = {k: (int(v * total) if isinstance(v, float) else v) for k, v in requested.items() if v != "rest"}
    used = sum(sizes.values())
    if used > total:
        raise ConfigError(f"data.{next(iter(requested))}: the splits ask for {used} frames "
                          f"({', '.join(f'{k}={v}' for k, v in sizes.items())}) but the file has {total}")
    for key, value in requested.items():
        if value == "rest":
            sizes[key] = total - used
    return {k: sizes[k] for k in requested}


def labels_present(frames: Sequence[Atoms], key: str, where: str = "data") -> bool:
    """Whether every frame has label ``key``; a mixture is an error naming the frames (a batch
    needs all or none, so a mixture would make results depend on the batch size).
    ``where`` names the file the frames are, in order, from."""
    have = [f.calc is not None and (key in f.calc.results or key == "energy" and "free_energy" in f.calc.results)
            for f in frames]
    if any(have) and not all(have):
        raise DatasetError(f"{where} frame {have.index(False)}: no '{key}' label, but frame {have.index(True)} has "
                           f"one; label all frames or none")
    return bool(have) and all(have)


class Batches:
    """Batches of graphs for one process.

    Every epoch all processes draw the same seeded permutation (a function of seed and epoch
    only, so a resumed run sees exactly the batches an uninterrupted one would); each step takes
    ``batch_size x world_size`` structures and this process keeps its contiguous share.
    """

    def __init__(self, graphs: Sequence[AtomicGraph], batch_size: int, shuffle: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.graphs, self.batch_size, self.shuffle, self.seed = list(graphs), batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        step = self.batch_size * self.world_size
        return -(-len(self.graphs) // step)

    def epoch(self, epoch: int, device: Optional[torch.device] = None) -> Iterator[Optional[AtomicGraph]]:
        """Yields this process's batch of each step (None when a short last step leaves it nothing)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(len(self.graphs), generator=generator).tolist()
        else:
            order = list(range(len(self.graphs)))
        step = self.batch_size * self.world_size
        for start in range(0, len(order), step):
            chunk = order[start: start + step]
            share = -(-len(chunk) // self.world_size)
            mine = chunk[self.rank * share: (self.rank + 1) * share]
            yield batch_graphs([self.graphs[i] for i in mine]).to(device) if mine else None

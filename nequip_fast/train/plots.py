"""PNG plots at the end of a run: learning curves and test-set parity plots (matplotlib, Agg)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..data import AtomicGraph
from .evaluate import Evaluation


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history: list[dict[str, float]], path: Path) -> None:
    """Loss, energy MAE and force MAE per epoch, training and validation, log scale."""
    plt = _pyplot()
    panels = [(q, u) for q, u in (("loss", ""), ("energy_mae", " (eV/atom)"), ("forces_mae", " (eV/A)"),
                                  ("stress_mae", " (eV/A^3)")) if f"val_{q}" in history[-1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5), squeeze=False)
    epochs = [row["epoch"] for row in history]
    for ax, (quantity, unit) in zip(axes[0], panels):
        for split in ("train", "val"):
            ax.plot(epochs, [row.get(f"{split}_{quantity}", np.nan) for row in history], "o-", ms=3, label=split)
        ax.set(xlabel="epoch", ylabel=quantity + unit, yscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parity(graphs: Sequence[AtomicGraph], result: Evaluation, path: Path, title: str = "test set") -> None:
    """Predicted against reference: energy per atom, force components (and stress components)."""
    plt = _pyplot()
    n_atoms = np.array([g.pos.shape[0] for g in graphs])
    pairs = [("energy per atom (eV)", np.array([float(g.energy.sum()) for g in graphs]) / n_atoms,
              np.array(result.energy) / n_atoms),
             ("force component (eV/A)", np.concatenate([g.forces.double().numpy().ravel() for g in graphs]),
              np.concatenate([f.ravel() for f in result.forces]))]
    if all(s is not None for s in result.stress):
        pairs.append(("stress component (eV/A^3)", np.concatenate([g.stress.double().numpy().ravel() for g in graphs]),
                      np.concatenate([s.ravel() for s in result.stress])))
    fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 4), squeeze=False)
    for ax, (label, ref, pred) in zip(axes[0], pairs):
        lo, hi = min(ref.min(), pred.min()), max(ref.max(), pred.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.scatter(ref, pred, s=4, alpha=0.5)
        mae = np.abs(pred - ref).mean()
        ax.set(xlabel=f"reference {label}", ylabel=f"predicted {label}", title=f"{title}: MAE {mae:.3g}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

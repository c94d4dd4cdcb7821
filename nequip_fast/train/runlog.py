"""What the user sees during a run: one line per epoch, a CSV log, TensorBoard events."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional


LOG_CSV = "log.csv"


def summary_line(row: dict[str, float], epochs: int) -> str:
    """``epoch 3/100  loss 1.2e-02/1.3e-02  E 12.3  F 45.6/60.2  S 1.2  lr 5e-03  12.3 s  81 str/s``
    (train/val loss; validation MAEs in meV/atom, meV/A MAE/RMSE, meV/A^3)."""
    parts = [f"epoch {int(row['epoch'])}/{epochs}", f"loss {row['train_loss']:.3e}/{row['val_loss']:.3e}"]
    if "val_energy_mae" in row:
        parts.append(f"E {1e3 * row['val_energy_mae']:.2f} meV/at")
    if "val_forces_mae" in row:
        parts.append(f"F {1e3 * row['val_forces_mae']:.1f}/{1e3 * row['val_forces_rmse']:.1f} meV/A")
    if "val_stress_mae" in row:
        parts.append(f"S {1e3 * row['val_stress_mae']:.2f} meV/A^3")
    parts += [f"lr {row['lr']:.2e}", f"{row['time_s']:.1f} s", f"{row['structures_per_s']:.1f} str/s"]
    return "  ".join(parts)


class RunLog:
    """CSV (rewritten whole from the history each epoch, so a resumed run never duplicates rows)
    and TensorBoard events when the ``tensorboard`` package is installed."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.tensorboard = _summary_writer(directory / "tensorboard")

    def write(self, history: list[dict[str, float]]) -> None:
        columns = list(dict.fromkeys(k for row in history for k in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
        tmp = self.directory / f".{LOG_CSV}.tmp"
        tmp.write_text(text.getvalue())
        tmp.replace(self.directory / LOG_CSV)
        if self.tensorboard is not None:
            row = history[-1]
            for key, value in row.items():
                if key != "epoch":
                    self.tensorboard.add_scalar(key.replace("_", "/", 1), value, int(row["epoch"]))
            self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _summary_writer(directory: Path) -> Optional[object]:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("TensorBoard logging off: the 'tensorboard' package is not installed (pip install tensorboard)")
        return None
    return SummaryWriter(str(directory))

"""``nequip-fast benchmark``: where the time and memory of a NequIP model go, per conv backend.

Every case (a conv backend, or upstream NequIP) is timed in the same process, interleaved call by
call, so that the ratios between cases survive a noisy machine; peak memory is read in a fresh
subprocess per case, because a process's peak never goes down.
"""

# Light constants, shared with the CLI parser (which must not import torch to build --help).
MEASUREMENTS = ("energy_forces", "train_step", "conv", "memory")
DEFAULT_PLOT_SIZES = (64, 128, 256, 512, 1024, 2048, 4096)
LATTICES = ("fcc", "bcc", "diamond", "sc", "hcp")

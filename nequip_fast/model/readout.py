"""Per-atom readout: scalar features -> one energy per atom, an MLP without biases (as upstream)."""
from typing import Optional

import torch
from e3nn import o3

ACTIVATIONS = {"silu": torch.nn.SiLU, "tanh": torch.nn.Tanh, "mish": torch.nn.Mish, "gelu": torch.nn.GELU}


def build_readout(num_scalars: int, depth: int, width: int, nonlinearity: Optional[str]) -> torch.nn.Sequential:
    """``depth`` hidden layers of ``width`` scalars, ``nonlinearity`` between layers (None: a factored
    linear map). Layers are e3nn ``Linear`` on scalars (weights scaled by 1/sqrt(fan_in))."""
    sizes = [num_scalars] + depth * [width] + [1]
    layers = []
    for k, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        if k > 0 and nonlinearity is not None:
            layers.append(ACTIVATIONS[nonlinearity]())
        layers.append(o3.Linear(o3.Irreps(f"{fan_in}x0e"), o3.Irreps(f"{fan_out}x0e")))
    return torch.nn.Sequential(*layers)

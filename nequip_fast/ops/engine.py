"""What the autograd engine will use: a backward of ours computes only the input gradients that the
running backward pass reaches, as torch's own backward formulas do."""
from __future__ import annotations

import torch


def will_use_grad(ctx, i: int) -> bool:
    """Whether the running backward pass uses input i's gradient. ``needs_input_grad`` only says the
    input requires grad: forces (``autograd.grad(E, pos)``) never use a weight's gradient, nor that of
    the first layer's features (the species embedding's), which the engine can tell (for inputs
    that are products, not leaves)."""
    if not ctx.needs_input_grad[i]:
        return False
    node = ctx.next_functions[i][0]
    try:
        return node is not None and torch._C._will_engine_execute_node(node)
    except (RuntimeError, AttributeError):  # a leaf under autograd.grad (the engine cannot say), or an old torch
        return True

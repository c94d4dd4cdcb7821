"""When an op of ours may take its eager CPU fast path: not while a model is traced, nor under a
transform the fast path has no rule for."""
from __future__ import annotations

import torch


def traced_or_transformed() -> bool:
    """Tracing (torch.compile, torch.export, make_fx: the traced program uses torch's own ops, which
    Inductor fuses and which need no library of ours), or a transform our ops have no rule for:
    forward-mode AD (``torch.func.jvp``, which ``model.tabulated`` uses, and dual tensors) would see a
    zero tangent through them, silently; vmap would run them element by element."""
    if torch.compiler.is_compiling():  # dynamo, torch.export
        return True
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    return (get_proxy_mode() is not None  # make_fx (the deploy path traces the force computation with it)
            or torch._C._functorch.peek_interpreter_stack() is not None  # torch.func transforms
            or torch.autograd.forward_ad._current_level >= 0)  # inside forward_ad.dual_level()

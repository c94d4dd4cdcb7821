"""Reference backend: e3nn's ``TensorProduct`` per edge, then ``index_add`` into receivers.

It materialises every per-edge message, which is exactly what the fused backends avoid; it is
kept as the readable truth that they are tested against.
"""
import torch
from e3nn import o3


def reference_conv(
    tp: o3.TensorProduct, x: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor, edge_index: torch.Tensor
) -> torch.Tensor:
    receiver, sender = edge_index[0], edge_index[1]
    messages = tp(x[sender], sh, weight)
    out = messages.new_zeros(x.shape[0], tp.irreps_out.dim)
    return out.index_add(0, receiver, messages)

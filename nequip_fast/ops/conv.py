"""The convolution seam: every interaction block calls ``TensorProductConv``; backends plug in here."""
import torch

from .descriptor import ConvDescriptor
from .reference import reference_conv

BACKENDS = ("reference",)


def resolve_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown conv_backend {name!r}; available: {', '.join(BACKENDS)}")
    return name


class TensorProductConv(torch.nn.Module):
    """``out[i] = sum over edges (i <- j) of TP_uvu(x[j], sh_ij, weight_ij)``.

    ``edge_index[0]`` is the receiver (centre atom i), ``edge_index[1]`` the sender (neighbour j),
    as in the neighbour list. The sum is not normalised; the interaction block divides by
    ``sqrt(avg_num_neighbors)``.
    """

    def __init__(self, descriptor: ConvDescriptor, backend: str = "reference"):
        super().__init__()
        self.descriptor = descriptor
        self.backend = resolve_backend(backend)
        self.tp = descriptor.e3nn_tensor_product()
        self.weight_numel = descriptor.weight_numel
        self.irreps_out = descriptor.irreps_out

    def forward(self, x: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return reference_conv(self.tp, x, sh, weight, edge_index)

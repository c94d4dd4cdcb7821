"""One NequIP layer: linear -> tensor-product convolution -> linear, plus self-connection, then gate.

The last three run fused (``epilogue.Epilogue``), and the first linear as one matmul per irrep
(``epilogue.IrrepLinear``), on the weights of e3nn's modules, which the layer keeps for their
parameters (state-dict keys, upstream weight transfer) and as the reference
(``ConvNetLayer.e3nn_epilogue``, ``linear_1``)."""
import math

import torch
from e3nn import o3
from e3nn.nn import Gate

from ..ops import ConvDescriptor, TensorProductConv
from ..ops.exchange import ghost_exchange
from .epilogue import Epilogue, IrrepLinear
from .radial import RadialMLP

_SCALAR_ACTS = {1: torch.nn.functional.silu, -1: torch.tanh}


def _path_exists(irreps_in: o3.Irreps, irreps_sh: o3.Irreps, ir_out: o3.Irrep) -> bool:
    return any(ir_out in ir1 * ir2 for _, ir1 in irreps_in for _, ir2 in irreps_sh)


class InteractionBlock(torch.nn.Module):
    """``x -> conv(linear_1(x))``; the layer then applies ``linear_2(. / sqrt(avg_num_neighbors)) +
    self_connection(x, attrs)`` and the gate, fused.

    Per-species ``avg_num_neighbors`` (a sequence) divide each sender's features by its species'
    value before the sum, as upstream does."""

    def __init__(self, irreps_in, irreps_out, irreps_sh, irreps_attrs, num_basis: int,
                 mlp_depth: int, mlp_width: int, avg_num_neighbors):
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        self.linear_1 = o3.Linear(self.irreps_in, self.irreps_in)
        self.fused_linear_1 = IrrepLinear(self.linear_1)  # computes linear_1 on its weight
        descriptor = ConvDescriptor.nequip(self.irreps_in, irreps_sh, self.irreps_out)
        self.conv = TensorProductConv(descriptor)  # backend: an execution setting, ops.set_backend
        self.radial_mlp = RadialMLP([num_basis] + mlp_depth * [mlp_width] + [descriptor.weight_numel])
        self.linear_2 = o3.Linear(descriptor.irreps_out.simplify(), self.irreps_out)
        self.self_connection = o3.FullyConnectedTensorProduct(self.irreps_in, irreps_attrs, self.irreps_out)
        per_species = not isinstance(avg_num_neighbors, (int, float))
        self.norm = 1.0 if per_species else 1.0 / math.sqrt(avg_num_neighbors)
        self.register_buffer("sender_norm", torch.tensor([[1.0 / math.sqrt(n)] for n in avg_num_neighbors])
                             if per_species else None, persistent=False)

    def forward(self, x, attrs, sh, radial, edge_index, graph, ghosts=None):
        """``x``, ``attrs``: local atoms. ``radial`` has a row per edge, or E - P rows for P edge
        pairs (the conv's weight-row rule, ``ops.fused``). ``graph``: the conv's prepared graph
        (``TensorProductConv.prepare``).
        ``ghosts``: fill ghost atoms' inputs from their owners before the convolution (``ops.exchange``).
        Returns the convolution output of the local atoms, not yet divided by ``norm``."""
        h = self.fused_linear_1(x, self.linear_1.weight)
        if self.sender_norm is not None:
            h = h * (attrs @ self.sender_norm)  # local senders; ghosts receive their owners' rows
        if ghosts is not None:
            h = ghost_exchange(h, ghosts)
        h = self.conv(h, sh, self.radial_mlp(radial), edge_index, graph)
        if ghosts is not None:
            h = h[: x.shape[0]]  # rows of ghost receivers are empty
        return h


class ConvNetLayer(torch.nn.Module):
    """Interaction block followed by a gate; output irreps are the hidden irreps that a path reaches."""

    def __init__(self, irreps_in, irreps_hidden, irreps_sh, irreps_attrs, **block_kwargs):
        super().__init__()
        irreps_in, irreps_hidden, irreps_sh = o3.Irreps(irreps_in), o3.Irreps(irreps_hidden), o3.Irreps(irreps_sh)
        scalars = o3.Irreps([(m, ir) for m, ir in irreps_hidden if ir.l == 0 and _path_exists(irreps_in, irreps_sh, ir)])
        gated = o3.Irreps([(m, ir) for m, ir in irreps_hidden if ir.l > 0 and _path_exists(irreps_in, irreps_sh, ir)])
        gate_ir = "0e" if _path_exists(irreps_in, irreps_sh, o3.Irrep("0e")) else "0o"
        gates = o3.Irreps([(m, gate_ir) for m, _ in gated])
        self.gate = Gate(
            scalars, [_SCALAR_ACTS[ir.p] for _, ir in scalars],
            gates, [_SCALAR_ACTS[ir.p] for _, ir in gates],
            gated,
        )
        self.block = InteractionBlock(irreps_in, self.gate.irreps_in, irreps_sh, irreps_attrs, **block_kwargs)
        self.irreps_out = self.gate.irreps_out
        self.epilogue = Epilogue(self.block.linear_2, self.block.self_connection, self.gate, self.block.norm)

    def forward(self, x, attrs, sh, radial, edge_index, graph, ghosts=None):
        h = self.block(x, attrs, sh, radial, edge_index, graph, ghosts)
        return self.epilogue(h, x, attrs, self.block.linear_2.weight, self.block.self_connection.weight)

    def e3nn_epilogue(self, h, x, attrs):
        """What ``epilogue`` computes, by e3nn's modules: the reference it is tested against."""
        return self.gate(self.block.linear_2(h * self.block.norm) + self.block.self_connection(x, attrs))

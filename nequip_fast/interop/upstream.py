"""Upstream NequIP (the ``nequip`` package, 0.19 API) with a nequip_fast model's hyperparameters.

Install it beside nequip_fast for the comparison: ``pip install nequip==0.19.1`` (it keeps an
installed torch). ``transfer_weights`` copies an upstream model's weights into a nequip_fast model
so that both compute the same energy: the strongest evidence that the architectures match.

Where the two differ in parametrisation (not in function), the transfer absorbs it:
- upstream embeds species with ``torch.nn.Embedding`` and uses that embedding as the node
  attributes of the self-connection; nequip_fast uses one-hot attributes. Both are linear in the
  attributes, so per species the self-connection weights are the embedding-contracted ones.
- upstream's first layer has no self-connection (nequip_fast's gets zero weights).
- upstream's readout is one linear layer, nequip_fast's two; upstream's radial MLP uses plain
  SiLU and a sqrt(2) gain, nequip_fast's (e3nn's ``FullyConnectedNet``) a normalised SiLU; Bessel frequencies
  are ``n`` upstream and ``n pi`` here.
- the order of the gated irreps differs (upstream loops l then parity, nequip_fast parity then
  l), which permutes channels, tensor-product paths and radial-MLP outputs; the transfer matches
  every channel by its meaning, never by position.
"""
from __future__ import annotations

import importlib.util
import math
from typing import Callable, Hashable

import torch
from e3nn import o3

from ..data import AtomicGraph
from ..model import ModelConfig, Potential

NOT_INSTALLED = ("upstream NequIP is not installed, skipping the upstream comparison; install it with "
                 "`pip install nequip==0.19.1` (keeps the installed torch)")


def available() -> bool:
    return importlib.util.find_spec("nequip") is not None


def version() -> str:
    import nequip

    return nequip.__version__


def build(cfg: ModelConfig, compile: bool = False, seed: int = 0) -> torch.nn.Module:
    """``nequip.model.NequIPGNNModel`` with the hyperparameters of ``cfg`` (``compile``: upstream's
    train-time ``torch.compile`` mode)."""
    from nequip.model import NequIPGNNModel
    from nequip.utils.global_state import set_global_state

    previous = torch.get_default_dtype()
    set_global_state()  # upstream requires it; it also sets the default dtype to float64
    torch.set_default_dtype(previous)
    if cfg.parity is False:
        raise ValueError("the upstream comparison needs parity on: with parity off upstream keeps O(3) "
                         "irreps of natural parity, nequip_fast uses SO(3) irreps with extra paths")
    num = len(cfg.species)
    return NequIPGNNModel(
        seed=seed, model_dtype=cfg.dtype, type_names=list(cfg.species), r_max=cfg.r_max,
        num_layers=cfg.num_layers, l_max=cfg.l_max, parity=cfg.parity, num_features=cfg.num_features,
        radial_mlp_depth=cfg.radial_mlp_depth, radial_mlp_width=cfg.radial_mlp_width,
        num_bessels=cfg.num_bessels, bessel_trainable=cfg.bessel_trainable, polynomial_cutoff_p=cfg.polynomial_p,
        avg_num_neighbors=cfg.avg_num_neighbors,
        per_type_energy_scales=dict(zip(cfg.species, cfg.per_species_scales or (1.0,) * num)),
        per_type_energy_shifts=dict(zip(cfg.species, cfg.per_species_shifts or (0.0,) * num)),
        compile_mode="compile" if compile else "eager",
    )


def graph_data(graph: AtomicGraph) -> dict[str, torch.Tensor]:
    """The same structure and edges as upstream's ``AtomicDataDict``."""
    return {"pos": graph.pos, "edge_index": graph.edge_index, "edge_cell_shift": graph.edge_shift,
            "cell": graph.cell, "pbc": graph.pbc, "atom_types": graph.species, "batch": graph.batch,
            "num_atoms": graph.num_atoms}


def predict(model: torch.nn.Module, data: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Total energies and forces; upstream derives the virial in the same backward pass."""
    out = model(dict(data))
    return out["total_energy"].reshape(-1), out["forces"]


def layer_conv(model: torch.nn.Module, layer: int) -> Callable:
    """``conv(x, sh, w, edge_index)`` of one upstream layer: its e3nn tensor product + scatter."""
    scatter = getattr(_energy_net(model), f"layer{layer}_convnet").conv.tp_scatter
    return lambda x, sh, w, edge_index: scatter(x, sh, w, edge_index[0], edge_index[1])


# --- weight transfer -------------------------------------------------------------------------------

Label = Hashable


def _energy_net(model):
    return model.model.func  # GraphModel -> ForceStressOutput -> SequentialGraphNetwork


def _feature_labels(irreps) -> list[Label]:
    return [(ir, u) for mul, ir in o3.Irreps(irreps) for u in range(mul)]


def _gate_input_labels(gate) -> list[Label]:
    """Channels of a Gate's input: scalars, gates (named by the irrep they gate) and gated irreps,
    in the order e3nn sorts them into."""
    gated = [(ir, u) for mul, ir in gate.irreps_gated for u in range(mul)]
    groups = [[("s", ir, u) for mul, ir in gate.irreps_scalars for u in range(mul)],
              [("g", *label) for label in gated], [("v", *label) for label in gated]]
    blocks = []
    for irreps, labels in zip((gate.irreps_scalars, gate.irreps_gates, gate.irreps_gated), groups):
        start = 0
        for mul, _ in irreps:
            blocks.append(labels[start:start + mul])
            start += mul
    order = (gate.irreps_scalars + gate.irreps_gates + gate.irreps_gated).sort().inv
    return [label for k in order for label in blocks[k]]


def _path_labels(tp: o3.TensorProduct) -> tuple[list[Label], list[Label]]:
    """Channels of a uvu tensor product's output (the conv's 'mid' irreps) and of its weights."""
    key = {ins.i_out: (tp.irreps_in1[ins.i_in1].ir, tp.irreps_in2[ins.i_in2].ir, tp.irreps_out[ins.i_out].ir)
           for ins in tp.instructions}
    mid = [(key[k], u) for k, (mul, _) in enumerate(tp.irreps_out) for u in range(mul)]
    weights = [(key[ins.i_out], u) for ins in tp.instructions for u in range(tp.irreps_in1[ins.i_in1].mul)]
    return mid, weights


def _offsets(irreps) -> list[int]:
    out, total = [], 0
    for mul, _ in o3.Irreps(irreps):
        out.append(total)
        total += mul
    return out


def _linear_matrix(lin: o3.Linear) -> torch.Tensor:
    """The channel-mixing matrix of an e3nn Linear, normalisation included."""
    off_in, off_out = _offsets(lin.irreps_in), _offsets(lin.irreps_out)
    m = torch.zeros(lin.irreps_in.num_irreps, lin.irreps_out.num_irreps, dtype=torch.float64)
    for _, ins, w in lin.weight_views(yield_instruction=True):
        a, b = off_in[ins.i_in], off_out[ins.i_out]
        m[a:a + w.shape[0], b:b + w.shape[1]] = ins.path_weight * w.detach().double()
    return m


def _remap(m: torch.Tensor, rows_from: list, rows_to: list, cols_from: list, cols_to: list) -> torch.Tensor:
    """``m`` re-indexed from one labelling of its rows/columns to another; unknown labels get 0.

    Every source label must have a destination: a dropped channel would mean the models differ.
    """
    for src, dst, what in ((rows_from, rows_to, "input"), (cols_from, cols_to, "output")):
        missing = set(src) - set(dst)
        if missing:
            raise ValueError(f"upstream {what} channels with no nequip_fast counterpart: {sorted(map(str, missing))[:4]}")
    pad = torch.nn.functional.pad(m, (0, 1, 0, 1))  # the last row/column is the zero for unknown labels
    r = {label: k for k, label in enumerate(rows_from)}
    c = {label: k for k, label in enumerate(cols_from)}
    rows = torch.tensor([r.get(label, -1) for label in rows_to])
    cols = torch.tensor([c.get(label, -1) for label in cols_to])
    return pad[rows][:, cols]


def _set_linear(lin: o3.Linear, m: torch.Tensor) -> None:
    off_in, off_out = _offsets(lin.irreps_in), _offsets(lin.irreps_out)
    for _, ins, w in lin.weight_views(yield_instruction=True):
        a, b = off_in[ins.i_in], off_out[ins.i_out]
        w.copy_(m[a:a + w.shape[0], b:b + w.shape[1]] / ins.path_weight)


def _self_connection_matrices(sc: o3.FullyConnectedTensorProduct, attrs: torch.Tensor) -> torch.Tensor:
    """Per species (rows of ``attrs``: its attribute vector), the channel matrix of ``sc(x, attrs)``."""
    off_in, off_out = _offsets(sc.irreps_in1), _offsets(sc.irreps_out)
    m = torch.zeros(attrs.shape[0], sc.irreps_in1.num_irreps, sc.irreps_out.num_irreps, dtype=torch.float64)
    for _, ins, w in sc.weight_views(yield_instruction=True):  # w: (mul_x, mul_attr, mul_out)
        a, b = off_in[ins.i_in1], off_out[ins.i_out]
        m[:, a:a + w.shape[0], b:b + w.shape[2]] += ins.path_weight * torch.einsum(
            "sv,uvw->suw", attrs, w.detach().double())
    return m


def _set_self_connection(sc: o3.FullyConnectedTensorProduct, m: torch.Tensor) -> None:
    """Inverse of ``_self_connection_matrices`` for one-hot attributes."""
    off_in, off_out = _offsets(sc.irreps_in1), _offsets(sc.irreps_out)
    for _, ins, w in sc.weight_views(yield_instruction=True):
        a, b = off_in[ins.i_in1], off_out[ins.i_out]
        w.copy_(m[:, a:a + w.shape[0], b:b + w.shape[2]].permute(1, 0, 2) / ins.path_weight)


def _set_radial_mlp(up_mlp, nf_mlp, outputs_up: list[Label], outputs_nf: list[Label]) -> None:
    """Upstream ``h -> silu(h @ (alpha U))``; nequip_fast ``h -> silu(h @ (scale W))`` (its scale
    includes the SiLU normalisation of the layer before); the outputs are the tensor-product
    weights, labelled by path and channel."""
    up = [m for m in up_mlp if hasattr(m, "alpha")]
    if len(up) != len(nf_mlp.weights):
        raise ValueError(f"radial MLP depths differ: upstream {len(up)} layers, nequip_fast {len(nf_mlp.weights)}")
    for k, (u, weight) in enumerate(zip(up, nf_mlp.weights)):
        w = u.weight.detach().double() * float(u.alpha) / nf_mlp.scales[k]
        if k == len(up) - 1:
            rows = list(range(w.shape[0]))
            w = _remap(w, rows, rows, outputs_up, outputs_nf)
        weight.copy_(w)


@torch.no_grad()
def transfer_weights(upstream: torch.nn.Module, model: Potential) -> None:
    """Copy upstream NequIP weights into ``model`` (same hyperparameters, parity on)."""
    up, nf = _energy_net(upstream), model.energy_model
    num_species = nf.num_species
    emb = up.type_embed.embed_module.weight.detach().double()  # (species, features): also upstream's node attrs

    _set_linear(nf.embedding, emb)  # one-hot in: the embedding matrix is the channel matrix
    nf.radial.basis.bessel_weights.copy_(math.pi * up.bessel_encode.bessel_weights.detach().reshape(-1))
    labels_up = labels_nf = _feature_labels(nf.embedding.irreps_out)
    for k, layer in enumerate(nf.layers):
        convnet = getattr(up, f"layer{k}_convnet")
        block, ublock = layer.block, convnet.conv
        in_up, in_nf = labels_up, labels_nf
        _set_linear(block.linear_1, _remap(_linear_matrix(ublock.linear_1), in_up, in_nf, in_up, in_nf))

        mid_up, w_up = _path_labels(ublock.tp_scatter.tp)
        mid_nf, w_nf = _path_labels(block.conv.tp)
        _set_radial_mlp(ublock.edge_mlp.mlp, block.radial_mlp, w_up, w_nf)

        out_up, out_nf = _gate_input_labels(convnet.equivariant_nonlin), _gate_input_labels(layer.gate)
        _set_linear(block.linear_2, _remap(_linear_matrix(ublock.linear_2), mid_up, mid_nf, out_up, out_nf))
        if ublock.sc is None:
            block.self_connection.weight.zero_()
        else:
            per_species = _self_connection_matrices(ublock.sc, emb)
            _set_self_connection(block.self_connection, torch.stack(
                [_remap(m, in_up, in_nf, out_up, out_nf) for m in per_species]))
        labels_up = _feature_labels(convnet.equivariant_nonlin.irreps_out)
        labels_nf = _feature_labels(layer.gate.irreps_out)

    readout = up.per_atom_energy_readout.mlp_module.mlp[0]  # one linear layer, no bias
    first, second = nf.readout
    vector = readout.weight.detach().double() * float(readout.alpha)  # (features, 1)
    m = torch.zeros(len(labels_up), first.irreps_out.num_irreps, dtype=torch.float64)
    m[:, :1] = vector
    _set_linear(first, _remap(m, labels_up, labels_nf, list(range(m.shape[1])), list(range(m.shape[1]))))
    unit = torch.zeros(second.irreps_in.num_irreps, 1, dtype=torch.float64)
    unit[0, 0] = 1.0
    _set_linear(second, unit)

    scale_shift = up.per_type_energy_scale_shift
    nf.scales.copy_(scale_shift.scales.reshape(-1).expand(num_species))
    nf.shifts.copy_(scale_shift.shifts.reshape(-1).expand(num_species))


def compare(upstream: torch.nn.Module, model: Potential, graph: AtomicGraph) -> dict[str, float]:
    """Largest energy and force differences between the two models on one graph (after transfer)."""
    energy_up, forces_up = (t.detach() for t in predict(upstream, graph_data(graph)))
    pred = model(graph)
    return {"energy_abs_diff": float((pred.energy.detach() - energy_up).abs().max()),
            "energy_abs": float(energy_up.abs().max()),
            "forces_max_abs_diff": float((pred.forces - forces_up).abs().max()),
            "forces_max_abs": float(forces_up.abs().max())}


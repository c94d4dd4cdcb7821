"""Upstream NequIP (the ``nequip`` package, 0.19 API) and nequip_fast: one model in both.

``config_from_upstream`` reads the hyperparameters of a built upstream ``NequIPGNNModel`` from its
modules (so it works for models from checkpoints, packages and Python alike); ``build`` builds the
upstream model of a nequip_fast config; ``transfer_weights`` copies an upstream model's weights into
a nequip_fast model so that both compute the same energy: the strongest evidence that the
architectures match. An upstream option nequip_fast cannot represent is an ``UnsupportedModel``
error naming it.

Where the two differ in parametrisation (not in function), the transfer absorbs it:
- upstream embeds species with ``torch.nn.Embedding`` and uses that embedding as the node
  attributes of the self-connection; nequip_fast uses one-hot attributes. Both are linear in the
  attributes, so per species the self-connection weights are the embedding-contracted ones.
- upstream's first layer has no self-connection (nequip_fast's gets zero weights).
- upstream's MLPs scale weights by ``alpha`` (a sqrt(2) gain after a nonlinearity); nequip_fast's
  radial MLP uses a normalised SiLU and e3nn's 1/sqrt(fan_in), its readout e3nn ``Linear`` layers;
  Bessel frequencies are ``n`` upstream and ``n pi`` here.
- the order of the gated irreps differs (upstream loops l then parity, nequip_fast parity then
  l), which permutes channels, tensor-product paths and radial-MLP outputs; the transfer matches
  every channel by its meaning, never by position.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
from typing import Callable, Hashable, Optional, Sequence

import torch
from ase.data import atomic_numbers, chemical_symbols
from e3nn import o3

from ..data import AtomicGraph
from ..model import ModelConfig, Potential

NOT_INSTALLED = ("upstream NequIP is not installed, skipping the upstream comparison; install it with "
                 "`pip install nequip==0.19.1` (keeps the installed torch)")
COULOMB_UNITS = {14.399645: "metal", 332.06371: "real"}  # ZBL's e^2/(4 pi eps0) per LAMMPS unit system


class UnsupportedModel(ValueError):
    """An upstream model uses an option nequip_fast cannot represent."""


def available() -> bool:
    return importlib.util.find_spec("nequip") is not None


def version() -> str:
    import nequip

    return nequip.__version__


@contextlib.contextmanager
def upstream_state():
    """Run upstream code (builders, loaders) under upstream's global state, then restore this
    process's: ``set_global_state`` sets the default dtype and reseeds torch, and upstream's builders
    leave e3nn set to TorchScript its modules (slow to build, and they do not export with dynamic
    sizes), besides torch.jit/dynamo/multiprocessing settings."""
    import e3nn
    from nequip.utils.global_state import set_global_state

    dtype, rng = torch.get_default_dtype(), torch.random.get_rng_state()
    e3nn_defaults = e3nn.get_optimization_defaults()
    dynamo = {k: getattr(torch._dynamo.config, k) for k in ("capture_dynamic_output_shape_ops", "capture_scalar_outputs")}
    sharing = torch.multiprocessing.get_sharing_strategy()
    fusion = torch.jit.set_fusion_strategy([("STATIC", 2), ("DYNAMIC", 10)])  # returns the current one
    torch.jit.set_fusion_strategy(fusion)
    try:
        set_global_state()
        yield
    finally:
        torch.set_default_dtype(dtype)
        torch.random.set_rng_state(rng)
        e3nn.set_optimization_defaults(jit_script_fx=e3nn_defaults["jit_script_fx"])  # legacy flag first: it moves jit_mode
        e3nn.set_optimization_defaults(**{k: v for k, v in e3nn_defaults.items() if k != "jit_script_fx"})
        for key, value in dynamo.items():
            setattr(torch._dynamo.config, key, value)
        torch.multiprocessing.set_sharing_strategy(sharing)
        torch.jit.set_fusion_strategy(fusion)


def build_kwargs(cfg: ModelConfig, seed: int = 0) -> dict:
    """``NequIPGNNModel`` keyword arguments for the hyperparameters of ``cfg``."""
    if cfg.parity is False:
        raise UnsupportedModel("upstream NequIP has no SO(3) (parity: false) model: its `parity: false` keeps "
                               "natural-parity irreps, nequip_fast's `parity: \"natural\"`")
    if cfg.readout_nonlinearity is None and cfg.readout_mlp_depth > 0:
        readout = {"readout_mlp_hidden_layers_depth": cfg.readout_mlp_depth,
                   "readout_mlp_hidden_layers_width": cfg.readout_features, "readout_mlp_nonlinearity": None}
    else:
        readout = {"readout_mlp_hidden_layers_depth": cfg.readout_mlp_depth,
                   "readout_mlp_hidden_layers_width": cfg.readout_features,
                   "readout_mlp_nonlinearity": cfg.readout_nonlinearity or "silu"}
    per_type = lambda values, default: dict(zip(cfg.species, values or (default,) * len(cfg.species)))  # noqa: E731
    avg = cfg.avg_num_neighbors
    kwargs = dict(
        seed=seed, model_dtype=cfg.dtype, type_names=list(cfg.species), r_max=cfg.r_max,
        num_layers=cfg.num_layers, l_max=cfg.l_max, parity=cfg.parity is True, num_features=list(cfg.features_per_l),
        type_embed_num_features=cfg.embed_features,
        radial_mlp_depth=cfg.radial_mlp_depth, radial_mlp_width=cfg.radial_mlp_width,
        num_bessels=cfg.num_bessels, bessel_trainable=cfg.bessel_trainable, polynomial_cutoff_p=cfg.polynomial_p,
        avg_num_neighbors=dict(zip(cfg.species, avg)) if isinstance(avg, tuple) else avg,
        per_type_energy_scales=per_type(cfg.per_species_scales, 1.0),
        per_type_energy_shifts=per_type(cfg.per_species_shifts, 0.0),
        per_type_energy_scales_trainable=cfg.per_species_scales_trainable,
        per_type_energy_shifts_trainable=cfg.per_species_shifts_trainable,
        **readout,
    )
    if cfg.per_edge_type_cutoff:
        kwargs["per_edge_type_cutoff"] = cfg.to_dict()["per_edge_type_cutoff"]
    if cfg.zbl:
        kwargs["pair_potential"] = {"_target_": "nequip.nn.pair_potential.ZBL", "units": cfg.zbl_units,
                                    "chemical_species": list(cfg.species), "polynomial_cutoff_p": cfg.zbl_polynomial_p}
    return kwargs


def build(cfg: ModelConfig, compile: bool = False, seed: int = 0) -> torch.nn.Module:
    """``nequip.model.NequIPGNNModel`` with the hyperparameters of ``cfg`` (``compile``: upstream's
    train-time ``torch.compile`` mode)."""
    from nequip.model import NequIPGNNModel

    kwargs = build_kwargs(cfg, seed)
    with upstream_state():
        return NequIPGNNModel(**kwargs, compile_mode="compile" if compile else "eager")


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
    scatter = getattr(energy_net(model), f"layer{layer}_convnet").conv.tp_scatter
    return lambda x, sh, w, edge_index: scatter(x, sh, w, edge_index[0], edge_index[1])


# --- reading an upstream model's hyperparameters ----------------------------------------------------

KNOWN_MODULES = ("type_embed", "spharm", "edge_norm", "bessel_encode", "factor", "per_atom_energy_readout",
                 "per_type_energy_scale_shift", "pair_potential", "total_energy_sum")


def energy_net(model: torch.nn.Module) -> torch.nn.Module:
    """The ``SequentialGraphNetwork`` inside ``GraphModel -> ForceStressOutput``."""
    net = model
    for attr in ("model", "func"):
        net = getattr(net, attr, net)
    if type(net).__name__ != "SequentialGraphNetwork":
        raise UnsupportedModel(f"not an upstream NequIP GNN model: found {type(net).__name__} where the "
                               "SequentialGraphNetwork of NequIPGNNModel should be")
    return net


def _class(module) -> str:
    return getattr(module, "original_name", None) or type(module).__name__  # scripted modules keep the name


def _layers(net) -> list:
    layers = []
    while hasattr(net, f"layer{len(layers)}_convnet"):
        layers.append(getattr(net, f"layer{len(layers)}_convnet"))
    return layers


def _mlp_layers(mlp_function) -> tuple[list[torch.Tensor], Optional[str]]:
    """Upstream ``ScalarMLPFunction`` -> (weight matrices with their alpha applied, nonlinearity)."""
    inner = mlp_function.mlp
    if _class(inner) == "DeepLinearMLP":  # a linear MLP: its constant sits on the product
        weights = [w.detach().double() for w in inner.weights]
        weights[0] = weights[0] * float(inner.alpha)
        return weights, None
    weights, acts = [], set()
    for module in inner:
        if hasattr(module, "alpha"):
            if getattr(module, "bias", None) is not None:
                raise UnsupportedModel("an upstream MLP with biases (nequip_fast's MLPs have none)")
            weights.append(module.weight.detach().double() * float(module.alpha))
        else:
            acts.add(_class(module))
    names = {"SiLU": "silu", "Tanh": "tanh", "Mish": "mish", "GELU": "gelu", "Identity": None}
    if len(acts) > 1 or any(a not in names for a in acts):
        raise UnsupportedModel(f"upstream MLP nonlinearity {sorted(acts)}: nequip_fast supports "
                               f"{[k for k, v in names.items() if v]} or none")
    if "GELU" in acts and next(m for m in inner if _class(m) == "GELU").approximate != "none":
        raise UnsupportedModel("upstream readout uses the tanh-approximated GELU")
    return weights, names[acts.pop()] if acts else None


def _decimals(stored: torch.Tensor, forward: Callable[[float], float], inverse: Callable[[float], float]) -> list[float]:
    """The numbers a user wrote, from what upstream stored (``forward`` of them in ``stored``'s dtype:
    a reciprocal, an inverse square root): per element, the shortest decimal that reproduces it
    exactly, so configs read ``6.0``, not ``5.9999995633``."""
    values = []
    for s in stored.detach().reshape(-1):
        estimate = inverse(float(s.double()))
        for digits in range(1, 18):
            value = float(f"{estimate:.{digits}g}")
            if torch.tensor(forward(value), dtype=s.dtype) == s:
                break
        values.append(value)
    return values


def _species(type_names: Sequence[str], species: Optional[Sequence[str]], net) -> tuple[str, ...]:
    if species is None:
        if "pair_potential" in net._modules and hasattr(net.pair_potential, "atomic_numbers"):
            species = [chemical_symbols[int(z)] for z in net.pair_potential.atomic_numbers.tolist()]
        elif all(t in atomic_numbers and t != "X" for t in type_names):
            species = list(type_names)
        else:
            raise UnsupportedModel(f"upstream type names {list(type_names)} are not element symbols: give the "
                                   "element of each type (--species / species=[...], in the model's type order)")
    if len(species) != len(type_names):
        raise UnsupportedModel(f"{len(species)} species given for {len(type_names)} upstream types {list(type_names)}")
    return tuple(species)


def config_from_upstream(model: torch.nn.Module, species: Optional[Sequence[str]] = None,
                         dtype: Optional[str] = None) -> ModelConfig:
    """The nequip_fast config of an upstream ``NequIPGNNModel`` (a ``GraphModel``), read from its modules.

    ``species``: the element of each upstream type, in type order (default: the type names, or the
    ZBL term's elements). Raises ``UnsupportedModel`` naming any option nequip_fast cannot represent.
    """
    net = energy_net(model)
    layers = _layers(net)
    extra = [n for n in net._modules if n not in KNOWN_MODULES and not (n.endswith("_convnet") and n.startswith("layer"))]
    if extra or not layers:
        raise UnsupportedModel(f"upstream modules with no nequip_fast counterpart: {extra or ['(no convnet layers)']}")
    type_names = list(getattr(model, "type_names", []) or net.per_type_energy_scale_shift.type_names)
    species = _species(type_names, species, net)
    num_types = len(type_names)

    embed = net.type_embed
    if getattr(embed, "do_categorical_graph_field_embed", False):
        raise UnsupportedModel("categorical_graph_field_embed (embedding graph fields such as charge)")
    sh = o3.Irreps(net.spharm.irreps_edge_sh)
    l_max = sh.lmax
    if sh != o3.Irreps.spherical_harmonics(l_max):
        raise UnsupportedModel(f"edge spherical harmonics {sh} (nequip_fast uses all l <= l_max)")
    if not (getattr(net.spharm, "sh", None) is not None and net.spharm.sh.normalize
            and net.spharm.sh.normalization == "component"):
        raise UnsupportedModel("spherical harmonics not normalize=True, normalization='component'")

    edge_norm = net.edge_norm
    r_max = float(edge_norm.r_max)
    cutoffs = {}
    if edge_norm._per_edge_type:
        flat = _decimals(edge_norm._rmax_recip, lambda r: 1.0 / r, lambda x: 1.0 / x)
        cutoffs = {a: {b: flat[i * num_types + j] for j, b in enumerate(species)} for i, a in enumerate(species)}
    bessel = net.bessel_encode
    factor = float(net.factor.factor)
    if not math.isclose(factor, 2 * math.pi / r_max ** 2, rel_tol=1e-12):
        raise UnsupportedModel(f"Bessel prefactor {factor} (NequIPGNNModel's is 2 pi / r_max^2)")

    hidden = [o3.Irreps(layer.feature_irreps_hidden) for layer in layers]
    if len(set(hidden[:-1])) > 1:
        raise UnsupportedModel(f"layers with different hidden irreps {sorted(set(map(str, hidden[:-1])))}")
    last = hidden[-1]
    if len(last) != 1 or last[0].ir != o3.Irrep("0e"):
        raise UnsupportedModel(f"last layer hidden irreps {last} (NequIPGNNModel's are scalars only)")
    num_scalars = last[0].mul
    if len(layers) > 1:
        parity, num_features = _hidden_layout(hidden[0], l_max)
        if num_features[0] != num_scalars:
            raise UnsupportedModel(f"last layer has {num_scalars} scalars, the others {num_features[0]}")
    else:  # only the scalar layer: the other multiplicities have no effect
        parity, num_features = True, (num_scalars,) * (l_max + 1)

    radial_depth, radial_width, avg = set(), set(), set()
    for k, layer in enumerate(layers):
        if layer.resnet:
            raise UnsupportedModel(f"layer {k} uses a residual update (convnet_resnet)")
        _check_gate(layer.equivariant_nonlin, k)
        dims = layer.conv.edge_mlp.dims
        radial_depth.add(len(dims) - 2)
        radial_width.add(dims[1] if len(dims) > 2 else None)
        avg.add(tuple(_decimals(layer.conv.avg_num_neighbors_norm.norm_const,
                                lambda n: 1.0 / math.sqrt(n), lambda c: c ** -2)))
    if len(radial_depth) > 1 or len(radial_width) > 1:
        raise UnsupportedModel("layers with different radial MLP depths or widths")
    if len(avg) > 1:
        raise UnsupportedModel("layers with different avg_num_neighbors")
    avg_num_neighbors = avg.pop()
    depth, width = radial_depth.pop(), radial_width.pop()

    readout_weights, readout_act = _mlp_layers(net.per_atom_energy_readout.mlp_module)
    readout_depth = len(readout_weights) - 1

    scale_shift = net.per_type_energy_scale_shift
    values = {}
    for name in ("scales", "shifts"):
        tensor = getattr(scale_shift, name)
        values[name] = tuple(float(v) for v in tensor.detach().double().reshape(-1).expand(num_types)) \
            if getattr(scale_shift, f"has_{name}") else ()
        values[f"{name}_trainable"] = isinstance(tensor, torch.nn.Parameter)

    zbl = {}
    if "pair_potential" in net._modules:
        pair = net.pair_potential
        if _class(pair) != "ZBL":
            raise UnsupportedModel(f"pair potential {_class(pair)} (nequip_fast has ZBL only)")
        z = [int(v) for v in pair.atomic_numbers.tolist()]
        if z != [atomic_numbers[s] for s in species]:
            raise UnsupportedModel(f"ZBL atomic numbers {z} differ from the species {list(species)}")
        coulomb = round(2 * float(pair._qqr2exesquare), 6)
        if coulomb not in COULOMB_UNITS:
            raise UnsupportedModel(f"ZBL with e^2/(4 pi eps0) = {coulomb} (nequip_fast knows metal and real units)")
        zbl = {"zbl": True, "zbl_units": COULOMB_UNITS[coulomb], "zbl_polynomial_p": float(pair.cutoff.p)}

    config = {
        "species": list(species), "r_max": r_max, "per_edge_type_cutoff": cutoffs, "num_layers": len(layers),
        "l_max": l_max, "parity": parity,
        "num_features": num_features[0] if len(set(num_features)) == 1 else list(num_features),
        "type_embed_num_features": None if embed.embed_module.embedding_dim == num_features[0]
        else int(embed.embed_module.embedding_dim),
        "num_bessels": int(bessel.num_bessels), "bessel_trainable": isinstance(bessel.bessel_weights, torch.nn.Parameter),
        "polynomial_p": _integer(bessel.cutoff.p, "polynomial_cutoff_p"),
        "radial_mlp_depth": depth, **({"radial_mlp_width": width} if depth else {}),
        "readout_mlp_depth": readout_depth, "readout_nonlinearity": readout_act if readout_depth else None,
        **({"readout_features": readout_weights[0].shape[1]} if readout_depth else {}),
        "avg_num_neighbors": avg_num_neighbors[0] if len(avg_num_neighbors) == 1 else list(avg_num_neighbors),
        "per_species_scales": list(values["scales"]), "per_species_shifts": list(values["shifts"]),
        "per_species_scales_trainable": values["scales_trainable"],
        "per_species_shifts_trainable": values["shifts_trainable"],
        "dtype": dtype or str(getattr(model, "model_dtype", torch.float32)).replace("torch.", ""),
        **zbl,
    }
    return ModelConfig.from_dict(config)


def _integer(value: float, name: str) -> int:
    if float(value) != int(value):
        raise UnsupportedModel(f"{name} = {value} is not an integer")
    return int(value)


def _hidden_layout(irreps: o3.Irreps, l_max: int) -> tuple[object, tuple[int, ...]]:
    """(parity, channels per l) of upstream hidden irreps: both parities per l, or the natural one."""
    mul = {ir: m for m, ir in irreps}
    if len(mul) != len(irreps):
        raise UnsupportedModel(f"hidden irreps {irreps} list an irrep twice")
    natural = {o3.Irrep(l, (-1) ** l) for l in range(l_max + 1)}
    both = {o3.Irrep(l, p) for l in range(l_max + 1) for p in (1, -1)}
    if set(mul) == natural:
        return "natural", tuple(mul[o3.Irrep(l, (-1) ** l)] for l in range(l_max + 1))
    if set(mul) == both and all(mul[o3.Irrep(l, 1)] == mul[o3.Irrep(l, -1)] for l in range(l_max + 1)):
        return True, tuple(mul[o3.Irrep(l, 1)] for l in range(l_max + 1))
    raise UnsupportedModel(f"hidden irreps {irreps}: nequip_fast has every l <= {l_max} with both parities "
                           "(equal channels) or with natural parity only")


def _check_gate(gate, layer: int) -> None:
    if _class(gate) != "Gate":
        raise UnsupportedModel(f"layer {layer} nonlinearity {_class(gate)} (nequip_fast uses the gate)")
    expected = {1: "silu", -1: "tanh"}
    for activation, irreps in ((gate.act_scalars, gate.irreps_scalars), (gate.act_gates, gate.irreps_gates)):
        for act, (_, ir) in zip(activation.acts, irreps):
            name = getattr(getattr(act, "f", None), "__name__", repr(act))
            if name != expected[ir.p]:
                raise UnsupportedModel(f"layer {layer} gate uses {name} on {ir} scalars (nequip_fast: silu on "
                                       "even, tanh on odd)")


# --- weight transfer -------------------------------------------------------------------------------

Label = Hashable


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
    if lin.bias.numel():
        raise UnsupportedModel("an e3nn Linear with biases")
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
    up, act = _mlp_layers(up_mlp)
    if len(up) > 1 and act != "silu":
        raise UnsupportedModel(f"radial MLP nonlinearity {act} (nequip_fast: silu)")
    if len(up) != len(nf_mlp.weights):
        raise ValueError(f"radial MLP depths differ: upstream {len(up)} layers, nequip_fast {len(nf_mlp.weights)}")
    for k, (u, weight) in enumerate(zip(up, nf_mlp.weights)):
        w = u / nf_mlp.scales[k]
        if k == len(up) - 1:
            rows = list(range(w.shape[0]))
            w = _remap(w, rows, rows, outputs_up, outputs_nf)
        weight.copy_(w)


def _set_readout(up_mlp, readout: torch.nn.Sequential, inputs_up: list[Label], inputs_nf: list[Label]) -> None:
    """Upstream ``act(h @ (alpha U))`` per layer; nequip_fast e3nn ``Linear`` layers (1/sqrt(fan_in))
    with the same plain activations between them."""
    weights, _ = _mlp_layers(up_mlp)
    linears = [m for m in readout if isinstance(m, o3.Linear)]
    if len(weights) != len(linears):
        raise ValueError(f"readout depths differ: upstream {len(weights)} layers, nequip_fast {len(linears)}")
    for k, (w, lin) in enumerate(zip(weights, linears)):
        if k == 0:
            cols = list(range(w.shape[1]))
            w = _remap(w, inputs_up, inputs_nf, cols, cols)
        _set_linear(lin, w)


@torch.no_grad()
def transfer_weights(upstream: torch.nn.Module, model: Potential) -> None:
    """Copy upstream NequIP weights into ``model`` (built from ``config_from_upstream`` of it, or
    with the same hyperparameters)."""
    up, nf = energy_net(upstream), model.energy_model
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
        _set_radial_mlp(ublock.edge_mlp, block.radial_mlp, w_up, w_nf)

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

    _set_readout(up.per_atom_energy_readout.mlp_module, nf.readout, labels_up, labels_nf)
    scale_shift = up.per_type_energy_scale_shift
    for name in ("scales", "shifts"):
        if getattr(scale_shift, f"has_{name}"):
            getattr(nf, name).copy_(getattr(scale_shift, name).detach().reshape(-1).expand(num_species))


def compare(upstream: torch.nn.Module, model: Potential, graph: AtomicGraph) -> dict[str, float]:
    """Largest energy and force differences between the two models on one graph (after transfer)."""
    energy_up, forces_up = (t.detach() for t in predict(upstream, graph_data(graph)))
    pred = model(graph)
    return {"energy_abs_diff": float((pred.energy.detach() - energy_up).abs().max()),
            "energy_abs": float(energy_up.abs().max()),
            "forces_max_abs_diff": float((pred.forces - forces_up).abs().max()),
            "forces_max_abs": float(forces_up.abs().max())}

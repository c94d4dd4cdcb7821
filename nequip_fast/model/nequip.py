"""The NequIP energy network: edges and species in, per-atom energies out.

It knows nothing about cells, batches or forces: ``potential.Potential`` builds the edge
vectors (so autograd reaches positions and strain) and sums energies per structure.
"""
from typing import Optional

import torch
from e3nn import o3

from .config import ModelConfig
from ..ops.exchange import ghost_exchange
from .interaction import ConvNetLayer
from .radial import RadialEmbedding
from .readout import build_readout
from .zbl import ZBL


def hidden_irreps(cfg: ModelConfig) -> o3.Irreps:
    """``parity`` true: both parities of every l; "natural": (-1)^l only; false: even only (SO(3))."""
    if cfg.parity == "natural":
        return o3.Irreps([(n, (l, (-1) ** l)) for l, n in enumerate(cfg.features_per_l)])
    parities = (1, -1) if cfg.parity is True else (1,)
    return o3.Irreps([(n, (l, p)) for p in parities for l, n in enumerate(cfg.features_per_l)])


class NequIPEnergy(torch.nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        num_species = len(cfg.species)
        self.num_species = num_species
        irreps_attrs = o3.Irreps(f"{num_species}x0e")
        self.irreps_sh = o3.Irreps.spherical_harmonics(cfg.l_max, p=1 if cfg.parity is False else -1)
        self.spherical_harmonics = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        self.radial = RadialEmbedding(cfg.r_max, cfg.num_bessels, cfg.bessel_trainable, cfg.polynomial_p,
                                      cfg.per_edge_type_cutoff)
        self.embedding = o3.Linear(irreps_attrs, o3.Irreps(f"{cfg.embed_features}x0e"))
        # both edges of a pair have one radial row unless asymmetric per-edge-type cutoffs tell them apart
        self.pairable = self.radial.cutoffs.symmetric

        # The readout reads scalars only, so the last layer computes only the paths to scalars (as upstream).
        scalars = cfg.features_per_l[0]
        hidden = [hidden_irreps(cfg)] * (cfg.num_layers - 1) + [o3.Irreps(f"{scalars}x0e")]
        irreps, layers = self.embedding.irreps_out, []
        for irreps_hidden in hidden:
            layer = ConvNetLayer(
                irreps, irreps_hidden, self.irreps_sh, irreps_attrs,
                num_basis=cfg.num_bessels, mlp_depth=cfg.radial_mlp_depth, mlp_width=cfg.radial_mlp_width,
                avg_num_neighbors=cfg.avg_num_neighbors,
            )
            layers.append(layer)
            irreps = layer.irreps_out
        self.layers = torch.nn.ModuleList(layers)
        self.readout = build_readout(scalars, cfg.readout_mlp_depth, cfg.readout_features, cfg.readout_nonlinearity)
        shifts = torch.tensor(cfg.per_species_shifts or (0.0,) * num_species, dtype=torch.get_default_dtype())
        scales = torch.tensor(cfg.per_species_scales or (1.0,) * num_species, dtype=torch.get_default_dtype())
        for name, value, trainable in (("shifts", shifts, cfg.per_species_shifts_trainable),
                                       ("scales", scales, cfg.per_species_scales_trainable)):
            if trainable:
                setattr(self, name, torch.nn.Parameter(value))
            else:
                self.register_buffer(name, value)
        self.zbl = ZBL(cfg.species, cfg.r_max, cfg.per_edge_type_cutoff, cfg.zbl_units,
                       cfg.zbl_polynomial_p) if cfg.zbl else None
        self.needs_edge_species = bool(cfg.per_edge_type_cutoff) or cfg.zbl  # neighbours' species, ghosts too

    @property
    def exchange_width(self) -> int:
        """Features per atom of the widest ghost exchange (each layer exchanges its convolution input)."""
        return max(layer.block.irreps_in.dim for layer in self.layers)

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vec: torch.Tensor,
                row_edges: Optional[torch.Tensor] = None, ghosts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-atom energies ``(len(species),)``; ``edge_vec[e]`` points from receiver ``edge_index[0, e]``
        to sender ``edge_index[1, e]``.

        ``row_edges``: ``arange(P, E)`` when edge ``k + P`` is edge ``k`` reversed for k < P
        (``AtomicGraph.edge_pairs``): the radial networks then run once per pair, on the edges that
        own a weight row (row k: edge k + P, and edge k if k < P, the rule of ``ops.fused``); the
        caller guarantees it. An index, not an int, so that the exported program slices nothing by
        a symbolic size (export cannot prove P <= E). None: one row per edge.
        ``ghosts``: for one subdomain of a decomposed structure, atoms ``len(species) + g`` are ghost
        copies of atoms owned elsewhere (``ops.exchange``) and every receiver is local (``species``
        covers the local atoms). Each layer computes local atoms only; the exchange then fills the
        ghosts' features from their owners. Without ``ghosts`` every atom is local.
        """
        nlocal = species.shape[0]
        num_atoms = nlocal if ghosts is None else nlocal + ghosts.shape[0]
        attrs = torch.nn.functional.one_hot(species, self.num_species).to(edge_vec.dtype)
        sh = self.spherical_harmonics(edge_vec)
        rows, vec = edge_index, edge_vec
        if row_edges is not None and self.pairable:  # a pair's reverse edge stands for the pair
            rows, vec = edge_index.index_select(1, row_edges), edge_vec.index_select(0, row_edges)
        lengths = torch.linalg.vector_norm(vec, dim=-1)
        edge_species = self._all_species(species, ghosts, edge_vec.dtype) if self.needs_edge_species else None
        radial = self.radial(lengths, edge_species, rows)
        graph = self.layers[0].block.conv.prepare(edge_index, num_atoms)  # once per forward, for every layer
        x = self.embedding(attrs)
        for layer in self.layers:
            x = layer(x, attrs, sh, radial, edge_index, graph, ghosts)
        atomic = self.readout(x).squeeze(-1)
        atomic = atomic * self.scales[species] + self.shifts[species]
        if self.zbl is not None:
            atomic = atomic + self.zbl(torch.linalg.vector_norm(edge_vec, dim=-1), edge_species, edge_index, nlocal)
        return atomic

    @staticmethod
    def _all_species(species: torch.Tensor, ghosts: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """Species of local and ghost atoms (the ghosts' from their owners, by one ghost exchange)."""
        if ghosts is None:
            return species
        return ghost_exchange(species.to(dtype).unsqueeze(1), ghosts).squeeze(1).round().long()

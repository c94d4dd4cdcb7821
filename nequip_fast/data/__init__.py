"""Structures in, model-ready graphs out: reading, neighbour lists, batching, statistics."""
from .graph import AtomicGraph, UnknownSpeciesError, batch_graphs, species_indices
from .neighbors import GeometryError, neighbor_list

__all__ = ["AtomicGraph", "GeometryError", "UnknownSpeciesError", "batch_graphs", "neighbor_list", "species_indices"]

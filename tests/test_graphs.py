"""Neighbour lists, periodic images and batching give the same physics as single structures."""
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.neighborlist import neighbor_list as ase_neighbor_list

from conftest import graph_of, random_crystal, random_molecule, small_model
from nequip_fast.data import AtomicGraph, batch_graphs, neighbor_list
from nequip_fast.data.neighbors import edges_paired


def test_neighbor_list_matches_ase_on_a_triclinic_cell():
    atoms = random_crystal(n=5, seed=11)
    edge_index, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 3.5)
    i, j, S = ase_neighbor_list("ijS", atoms, 3.5)
    ours = sorted(zip(edge_index[0], edge_index[1], map(tuple, shifts)))
    theirs = sorted(zip(i, j, map(tuple, S)))
    assert ours == theirs
    half = edge_index.shape[1] // 2
    assert edges_paired(edge_index, shifts, half)  # edge k + E/2 reverses edge k: one radial MLP row per pair
    assert not edges_paired(edge_index, shifts, half + 1) and edges_paired(edge_index, shifts, 0)
    assert (np.diff(edge_index[0, :half]) >= 0).all()
    assert ((edge_index[0] == edge_index[1]) & (np.abs(shifts).sum(1) > 0)).any()  # self-images present


def test_batch_equals_one_at_a_time():
    model = small_model(seed=1)
    structures = [random_molecule(n=5, seed=1), random_crystal(n=4, seed=2), random_molecule(n=8, seed=3)]
    graphs = [graph_of(a, model) for a in structures]
    batched = model(batch_graphs(graphs), stress=True)
    start = 0
    for k, graph in enumerate(graphs):
        single = model(graph, stress=True)
        n = graph.pos.shape[0]
        torch.testing.assert_close(batched.energy[k], single.energy[0], atol=1e-12, rtol=0)
        torch.testing.assert_close(batched.forces[start:start + n], single.forces, atol=1e-12, rtol=0)
        torch.testing.assert_close(batched.virial[k], single.virial[0], atol=1e-12, rtol=0)
        torch.testing.assert_close(batched.stress[k], single.stress[0], atol=1e-12, rtol=0, equal_nan=True)
        start += n
    assert torch.isnan(batched.stress[0]).all() and torch.isfinite(batched.stress[1]).all()


def layout(graph: AtomicGraph, order: torch.Tensor, pairs: int) -> AtomicGraph:
    return AtomicGraph(**{**graph.__dict__, "edge_index": graph.edge_index[:, order],
                          "edge_shift": graph.edge_shift[order], "edge_pairs": pairs})


def test_paired_and_unpaired_edge_layouts_agree():
    """All edges paired (the radial MLP runs on half the edges), some pairs and some unpaired edges
    (P + U rows), and shuffled edges (no pairs): the same energy, forces, virial and training gradients."""
    model = small_model(seed=4)
    structures = [random_crystal(n=4, seed=5), random_molecule(n=6, seed=6)]
    graph = batch_graphs([graph_of(a, model) for a in structures])
    num_edges, half = graph.edge_index.shape[1], graph.edge_pairs
    assert half == num_edges // 2 and edges_paired(graph.edge_index, graph.edge_shift, half)
    order = torch.randperm(num_edges, generator=torch.Generator().manual_seed(0))
    shuffled = layout(graph, order, 0)
    assert not edges_paired(shuffled.edge_index, shuffled.edge_shift, half)
    # the first 5 pairs stay pairs; the other pairs' two edges become unpaired, shuffled
    keep = 5
    tail = torch.cat([torch.arange(keep, half), torch.arange(half + keep, num_edges)])
    tail = tail[torch.randperm(tail.shape[0], generator=torch.Generator().manual_seed(1))]
    mixed = layout(graph, torch.cat([torch.arange(keep), torch.arange(half, half + keep), tail]), keep)
    assert edges_paired(mixed.edge_index, mixed.edge_shift, keep)
    batched = batch_graphs([mixed, graph])  # keeps the layout: both graphs' pairs, reverses, unpaired
    assert batched.edge_pairs == keep + half
    assert edges_paired(batched.edge_index, batched.edge_shift, batched.edge_pairs)
    results = [model(g, stress=True) for g in (graph, mixed, shuffled)]
    for other in results[1:]:
        torch.testing.assert_close(other.energy, results[0].energy, atol=1e-12, rtol=0)
        torch.testing.assert_close(other.forces, results[0].forces, atol=1e-12, rtol=0)
        torch.testing.assert_close(other.virial, results[0].virial, atol=1e-12, rtol=0)
    grads = []
    for g in (graph, mixed, shuffled):  # training gradients too
        model.zero_grad()
        pred = model(g, create_graph=True)
        (pred.energy.sum() + pred.forces.square().sum()).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) == len(grads[2]) > 0
    for other in grads[1:]:
        for ga, gb in zip(grads[0], other):
            torch.testing.assert_close(ga, gb, atol=1e-10, rtol=1e-10)


def test_wrapped_and_lattice_shifted_structures_agree():
    model = small_model(seed=2)
    atoms = random_crystal(n=6, seed=5)
    reference = model(graph_of(atoms, model), stress=True)
    moved = atoms.copy()
    moved.positions += np.array([[1, -2, 0], [0, 1, 1], [3, 1, -1], [0, 0, 2], [-1, 1, 1], [2, 2, 0]]) @ atoms.cell.array
    for variant in (moved, atoms.copy()):
        variant.wrap()
        out = model(graph_of(variant, model), stress=True)
        torch.testing.assert_close(out.energy, reference.energy, atol=1e-10, rtol=0)
        torch.testing.assert_close(out.forces, reference.forces, atol=1e-10, rtol=0)
        torch.testing.assert_close(out.stress, reference.stress, atol=1e-10, rtol=0)


@pytest.mark.parametrize("repeat", [(2, 1, 1), (2, 2, 2)])
def test_small_cell_with_self_images_equals_supercell(repeat):
    """A 3.6 A cell with r_max 4 A: atoms see their own images and must act like supercell copies."""
    model = small_model(seed=3, species=["Cu"], r_max=4.0)
    cell = bulk("Cu", "fcc", a=3.6, cubic=True)
    cell.rattle(0.1, seed=1)
    big = cell.repeat(repeat)
    copies = len(big) // len(cell)
    small_out = model(graph_of(cell, model), stress=True)
    big_out = model(graph_of(big, model), stress=True)
    assert small_out.forces.abs().max() > 1e-3
    torch.testing.assert_close(big_out.energy / copies, small_out.energy, atol=1e-10, rtol=0)
    torch.testing.assert_close(big_out.stress, small_out.stress, atol=1e-10, rtol=0)
    torch.testing.assert_close(big_out.forces, small_out.forces.repeat(copies, 1), atol=1e-10, rtol=0)

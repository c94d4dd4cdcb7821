"""The ``cpu`` and ``cuda`` backends: the C++ ops ``nequip_fast::segment_conv``/``edge_grads`` of the
ops library that ``native`` compiles from csrc/ (the device picks the kernel: csrc/conv_cpu.cpp,
or csrc/cuda/ where the library was built with CUDA), plus its counting-sort ``conv_graph`` and
``segment_conv2`` (CPU kernels only; the double backward uses it for CPU tensors)."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from . import native
from .fused import Backend, ConvGraph, conv_graph, register_fake_and_autograd


def load() -> tuple[Optional[Backend], str]:
    try:
        native.load()  # compiles csrc/ on first use for this torch
    except RuntimeError as e:
        return None, str(e)
    torch.library.register_fake("nequip_fast::conv_graph")(
        lambda edge_index, num_nodes: (edge_index.new_empty(2, num_nodes + 1), edge_index.new_empty(edge_index.shape))
    )
    backend = register_fake_and_autograd("nequip_fast::segment_conv", "nequip_fast::edge_grads",
                                         "nequip_fast::segment_conv2")
    return replace(backend, graph=_graph), ""


def _graph(edge_index: torch.Tensor, num_nodes: int) -> ConvGraph:
    if edge_index.device.type != "cpu":  # the counting sort is serial host code
        return conv_graph(edge_index, num_nodes)
    return ConvGraph(edge_index, *torch.ops.nequip_fast.conv_graph(edge_index, num_nodes))

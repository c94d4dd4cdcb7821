"""Ghost exchange: the one communication step of a domain-decomposed model, as a pair of ops.

A subdomain (an MPI rank in LAMMPS) holds ``nlocal`` atoms it owns, then ``nghost`` ghost copies of
atoms owned elsewhere (or periodic images of its own). Each layer computes features of the local
atoms only; ``ghost_exchange`` then fills the ghost rows from their owners (forward
communication). Its adjoint ``ghost_exchange_adjoint`` sums the gradients that reached ghost rows
into their owners (reverse communication). Each op is the other's derivative, so forces and any
higher derivative are made of the same two ops, and ``torch.export`` keeps them in a deployed file.

The implementation here runs every subdomain in one process: ``ghosts[g]`` is the row of ghost
``g``'s owner among the local rows. It is the test oracle (``model.domains`` builds such
graphs) and lets a user check a decomposition without MPI. The LAMMPS plugin registers its own
implementation of the same schema that uses LAMMPS's forward and reverse communication and ignores
the row indices (lammps_plugin/exchange.cpp).
"""
from __future__ import annotations

import torch

NAMESPACE = "nequip_fast"


@torch.library.custom_op(f"{NAMESPACE}::ghost_exchange", mutates_args=())
def ghost_exchange(x: torch.Tensor, ghosts: torch.Tensor) -> torch.Tensor:
    """``(nlocal, F), (nghost,) -> (nlocal + nghost, F)``: local rows, then each ghost's owner row."""
    return torch.cat([x, x[ghosts]])


@torch.library.custom_op(f"{NAMESPACE}::ghost_exchange_adjoint", mutates_args=())
def ghost_exchange_adjoint(grad: torch.Tensor, ghosts: torch.Tensor) -> torch.Tensor:
    """``(nlocal + nghost, F), (nghost,) -> (nlocal, F)``: local rows plus the ghost rows summed into owners."""
    nlocal = grad.shape[0] - ghosts.shape[0]
    return grad[:nlocal].index_add(0, ghosts, grad[nlocal:])


@ghost_exchange.register_fake
def _(x, ghosts):
    return x.new_empty(x.shape[0] + ghosts.shape[0], x.shape[1])


@ghost_exchange_adjoint.register_fake
def _(grad, ghosts):
    return grad.new_empty(grad.shape[0] - ghosts.shape[0], grad.shape[1])


def _keep_ghosts(ctx, inputs, output):
    ctx.ghosts = inputs[1]


ghost_exchange.register_autograd(lambda ctx, grad: (ghost_exchange_adjoint(grad, ctx.ghosts), None),
                                 setup_context=_keep_ghosts)
ghost_exchange_adjoint.register_autograd(lambda ctx, grad: (ghost_exchange(grad, ctx.ghosts), None),
                                         setup_context=_keep_ghosts)

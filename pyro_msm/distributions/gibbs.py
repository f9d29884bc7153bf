r"""Helpers shared by the exact and Gibbs samplers of the paper's energies
(:mod:`pyro_msm.distributions.squared_interaction`, :mod:`pyro_msm.distributions.truncated`):
seeded private generators and the colour classes of an interaction graph (the blocks of a
vectorised Gibbs sweep).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["colour_classes"]


def seeded_generator(seed: int | None) -> torch.Generator | None:
    """A private generator seeded with ``seed``; ``None`` (the global RNG) for ``None``."""
    return None if seed is None else torch.Generator().manual_seed(int(seed))


def colour_classes(adjacency: Tensor) -> list[Tensor]:
    """Greedy colouring of an undirected graph: index sets of pairwise non-adjacent nodes.

    In a Gibbs sampler, coordinates that do not interact are conditionally independent given
    the others, so a whole colour class can be drawn at once (an exact block update); a sweep
    then costs one vectorised step per colour instead of one per coordinate.

    :param adjacency: boolean ``(d, d)`` (symmetrised; the diagonal is ignored).
    :returns: index tensors covering ``0..d-1``, in increasing order of their first node.
    """
    adj = (adjacency | adjacency.T).cpu()
    d = adj.shape[0]
    neighbours = [set(torch.nonzero(adj[k]).flatten().tolist()) - {k} for k in range(d)]
    colour = [-1] * d
    for k in range(d):
        taken = {colour[j] for j in neighbours[k]}
        colour[k] = next(c for c in range(d) if c not in taken)
    return [
        torch.tensor([k for k in range(d) if colour[k] == c], dtype=torch.long)
        for c in range(max(colour) + 1)
    ]


# ================================================================================================

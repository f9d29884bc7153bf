r"""Graphs, sparse precision matrices and data sets for Gaussian graphical-model experiments.

A graph is a symmetric boolean adjacency matrix ``(d, d)`` with a False diagonal. A precision
matrix with that sparsity pattern is built by :func:`precision_from_graph`: edge weights of
random sign and magnitude, then a diagonal shift that sets the condition number exactly, then a
rescaling to unit average variance. :func:`simulate_graph` draws a data set (optionally
truncated to the paper's random half-space, reusing
:class:`~pyro_msm.distributions.paper.TruncatedGaussianEnergy`) and an MCAR mask.

Generators (all seeded through a private :class:`torch.Generator`):

- :func:`star_graph`: one hub joined to every other node, plus ``extra_edges`` random edges
  among the other nodes;
- :func:`hub_graph`: ``k`` hubs, the other nodes split into ``k`` near-equal groups, each
  joined to its hub (the multi-hub graph);
- :func:`erdos_renyi_graph`: every pair an edge with probability ``p``;
- :func:`dense_graph`: Erdos-Renyi with ``p = 0.5``;
- :func:`chain_graph`: ``i -- i+1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..distributions import GaussianEnergy
from ..distributions.paper import TruncatedGaussianEnergy
from ..missingness import MaskedTable, mcar_mask

__all__ = [
    "GRAPHS",
    "GraphProblem",
    "star_graph",
    "hub_graph",
    "erdos_renyi_graph",
    "dense_graph",
    "chain_graph",
    "make_graph",
    "precision_from_graph",
    "simulate_graph",
]

#: Graph names understood by :func:`make_graph` and :func:`simulate_graph`.
GRAPHS = ("star", "hub", "dense", "erdos_renyi", "chain")


def _check_d(d: int, minimum: int = 2) -> int:
    if isinstance(d, bool) or not isinstance(d, int) or d < minimum:
        raise ValueError(f"d must be an integer of at least {minimum}, got {d!r}")
    return d


def _generator(seed: int | None) -> torch.Generator:
    return torch.Generator().manual_seed(0 if seed is None else int(seed))


def _symmetric(upper: Tensor) -> Tensor:
    """Boolean adjacency from a strictly upper-triangular boolean matrix."""
    upper = torch.triu(upper, diagonal=1)
    return upper | upper.T


def _random_pairs(candidates: Tensor, count: int, g: torch.Generator) -> Tensor:
    """``count`` distinct entries of the strictly upper-triangular boolean ``candidates``, chosen
    uniformly; returned as a symmetric adjacency."""
    rows, cols = torch.nonzero(torch.triu(candidates, diagonal=1), as_tuple=True)
    if count > rows.numel():
        raise ValueError(f"asked for {count} random edges but only {rows.numel()} pairs are free")
    pick = torch.randperm(rows.numel(), generator=g)[:count]
    out = torch.zeros_like(candidates)
    out[rows[pick], cols[pick]] = True
    return _symmetric(out)


def star_graph(d: int, extra_edges: int = 0, *, hub: int = 0, seed: int | None = 0) -> Tensor:
    """A star: node ``hub`` joined to every other node, plus ``extra_edges`` edges drawn
    uniformly among pairs of non-hub nodes.

    :param d: number of nodes (at least 2).
    :param extra_edges: random edges added among the leaves (``0 <= extra_edges <=
        (d-1)(d-2)/2``).
    :param hub: index of the hub.
    :param seed: seed of the extra edges.
    :returns: boolean adjacency ``(d, d)``.
    """
    d = _check_d(d)
    if not 0 <= hub < d:
        raise ValueError(f"hub must be in [0, {d}), got {hub}")
    if extra_edges < 0:
        raise ValueError(f"extra_edges must be non-negative, got {extra_edges}")
    adjacency = torch.zeros(d, d, dtype=torch.bool)
    adjacency[hub, :] = True
    adjacency[:, hub] = True
    adjacency.fill_diagonal_(False)
    if extra_edges:
        leaves = torch.ones(d, dtype=torch.bool)
        leaves[hub] = False
        free = leaves[:, None] & leaves[None, :]
        adjacency |= _random_pairs(free, int(extra_edges), _generator(seed))
    return adjacency


def hub_graph(d: int, num_hubs: int = 2) -> Tensor:
    """The ``k``-hub graph: nodes ``0..k-1`` are hubs; the other nodes are split into ``k``
    contiguous groups of near-equal size, each joined to its own hub. Hubs are not joined.

    :param d: number of nodes (at least ``2 * num_hubs``, so every hub has a leaf).
    :param num_hubs: ``k >= 1``.
    :returns: boolean adjacency ``(d, d)``.
    """
    if isinstance(num_hubs, bool) or not isinstance(num_hubs, int) or num_hubs < 1:
        raise ValueError(f"num_hubs must be a positive integer, got {num_hubs!r}")
    d = _check_d(d, 2 * num_hubs)
    leaves = torch.arange(num_hubs, d)
    group = torch.div(
        (leaves - num_hubs) * num_hubs, d - num_hubs, rounding_mode="floor"
    )  # contiguous, sizes differ by at most one
    adjacency = torch.zeros(d, d, dtype=torch.bool)
    adjacency[group, leaves] = True
    return adjacency | adjacency.T


def erdos_renyi_graph(d: int, p: float = 0.2, *, seed: int | None = 0) -> Tensor:
    """Erdos-Renyi graph: each of the ``d(d-1)/2`` pairs is an edge with probability ``p``.

    :param d: number of nodes; :param p: edge probability in ``[0, 1]`` (default 0.2);
    :param seed: seed.
    :returns: boolean adjacency ``(d, d)``.
    """
    d = _check_d(d)
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"edge probability p must be in [0, 1], got {p}")
    u = torch.rand(d, d, generator=_generator(seed))
    return _symmetric(u < float(p))


def dense_graph(d: int, *, seed: int | None = 0) -> Tensor:
    """The paper's dense graph: Erdos-Renyi with edge probability 0.5."""
    return erdos_renyi_graph(d, 0.5, seed=seed)


def chain_graph(d: int) -> Tensor:
    """The chain ``0 -- 1 -- ... -- d-1``."""
    d = _check_d(d)
    idx = torch.arange(d - 1)
    adjacency = torch.zeros(d, d, dtype=torch.bool)
    adjacency[idx, idx + 1] = True
    return adjacency | adjacency.T


def make_graph(name: str, d: int, *, seed: int | None = 0, **kwargs) -> Tensor:
    """A graph by name (one of :data:`GRAPHS`); ``kwargs`` go to its generator (e.g.
    ``extra_edges`` for ``"star"``, ``num_hubs`` for ``"hub"``, ``p`` for ``"erdos_renyi"``).
    """
    if name == "star":
        return star_graph(d, seed=seed, **kwargs)
    if name == "hub":
        return hub_graph(d, **kwargs)
    if name == "dense":
        return dense_graph(d, seed=seed, **kwargs)
    if name == "erdos_renyi":
        return erdos_renyi_graph(d, seed=seed, **kwargs)
    if name == "chain":
        return chain_graph(d, **kwargs)
    raise ValueError(f"unknown graph {name!r}; choose one of {GRAPHS}")


def check_adjacency(adjacency: Tensor) -> Tensor:
    """Validate a symmetric boolean (or 0/1) adjacency with a zero diagonal; returns it as bool.

    :raises TypeError: if not a tensor. :raises ValueError: if not square, symmetric, 0/1, or
        with a nonzero diagonal.
    """
    if not isinstance(adjacency, Tensor):
        raise TypeError(f"adjacency must be a torch.Tensor, got {type(adjacency).__name__}")
    if adjacency.dim() != 2 or adjacency.shape[0] != adjacency.shape[1]:
        raise ValueError(f"adjacency must be square (d, d), got shape {tuple(adjacency.shape)}")
    if adjacency.dtype != torch.bool:
        if not bool(((adjacency == 0) | (adjacency == 1)).all()):
            raise ValueError("adjacency must be boolean or 0/1")
        adjacency = adjacency != 0
    if not bool((adjacency == adjacency.T).all()):
        raise ValueError("adjacency must be symmetric")
    if bool(adjacency.diagonal().any()):
        raise ValueError("adjacency must have a False diagonal (no self-loops)")
    return adjacency


def precision_from_graph(
    adjacency: Tensor,
    *,
    condition_number: float = 10.0,
    weight_range: tuple[float, float] = (0.5, 1.0),
    seed: int | None = 0,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    r"""A positive-definite precision with the graph's sparsity pattern and an exact condition
    number.

    1. Off-diagonal weights :math:`W_{ij} = W_{ji} = \pm U(a, b)` on the edges (random sign),
       zero elsewhere.
    2. :math:`P = W + \delta I` with :math:`\delta` such that
       :math:`(\lambda_{\max}(W) + \delta)/(\lambda_{\min}(W) + \delta) = \kappa`; the
       spectrum of ``P`` is the shifted spectrum of ``W``. A graph with no edge gives
       :math:`P \propto I` (condition number 1).
    3. ``P`` is rescaled by a constant so that the average variance
       :math:`\mathrm{tr}(P^{-1})/d` is one (neither the pattern nor :math:`\kappa` changes).

    :param adjacency: symmetric boolean ``(d, d)``.
    :param condition_number: :math:`\kappa > 1`; larger values give stronger partial
        correlations (a smaller diagonal relative to the edge weights).
    :param weight_range: ``(a, b)`` with ``0 < a <= b``: edge weight magnitudes.
    :param seed: seed of weights and signs.
    :param dtype: floating dtype of the result.
    :returns: ``(d, d)`` symmetric positive-definite precision, nonzero off the diagonal
        exactly on the edges.
    :raises ValueError: for a bad adjacency, :math:`\kappa \le 1` or a bad weight range.
    """
    adjacency = check_adjacency(adjacency)
    if not condition_number > 1.0:
        raise ValueError(f"condition_number must be greater than 1, got {condition_number}")
    lo, hi = (float(v) for v in weight_range)
    if not 0.0 < lo <= hi:
        raise ValueError(f"weight_range must satisfy 0 < a <= b, got {weight_range}")
    d = adjacency.shape[0]
    g = _generator(seed)
    magnitude = lo + (hi - lo) * torch.rand(d, d, generator=g, dtype=dtype)
    sign = torch.where(torch.rand(d, d, generator=g) < 0.5, -1.0, 1.0).to(dtype)
    upper = torch.triu(magnitude * sign * adjacency.to(dtype), diagonal=1)
    weights = upper + upper.T
    eye = torch.eye(d, dtype=dtype)
    if not bool(adjacency.any()):
        precision = eye.clone()
    else:
        eigenvalues = torch.linalg.eigvalsh(weights)
        small, large = eigenvalues[0], eigenvalues[-1]
        shift = (large - condition_number * small) / (condition_number - 1.0)
        precision = weights + shift * eye
    covariance = torch.cholesky_inverse(torch.linalg.cholesky(precision))
    precision = precision * (covariance.diagonal().mean())  # tr(P^-1)/d = 1
    return 0.5 * (precision + precision.T)


@dataclass(frozen=True)
class GraphProblem(MaskedTable):
    """A graph, its precision, complete draws and an MCAR mask.

    :ivar name: graph name (see :data:`GRAPHS`).
    :ivar adjacency: boolean ``(d, d)`` true graph.
    :ivar precision: true precision ``(d, d)`` (float64).
    :ivar x: complete data ``(n, d)`` before masking.
    :ivar mask: boolean ``(n, d)``, True where observed.
    :ivar missing_rate: requested MCAR rate.
    :ivar seed: seed of everything.
    :ivar truncation: the half-space the data were truncated to, or None.
    """

    name: str
    adjacency: Tensor
    precision: Tensor
    x: Tensor
    mask: Tensor
    missing_rate: float
    seed: int
    truncation: object | None = None

    @property
    def num_edges(self) -> int:
        """Number of edges of the true graph."""
        return int(torch.triu(self.adjacency, diagonal=1).sum())


def simulate_graph(
    graph: str | Tensor = "star",
    d: int = 10,
    n: int = 1000,
    missing_rate: float = 0.3,
    *,
    seed: int = 0,
    condition_number: float = 10.0,
    weight_range: tuple[float, float] = (0.5, 1.0),
    truncated: bool = False,
    dtype: torch.dtype | None = None,
    **graph_kwargs,
) -> GraphProblem:
    r"""Simulate a centred Gaussian graphical-model data set with an MCAR mask.

    Rows are exact draws of :math:`N(0, P^{-1})` (:meth:`GaussianEnergy.sample`) with ``P``
    from :func:`precision_from_graph`; with ``truncated=True`` they are exact draws of that
    Gaussian truncated to a random half-space through its mean, the paper's truncation
    (:meth:`TruncatedGaussianEnergy.with_random_halfspace`, sampler ``"conditioning"``), and
    :attr:`GraphProblem.truncation` holds the half-space (fit such data with
    ``support=problem.truncation`` in :class:`~pyro_msm.graphical.GraphicalScoreMatching`).

    :param graph: a name in :data:`GRAPHS` or a boolean adjacency.
    :param d: dimension (ignored when ``graph`` is an adjacency).
    :param n: number of rows.
    :param missing_rate: MCAR rate in ``[0, 1)`` (:func:`~pyro_msm.missingness.mcar_mask`).
    :param seed: seeds graph, precision, data, truncation and mask.
    :param condition_number: of the precision (see :func:`precision_from_graph`).
    :param weight_range: edge weight magnitudes.
    :param truncated: truncate to a random half-space through the mean.
    :param dtype: dtype of the data (default: torch's default); the truth is float64.
    :param graph_kwargs: passed to the graph generator (e.g. ``extra_edges``, ``num_hubs``).
    :returns: a :class:`GraphProblem`.
    """
    if isinstance(graph, Tensor):
        adjacency, name = check_adjacency(graph), "custom"
    else:
        adjacency, name = make_graph(graph, d, seed=seed, **graph_kwargs), graph
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    precision = precision_from_graph(
        adjacency, condition_number=condition_number, weight_range=weight_range, seed=seed
    )
    dim = precision.shape[0]
    loc = torch.zeros(dim, dtype=torch.float64)
    fork = torch.random.fork_rng()
    with fork:
        torch.manual_seed(int(seed) + 1)
        if truncated:
            energy = TruncatedGaussianEnergy.with_random_halfspace(
                loc, precision, seed=int(seed) + 2, sampler="conditioning"
            )
            truncation = energy.support
        else:
            energy, truncation = GaussianEnergy(loc, precision), None
        x = energy.sample((n,)).to(dtype)
    mask = mcar_mask(x.shape, missing_rate, seed=int(seed) + 3)
    return GraphProblem(
        name=name,
        adjacency=adjacency,
        precision=precision,
        x=x,
        mask=mask,
        missing_rate=float(missing_rate),
        seed=int(seed),
        truncation=truncation,
    )


def condition_number(matrix: Tensor) -> float:
    """Ratio of the largest to the smallest eigenvalue of a symmetric positive-definite matrix."""
    eigenvalues = torch.linalg.eigvalsh(matrix.detach().to(torch.float64))
    return float(eigenvalues[-1] / eigenvalues[0]) if eigenvalues[0] > 0 else math.inf

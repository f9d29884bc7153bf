"""Domains of truncated models: supports, membership and distance to the boundary."""

from __future__ import annotations

import math

import torch
from pyro.distributions import constraints
from torch import Tensor
from torch.distributions.constraints import Constraint

__all__ = ["HalfSpace", "boundary_distance", "in_support", "moving_section"]


class HalfSpace(Constraint):
    r"""The half-space :math:`\{x \in \mathbb{R}^d : w^\top x \le c\}` (event dimension 1).

    :param normal: :math:`w`, shape ``(d,)``, nonzero.
    :param offset: :math:`c`.
    """

    event_dim = 1

    def __init__(self, normal: Tensor, offset: float | Tensor = 0.0) -> None:
        if normal.dim() != 1 or not bool((normal != 0).any()):
            raise ValueError("HalfSpace: normal must be a nonzero vector")
        self.normal = normal
        self.offset = torch.as_tensor(offset, dtype=normal.dtype, device=normal.device)
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        return (value * self.normal.to(value)).sum(-1) <= self.offset.to(value)

    def __repr__(self) -> str:
        return f"HalfSpace(normal={self.normal.tolist()}, offset={float(self.offset)})"


def _base(support: Constraint) -> Constraint:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def in_support(support: Constraint, z: Tensor) -> Tensor | None:
    """Boolean ``z.shape[:-1]``: rows of ``z`` inside ``support``; None for unbounded supports."""
    if _base(support) in (constraints.real, constraints.real_vector):
        return None
    inside = support.check(z)
    if inside.shape == z.shape:  # an elementwise constraint not wrapped in independent
        inside = inside.all(-1)
    return inside


def boundary_distance(support: Constraint, x: Tensor, mask: Tensor) -> Tensor:
    r"""Distance from the observed coordinates :math:`x_o` to the boundary of their domain.

    The domain of :math:`x_o` is the projection of ``support`` on the observed coordinates. For
    product domains (orthants, boxes, one-sided bounds) the distance along coordinate ``j``
    depends on :math:`x_j` only and is returned per coordinate. For a :class:`HalfSpace`
    :math:`w^\top x \le c`, a row whose missing coordinates touch :math:`w` has an unbounded
    projection (infinite distance); otherwise the distance is
    :math:`(c - w_o^\top x_o)/\lVert w_o \rVert`, the same for every coordinate.

    :param support: the model's support.
    :param x: ``(..., n, d)`` rows (missing entries arbitrary).
    :param mask: boolean ``(n, d)``, True where observed.
    :returns: ``(..., n, d)`` distances (``inf`` where there is no boundary).
    :raises TypeError: for a support it does not know.
    """
    base = _base(support)
    inf = torch.full_like(x, math.inf)
    if base in (constraints.real, constraints.real_vector):
        return inf
    if isinstance(base, (constraints.greater_than, constraints.greater_than_eq)):
        return x - base.lower_bound
    if isinstance(base, constraints.less_than):
        return base.upper_bound - x
    if isinstance(base, (constraints.interval, constraints.half_open_interval)):
        return torch.minimum(x - base.lower_bound, base.upper_bound - x)
    if isinstance(base, HalfSpace):
        w = base.normal.to(x)
        m = mask.to(x.dtype)
        touches_missing = ((w != 0) & ~mask).any(-1, keepdim=True)
        w_o = w * m
        dist = (base.offset.to(x) - (x * w_o).sum(-1, keepdim=True)) / w_o.norm(
            dim=-1, keepdim=True
        ).clamp(min=torch.finfo(x.dtype).tiny)
        return torch.where(touches_missing, inf[..., :1], dist).expand(x.shape)
    raise TypeError(
        f"no boundary distance for support {support}; pass a weight function to "
        "TruncatedObjective (supported: positive/nonnegative orthants, bounds, boxes, HalfSpace)"
    )


def moving_section(support: Constraint, mask: Tensor) -> Tensor:
    r"""Rows whose missing coordinates range over a set that moves with the observed ones.

    For a :class:`HalfSpace` :math:`w^\top x \le c`, the missing block of a row lives in
    :math:`\{x_u : w_u^\top x_u \le c - w_o^\top x_o\}`, which depends on :math:`x_o` when
    both :math:`w_u` and :math:`w_o` are nonzero. There the marginal score gains a boundary term,
    :math:`s_o = E[\nabla_o \log p \mid x_o] - w_o\,\rho(c - w_o^\top x_o \mid x_o)`, with
    :math:`\rho` the conditional density of :math:`w_u^\top x_u`, which the estimators of
    :class:`~pyro_msm.infer.MissingScoreMatching` (like the paper's) do not include. Product
    domains (orthants, boxes, bounds) never move.

    :param support: the model's support.
    :param mask: boolean ``(n, d)``, True where observed.
    :returns: boolean ``(n,)``.
    """
    base = _base(support)
    if not isinstance(base, HalfSpace):
        return torch.zeros(mask.shape[:-1], dtype=torch.bool, device=mask.device)
    touches = base.normal.to(mask.device) != 0
    return (touches & ~mask).any(-1) & (touches & mask).any(-1)

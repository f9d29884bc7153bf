r"""Estimators: each turns a batch of incomplete rows into weighted :class:`Particles`.

=================  ===================================================  ====================
estimator          particles                                            weights
=================  ===================================================  ====================
``iw``             proposal draws of :math:`x_u`                        self-normalised IW
``variational``    guide draws of :math:`x_u` (detached)                uniform, covariance-
                                                                        identity gradient
``zeroed``         the zero-filled row                                  one
``mean_impute``    missing entries set to observed column means         one
``complete_case``  rows with nothing missing                            one
``hybrid``         guide draws of :math:`x_u` (detached)                self-normalised IW
``em``             proposal draws of :math:`x_u`                        IW, model frozen
=================  ===================================================  ====================

For truncated domains, importance draws outside the model's support get weight zero; a row all
of whose draws fall outside is dropped from that step (the loss warns with the count).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution

from .. import distributed
from ..distributions.domains import in_support
from .derivatives import log_prob
from .objectives import Particles
from .proposals import Proposal
from .sites import memo

__all__ = [
    "weighted_particles",
    "importance_particles",
    "variational_particles",
    "zeroed_particles",
    "mean_impute_particles",
    "complete_case_particles",
    "score_function_weights",
    "single_particle",
]


def _complete(x: Tensor, mask: Tensor, draws: Tensor) -> Tensor:
    return torch.where(mask, x, draws.detach())


def _has_observed(mask: Tensor) -> Tensor:
    """``(n,)`` True for the rows with an observed entry (computed once per mask)."""
    return memo(mask, "has_observed", lambda: mask.any(-1))


def weighted_particles(
    fn: Distribution,
    x: Tensor,
    mask: Tensor,
    draws: Tensor,
    log_p: Tensor,
    *,
    frozen: bool = False,
) -> Particles:
    r"""Self-normalised importance weights
    :math:`w = \mathrm{softmax}_k(\log q_\theta(z_k) - \log p'(x'_{k,u}))` for given draws.

    The gradient flows through the weights (and, in the objective, through the scores), which
    differentiates the self-normalised estimator exactly for the fixed draws; ``frozen``
    detaches the weights (EM). Draws outside the model's support get weight zero; rows with no
    draw inside are dropped (``row_weight`` 0) and counted in ``Particles.outside``.

    :param draws: ``(r, n, d)`` completions (only missing coordinates are used).
    :param log_p: ``(r, n)`` proposal log density of the missing block.
    """
    z = _complete(x, mask, draws)
    log_w = log_prob(fn, z) - log_p.detach()
    if frozen:
        log_w = log_w.detach()
    row_weight = _has_observed(mask).to(x)
    outside = None
    inside = in_support(fn.support, z)
    if inside is not None:
        log_w = log_w.masked_fill(~inside, -math.inf)
        outside = ~inside.any(0)
        log_w = log_w.masked_fill(outside, 0.0)  # a finite softmax; the row is dropped below
        row_weight = row_weight * (~outside).to(x)
    weights = torch.softmax(log_w, dim=0)
    return Particles(z, weights, mask, row_weight, outside=outside)


def importance_particles(
    fn: Distribution,
    x: Tensor,
    mask: Tensor,
    proposal: Proposal,
    num_particles: int,
    *,
    frozen: bool = False,
) -> Particles:
    """Marg-IW (and, with ``frozen``, the E-step of EM): :func:`weighted_particles` for
    ``num_particles`` draws from ``proposal``."""
    draws, log_p = proposal.sample(x, mask, num_particles)
    return weighted_particles(fn, x, mask, draws, log_p, frozen=frozen)


def score_function_weights(log_q: Tensor) -> Tensor:
    r"""Uniform weights :math:`1/r` whose gradient is the covariance identity.

    :math:`w_k = \frac1r(1 + \tilde l_k - \mathrm{sg}(\tilde l_k))` with
    :math:`\tilde l = l - \bar l` and :math:`l_k = \log q_\theta(z_k)`: the value is :math:`1/r`
    and :math:`\nabla \sum_k w_k h_k = \overline{\nabla h} + \mathrm{Cov}(\nabla l, h)`, so every
    weighted moment differentiates as METHOD.md's surrogate requires.

    :param log_q: ``(r, n)`` model log densities at detached particles, carrying the gradient.
    """
    centred = log_q - log_q.mean(0, keepdim=True)
    return (1.0 + centred - centred.detach()) / log_q.shape[0]


def variational_particles(
    fn: Distribution,
    x: Tensor,
    mask: Tensor,
    draws: Tensor,
    log_q: Tensor | None = None,
    *,
    completed: bool = False,
) -> Particles:
    """Marg-Var's surrogate particles: guide draws with :func:`score_function_weights`.

    :param draws: ``(r, n, d)`` guide draws (their observed coordinates are ignored).
    :param log_q: the model's log density at the completed draws, if already computed.
    :param completed: the draws are completed rows already (observed entries equal ``x``'s, as
        in a data site's ``value``): they are used as they are (detached), which saves a
        masked select of ``(r, n, d)`` entries.
    """
    z = draws.detach() if completed else _complete(x, mask, draws)
    log_q = log_prob(fn, z) if log_q is None else log_q
    return Particles(z, score_function_weights(log_q), mask, _has_observed(mask).to(x))


def single_particle(
    z: Tensor, scored: Tensor, row_weight: Tensor, *, all_scored: bool = False
) -> Particles:
    """One particle of constant weight one per row (:attr:`Particles.unit_weight`).

    :param z: ``(n, d)`` the rows.
    :param all_scored: every coordinate is scored (complete rows; see
        :attr:`Particles.all_scored`).
    """
    return Particles(
        z.unsqueeze(0),
        torch.ones(z.shape[:1], dtype=z.dtype, device=z.device)[None],
        scored,
        row_weight,
        unit_weight=True,
        all_scored=all_scored,
    )


def zeroed_particles(x: Tensor, mask: Tensor) -> Particles:
    """The zero-filled row, scoring the observed coordinates of the full model's score."""
    return single_particle(x, mask, _has_observed(mask).to(x))


def mean_impute_particles(x: Tensor, mask: Tensor, *, over_ranks: bool = False) -> Particles:
    """Missing entries replaced by the observed mean of their column; every coordinate scored.
    With ``over_ranks``, the means of all :mod:`torch.distributed` ranks' rows (a collective)."""
    m = mask.to(x.dtype)
    sums, counts = (x * m).sum(0), m.sum(0)
    if over_ranks:
        sums, counts = distributed.all_reduce_sum(torch.stack([sums, counts]))
    means = sums / counts.clamp(min=1)
    z = torch.where(mask, x, means.expand_as(x))
    return single_particle(z, torch.ones_like(mask), _has_observed(mask).to(x), all_scored=True)


def complete_case_particles(x: Tensor, mask: Tensor) -> Particles:
    """Only rows with every coordinate observed, each scored classically."""
    return single_particle(x, mask, mask.all(-1).to(x))

r"""Score-matching objectives over weighted particles.

An estimator (:mod:`pyro_msm.infer.estimators`) hands over :class:`Particles`: completed points
:math:`z_k` (observed coordinates from the data, missing ones drawn), weights :math:`w_k` over
the particles of each row, and the coordinates to score. An objective turns the model's
derivatives at those points into a per-row loss, never knowing which estimator drew them.

The weights carry the whole difference between estimators' *gradients*: self-normalised
importance weights (whose gradient is the IW estimator's), uniform weights whose gradient is the
covariance identity (the variational surrogate), or constants (baselines).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
from torch.distributions import Distribution

from .derivatives import score_and_diag_jacobian

__all__ = ["Particles", "weighted_mean", "exact_objective"]


@dataclass
class Particles:
    """Weighted completions of a batch of rows.

    :ivar z: completed points ``(r, n, d)``.
    :ivar weights: ``(r, n)``, summing to one over particles; may carry a gradient.
    :ivar scored: boolean ``(n, d)``: the coordinates the loss sums over (the observed ones).
    :ivar row_weight: ``(n,)`` multiplier of each row's loss (0 drops a row).
    """

    z: Tensor
    weights: Tensor
    scored: Tensor
    row_weight: Tensor

    @property
    def effective_sample_size(self) -> Tensor:
        """:math:`1 / \\sum_k w_k^2` for each row, ``(n,)``."""
        w = self.weights.detach()
        return 1.0 / (w * w).sum(0)


def weighted_mean(weights: Tensor, values: Tensor) -> Tensor:
    """:math:`\\sum_k w_k h_k` for ``weights (r, n)`` and ``values (r, n, ...)``."""
    w = weights.reshape(weights.shape + (1,) * (values.dim() - weights.dim()))
    return (w * values).sum(0)


def exact_objective(fn: Distribution, particles: Particles) -> Tensor:
    r"""The marginal Hyvarinen loss per row from weighted particles:

    .. math:: L = \sum_{j \in o} \big[ 2\,\bar E[b_j] + 2\,\bar E[a_j^2] - \bar E[a_j]^2 \big]

    where :math:`\bar E` is the weighted mean over particles. With one particle of weight one it
    is classical score matching on the scored coordinates, :math:`\sum_j 2 b_j + a_j^2`.

    :returns: ``(n,)`` per-row losses (before ``row_weight``).
    """
    a, b = score_and_diag_jacobian(fn, particles.z)
    w = particles.weights
    mean_a = weighted_mean(w, a)
    per_coordinate = 2 * weighted_mean(w, b) + 2 * weighted_mean(w, a * a) - mean_a * mean_a
    return (per_coordinate * particles.scored.to(per_coordinate.dtype)).sum(-1)

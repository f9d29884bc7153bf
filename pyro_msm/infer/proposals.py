r"""Proposals :math:`p'(x_u \mid x_o)` for the importance-weighting estimator.

A proposal draws the missing coordinates of every row and returns the log density of each draw's
*missing block* (the factor that enters the importance weight). Choose one by name in
:class:`~pyro_msm.infer.MissingScoreMatching` (``"moment_matched"``, the default, or ``"wide"``),
pass a :class:`Proposal`, or pass a Pyro distribution over rows.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import Independent, MultivariateNormal, Normal
from torch import Tensor
from torch.distributions import Distribution

from .gaussian import conditional_gaussian, pairwise_moments, restrict, sample_conditional_gaussian

__all__ = [
    "Proposal",
    "GaussianConditionalProposal",
    "MomentMatchedProposal",
    "WideGaussianProposal",
    "DistributionProposal",
    "make_proposal",
]


class Proposal:
    """Interface: draw missing coordinates given the observed ones."""

    def sample(self, x: Tensor, mask: Tensor, num_particles: int) -> tuple[Tensor, Tensor]:
        """Draw completions.

        :param x: ``(n, d)`` rows, missing entries zero-filled.
        :param mask: boolean ``(n, d)``, True where observed.
        :param num_particles: draws per row ``r``.
        :returns: draws ``(r, n, d)`` (only missing coordinates are used) and the log density of
            each draw's missing block ``(r, n)``. Neither may carry a gradient.
        """
        raise NotImplementedError


class GaussianConditionalProposal(Proposal):
    r"""The conditional :math:`N(x_u \mid x_o)` of a fixed Gaussian :math:`N(\mu, \Sigma)`,
    optionally mixed with a wider copy (defensive importance sampling).

    :param loc: ``(d,)``. :param covariance: ``(d, d)``, positive definite.
    :param defensive: mixture weight of the component with standard deviations scaled by
        ``defensive_scale``; it bounds the importance weights where the Gaussian is too narrow.
    :param defensive_scale: that scale factor.
    """

    def __init__(
        self,
        loc: Tensor,
        covariance: Tensor,
        *,
        defensive: float = 0.1,
        defensive_scale: float = 2.0,
    ) -> None:
        if not 0.0 <= defensive < 1.0:
            raise ValueError(f"defensive must be in [0, 1), got {defensive}")
        self.defensive = float(defensive)
        self.defensive_scale = float(defensive_scale)
        self.loc = loc.detach()
        self.covariance = covariance.detach()
        self.precision = torch.cholesky_inverse(torch.linalg.cholesky(self.covariance))

    @classmethod
    def fit(cls, x: Tensor, mask: Tensor | None = None, **kwargs) -> GaussianConditionalProposal:
        """Moment-match a Gaussian to incomplete data (pairwise-available entries, projected to
        positive definite). ``mask`` defaults to the non-NaN entries of ``x``; other keyword
        arguments go to the constructor."""
        mask = ~torch.isnan(x) if mask is None else mask
        loc, cov = pairwise_moments(torch.nan_to_num(x.detach()), mask)
        return cls(loc, cov, **kwargs)

    def sample(self, x: Tensor, mask: Tensor, num_particles: int) -> tuple[Tensor, Tensor]:
        loc = self.loc.to(x)
        mean, chol = conditional_gaussian(x, mask, loc, self.precision.to(x))
        return sample_conditional_gaussian(
            mean,
            chol,
            mask,
            num_particles,
            defensive=self.defensive,
            defensive_scale=self.defensive_scale,
        )


class MomentMatchedProposal(Proposal):
    """The default: a :class:`GaussianConditionalProposal` moment-matched to each batch.

    With a subsampled plate the batch is a minibatch; to match moments on the whole table,
    pass ``GaussianConditionalProposal.fit(table)`` instead. The importance weights correct for
    whatever Gaussian is used, so this only affects variance, not what is estimated.

    :param kwargs: passed to :class:`GaussianConditionalProposal` (``defensive``, ...).
    """

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs

    def sample(self, x: Tensor, mask: Tensor, num_particles: int) -> tuple[Tensor, Tensor]:
        proposal = GaussianConditionalProposal.fit(x, mask, **self.kwargs)
        return proposal.sample(x, mask, num_particles)


class DistributionProposal(Proposal):
    """A proposal independent of the observed values, from a Pyro distribution over rows.

    The weight needs the density of the *missing block*; it is computed exactly for
    distributions that factorise over coordinates (e.g. ``Normal(...).to_event(1)``) and for
    :class:`~pyro.distributions.MultivariateNormal` (its marginal on the missing block).

    :param distribution: event shape ``(d,)``, batch shape ``()``.
    """

    def __init__(self, distribution: Distribution) -> None:
        if distribution.event_shape.numel() < 1 or len(distribution.event_shape) != 1:
            raise ValueError("a proposal distribution must have event shape (d,)")
        if not isinstance(distribution, (MultivariateNormal, Independent)):
            raise TypeError(
                "proposal distributions must factorise over coordinates (Independent, e.g. "
                "Normal(...).to_event(1)) or be a MultivariateNormal; for another family write "
                "a pyro_msm.infer.proposals.Proposal subclass"
            )
        self.distribution = distribution

    def sample(self, x: Tensor, mask: Tensor, num_particles: int) -> tuple[Tensor, Tensor]:
        dist_ = self.distribution
        draws = dist_.sample((num_particles, x.shape[0])).to(x)
        missing = ~mask
        if isinstance(dist_, MultivariateNormal):
            cov = dist_.covariance_matrix.to(x)
            chol = torch.linalg.cholesky(restrict(cov, missing))
            diff = (draws - dist_.loc.to(x)) * missing.to(x)
            white = torch.linalg.solve_triangular(chol, diff.unsqueeze(-1), upper=False).squeeze(-1)
            log_det = (torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)) * missing).sum(-1)
            log_prob = (
                -0.5 * (white * white).sum(-1)
                - log_det
                - 0.5 * math.log(2 * math.pi) * missing.sum(-1)
            )
            return draws, log_prob
        base = dist_.base_dist
        while isinstance(base, Independent):
            base = base.base_dist
        per_coordinate = base.log_prob(draws)
        if per_coordinate.shape != draws.shape:
            raise TypeError("the proposal's base distribution must be elementwise over coordinates")
        return draws, (per_coordinate * missing).sum(-1)


class WideGaussianProposal(DistributionProposal):
    """The paper's fixed proposal :math:`N(0, \\sigma^2 I)`, :math:`\\sigma = 4` by default."""

    def __init__(self, scale: float = 4.0, dim: int | None = None) -> None:
        self.scale = float(scale)

    def sample(self, x: Tensor, mask: Tensor, num_particles: int) -> tuple[Tensor, Tensor]:
        loc = torch.zeros((), dtype=x.dtype, device=x.device)
        self.distribution = Independent(Normal(loc, self.scale).expand(x.shape[-1:]), 1)
        return super().sample(x, mask, num_particles)


def make_proposal(proposal: str | Proposal | Distribution) -> Proposal:
    """Resolve the ``proposal`` option of the loss."""
    if isinstance(proposal, Proposal):
        return proposal
    if isinstance(proposal, Distribution):
        return DistributionProposal(proposal)
    if proposal == "moment_matched":
        return MomentMatchedProposal()
    if proposal == "wide":
        return WideGaussianProposal()
    raise ValueError(
        f"unknown proposal {proposal!r}: use 'moment_matched', 'wide', a Proposal or a distribution"
    )

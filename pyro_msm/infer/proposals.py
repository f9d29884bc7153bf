r"""Proposals :math:`p'(x_u \mid x_o)` for the importance-weighting estimator.

A proposal draws the missing coordinates of every row and returns the log density of each draw's
*missing block* (the factor that enters the importance weight). Choose one by name in
:class:`~pyro_msm.infer.MissingScoreMatching` (``"moment_matched"``, the default, or ``"wide"``),
pass a :class:`Proposal`, or pass a Pyro distribution over rows.

Per step, the loss calls :meth:`Proposal.prepare` once per data site and then draws rows in
chunks from the returned :class:`PreparedProposal`. The moment-matched proposal is fitted once per
data set (at the first step, or by an explicit :meth:`MomentMatchedProposal.fit`) and kept until
:meth:`Proposal.refresh`; a Gaussian proposal computes each missingness pattern's conditional
factor once and, while the table stays the same, keeps the per-row conditional means too, so a
step only draws.

Under :mod:`torch.distributed` data parallelism the loss asks for two more things
(:class:`~pyro_msm.infer.MissingScoreMatching` ``data_parallel``): with ``over_ranks`` the
table is this rank's shard of the batch and the moment-matched Gaussian is fitted on the union
of the shards (its sufficient statistics all-reduced), so the proposal does not depend on the
number of ranks; with ``rows`` (and ``keep`` when drawing) a rank that holds the whole batch
factors and draws only its own rows, with the random numbers a single process would give them.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import Independent, MultivariateNormal, Normal
from torch import Tensor
from torch.distributions import Distribution

from .. import distributed
from .gaussian import (
    conditional_gaussian,
    conditional_gaussian_noise,
    missingness_patterns,
    pairwise_moments,
    restrict,
    sample_conditional_gaussian,
)

__all__ = [
    "Proposal",
    "PreparedProposal",
    "GaussianConditionalProposal",
    "MomentMatchedProposal",
    "WideGaussianProposal",
    "DistributionProposal",
    "make_proposal",
    "FACTOR_CACHE_ENTRIES",
]


#: Largest number of cached conditional-factor entries (patterns x d x d) a Gaussian proposal
#: keeps between steps (2^26: 256 MB in float32, enough for n = 1000 distinct patterns at
#: d = 200); above it the factors are recomputed for each chunk of rows at every step.
FACTOR_CACHE_ENTRIES = 2**26


def _same(a: Tensor | None, b: Tensor) -> bool:
    """Exact equality of two tensors (shape, dtype, device and values)."""
    return (
        a is not None
        and a.shape == b.shape
        and a.dtype == b.dtype
        and a.device == b.device
        and (a is b or bool(torch.equal(a, b)))
    )


class PreparedProposal:
    """A proposal ready to draw chunks of rows of one table (returned by
    :meth:`Proposal.prepare`); the default slices the table and calls
    :meth:`Proposal.sample`.

    :param proposal: the proposal. :param x: ``(n, d)``. :param mask: boolean ``(n, d)``.
    """

    def __init__(self, proposal: Proposal, x: Tensor, mask: Tensor) -> None:
        self.proposal, self.x, self.mask = proposal, x, mask

    def sample(
        self, rows: Tensor, num_particles: int, keep: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draws ``(r, len(rows), d)`` and log densities ``(r, len(rows))`` for the rows of the
        table indexed by ``rows`` (an index tensor).

        :param keep: indices into ``rows``: return only the draws of ``rows[keep]``, made with
            the random numbers they get when all of ``rows`` are drawn (the default draws all
            and slices; a Gaussian proposal computes only the kept rows).
        """
        draws, log_p = self.proposal.sample(self.x[rows], self.mask[rows], num_particles)
        if keep is None:
            return draws, log_p
        return draws[:, keep], log_p[:, keep]


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

    def prepare(
        self,
        x: Tensor,
        mask: Tensor,
        *,
        site: str = "",
        subsampled: bool = False,
        rows: Tensor | None = None,
        over_ranks: bool = False,
    ) -> PreparedProposal:
        """Per-step preparation for the table ``x`` of data site ``site`` (its rows are then
        drawn in chunks). The default does nothing and draws by :meth:`sample`.

        :param subsampled: whether ``x`` is a minibatch of a larger table.
        :param rows: the only rows that will be drawn (default: all), e.g. this rank's shard.
        :param over_ranks: ``x`` is this rank's shard of a batch spread over the ranks of
            :mod:`torch.distributed`: fit on the union of the shards (collective: every rank
            calls it).
        """
        return PreparedProposal(self, x, mask)

    def refresh(self) -> None:
        """Forget anything fitted or cached (the next step refits); a no-op by default."""


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
        self._rows: _GaussianRows | None = None

    @classmethod
    def fit(
        cls, x: Tensor, mask: Tensor | None = None, *, over_ranks: bool = False, **kwargs
    ) -> GaussianConditionalProposal:
        """Moment-match a Gaussian to incomplete data (pairwise-available entries, projected to
        positive definite). ``mask`` defaults to the non-NaN entries of ``x``; other keyword
        arguments go to the constructor.

        :param over_ranks: ``x`` is this rank's shard: fit the union of all ranks' rows (the
            sufficient statistics of :class:`~pyro_msm.streaming.MomentAccumulator`,
            all-reduced; a collective call). Equal to the fit on the concatenated rows up to
            floating-point order; the plain fit in a single process.
        """
        mask = ~torch.isnan(x) if mask is None else mask
        if over_ranks and distributed.is_distributed():
            from ..streaming import MomentAccumulator  # streaming imports this package

            acc = MomentAccumulator(x.shape[-1], device=x.device).update(x.detach(), mask)
            loc, cov = acc.all_reduce().moments(dtype=x.dtype)
        else:
            loc, cov = pairwise_moments(torch.nan_to_num(x.detach()), mask)
        return cls(loc, cov, **kwargs)

    def sample(self, x: Tensor, mask: Tensor, num_particles: int) -> tuple[Tensor, Tensor]:
        rows = torch.arange(x.shape[0], device=x.device)
        return self.prepare(x, mask).sample(rows, num_particles)

    def prepare(
        self,
        x: Tensor,
        mask: Tensor,
        *,
        site: str = "",
        subsampled: bool = False,
        rows: Tensor | None = None,
        over_ranks: bool = False,
    ) -> PreparedProposal:
        """The conditionals of every row of ``x`` (or of ``rows`` only): one Cholesky factor per
        missingness pattern (:func:`~pyro_msm.infer.gaussian.missingness_patterns`) and the
        conditional means, both kept while the same table comes back (compared exactly), so
        repeated steps on one table only draw. A fixed Gaussian has nothing to fit, so
        ``over_ranks`` changes nothing."""
        if self._rows is None or not self._rows.matches(x, mask, rows):
            self._rows = _GaussianRows(self, x, mask, rows)
        return self._rows

    def refresh(self) -> None:
        self._rows = None


class _GaussianRows(PreparedProposal):
    """The conditionals of :class:`GaussianConditionalProposal` for the rows of one table."""

    def __init__(
        self,
        proposal: GaussianConditionalProposal,
        x: Tensor,
        mask: Tensor,
        rows: Tensor | None = None,
    ) -> None:
        super().__init__(proposal, x.detach(), mask)
        self.rows = rows
        self.loc = proposal.loc.to(x)
        self.precision = proposal.precision.to(x)
        patterns, self.inverse = missingness_patterns(mask)
        k, d = patterns.shape
        # the patterns whose factors are needed (all, or those of `rows`), and each pattern's
        # slot among the factors
        needed = None if rows is None else torch.unique(self.inverse[rows])
        self.slot: Tensor | None = None
        if needed is not None:
            self.slot = torch.full((k,), -1, dtype=torch.long, device=mask.device)
            self.slot[needed] = torch.arange(len(needed), device=mask.device)
            patterns = patterns[needed]
        self.factors: Tensor | None = None
        if len(patterns) * d * d <= FACTOR_CACHE_ENTRIES:
            # the conditional precision's factor depends on the pattern only
            _, self.factors = conditional_gaussian(
                self.loc.expand(len(patterns), d), patterns, self.loc, self.precision
            )
        n = x.shape[0]
        if (
            self.factors is not None
            and self.slot is None
            and 2 * len(patterns) > n
            and n * d * d <= FACTOR_CACHE_ENTRIES
        ):
            # most rows have a pattern of their own (high d): keep the factors in row order, so
            # a step's chunk of consecutive rows takes a view of them instead of gathering a
            # copy of (rows, d, d) factors (at d=200 that copy was most of an IW step)
            self.factors = self.factors[self.inverse]
            self.inverse = torch.arange(n, device=mask.device)
            self._row_order = True
        self.mean: Tensor | None = None
        if self.factors is not None:  # conditional means of the rows, in bounded chunks
            step = max(1, 2**24 // (d * d))
            wanted = torch.arange(x.shape[0], device=x.device) if rows is None else rows
            if len(wanted) == 0:
                self.mean = self.x
            else:
                means = torch.cat([self._means(c) for c in wanted.split(step)])
                self.mean = means if rows is None else self.x.index_copy(0, rows, means)

    _row_order = False

    def _factors(self, rows: Tensor) -> Tensor:
        assert self.factors is not None
        if self._row_order and rows.device.type == "cpu" and len(rows) > 1:
            # consecutive increasing rows (the loss's chunks): a view; read on the CPU only,
            # where reading an index costs no device synchronisation
            first, last = int(rows[0]), int(rows[-1])
            if last - first + 1 == len(rows) and bool((rows[1:] > rows[:-1]).all()):
                return self.factors.narrow(0, first, len(rows))
        pattern = self.inverse[rows]
        return self.factors[pattern if self.slot is None else self.slot[pattern]]

    def _means(self, rows: Tensor) -> Tensor:
        x, mask = self.x[rows], self.mask[rows]
        chol = self._factors(rows)
        rhs = ((x - self.loc) * mask.to(x.dtype)) @ self.precision.mT * (~mask).to(x.dtype)
        shift = torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)
        return torch.where(mask, x, self.loc - shift)

    def matches(self, x: Tensor, mask: Tensor, rows: Tensor | None = None) -> bool:
        same_rows = rows is None if self.rows is None else _same(self.rows, rows)
        return same_rows and _same(self.x, x) and _same(self.mask, mask)

    def sample(
        self, rows: Tensor, num_particles: int, keep: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        proposal = self.proposal
        assert isinstance(proposal, GaussianConditionalProposal)
        options = {"defensive": proposal.defensive, "defensive_scale": proposal.defensive_scale}
        noise = None
        if keep is not None:  # the random numbers of all `rows`, the computation of the kept
            noise = conditional_gaussian_noise(
                self.mask[rows], num_particles, self.x.dtype, **options
            )[:, keep]
            rows = rows[keep]
        mask = self.mask[rows]
        if self.factors is None:  # too many patterns to keep: factor this chunk's rows
            mean, chol = conditional_gaussian(self.x[rows], mask, self.loc, self.precision)
        else:
            assert self.mean is not None
            mean, chol = self.mean[rows], self._factors(rows)
        return sample_conditional_gaussian(mean, chol, mask, num_particles, noise=noise, **options)


class MomentMatchedProposal(Proposal):
    """The default: a :class:`GaussianConditionalProposal` moment-matched to the data set.

    The Gaussian is fitted once per data set and kept: from the whole table at the first step
    (or from the first minibatch, with a subsampled plate), or from the table given to
    :meth:`fit`. On full-batch steps a different table (compared exactly) triggers a refit, so
    one loss object can be reused on a new data set; :meth:`refresh` (or the loss's
    ``refresh_proposal()``) refits at the next step on request, and ``refit="step"`` restores the
    old behaviour of refitting on every step. The importance weights correct for whatever
    Gaussian is used, so this only affects variance, not what is estimated.

    :param refit: ``"data"`` (default: once per data set) or ``"step"`` (every step).
    :param kwargs: passed to :class:`GaussianConditionalProposal` (``defensive``, ...).
    """

    REFITS = ("data", "step")

    def __init__(self, refit: str = "data", **kwargs) -> None:
        if refit not in self.REFITS:
            raise ValueError(f"unknown refit {refit!r}; choose one of {self.REFITS}")
        self.refit = refit
        self.kwargs = kwargs
        #: per data site: the fitted proposal and the table it was fitted on (None if pinned)
        self.fitted: dict[str, tuple[GaussianConditionalProposal, Tensor | None]] = {}
        self._pinned: GaussianConditionalProposal | None = None

    def fit(self, x: Tensor, mask: Tensor | None = None) -> MomentMatchedProposal:
        """Fit on a whole table (NaN = missing when ``mask`` is None) and use that Gaussian for
        every site and batch until :meth:`refresh`."""
        self._pinned = GaussianConditionalProposal.fit(x, mask, **self.kwargs)
        self.fitted.clear()
        return self

    def refresh(self) -> None:
        self._pinned = None
        self.fitted.clear()

    def proposal_for(
        self,
        x: Tensor,
        mask: Tensor,
        *,
        site: str = "",
        subsampled: bool = False,
        over_ranks: bool = False,
    ) -> GaussianConditionalProposal:
        """The fitted Gaussian for this table of ``site``, fitting it if needed (with
        ``over_ranks``, on the union of the ranks' shards: see
        :meth:`GaussianConditionalProposal.fit`)."""
        if self._pinned is not None:
            return self._pinned
        cached = self.fitted.get(site)
        if self.refit == "data" and cached is not None:
            proposal, table = cached
            same_size = proposal.loc.shape[-1] == x.shape[-1]
            if same_size and (subsampled or _same(table, x)):
                return proposal
        proposal = GaussianConditionalProposal.fit(x, mask, over_ranks=over_ranks, **self.kwargs)
        self.fitted[site] = (proposal, None if subsampled else x.detach())
        return proposal

    def prepare(
        self,
        x: Tensor,
        mask: Tensor,
        *,
        site: str = "",
        subsampled: bool = False,
        rows: Tensor | None = None,
        over_ranks: bool = False,
    ) -> PreparedProposal:
        proposal = self.proposal_for(
            x, mask, site=site, subsampled=subsampled, over_ranks=over_ranks
        )
        return proposal.prepare(x, mask, site=site, subsampled=subsampled, rows=rows)

    def sample(self, x: Tensor, mask: Tensor, num_particles: int) -> tuple[Tensor, Tensor]:
        rows = torch.arange(x.shape[0], device=x.device)
        return self.prepare(x, mask).sample(rows, num_particles)


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
                - 0.5 * math.log(2 * math.pi) * missing.sum(-1).to(x.dtype)  # not int -> default
            )
            return draws, log_prob
        base = dist_.base_dist
        while isinstance(base, Independent):
            base = base.base_dist
        per_coordinate = base.log_prob(draws).to(x)  # a 0-d parameter may follow torch's default
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

r"""A Gaussian energy restricted to an orthant, a box or a half-space (the truncated-Gaussian
experiments of Givens, Liu & Reeve, 2025), with closed-form scores, exact samplers (rejection,
or conditioning for a half-space) and a Gibbs fallback with truncated-normal conditionals.

References
----------
- J. Givens, S. Liu, H. W. J. Reeve. Score Matching with Missing Data. ICML 2025
  (arXiv:2506.00557).
- C. P. Robert. Simulation of truncated normal variables. Statistics and Computing 5, 1995.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import constraints
from torch import Tensor
from torch.distributions.constraints import Constraint

from .domains import HalfSpace
from .energy import Energy
from .gaussian import GaussianEnergy
from .gibbs import colour_classes
from .gibbs import seeded_generator as _generator

__all__ = ["TruncatedGaussianEnergy", "random_halfspace", "truncated_standard_normal"]


def truncated_standard_normal(
    lower: Tensor, upper: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    r"""Draws of :math:`N(0, 1)` truncated to ``[lower, upper]`` (elementwise, broadcast).

    Inverse-CDF sampling in float64, in log space: an interval lying mostly above zero is
    reflected below it, where :math:`\Phi` has full relative precision, and
    :math:`p = \Phi(a) + U(\Phi(b) - \Phi(a))` is formed from ``log_ndtr``. Below
    :math:`b \approx -37.5` (where :math:`\Phi(b)` underflows in float64) the tail is
    exponential to first order, :math:`t = b - E/|b|` with :math:`E \sim \mathrm{Exp}(1)`
    (Robert, 1995); such bounds arise only from states 37 standard deviations into a tail.

    :returns: float64 draws of the broadcast shape.
    """
    lo, hi = torch.broadcast_tensors(lower.double(), upper.double())
    flip = lo > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_pa = torch.special.log_ndtr(a)
    log_pb = torch.special.log_ndtr(b)
    u = torch.rand(a.shape, dtype=torch.float64, device=a.device, generator=generator)
    u = u.clamp(min=1e-300)
    ratio = torch.exp(log_pa - log_pb)  # Phi(a) / Phi(b) in [0, 1]
    log_p = log_pb + torch.log(u + (1 - u) * ratio)
    t = torch.special.ndtri(torch.exp(log_p))
    deep = log_pb < -700.0
    if bool(deep.any()):
        e = -torch.log1p(
            -torch.rand(a.shape, dtype=torch.float64, device=a.device, generator=generator)
        )
        t = torch.where(deep, b - e / b.abs().clamp(min=1.0), t)
    t = torch.maximum(torch.minimum(t, b), a)
    return torch.where(flip, -t, t)


def random_halfspace(point: Tensor, seed: int | None = 0) -> HalfSpace:
    r"""A random hyperplane through ``point``: :math:`\{x : w^\top x \le w^\top p\}` with
    :math:`w` uniform on the unit sphere (a normalised standard normal), seeded.

    :param point: :math:`p`, shape ``(d,)``.
    :param seed: seed of a private generator (``None``: the global RNG).
    """
    if point.dim() != 1:
        raise ValueError(f"random_halfspace: point must have shape (d,), got {tuple(point.shape)}")
    g = _generator(seed)
    w = torch.randn(point.shape[0], generator=g, dtype=torch.float64)
    w = w / w.norm()
    return HalfSpace(w.to(point.dtype), (w * point.double()).sum().to(point.dtype))


_LOWER = (constraints.greater_than, constraints.greater_than_eq)
_BOX = (constraints.interval, constraints.half_open_interval)
SAMPLERS = ("auto", "rejection", "gibbs", "conditioning")


def _domain(support: Constraint, d: int) -> tuple[Constraint, Tensor | None, Tensor | None]:
    """Normalise ``support`` to event dimension 1 and return it with its per-coordinate bounds
    (``None, None`` for a :class:`HalfSpace`)."""
    if isinstance(support, HalfSpace):
        if support.normal.shape != (d,):
            raise ValueError(
                f"TruncatedGaussianEnergy: HalfSpace normal has shape "
                f"{tuple(support.normal.shape)}, expected ({d},)"
            )
        return support, None, None
    base = support
    while isinstance(base, constraints.independent):
        base = base.base_constraint
    if base.event_dim == 0:
        support = constraints.independent(base, 1) if support.event_dim == 0 else support
    elif base is not constraints.real_vector:
        raise TypeError(f"TruncatedGaussianEnergy: unsupported support {support}")
    if support.event_dim != 1:
        raise ValueError(f"TruncatedGaussianEnergy: support must have event_dim 1, got {support}")
    inf = torch.tensor(math.inf, dtype=torch.float64)
    if base in (constraints.real, constraints.real_vector):
        lower, upper = -inf, inf
    elif isinstance(base, _LOWER):
        lower, upper = torch.as_tensor(base.lower_bound, dtype=torch.float64), inf
    elif isinstance(base, constraints.less_than):
        lower, upper = -inf, torch.as_tensor(base.upper_bound, dtype=torch.float64)
    elif isinstance(base, _BOX):
        lower = torch.as_tensor(base.lower_bound, dtype=torch.float64)
        upper = torch.as_tensor(base.upper_bound, dtype=torch.float64)
    else:
        raise TypeError(
            f"TruncatedGaussianEnergy: unsupported support {support}; use an orthant "
            "(constraints.independent(constraints.positive, 1)), bounds, a box "
            "(constraints.independent(constraints.interval(l, u), 1)) or a HalfSpace"
        )
    try:
        lower, upper = (v.detach().double().expand(d) for v in (lower, upper))
    except RuntimeError as err:
        raise ValueError(f"TruncatedGaussianEnergy: bounds of {support} do not fit d={d}") from err
    if not bool((lower < upper).all()):
        raise ValueError(f"TruncatedGaussianEnergy: empty domain {support} (need lower < upper)")
    return support, lower, upper


class TruncatedGaussianEnergy(Energy):
    r"""A Gaussian energy restricted to a domain :math:`D`:
    :math:`q(x) \propto \exp(-\tfrac12 (x-\mu)^\top P (x-\mu))\,\mathbb{1}[x \in D]`.

    ``support`` is one of

    - an orthant or one-sided bounds: ``constraints.independent(constraints.positive, 1)``
      (also ``nonnegative``, ``greater_than(l)``, ``less_than(u)``; an elementwise constraint
      is wrapped in ``independent(., 1)``);
    - a box: ``constraints.independent(constraints.interval(l, u), 1)``;
    - a :class:`~pyro_msm.distributions.domains.HalfSpace` :math:`w^\top x \le c` (the paper's
      random-hyperplane truncation: :meth:`with_random_halfspace`).

    **Scores.** Inside :math:`D` the score and its diagonal Jacobian are the Gaussian's,
    :math:`a = -P(x - \mu)`, :math:`b_j = -P_{jj}`. Score matching on :math:`D` needs a weight
    vanishing on the boundary (:class:`~pyro_msm.infer.objectives.TruncatedObjective`, which
    reads :attr:`support`).

    **log_prob is finite everywhere** (:math:`-E(x)`, the Gaussian energy, also outside
    :math:`D`). The choice is deliberate: score-matching objectives use only derivatives and
    differences of ``log_prob`` at points inside :math:`D`; the importance-weighting estimators
    already give zero weight to draws outside ``support`` (via
    :func:`~pyro_msm.distributions.domains.in_support`, which also handles the all-outside
    case); and a ``-inf`` would turn the variational KL and the covariance-identity weights into
    ``inf``/``NaN`` and break training, where a finite value keeps every gradient defined. Code
    that needs the density of the truncated model itself (e.g. a likelihood ratio outside any
    pyro_msm estimator) must mask with :meth:`in_domain` or use :meth:`masked_log_prob`.

    This class deliberately does not subclass
    :class:`~pyro_msm.distributions.gaussian.GaussianEnergy`: Gaussian-only shortcuts (the
    ``closed_form`` estimator, Gaussian marginals and conditionals) are wrong under truncation.

    **Sampling** (``sampler``), all vectorised over draws and batch, every draw inside
    :math:`D` (checked with ``support.check``; a draw that casting to the model's dtype puts
    on or just past the boundary, e.g. ``x = 1 + 1e-9`` rounding to ``1`` in float32 under
    ``greater_than(1)``, is moved inward by a few ulps):

    - ``"rejection"``: exact; untruncated Gaussian draws are kept when they fall in :math:`D`,
      several proposals per empty slot per round. Raises :class:`RuntimeError` if slots
      remain unfilled after ``max_rejection_rounds``.
    - ``"conditioning"`` (half-spaces only): exact and rejection-free. :math:`s = w^\top x` is
      drawn from its truncated normal marginal :math:`N(w^\top\mu, w^\top\Sigma w)` on
      :math:`(-\infty, c]` and :math:`x = z + \Sigma w (s - w^\top z)/(w^\top \Sigma w)` with
      :math:`z \sim N(\mu, \Sigma)`, which has the conditional law of :math:`x` given
      :math:`w^\top x = s`.
    - ``"gibbs"``: systematic-scan Gibbs with exact truncated-normal conditionals
      :math:`x_k \mid x_{-k} \sim N(\mu_k - P_{kk}^{-1}\sum_{j\ne k} P_{kj}(x_j-\mu_j),
      P_{kk}^{-1})` on the section of :math:`D` (:func:`truncated_standard_normal`), in
      blocks of conditionally independent coordinates (:math:`P_{kl} = 0` and not both in
      the half-space constraint; :func:`~pyro_msm.distributions.gibbs.colour_classes`);
      ``num_gibbs_sweeps`` sweeps from a start inside :math:`D`; approximate through the
      finite burn-in only, one independent chain per draw.
    - ``"auto"`` (default): ``"conditioning"`` for a half-space; on a product domain,
      rejection for the batch elements whose pilot acceptance rate (at least 256 proposals
      each) is at least ``min_acceptance``, and Gibbs for the other elements and for any slot
      still empty after ``max_rejection_rounds``. Whether rejection fills a slot depends only
      on acceptance indicators, and an accepted draw has exactly the target law whatever they
      are, so the mixture is exact wherever each part is.

    :param loc: :math:`\mu`, shape ``batch + (d,)``.
    :param precision: :math:`P`, shape ``batch + (d, d)`` (or ``None`` with ``precision_tril``).
    :param support: the domain :math:`D` (event dimension 1).
    :param precision_tril: lower-triangular :math:`L`, :math:`P = L L^\top`, as in
        :class:`~pyro_msm.distributions.gaussian.GaussianEnergy`.
    :param sampler: one of ``"auto"``, ``"rejection"``, ``"gibbs"``, ``"conditioning"``.
    :param min_acceptance: rejection-rate threshold of ``"auto"``.
    :param num_gibbs_sweeps: Gibbs sweeps per call of :meth:`sample`.
    :param max_rejection_rounds: rounds of rejection before giving up (or falling back).

    References: Givens, Liu & Reeve, Score Matching with Missing Data, ICML 2025, experiments;
    Hyvarinen, Some extensions of score matching, CSDA 2007 (score matching on
    :math:`\mathbb{R}_+^d`); Robert, Simulation of truncated normal variables, Stat. Comput.
    1995.
    """

    arg_constraints = GaussianEnergy.arg_constraints

    def __init__(
        self,
        loc: Tensor,
        precision: Tensor | None,
        support: Constraint,
        *,
        precision_tril: Tensor | None = None,
        sampler: str = "auto",
        min_acceptance: float = 0.05,
        num_gibbs_sweeps: int = 200,
        max_rejection_rounds: int = 20,
    ) -> None:
        gaussian = GaussianEnergy(loc, precision, precision_tril=precision_tril)
        d = gaussian.event_shape[0]
        if not isinstance(support, Constraint):
            raise TypeError(
                f"TruncatedGaussianEnergy: support must be a Constraint, got {type(support)}"
            )
        domain, lower, upper = _domain(support, d)
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
        if sampler == "conditioning" and not isinstance(domain, HalfSpace):
            raise ValueError("sampler='conditioning' needs a HalfSpace support")
        if not 0 < min_acceptance <= 1:
            raise ValueError(f"min_acceptance must be in (0, 1], got {min_acceptance}")
        if int(num_gibbs_sweeps) < 0 or int(max_rejection_rounds) < 1:
            raise ValueError("num_gibbs_sweeps must be >= 0 and max_rejection_rounds >= 1")
        self.loc = gaussian.loc
        self.precision = gaussian.precision
        self._support = domain
        self._lower = lower
        self._upper = upper
        self.sampler = sampler
        self.min_acceptance = float(min_acceptance)
        self.num_gibbs_sweeps = int(num_gibbs_sweeps)
        self.max_rejection_rounds = int(max_rejection_rounds)
        super().__init__((d,), gaussian.batch_shape)

    @classmethod
    def with_random_halfspace(
        cls,
        loc: Tensor,
        precision: Tensor | None,
        *,
        point: Tensor | None = None,
        seed: int | None = 0,
        **kwargs,
    ) -> TruncatedGaussianEnergy:
        """The Gaussian truncated to a random half-space whose boundary passes through
        ``point`` (default: ``loc``, which must then have shape ``(d,)``); see
        :func:`random_halfspace`."""
        if point is None:
            if loc.dim() != 1:
                raise ValueError("with_random_halfspace: give point when loc has a batch shape")
            point = loc
        return cls(loc, precision, random_halfspace(point.detach(), seed), **kwargs)

    @property
    def support(self) -> Constraint:  # type: ignore[override]
        """The domain :math:`D`."""
        return self._support

    def in_domain(self, x: Tensor) -> Tensor:
        """Boolean ``x.shape[:-1]``: rows inside :math:`D`."""
        return self._support.check(x)

    def masked_log_prob(self, value: Tensor) -> Tensor:
        """``log_prob`` inside :math:`D` and ``-inf`` outside (unnormalised)."""
        lp = self.log_prob(value)
        return lp.masked_fill(~self.in_domain(value), -math.inf)

    # -- the model: the Gaussian's closed forms, shared (not copied) --------------------------
    energy = GaussianEnergy.energy
    score = GaussianEnergy.score
    score_and_diag_jacobian = GaussianEnergy.score_and_diag_jacobian

    # -- sampling ------------------------------------------------------------------------------
    def _moments64(self) -> tuple[Tensor, Tensor, Tensor]:
        loc = self.loc.detach().double()
        prec = self.precision.detach().double()
        cov = torch.cholesky_inverse(torch.linalg.cholesky(prec))
        return loc, prec, torch.linalg.cholesky(cov)

    def _gaussian_draws(
        self, shape: torch.Size, loc: Tensor, scale_tril: Tensor, g: torch.Generator | None
    ) -> Tensor:
        eps = torch.randn(shape, dtype=torch.float64, device=loc.device, generator=g)
        return loc + (scale_tril @ eps.unsqueeze(-1)).squeeze(-1)

    def _finalise(self, x64: Tensor) -> Tensor:
        """Cast to the model's dtype and move draws that rounding put outside :math:`D` (onto
        or just past a boundary) one ulp-scale step inward."""
        x = x64.to(self.loc.dtype)
        if self._lower is not None:
            lo = self._lower.to(x)
            hi = self._upper.to(x)
            inner_lo = torch.nextafter(lo, torch.full_like(lo, math.inf))
            inner_hi = torch.nextafter(hi, torch.full_like(hi, -math.inf))
            return torch.minimum(torch.maximum(x, inner_lo), inner_hi)
        if isinstance(self._support, HalfSpace):
            w = self._support.normal.to(x)
            c = self._support.offset.to(x)
            step = 4 * torch.finfo(x.dtype).eps
            for _ in range(8):
                excess = (x * w).sum(-1) - c
                bad = excess > 0
                if not bool(bad.any()):
                    break
                size = step * (c.abs() + (x.abs() * w.abs()).sum(-1) + 1.0)
                move = ((excess + size) / (w * w).sum()).unsqueeze(-1) * w
                x = torch.where(bad.unsqueeze(-1), x - move, x)
                step = step * 4
        return x

    def _rejection(
        self,
        shape: torch.Size,
        loc: Tensor,
        scale_tril: Tensor,
        g: torch.Generator | None,
        min_acceptance: float | None,
    ) -> tuple[Tensor, Tensor]:
        """Exact rejection draws. Returns ``(x, filled)``, both of the output's shape (without
        ``d`` for ``filled``).

        A pilot round (at least 256 proposals per batch element) estimates each batch element's
        acceptance rate; with ``min_acceptance`` set, elements below it get no further rounds
        (the caller falls back to Gibbs for their empty slots). Later rounds draw only for the
        empty slots, about five expected acceptances' worth of proposals each.
        """
        d = shape[-1]
        batch = self.batch_shape
        nb = max(1, batch.numel())
        ns = max(1, shape[: len(shape) - len(batch) - 1].numel())
        loc_b = loc.expand(batch + (d,)).reshape(nb, d)
        tril_b = scale_tril.expand(batch + (d, d)).reshape(nb, d, d)
        budget = 4_000_000  # doubles per round of proposals

        def propose(k: int, rows: Tensor) -> Tensor:  # (k, m, d) draws for batch rows
            eps = torch.randn((k, rows.numel(), d, 1), dtype=torch.float64, generator=g)
            return loc_b[rows] + (tril_b[rows] @ eps.to(loc.device)).squeeze(-1)

        out = torch.zeros((ns, nb, d), dtype=torch.float64, device=loc.device)
        filled = torch.zeros((ns, nb), dtype=torch.bool, device=loc.device)
        # pilot: every slot, k proposals each, k * ns >= 256
        k = max(1, min(math.ceil(256 / ns), budget // (ns * nb * d) or 1))
        slots = torch.arange(ns * nb, device=loc.device)  # slot s * nb + b
        rows = slots % nb
        prop = propose(k, rows)
        ok = self._support.check(prop.to(self.loc.dtype))  # (k, ns * nb)
        rate = ok.double().reshape(k, ns, nb).mean((0, 1))  # per batch element
        eligible = torch.ones(nb, dtype=torch.bool, device=loc.device)
        if min_acceptance is not None:
            eligible = rate >= min_acceptance
        for _round in range(self.max_rejection_rounds):
            hit = ok.any(0)
            first = ok.to(torch.int8).max(0, keepdim=True).indices  # an accepted proposal
            pick = prop.gather(0, first.unsqueeze(-1).expand(1, -1, d)).squeeze(0)
            flat_out, flat_filled = out.view(-1, d), filled.view(-1)
            flat_out[slots[hit]] = pick[hit]
            flat_filled[slots[hit]] = True
            todo = (~filled & eligible).reshape(-1)
            if not bool(todo.any()):
                break
            slots = torch.nonzero(todo).squeeze(-1)
            rows = slots % nb
            k = math.ceil(5.0 / max(float(rate[rows].min()), 1e-3))
            k = max(1, min(k, budget // (slots.numel() * d * (d + 1))))
            prop = propose(k, rows)
            ok = self._support.check(prop.to(self.loc.dtype))
        return out.reshape(shape), filled.reshape(shape[:-1])

    def _conditioning(
        self, shape: torch.Size, loc: Tensor, scale_tril: Tensor, g: torch.Generator | None
    ) -> Tensor:
        assert isinstance(self._support, HalfSpace)
        w = self._support.normal.to(device=loc.device, dtype=torch.float64)
        c = self._support.offset.to(device=loc.device, dtype=torch.float64)
        cov = scale_tril @ scale_tril.mT
        cw = (cov @ w.unsqueeze(-1)).squeeze(-1)  # Sigma w, batch + (d,)
        var = (cw * w).sum(-1)  # w' Sigma w
        sd = var.sqrt()
        mean_s = (loc * w).sum(-1)
        z = self._gaussian_draws(shape, loc, scale_tril, g)
        upper = ((c - mean_s) / sd).expand(shape[:-1])
        t = truncated_standard_normal(torch.full_like(upper, -math.inf), upper, g)
        s = mean_s + sd * t
        return z + cw * ((s - (z * w).sum(-1)) / var).unsqueeze(-1)

    def _gibbs_start(self, shape: torch.Size, loc: Tensor, prec: Tensor, g) -> Tensor:
        if self._lower is not None:
            # independent truncated normals N(mu_j, 1/P_jj) on [l_j, u_j]: inside D
            sd = torch.diagonal(prec, dim1=-2, dim2=-1).rsqrt()
            lo = (self._lower.to(loc) - loc) / sd
            hi = (self._upper.to(loc) - loc) / sd
            t = truncated_standard_normal(lo.expand(shape), hi.expand(shape), g)
            return loc + sd * t
        w = self._support.normal.to(loc)
        c = self._support.offset.to(loc)
        cov = torch.cholesky_inverse(torch.linalg.cholesky(prec))
        sd = ((cov @ w.unsqueeze(-1)).squeeze(-1) * w).sum(-1).sqrt()
        excess = (loc * w).sum(-1) - c + sd  # >= 0 iff mu is within one sd of the boundary
        shift = excess.clamp(min=0).unsqueeze(-1) * w / (w * w).sum()
        return (loc - shift).expand(shape).clone()

    def _gibbs(
        self,
        start: Tensor,
        loc: Tensor,
        prec: Tensor,
        num_sweeps: int,
        g: torch.Generator | None,
    ) -> Tensor:
        d = self.event_shape[0]
        x = start.contiguous().clone()
        if num_sweeps == 0:
            return x
        pdiag = torch.diagonal(prec, dim1=-2, dim2=-1)
        sd = pdiag.rsqrt()
        interacts = (prec != 0).reshape((-1, d, d)).any(0).cpu()
        halfspace = isinstance(self._support, HalfSpace)
        if halfspace:
            w = self._support.normal.to(loc)
            c = self._support.offset.to(loc)
            active = w != 0  # coordinates coupled by the constraint
            interacts = interacts | (active.unsqueeze(0) & active.unsqueeze(1)).cpu()
        blocks = [idx.to(x.device) for idx in colour_classes(interacts)]
        inf = torch.tensor(math.inf, dtype=loc.dtype, device=loc.device)
        for _ in range(num_sweeps):
            for idx in blocks:  # systematic scan over blocks of conditionally independent coords
                diff = x - loc
                cross = (diff.unsqueeze(-2) @ prec).squeeze(-2)[..., idx]
                cross = cross - pdiag[..., idx] * diff[..., idx]
                mean = loc[..., idx] - cross / pdiag[..., idx]
                if halfspace:
                    wk = w[idx]
                    rest = (x * w).sum(-1, keepdim=True) - wk * x[..., idx]
                    bound = (c - rest) / torch.where(active[idx], wk, torch.ones_like(wk))
                    lo = torch.where(wk < 0, bound, -inf)
                    hi = torch.where(wk > 0, bound, inf)
                else:
                    lo, hi = self._lower[idx].to(loc), self._upper[idx].to(loc)
                s = sd[..., idx]
                t = truncated_standard_normal((lo - mean) / s, (hi - mean) / s, g)
                x[..., idx] = mean + s * t
        return x

    def _sample(self, sample_shape: torch.Size, g: torch.Generator | None) -> Tensor:
        shape = self._extended_shape(sample_shape)
        loc, prec, scale_tril = self._moments64()
        method = self.sampler
        if method == "auto":
            if isinstance(self._support, HalfSpace):
                method = "conditioning"
            elif self._lower is not None and bool(
                torch.isinf(self._lower).all() & torch.isinf(self._upper).all()
            ):
                method = "gaussian"
        if method == "gaussian":
            x = self._gaussian_draws(shape, loc, scale_tril, g)
        elif method == "conditioning":
            x = self._conditioning(shape, loc, scale_tril, g)
        elif method == "gibbs":
            start = self._gibbs_start(shape, loc, prec, g)
            x = self._gibbs(start, loc, prec, self.num_gibbs_sweeps, g)
        elif method == "rejection":
            x, filled = self._rejection(shape, loc, scale_tril, g, None)
            if not bool(filled.all()):
                raise RuntimeError(
                    f"TruncatedGaussianEnergy: rejection sampling left {int((~filled).sum())} "
                    f"draws unfilled after {self.max_rejection_rounds} rounds (the domain has "
                    "little Gaussian mass); use sampler='auto' or 'gibbs'"
                )
        else:  # auto on a product domain
            x, filled = self._rejection(shape, loc, scale_tril, g, self.min_acceptance)
            if not bool(filled.all()):
                x = self._gibbs_fill(x, filled, loc, prec, g)
        return self._finalise(x)

    def _gibbs_fill(
        self, x: Tensor, filled: Tensor, loc: Tensor, prec: Tensor, g: torch.Generator | None
    ) -> Tensor:
        """Gibbs draws for the slots rejection left empty (chains only for those slots, with
        per-slot parameters, unless that copy would be large)."""
        d = x.shape[-1]
        empty = ~filled
        m = int(empty.sum())
        if m * d * d > 4_000_000:  # run every chain with broadcast parameters instead
            start = self._gibbs_start(x.shape, loc, prec, g)
            chains = self._gibbs(start, loc, prec, self.num_gibbs_sweeps, g)
            return torch.where(filled.unsqueeze(-1), x, chains)
        loc_s = loc.expand(x.shape)[empty]
        prec_s = prec.expand(x.shape + (d,))[empty]
        start = self._gibbs_start(loc_s.shape, loc_s, prec_s, g)
        x = x.clone()
        x[empty] = self._gibbs(start, loc_s, prec_s, self.num_gibbs_sweeps, g)
        return x

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Draws inside :math:`D` (see the class docstring for the samplers); no gradient."""
        with torch.no_grad():
            return self._sample(torch.Size(sample_shape), None)

    def simulate(self, n: int, seed: int | None = 0) -> Tensor:
        """``n`` reproducible draws, shape ``(n,) + batch + (d,)``, from a private generator
        seeded with ``seed`` (the global RNG is untouched)."""
        with torch.no_grad():
            return self._sample(torch.Size((int(n),)), _generator(seed))

    def expand(self, batch_shape, _instance=None) -> TruncatedGaussianEnergy:
        batch_shape = torch.Size(batch_shape)
        d = self.event_shape[0]
        return TruncatedGaussianEnergy(
            self.loc.expand(batch_shape + (d,)),
            self.precision.expand(batch_shape + (d, d)),
            self._support,
            sampler=self.sampler,
            min_acceptance=self.min_acceptance,
            num_gibbs_sweeps=self.num_gibbs_sweeps,
            max_rejection_rounds=self.max_rejection_rounds,
        )

r"""The truncated-Gaussian experiment of Givens, Liu & Reeve (2025): every estimator on a
Gaussian truncated to a random half-space, as the sample size grows.

Simulation (:func:`simulate_truncated`, one seeded :class:`torch.Generator`): a precision
:math:`P` with condition number 10 (:func:`~pyro_msm.datasets.random_precision`), a
mean :math:`\mu \sim N(0, I)`, the half-space :math:`D = \{x : w^\top x \le w^\top\mu\}` with
:math:`w` uniform on the sphere (:func:`~pyro_msm.distributions.random_halfspace`, the boundary
through the mean), ``n`` exact draws of :math:`N(\mu, P^{-1})` restricted to :math:`D`
(:class:`~pyro_msm.distributions.TruncatedGaussianEnergy`, conditioning sampler) and an MCAR
mask.

Model: the same truncated Gaussian with unknown :math:`\mu, P` and known :math:`D`
(:func:`~pyro_msm.experiments.gaussian.make_gaussian_model` with ``support``), fitted by
:func:`~pyro_msm.experiments.gaussian.fit_gaussian` with ``objective="truncated"`` (the
generalised score-matching objective with the capped distance to the boundary as weight; IW
draws outside :math:`D` get weight zero) and every estimator of
:class:`~pyro_msm.infer.MissingScoreMatching`. The reference ``complete_oracle`` fits the same
objective to the table before masking.

Metrics.

- ``precision_error``: relative Frobenius error :math:`\lVert\hat P - P\rVert_F/\lVert P\rVert_F`.
- ``score_mse``: :math:`E_{x\sim p}\lVert s_{\hat\theta}(x) - s(x)\rVert^2` under the *truncated*
  truth :math:`p`, and ``fisher`` = half of it, the Fisher divergence between the truncated
  truth and the truncated fit. Inside :math:`D` both scores are the Gaussians' (the indicator
  of :math:`D` has zero gradient there and both models share :math:`D`), so
  :math:`s_{\hat\theta}(x) - s(x) = -(\hat P - P)x + \hat P\hat\mu - P\mu` is affine in
  :math:`x` and its mean square needs only the first two moments of :math:`p`, which are in
  closed form for a half-space (:func:`halfspace_truncated_moments`). The result is exact; a
  Monte Carlo average over draws of :math:`p` agrees with it (tested). The untruncated
  Gaussian's closed form would be wrong here: it averages over the half of the space the data
  never visit.

References
----------
- J. Givens, S. Liu, H. W. J. Reeve. Score Matching with Missing Data. ICML 2025
  (arXiv:2506.00557), experiments.
- A. Hyvarinen. Some extensions of score matching. CSDA 51(5), 2007.
- N. L. Johnson, S. Kotz, N. Balakrishnan. Continuous Univariate Distributions, vol. 1, 1994
  (moments of the truncated normal).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pyro.distributions import constraints
from torch import Tensor
from torch.distributions.constraints import Constraint

from ..datasets.simulated import random_precision
from ..distributions import HalfSpace, TruncatedGaussianEnergy, random_halfspace
from ..missingness import MaskedTable, mcar_mask
from .gaussian import fit_gaussian, precision_error
from .harness import complete_case_note, fit_fields

__all__ = [
    "TRUNCATED_METHODS",
    "TruncatedProblem",
    "simulate_truncated",
    "halfspace_truncated_moments",
    "truncated_score_mse",
    "sample_score_mse",
    "truncated",
    "plot_truncated",
]

#: The estimators compared (all of :class:`~pyro_msm.infer.MissingScoreMatching`'s except the
#: Gaussian-only ``closed_form``). ``"em"`` is listed but reported as not available: the
#: library's EM M-step is the classical loss, which has no truncated form yet.
TRUNCATED_METHODS = (
    "iw",
    "em",
    "variational",
    "hybrid",
    "zeroed",
    "mean_impute",
    "complete_case",
)
#: Truncation domains of :func:`simulate_truncated`.
DOMAINS = ("halfspace", "orthant")
#: Label of the complete-data reference row.
ORACLE_LABEL = "complete_oracle"


@dataclass(frozen=True)
class TruncatedProblem(MaskedTable):
    """A truncated-Gaussian truth, complete draws from it and an MCAR mask.

    :ivar x: complete data ``(n, d)`` (inside :attr:`support`).
    :ivar mask: boolean ``(n, d)``, True where observed.
    :ivar loc: :math:`\\mu` ``(d,)`` (float64). :ivar precision: :math:`P` ``(d, d)`` (float64).
    :ivar support: the domain :math:`D` (a :class:`~pyro_msm.distributions.HalfSpace`, or the
        shifted orthant ``independent(greater_than(loc), 1)``).
    :ivar missing_rate: requested MCAR rate. :ivar seed: the seed.
    :ivar x_eval: held-out draws of the truth (for the Monte Carlo Fisher divergence on
        domains without a closed form; None for a half-space).
    """

    x: Tensor
    mask: Tensor
    loc: Tensor
    precision: Tensor
    support: Constraint
    missing_rate: float
    seed: int
    x_eval: Tensor | None = None

    @property
    def domain(self) -> str:
        """``"halfspace"`` or ``"orthant"``."""
        return "halfspace" if isinstance(self.support, HalfSpace) else "orthant"


def simulate_truncated(
    d: int = 10,
    n: int = 1000,
    missing_rate: float = 0.2,
    *,
    seed: int = 0,
    condition_number: float = 10.0,
    loc_scale: float = 1.0,
    domain: str = "halfspace",
    n_eval: int = 5000,
    dtype: torch.dtype | None = None,
) -> TruncatedProblem:
    """Simulate the truncated-Gaussian problem (recipe in the module docstring).

    :param d: dimension. :param n: rows. :param missing_rate: MCAR rate in ``[0, 1)``.
    :param seed: seeds the truth, the data and the mask (the half-space uses ``seed`` too).
    :param condition_number: condition number of :math:`P`.
    :param loc_scale: standard deviation of the entries of :math:`\\mu`.
    :param domain: ``"halfspace"`` (a random half-space through :math:`\\mu`) or ``"orthant"``
        (:math:`x_j \\ge \\mu_j` for every ``j``, a product domain).
    :param n_eval: held-out draws for the Monte Carlo Fisher divergence (``"orthant"`` only).
    :param dtype: dtype of the data (default: torch's default dtype).
    :returns: a :class:`TruncatedProblem`.
    :raises ValueError: for ``n < 1``, a rate outside ``[0, 1)`` or an unknown domain.
    """
    if int(n) < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0.0 <= float(missing_rate) < 1.0:
        raise ValueError(f"missing_rate must be in [0, 1), got {missing_rate}")
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {DOMAINS}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    gen = torch.Generator().manual_seed(int(seed))
    precision = random_precision(int(d), condition_number=condition_number, generator=gen)
    loc = loc_scale * torch.randn(int(d), generator=gen, dtype=torch.float64)
    x_eval = None
    if domain == "halfspace":
        support = random_halfspace(loc, seed=int(seed))
        x = TruncatedGaussianEnergy(loc, precision, support).simulate(int(n), seed=int(seed))
    else:
        support = constraints.independent(constraints.greater_than(loc.to(dtype)), 1)
        truth = TruncatedGaussianEnergy(loc, precision, support)
        both = truth.simulate(int(n) + int(n_eval), seed=int(seed))
        x, x_eval = both[: int(n)], both[int(n) :].double()
    x = x.to(dtype)
    mask = mcar_mask(x.shape, missing_rate, generator=gen)
    return TruncatedProblem(
        x, mask, loc, precision, support, float(missing_rate), int(seed), x_eval
    )


def halfspace_truncated_moments(
    loc: Tensor, precision: Tensor, support: HalfSpace
) -> tuple[Tensor, Tensor]:
    r"""Mean and covariance of :math:`N(\mu, \Sigma)`, :math:`\Sigma = P^{-1}`, truncated to the
    half-space :math:`w^\top x \le c`.

    With :math:`u = \Sigma w`, :math:`v = w^\top\Sigma w`, :math:`\alpha = (c - w^\top\mu)/\sqrt v`
    and :math:`\lambda = \varphi(\alpha)/\Phi(\alpha)`, the projection
    :math:`t = (w^\top x - w^\top\mu)/\sqrt v` is a standard normal truncated above at
    :math:`\alpha` (mean :math:`-\lambda`, variance :math:`1 - \alpha\lambda - \lambda^2`), and
    :math:`x - \mu - u t/\sqrt v` is independent of it with covariance :math:`\Sigma - uu^\top/v`.
    Hence

    .. math:: E[x] = \mu - \lambda\,u/\sqrt v, \qquad
              \mathrm{Cov}[x] = \Sigma - (\alpha\lambda + \lambda^2)\,uu^\top / v.

    :returns: mean ``(d,)`` and covariance ``(d, d)``, float64.
    """
    loc = loc.detach().double()
    sigma = torch.cholesky_inverse(torch.linalg.cholesky(precision.detach().double()))
    w = support.normal.detach().double()
    u = sigma @ w
    v = (w * u).sum()
    alpha = (support.offset.detach().double() - (w * loc).sum()) / v.sqrt()
    log_phi = -0.5 * alpha * alpha - 0.5 * math.log(2 * math.pi)
    lam = torch.exp(log_phi - torch.special.log_ndtr(alpha))
    mean = loc - lam * u / v.sqrt()
    covariance = sigma - (alpha * lam + lam * lam) * torch.outer(u, u) / v
    return mean, covariance


def truncated_score_mse(
    loc_hat: Tensor,
    precision_hat: Tensor,
    loc: Tensor,
    precision: Tensor,
    support: HalfSpace,
) -> float:
    r"""Score MSE :math:`E_{x\sim p}\lVert s_{\hat\theta}(x)-s(x)\rVert^2` of a truncated Gaussian
    fit under the half-space-truncated truth :math:`p` (twice the Fisher divergence).

    With :math:`s_{\hat\theta}(x) - s(x) = Ax + c`, :math:`A = P - \hat P`,
    :math:`c = \hat P\hat\mu - P\mu`, and the moments :math:`m, S` of
    :func:`halfspace_truncated_moments`:
    :math:`\mathrm{tr}(A S A^\top) + \lVert A m + c\rVert^2`.
    """
    mean, covariance = halfspace_truncated_moments(loc, precision, support)
    p_hat = precision_hat.detach().double()
    p = precision.detach().double()
    a = p - p_hat
    c = p_hat @ loc_hat.detach().double() - p @ loc.detach().double()
    shift = a @ mean + c
    return float(torch.diagonal(a @ covariance @ a.T).sum() + (shift * shift).sum())


def sample_score_mse(
    loc_hat: Tensor, precision_hat: Tensor, loc: Tensor, precision: Tensor, x: Tensor
) -> float:
    r"""Monte Carlo score MSE :math:`\overline{\lVert s_{\hat\theta}(x) - s(x)\rVert^2}` of a
    truncated Gaussian fit over draws ``x`` of the truncated truth (both models share the
    domain, so inside it both scores are the Gaussians')."""
    x = x.double()
    diff = (
        -(x - loc_hat.double()) @ precision_hat.double() + (x - loc.double()) @ precision.double()
    )
    return float((diff * diff).sum(-1).mean())


def _row(
    problem: TruncatedProblem,
    method: str,
    loc_hat: Tensor | None,
    precision_hat: Tensor | None,
    fit: Any = None,
    note: str = "",
) -> dict[str, Any]:
    fitted = (
        loc_hat is not None
        and precision_hat is not None
        and bool(torch.isfinite(precision_hat).all() & torch.isfinite(loc_hat).all())
    )
    mse = math.nan
    if fitted and problem.x_eval is None:
        args = (loc_hat, precision_hat, problem.loc, problem.precision, problem.support)
        mse = truncated_score_mse(*args)
    elif fitted:
        mse = sample_score_mse(
            loc_hat, precision_hat, problem.loc, problem.precision, problem.x_eval
        )
    return {
        "experiment": "truncated",
        "domain": problem.domain,
        "d": problem.d,
        "n": problem.n,
        "missing_rate": problem.missing_rate,
        "seed": problem.seed,
        "method": method,
        "precision_error": precision_error(precision_hat, problem.precision)
        if fitted
        else math.nan,
        "score_mse": mse,
        "fisher": mse / 2,
        **fit_fields(fit, note),
    }


def truncated(
    full: bool = False,
    seed: int = 0,
    seeds: int | None = None,
    progress: bool = True,
    *,
    ns: Sequence[int] | None = None,
    d: int = 10,
    missing_rate: float = 0.2,
    domain: str = "halfspace",
    methods: Sequence[str] = TRUNCATED_METHODS,
    steps: int | None = None,
    lr: float = 0.02,
    num_particles: int = 10,
    guide_steps: int = 10,
    oracle: bool = True,
) -> list[dict[str, Any]]:
    """Run the truncated-Gaussian experiment: every method on the same masked table, for each
    sample size and seed.

    Defaults (a few minutes on a laptop): ``n`` in (200, 500, 1000), 2 seeds, 150 model
    updates per fit. ``full=True``: the paper's grid ``n`` = 200, 400, 600, 800, 1000, 5 seeds,
    400 model updates. Explicit arguments override either.

    :param full: the paper's sizes.
    :param seed: first seed. :param seeds: number of seeds (``seed, seed + 1, ...``).
    :param progress: progress bars.
    :param ns: sample sizes. :param d: dimension. :param missing_rate: MCAR rate.
    :param domain: ``"halfspace"`` (the paper's) or ``"orthant"`` (see
        :func:`simulate_truncated`).
    :param methods: estimators to compare (from :data:`TRUNCATED_METHODS`).
    :param steps: model updates per fit. :param lr: Adam learning rate.
    :param num_particles: particles per row. :param guide_steps: guide steps per model step.
    :param oracle: add the ``complete_oracle`` reference row.
    :returns: tidy rows: ``experiment, domain, d, n, missing_rate, seed, method, precision_error,
        score_mse, fisher, ess, seconds, diverged, note``.
    :raises ValueError: for an unknown method.
    """
    unknown = sorted(set(methods) - set(TRUNCATED_METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {TRUNCATED_METHODS}")
    ns = tuple(ns) if ns is not None else ((200, 400, 600, 800, 1000) if full else (200, 500, 1000))
    seeds = seeds if seeds is not None else (5 if full else 2)
    steps = steps if steps is not None else (400 if full else 150)
    common = {"steps": steps, "lr": lr, "num_particles": num_particles, "guide_steps": guide_steps}
    rows: list[dict[str, Any]] = []
    for s in range(int(seed), int(seed) + int(seeds)):
        for n in ns:
            problem = simulate_truncated(d, n, missing_rate, seed=s, domain=domain)
            if progress:
                print(f"truncated Gaussian: d={d}, n={n}, MCAR {missing_rate:.0%}, seed {s}")
            kw = {"objective": "truncated", "support": problem.support, "seed": s, **common}
            if oracle:
                every = torch.ones_like(problem.mask)
                fit = fit_gaussian(
                    problem.x, every, "zeroed", label=ORACLE_LABEL, progress=progress, **kw
                )
                rows.append(_row(problem, ORACLE_LABEL, fit.loc, fit.precision, fit))
            complete_case = complete_case_note(problem.mask)
            for method in methods:
                if method == "complete_case" and complete_case:
                    note = complete_case
                    rows.append(_row(problem, method, None, None, None, note))
                    continue
                if method == "em":
                    # MissingScoreMatching's EM M-step is the classical (untruncated) loss
                    note = "not available: estimator 'em' supports only objective='exact'"
                    rows.append(_row(problem, method, None, None, None, note))
                    continue
                fit = fit_gaussian(problem.observed, problem.mask, method, progress=progress, **kw)
                rows.append(_row(problem, method, fit.loc, fit.precision, fit))
    return rows


def plot_truncated(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> str:
    """Plot :func:`truncated`'s rows: precision error and Fisher divergence against ``n``, one
    line per method (mean over seeds, band: mean ± sd; log scale).

    :returns: the path written.
    """
    from ..plots import plot_metric_curves

    return plot_metric_curves(
        rows,
        "n",
        {"precision_error": "rel. precision error", "fisher": "Fisher divergence"},
        path,
        title="Truncated Gaussian, {} (d={d}, MCAR {missing_rate:.0%})".format(
            rows[0].get("domain", "halfspace"), **rows[0]
        ),
    )

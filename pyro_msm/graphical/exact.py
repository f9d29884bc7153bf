r"""Exact deterministic solvers for sparse Gaussian graphs from incomplete tables.

Both minimise a penalised score-matching criterion on the whole table (no minibatches, no
particles) to a tolerance, warm-started along a decreasing penalty path, and return the same
:class:`~pyro_msm.graphical.PenaltyPath` as every other method.

**Marginal** (:func:`marginal_score_matching`, :func:`marginal_path`): the exact marginal
Hyvarinen loss of :math:`N(\mu, P^{-1})` (METHOD.md, "Gaussian closed form"),

.. math::
    F_\gamma(\mu, P) = \frac1n\sum_i \big[-2\,\mathrm{tr}\,Q_i + \lVert Q_i (x_{i,o} - \mu_o)
    \rVert^2\big] + \gamma\sum_{j\ne k}|P_{jk}|, \qquad Q_i = ((P^{-1})_{oo})^{-1},

computed from per-pattern statistics (:func:`~pyro_msm.infer.gaussian.grouped_marginal_loss`:
one Cholesky factorisation per missingness pattern, not per row), with its gradient in closed
form (:func:`~pyro_msm.infer.gaussian.grouped_marginal_gradient`). It is minimised by
accelerated proximal gradient (FISTA with soft-thresholding of the off-diagonal entries, as in
:mod:`~pyro_msm.graphical.quadratic`) with backtracking on the step: a trial point is accepted
only when it is positive definite and satisfies the sufficient-decrease condition of Beck &
Teboulle; the momentum restarts when the objective goes up or an extrapolated point leaves the
positive-definite cone. This is the ``closed_form`` objective of
:func:`~pyro_msm.graphical.score_matching_path`, solved exactly. ``method="newton"``
(:func:`marginal_newton`) minimises the same objective by proximal Newton with the exact
Hessian on QUIC's free set (:func:`~pyro_msm.infer.gaussian.grouped_marginal_hvp`):
quadratic convergence and KKT-certified solutions, at about one gradient per free variable per
iteration, so for small ``d`` (docs/benchmarks.md, "Issue 9, fourth session").

**EM** (:func:`em_score_matching`, :func:`em_path`): the imputation estimator of Uehara,
Matsuda & Kim (2020) for a Gaussian model (METHOD.md, "Exact solvers"). The E-step gives each
row's conditional mean and covariance of the missing block in closed form
(:func:`~pyro_msm.infer.gaussian.expected_statistics`, one factorisation per pattern); the
expected complete-data loss is then :math:`\mathrm{tr}(PSP) - 2\,\mathrm{tr}\,P` with :math:`S`
the expected centred Gram matrix, so the M-step is exactly the complete-data problem of
:func:`~pyro_msm.graphical.quadratic_score_matching` on :math:`S` (warm-started FISTA), and
:math:`\mu` is the mean of the completed rows. EM iterates to a relative tolerance at every
penalty. Its fixed point is consistent under MAR but is not the marginal minimiser; the
benchmark (``benchmarks/graph_engine.py``) measures both.

**Imputed** (:func:`imputed_path`, the default of
:class:`~pyro_msm.graphical.GraphicalScoreMatching` with missing entries): EM score matching at
one penalty, :func:`imputation_penalty` (the universal rate of the expected Gram matrix's noise),
fixes the E-step's statistics; the whole path is then the exact complete-data quadratic path on
them. EM at every penalty imputes each fit's missing entries under that penalty's own sparse
model, so an edge that a large penalty removes is imputed as independent, which keeps it out of
the path's ordering longer; imputing once, under a fit penalised only as much as the noise
asks, ranked edges better and was 3-20x faster (docs/benchmarks.md, "Issue 9, fifth session").

Both solvers share :func:`empty_graph_penalty` (the smallest penalty whose solution is
diagonal, for EM exactly) and the optimality check
:func:`~pyro_msm.graphical.quadratic.subgradient_violation`
(:func:`marginal_kkt_violation`, :func:`em_kkt_violation`). A ``support`` argument constrains
the precision to a set of edges (a refit, with ``penalty=0``; :func:`refit_support`).

References

[1] Uehara, Matsuda & Kim, "Imputation estimators for unnormalized models with missing data",
    AISTATS 2020.
[2] Beck & Teboulle, "A fast iterative shrinkage-thresholding algorithm for linear inverse
    problems", SIAM J. Imaging Sciences 2, 2009.
[3] O'Donoghue & Candes, "Adaptive restart for accelerated gradient schemes", Foundations of
    Computational Mathematics 15, 2015.
[4] Lin, Drton & Shojaie, "Estimation of high-dimensional graphical models using regularized
    score matching", Electronic Journal of Statistics 10, 2016.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..infer.gaussian import (
    PatternStatistics,
    estep_plan,
    expected_statistics,
    grouped_marginal_gradient,
    grouped_marginal_hvp,
    grouped_marginal_loss,
    pattern_statistics,
)
from .likelihood import graphical_lasso_path, likelihood_max_penalty
from .metrics import degree_ratio
from .path import PenaltyPath, as_data_and_mask
from .quadratic import (
    max_penalty,
    penalty_grid,
    quadratic_path,
    quadratic_score_matching,
    soft_threshold_offdiagonal,
    subgradient_violation,
)

__all__ = [
    "ExactSolution",
    "empty_graph_penalty",
    "exact_penalties",
    "marginal_objective",
    "marginal_kkt_violation",
    "marginal_score_matching",
    "marginal_newton",
    "MARGINAL_METHODS",
    "marginal_path",
    "em_kkt_violation",
    "em_score_matching",
    "em_iterations",
    "em_path",
    "em_path_from",
    "imputation_penalty",
    "PATH_LOSSES",
    "HUB_DEGREE_RATIO",
    "imputed_path",
    "EStep",
    "refit_support",
]

#: Penalised losses of :func:`imputed_path` (the imputation is score matching either way);
#: ``"auto"`` picks one of the other two from the imputation fit's graph.
PATH_LOSSES = ("auto", "score_matching", "likelihood")
#: ``loss="auto"`` of :func:`imputed_path` takes the likelihood when the imputation fit's
#: :func:`~pyro_msm.graphical.degree_ratio` (largest over mean degree) is at least this: a hub.
HUB_DEGREE_RATIO = 3.0


@dataclass
class ExactSolution:
    """A solution of :func:`marginal_score_matching` or :func:`em_score_matching`.

    :ivar loc: ``(d,)`` mean. :ivar precision: ``(d, d)`` precision (symmetric, positive
        definite).
    :ivar iterations: outer iterations used (proximal-gradient steps, or EM iterations).
    :ivar converged: whether the tolerance was met within ``max_iter``.
    :ivar covariance: for EM, the expected centred Gram matrix :math:`S` of the last E-step.
    :ivar info: extras (backtracking counts, restarts).
    """

    loc: Tensor
    precision: Tensor
    iterations: int
    converged: bool
    covariance: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _float64(x: Tensor | np.ndarray, mask: Tensor | np.ndarray | None) -> tuple[Tensor, Tensor]:
    data, observed = as_data_and_mask(x, mask)
    return data.detach().to(torch.float64), observed


def _observed_moments(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Observed column means and variances (normalised by the observed count)."""
    m = mask.to(x.dtype)
    count = m.sum(0).clamp(min=1)
    mean = (x * m).sum(0) / count
    var = (((x - mean) * m) ** 2).sum(0) / count
    if not bool((var > 0).all()):
        cols = torch.nonzero(var <= 0).flatten().tolist()
        raise ValueError(f"columns {cols} are constant on their observed entries; drop them")
    return mean, var


def empty_graph_penalty(
    x: Tensor | np.ndarray, mask: Tensor | np.ndarray | None = None
) -> tuple[float, Tensor, Tensor]:
    r"""The smallest penalty at which the EM fixed point is diagonal, and that fixed point.

    At a diagonal precision the E-step imputes column means, so the fixed point is
    :math:`\mu_j` = observed mean, :math:`P = \mathrm{diag}(1/v_j)` with :math:`v_j` the observed
    variance, and the expected Gram matrix :math:`S` has off-diagonal entries
    :math:`\frac1n\sum_{i: j,k \in o_i}(x_{ij}-\mu_j)(x_{ik}-\mu_k)`; the penalty is
    :func:`~pyro_msm.graphical.max_penalty` of that :math:`S`. The marginal objective's
    off-diagonal gradient at the same point is the same, so it is the empty-graph penalty of
    both solvers.

    :returns: ``(penalty, loc, precision)`` (float64).
    """
    data, observed = _float64(x, mask)
    loc, var = _observed_moments(data, observed)
    precision = torch.diag(1.0 / var)
    _, _, s = expected_statistics(data, observed, loc, precision)
    return max_penalty(s), loc, precision


def exact_penalties(
    x: Tensor | np.ndarray,
    mask: Tensor | np.ndarray | None = None,
    num: int = 30,
    ratio: float = 0.01,
) -> Tensor:
    """A decreasing log-spaced grid from :func:`empty_graph_penalty` down by ``ratio``."""
    top, _, _ = empty_graph_penalty(x, mask)
    return penalty_grid(top, num, ratio)


def _support_mask(support: Tensor | None, d: int, device: Any) -> Tensor | None:
    if support is None:
        return None
    keep = torch.as_tensor(support, device=device).to(torch.bool)
    if keep.shape != (d, d):
        raise ValueError(f"support has shape {tuple(keep.shape)}, expected {(d, d)}")
    return keep | keep.T | torch.eye(d, dtype=torch.bool, device=device)


def _l1(p: Tensor) -> Tensor:
    return p.abs().sum() - p.diagonal().abs().sum()


def _is_positive_definite(p: Tensor) -> bool:
    return int(torch.linalg.cholesky_ex(p)[1]) == 0


def marginal_objective(
    x: Tensor | np.ndarray,
    mask: Tensor | np.ndarray | None,
    loc: Tensor,
    precision: Tensor,
) -> float:
    """The mean exact marginal loss of :math:`N(\\mu, P^{-1})` on a table (module doc), without
    penalty; a convenience over :func:`~pyro_msm.infer.gaussian.grouped_marginal_loss`.

    :raises ValueError: if ``precision`` is not positive definite.
    """
    data, observed = _float64(x, mask)
    p = precision.detach().to(torch.float64)
    if not _is_positive_definite(0.5 * (p + p.T)):
        raise ValueError("marginal_objective: precision is not positive definite")
    stats = pattern_statistics(data, observed)
    return float(grouped_marginal_loss(stats, loc.detach().to(torch.float64), p))


def _value_and_grad(
    stats: PatternStatistics, loc: Tensor, p: Tensor
) -> tuple[float, Tensor, Tensor]:
    value, g_loc, g_p = grouped_marginal_gradient(stats, loc.detach(), p.detach())
    return float(value), g_loc, g_p


def _value(stats: PatternStatistics, loc: Tensor, p: Tensor) -> float:
    with torch.no_grad():
        return float(grouped_marginal_loss(stats, loc, p))


def marginal_kkt_violation(
    x: Tensor | np.ndarray,
    mask: Tensor | np.ndarray | None,
    loc: Tensor,
    precision: Tensor,
    penalty: float,
    *,
    support: Tensor | None = None,
) -> float:
    """Largest violation of the optimality conditions of the penalised marginal objective at
    ``(loc, precision)``: the gradient in :math:`\\mu` vanishes, and the precision's gradient
    satisfies :func:`~pyro_msm.graphical.quadratic.subgradient_violation`."""
    data, observed = _float64(x, mask)
    stats = pattern_statistics(data, observed)
    p = precision.detach().to(torch.float64)
    _, g_loc, g_p = _value_and_grad(stats, loc.detach().to(torch.float64), p)
    keep = _support_mask(support, p.shape[0], p.device)
    return max(float(g_loc.abs().max()), subgradient_violation(p, g_p, penalty, support=keep))


def marginal_score_matching(
    x: Tensor | np.ndarray,
    mask: Tensor | np.ndarray | None,
    penalty: float,
    *,
    init: tuple[Tensor, Tensor] | None = None,
    tol: float = 1e-7,
    max_iter: int = 2000,
    support: Tensor | None = None,
    step: float | None = None,
    stats: PatternStatistics | None = None,
    method: str = "fista",
) -> ExactSolution:
    r"""Minimise the penalised exact marginal objective (module doc) by accelerated proximal
    gradient with backtracking and restarts (``method="fista"``), or by proximal Newton
    (``method="newton"``, :func:`marginal_newton`; ``tol`` is then the KKT tolerance and
    ``step`` is not used).

    Stops when no entry of :math:`(\mu, P)` moves by more than ``tol * max(1, max |P|)`` in an
    iteration, the move scaled up by how far backtracking shrank the step below its nominal
    value :math:`1/(2\sum_j v_j)` (a collapsed step near the boundary of the positive-definite
    cone is reported as ``converged=False``, not as convergence).

    :param x: ``(n, d)``, NaN where missing unless ``mask`` is given.
    :param mask: boolean ``(n, d)``, True where observed, or None.
    :param penalty: :math:`\gamma \ge 0`.
    :param init: starting ``(loc, precision)`` (positive definite); default the diagonal fit
        of :func:`empty_graph_penalty`.
    :param tol: relative tolerance on the iterate change.
    :param max_iter: iteration cap (``converged`` False if reached).
    :param support: optional boolean ``(d, d)``: entries off it held at zero (a refit).
    :param step: initial step size (default from the data's scale); it adapts.
    :param stats: precomputed :func:`~pyro_msm.infer.gaussian.pattern_statistics` (paths
        reuse them).
    :param method: ``"fista"`` or ``"newton"``.
    :returns: an :class:`ExactSolution` (``info["step"]`` is the last accepted step).
    """
    if not penalty >= 0:
        raise ValueError(f"penalty must be non-negative, got {penalty}")
    if method not in MARGINAL_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {MARGINAL_METHODS}")
    data, observed = _float64(x, mask)
    d = data.shape[1]
    if stats is None:
        stats = pattern_statistics(data, observed)
    if method == "newton":
        if init is None:
            _, loc0, p0 = empty_graph_penalty(data, observed)
            init = (loc0, p0)
        return marginal_newton(stats, penalty, init, tol=tol, max_iter=max_iter, support=support)
    if init is None:
        _, loc, p = empty_graph_penalty(data, observed)
    else:
        loc, p = (t.detach().to(torch.float64).clone() for t in init)
    p = 0.5 * (p + p.T)
    keep = _support_mask(support, d, p.device)
    if keep is not None:
        p = p * keep
    if not _is_positive_definite(p):
        raise ValueError("marginal_score_matching: the initial precision is not positive definite")
    _, var = _observed_moments(data, observed)
    nominal = 1.0 / (2.0 * float(var.sum()))
    t = nominal if step is None else float(step)
    value = _value(stats, loc, p)
    objective = value + penalty * float(_l1(p))
    y_loc, y_p = loc, p
    theta = 1.0
    converged, k, backtracks, restarts = False, 0, 0, 0
    for k in range(1, int(max_iter) + 1):  # noqa: B007
        f_y, g_loc, g_p = _value_and_grad(stats, y_loc, y_p)
        while True:
            new_p = soft_threshold_offdiagonal(y_p - t * g_p, t * penalty)
            new_p = 0.5 * (new_p + new_p.T)
            if keep is not None:
                new_p = new_p * keep
            new_loc = y_loc - t * g_loc
            ok = _is_positive_definite(new_p)
            if ok:
                f_new = _value(stats, new_loc, new_p)
                dp, dl = new_p - y_p, new_loc - y_loc
                bound = (
                    f_y
                    + float((g_p * dp).sum() + (g_loc * dl).sum())
                    + float((dp * dp).sum() + (dl * dl).sum()) / (2 * t)
                )
                if math.isfinite(f_new) and f_new <= bound + 1e-12 * abs(f_y):
                    break
            t *= 0.5
            backtracks += 1
            if t < 1e-20:
                raise FloatingPointError("marginal_score_matching: the step size underflowed")
        new_objective = f_new + penalty * float(_l1(new_p))
        size = max(float((new_p - p).abs().max()), float((new_loc - loc).abs().max()))
        scale = max(1.0, float(new_p.abs().max()))
        # gradient restart (O'Donoghue & Candes): the momentum points uphill
        uphill = float(
            ((y_p - new_p) * (new_p - p)).sum() + ((y_loc - new_loc) * (new_loc - loc)).sum()
        )
        if uphill > 0 or new_objective > objective + 1e-12 * abs(objective):
            theta = 1.0
            restarts += 1
        old_p, old_loc = p, loc
        p, loc, objective = new_p, new_loc, new_objective
        # a step that backtracking shrank below the nominal one moves the iterate less: the
        # change is measured at the nominal step, so a collapsed step is not convergence
        if size * max(1.0, nominal / t) <= tol * scale:
            converged = True
            break
        theta_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * theta * theta))
        beta = (theta - 1.0) / theta_next
        theta = theta_next
        y_p = p + beta * (p - old_p)
        y_loc = loc + beta * (loc - old_loc)
        if beta > 0 and not _is_positive_definite(y_p):  # extrapolated out of the cone
            y_p, y_loc, theta = p, loc, 1.0
            restarts += 1
        if k % 20 == 0:
            t *= 2.0  # let the step grow back now and then; backtracking shrinks it
    return ExactSolution(
        loc=loc,
        precision=p,
        iterations=k,
        converged=converged,
        info={"step": t, "backtracks": backtracks, "restarts": restarts},
    )


def _grid(data: Tensor, observed: Tensor, penalties: Any, num: int, ratio: float) -> Tensor:
    if penalties is None:
        return exact_penalties(data, observed, num, ratio).to(data.device)
    grid = torch.as_tensor(penalties, dtype=torch.float64, device=data.device).flatten()
    if grid.numel() == 0 or not bool((grid >= 0).all()):
        raise ValueError("penalties must be a non-empty sequence of non-negative numbers")
    return grid


def _bar(total: int, label: str, progress: bool | None) -> Any:
    """A tqdm bar: always shown for ``progress=True``, never for False, and for None only once
    the fit has run for more than two seconds."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=f"{label:>14}",
        disable=progress is False,
        delay=2.0 if progress is None else 0.0,
        leave=False,
    )


#: The solvers of :func:`marginal_score_matching` / :func:`marginal_path`.
MARGINAL_METHODS = ("fista", "newton")


def _pack(loc: Tensor, p: Tensor, upper: Tensor) -> Tensor:
    """``(loc, upper triangle of P with its diagonal)`` as one flat vector."""
    return torch.cat([loc, p[upper[0], upper[1]]])


def _unpack(z: Tensor, d: int, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`_pack` (differentiable): ``(loc, symmetric P)``."""
    tri = torch.zeros(d, d, dtype=z.dtype, device=z.device).index_put((upper[0], upper[1]), z[d:])
    return z[:d], tri + tri.mT - torch.diag(tri.diagonal())


def _free_hessian(
    stats: PatternStatistics, z: Tensor, d: int, upper: Tensor, free: Tensor, chunk: int = 2**22
) -> Tensor:
    """The Hessian of :func:`~pyro_msm.infer.gaussian.grouped_marginal_loss` in the packed
    variables, restricted to the ``free`` ones: closed-form Hessian-vector products
    (:func:`~pyro_msm.infer.gaussian.grouped_marginal_hvp`) along the free coordinates' unit
    vectors, in batches of about ``chunk`` block entries."""
    loc, p = _unpack(z, d, upper)
    off = upper[0] != upper[1]
    per_direction = int((stats.patterns.sum(-1) ** 2).sum()) + d * d
    size = max(1, chunk // per_direction)
    columns = []
    for start in range(0, free.numel(), size):
        batch = free[start : start + size]
        basis = torch.zeros(batch.numel(), z.numel(), dtype=z.dtype, device=z.device)
        basis[torch.arange(batch.numel(), device=z.device), batch] = 1.0
        d_loc, d_p = torch.vmap(lambda v: _unpack(v, d, upper))(basis)
        h_loc, h_p = grouped_marginal_hvp(stats, loc, p, d_loc, d_p)
        h = torch.cat([h_loc, h_p[:, upper[0], upper[1]]], dim=1)
        h[:, d:][:, off] *= 2.0
        columns.append(h[:, free])
    h = torch.cat(columns)
    return 0.5 * (h + h.mT)


def _lasso_model_step(
    h: Tensor, g: Tensor, x: Tensor, w: Tensor, *, sweeps: int = 100
) -> tuple[Tensor, float]:
    r"""Approximately minimise the proximal-Newton model
    :math:`m(\delta) = g^\top\delta + \frac12\delta^\top H\delta + \sum_i w_i(|x_i+\delta_i|
    - |x_i|)` (``H`` positive definite): cyclic coordinate descent (soft-thresholding per
    coordinate), then, on the coordinates it leaves non-zero, the Newton solve of the model with
    those signs held; the candidate with the lower model value wins.

    :returns: ``(delta, m(delta))``.
    """
    hn, gn, xn, wn = (t.cpu().numpy() for t in (h, g, x, w))
    delta, hd = np.zeros_like(gn), np.zeros_like(gn)
    diag = np.diag(hn).copy()
    scale = max(1.0, float(np.abs(xn).max()))
    for _ in range(sweeps):
        largest = 0.0
        for i in range(gn.shape[0]):
            target = xn[i] - (gn[i] + hd[i] - diag[i] * delta[i]) / diag[i]
            new = math.copysign(max(abs(target) - wn[i] / diag[i], 0.0), target) - xn[i]
            change = new - delta[i]
            if change != 0.0:
                hd += hn[:, i] * change
                delta[i] = new
                largest = max(largest, abs(change))
        if largest <= 1e-12 * scale:
            break

    def model(step: np.ndarray) -> float:
        return float(gn @ step + 0.5 * step @ hn @ step + wn @ (np.abs(xn + step) - np.abs(xn)))

    best, value = delta, model(delta)
    active = (xn + delta != 0) | (wn == 0)
    if active.any():
        sign = np.sign(xn + delta)[active]
        solve = -xn.copy()
        rhs = gn[active] + wn[active] * sign + hn[np.ix_(active, ~active)] @ (-xn[~active])
        solve[active] = np.linalg.solve(hn[np.ix_(active, active)], -rhs)
        if model(solve) < value:
            best, value = solve, model(solve)
    return torch.as_tensor(best, dtype=h.dtype, device=h.device), value


def marginal_newton(
    stats: PatternStatistics,
    penalty: float,
    init: tuple[Tensor, Tensor],
    *,
    tol: float = 1e-6,
    max_iter: int = 100,
    support: Tensor | None = None,
    max_free: int = 2000,
) -> ExactSolution:
    r"""Minimise the penalised exact marginal objective (module doc) by proximal Newton
    (QUIC-like; Lee, Sun & Saunders 2014).

    Each iteration: the free set (diagonal, mean, non-zero off-diagonal entries and those whose
    gradient exceeds the penalty, as in QUIC); the exact Hessian of the smooth part on the free
    set (closed-form Hessian-vector products,
    :func:`~pyro_msm.infer.gaussian.grouped_marginal_hvp`); since the objective is not convex
    with missing entries (negative curvature is measured), the Hessian's eigenvalues are
    replaced by their absolute values plus a Levenberg-Marquardt damping :math:`\lambda` that
    shrinks 10x after a full step and grows 10x after a backtracked one; the L1 model is
    minimised by :func:`_lasso_model_step`; an Armijo backtracking line search on the true
    objective accepts only positive definite points. Stops when
    :func:`marginal_kkt_violation`'s quantity is at most ``tol``. The Hessian has
    :math:`O(|\mathrm{free}|)` products of the cost of a gradient, so this is for small ``d``
    (``max_free`` bounds it).

    :param stats: :func:`~pyro_msm.infer.gaussian.pattern_statistics` of the table.
    :param penalty: :math:`\gamma \ge 0`.
    :param init: starting ``(loc, precision)``, positive definite.
    :param tol: KKT tolerance. :param max_iter: Newton iterations at most.
    :param support: optional boolean ``(d, d)``: entries off it held at zero.
    :param max_free: the largest free set (else ``ValueError``: use ``method="fista"``).
    :returns: an :class:`ExactSolution` (``info``: ``kkt``, ``backtracks``, ``free``).

    References: Hsieh, Sustik, Dhillon & Ravikumar, "QUIC: quadratic approximation for sparse
    inverse covariance estimation", JMLR 15, 2014; Lee, Sun & Saunders, "Proximal Newton-type
    methods for minimizing composite functions", SIAM J. Optimization 24, 2014.
    """
    if not penalty >= 0:
        raise ValueError(f"penalty must be non-negative, got {penalty}")
    if not tol > 0 or int(max_iter) < 0:
        raise ValueError(f"need tol > 0 and max_iter >= 0, got {tol} and {max_iter}")
    loc, p = (t.detach().to(torch.float64).clone() for t in init)
    d = stats.patterns.shape[-1]
    if loc.shape != (d,) or p.shape != (d, d):
        raise ValueError(
            f"marginal_newton: init must be ({d},) and ({d}, {d}) for statistics of {d} "
            f"columns, got {tuple(loc.shape)} and {tuple(p.shape)}"
        )
    upper = torch.triu_indices(d, d, device=p.device)
    off = upper[0] != upper[1]
    keep = _support_mask(support, d, p.device)
    p = 0.5 * (p + p.T)
    if keep is not None:
        p = p * keep
    if not _is_positive_definite(p):
        raise ValueError("marginal_newton: the initial precision is not positive definite")
    z = _pack(loc, p, upper)
    # the penalty per packed variable: each off-diagonal entry counts twice in the L1 norm
    w = torch.zeros_like(z)
    w[d:][off] = 2.0 * penalty
    fixed = torch.zeros_like(z, dtype=torch.bool)
    if keep is not None:
        fixed[d:] = ~keep[upper[0], upper[1]]

    def objective(v: Tensor) -> float:
        return _value(stats, *_unpack(v, d, upper)) + float((w * v.abs()).sum())

    current = objective(z)
    damping, converged, backtracks, kkt, free_sizes = None, False, 0, float("inf"), []
    k = 0
    for k in range(int(max_iter) + 1):  # noqa: B007
        loc, p = _unpack(z, d, upper)
        _, g_loc, g_p = _value_and_grad(stats, loc, p)
        kkt = max(
            float(g_loc.abs().max()), subgradient_violation(p, g_p, penalty, support=keep)
        )  # the quantity of marginal_kkt_violation
        g = _pack(g_loc, g_p, upper)
        g[d:][off] *= 2.0
        if kkt <= tol:
            converged = True
            break
        if k == int(max_iter):
            break
        free = torch.nonzero(((w == 0) | (z != 0) | (g.abs() > w)) & ~fixed).flatten()
        if free.numel() > max_free:
            raise ValueError(f"marginal_newton: {free.numel()} free variables > {max_free}")
        free_sizes.append(int(free.numel()))
        values, vectors = torch.linalg.eigh(_free_hessian(stats, z, d, upper, free))
        top = float(values.abs().max())
        damping = 1e-6 * top if damping is None else damping
        h = (vectors * (values.abs() + damping)) @ vectors.mT
        step, decrease = _lasso_model_step(h, g[free], z[free], w[free])
        direction = torch.zeros_like(z)
        direction[free] = step
        alpha = 1.0
        while True:
            trial = z + alpha * direction
            if _is_positive_definite(_unpack(trial, d, upper)[1]):
                value = objective(trial)
                if math.isfinite(value) and value <= current + 1e-4 * alpha * decrease:
                    break
            alpha *= 0.5
            backtracks += 1
            if alpha < 1e-10:
                break
        if alpha < 1e-10:  # no descent along the model's step: damp harder and retry
            damping *= 100.0
            if damping > 1e3 * top:
                break
            continue
        damping = max(damping * (0.1 if alpha == 1.0 else 10.0), 1e-12 * top)
        z, current = trial, value
    loc, p = _unpack(z, d, upper)
    return ExactSolution(
        loc=loc,
        precision=p,
        iterations=k,
        converged=converged,
        info={"kkt": kkt, "backtracks": backtracks, "free": free_sizes, "step": None},
    )


def marginal_path(
    x: Tensor | np.ndarray,
    mask: Tensor | np.ndarray | None = None,
    penalties: Sequence[float] | Tensor | None = None,
    *,
    num_penalties: int = 30,
    penalty_ratio: float = 0.01,
    tol: float = 1e-6,
    max_iter: int | None = None,
    progress: bool | None = False,
    method: str = "fista",
) -> PenaltyPath:
    """:func:`marginal_score_matching` along decreasing penalties (default
    :func:`exact_penalties`), each warm-started from the previous solution (and its step size).

    ``method`` is ``"fista"`` (proximal gradient; ``max_iter`` default 2000, ``tol`` on the
    iterate change) or ``"newton"`` (:func:`marginal_newton`; ``max_iter`` default 100,
    ``tol`` on the KKT violation).

    :returns: a :class:`~pyro_msm.graphical.PenaltyPath` labelled ``"marginal"``;
        ``info`` holds ``iterations`` and ``converged`` per penalty.
    """
    data, observed = _float64(x, mask)
    grid = _grid(data, observed, penalties, num_penalties, penalty_ratio)
    if max_iter is None:
        max_iter = 100 if method == "newton" else 2000
    start = time.perf_counter()
    stats = pattern_statistics(data, observed)
    state, step = None, None
    precisions, locs, iterations, converged = [], [], [], []
    bar = _bar(len(grid), f"marginal {method}", progress)
    try:
        for gamma in grid.tolist():
            sol = marginal_score_matching(
                data, observed, gamma, init=state, tol=tol, max_iter=max_iter, step=step,
                stats=stats, method=method,
            )  # fmt: skip
            state, step = (sol.loc, sol.precision), sol.info["step"]
            precisions.append(sol.precision)
            locs.append(sol.loc)
            iterations.append(sol.iterations)
            converged.append(sol.converged)
            bar.update(1)
    finally:
        bar.close()
    return PenaltyPath(
        method="marginal",
        penalties=grid.clone(),
        precisions=torch.stack(precisions),
        locs=torch.stack(locs),
        seconds=time.perf_counter() - start,
        info={"iterations": iterations, "converged": converged},
    )


def _floor_to_positive_definite(p: Tensor, floor: float = 1e-3) -> tuple[Tensor, bool]:
    """Raise the diagonal so that the smallest eigenvalue is at least ``floor`` times the mean
    diagonal (keeps the sparsity); returns whether it had to."""
    smallest = float(torch.linalg.eigvalsh(p)[0])
    target = floor * float(p.diagonal().mean().clamp(min=1e-12))
    if smallest >= target:
        return p, False
    return p + (target - smallest) * torch.eye(p.shape[0], dtype=p.dtype, device=p.device), True


def em_kkt_violation(
    x: Tensor | np.ndarray,
    mask: Tensor | np.ndarray | None,
    loc: Tensor,
    precision: Tensor,
    penalty: float,
    *,
    support: Tensor | None = None,
) -> float:
    """How far ``(loc, precision)`` is from an EM fixed point: the largest of the change of the
    mean under one E-step and the violation of the M-step's optimality conditions
    (:func:`~pyro_msm.graphical.kkt_violation`) on the E-step's Gram matrix."""
    data, observed = _float64(x, mask)
    p = 0.5 * (precision + precision.T).detach().to(torch.float64)
    loc = loc.detach().to(torch.float64)
    _, mean, s = expected_statistics(data, observed, loc, p)
    eye = torch.eye(p.shape[0], dtype=p.dtype, device=p.device)
    gradient = s @ p + p @ s - 2 * eye
    keep = _support_mask(support, p.shape[0], p.device)
    return max(
        float((mean - loc).abs().max()), subgradient_violation(p, gradient, penalty, support=keep)
    )


def em_score_matching(
    x: Tensor | np.ndarray,
    mask: Tensor | np.ndarray | None,
    penalty: float,
    *,
    init: tuple[Tensor, Tensor] | None = None,
    tol: float = 1e-5,
    max_iter: int = 500,
    inner_tol: float = 1e-9,
    support: Tensor | None = None,
    accelerate: bool = True,
) -> ExactSolution:
    r"""EM score matching for a Gaussian model at one penalty (module doc).

    Iterates E-step (:func:`~pyro_msm.infer.gaussian.expected_statistics`) and M-step
    (:func:`~pyro_msm.graphical.quadratic_score_matching` on the expected Gram matrix,
    warm-started) until no entry of :math:`(\mu, P)` moves by more than
    ``tol * max(1, max |P|)``. On complete data the E-step is the identity and one iteration
    solves the quadratic problem.

    :param x: ``(n, d)``, NaN where missing unless ``mask`` is given.
    :param penalty: :math:`\gamma \ge 0` (the same scale as the quadratic and marginal paths).
    :param init: starting ``(loc, precision)``; default the diagonal fixed point of
        :func:`empty_graph_penalty`.
    :param tol: relative tolerance on the EM change.
    :param max_iter: EM iterations at most.
    :param inner_tol: tolerance of the M-step's FISTA.
    :param support: optional boolean ``(d, d)``: entries off it held at zero (a refit).
    :param accelerate: SQUAREM extrapolation of the EM map (:func:`em_iterations`).
    :returns: an :class:`ExactSolution`; ``covariance`` is the last E-step's :math:`S`, and
        ``info["floored"]`` counts M-steps whose solution had to be lifted to positive definite.
    """
    if not penalty >= 0:
        raise ValueError(f"penalty must be non-negative, got {penalty}")
    data, observed = _float64(x, mask)
    if init is None:
        _, loc, p = empty_graph_penalty(data, observed)
    else:
        loc, p = (t.detach().to(torch.float64).clone() for t in init)
    p = 0.5 * (p + p.T)
    keep = _support_mask(support, p.shape[0], p.device)
    if keep is not None:
        p = p * keep
    p, _ = _floor_to_positive_definite(p)
    complete = bool(observed.all())
    return em_iterations(
        _in_memory_estep(data, observed), loc, p, penalty, complete=complete, tol=tol,
        max_iter=max_iter, inner_tol=inner_tol, support=keep, accelerate=accelerate,
    )  # fmt: skip


#: An E-step: ``(loc, precision) -> (mean, S)``, the completed rows' mean and expected centred
#: Gram matrix (:func:`~pyro_msm.infer.gaussian.expected_statistics`, or the same summed over
#: the chunks of a streamed table, :meth:`pyro_msm.streaming.StreamedTable.expected_statistics`).
EStep = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def _in_memory_estep(data: Tensor, observed: Tensor) -> EStep:
    """The E-step of a table held in memory (missingness patterns grouped once)."""
    plan = estep_plan(observed)

    def estep(loc: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        _, mean, s = expected_statistics(data, observed, loc, p, plan=plan)
        return mean, s

    return estep


def em_iterations(
    estep: EStep,
    loc: Tensor,
    precision: Tensor,
    penalty: float,
    *,
    complete: bool = False,
    tol: float = 1e-5,
    max_iter: int = 500,
    inner_tol: float = 1e-9,
    support: Tensor | None = None,
    accelerate: bool = True,
) -> ExactSolution:
    r"""The EM loop of :func:`em_score_matching` for any E-step: E-step, then the quadratic
    M-step on its Gram matrix (warm-started, with an inner tolerance that tightens as EM
    converges), until no entry of :math:`(\mu, P)` moves by more than
    ``tol * max(1, max |P|)`` in one EM map.

    With ``accelerate`` the EM map :math:`F` is extrapolated by SQUAREM (Varadhan & Roland
    2008, scheme S3): from :math:`\theta_0`, two maps give :math:`r = F(\theta_0)-\theta_0`
    and :math:`v = F(F(\theta_0)) - 2F(\theta_0) + \theta_0`, the step is
    :math:`\alpha = -\lVert r\rVert/\lVert v\rVert` (at most :math:`-1`, plain EM, and at
    least a bound that grows by 4 when it binds), and the next point is one map from
    :math:`\theta_0 - 2\alpha r + \alpha^2 v`. An extrapolation that leaves the
    positive-definite cone, or whose map moves more than the plain EM map did, is dropped for
    the plain point :math:`F(F(\theta_0))` (and the bound shrinks). The fixed points are
    EM's: the stopping rule is the same change of one map. EM's rate is the fraction of
    missing information, so at high missing rates plain EM needs hundreds of maps per
    penalty; SQUAREM's fixed points and stopping rule are EM's, with several times fewer maps
    (``benchmarks/graph_engine.py``, docs/benchmarks.md).

    :param estep: ``(loc, precision) -> (mean, S)`` (:data:`EStep`).
    :param loc: starting mean ``(d,)``. :param precision: starting precision ``(d, d)``,
        symmetric positive definite (zero off ``support`` if given).
    :param penalty: :math:`\gamma \ge 0`.
    :param complete: the table has no missing entry (one iteration suffices).
    :param max_iter: EM maps at most (E-steps, the cost).
    :param support: boolean ``(d, d)`` with the diagonal, or None.
    :param accelerate: SQUAREM extrapolation (False: plain EM).
    :returns: an :class:`ExactSolution` (``iterations`` counts EM maps; ``info`` holds
        ``floored``, ``inner_iterations``, ``extrapolations`` and ``rejected``).

    References: Varadhan & Roland, "Simple and globally convergent methods for accelerating
    the convergence of any EM algorithm", Scandinavian Journal of Statistics 35, 2008.
    """
    keep = support
    state = {"maps": 0, "floored": 0, "inner": 0,
             "inner_now": inner_tol if complete else max(inner_tol, 1e-4)}  # fmt: skip

    def em_map(theta: tuple[Tensor, Tensor]) -> tuple[tuple[Tensor, Tensor], float, Tensor]:
        """One EM map from ``theta``, its relative change and the E-step's Gram matrix."""
        mean, s = estep(*theta)
        sol = quadratic_score_matching(
            s, penalty, init=theta[1], tol=state["inner_now"], support=keep
        )
        new, lifted = _floor_to_positive_definite(sol.precision)
        state["maps"] += 1
        state["inner"] += sol.iterations
        state["floored"] += int(lifted)
        size = max(float((new - theta[1]).abs().max()), float((mean - theta[0]).abs().max()))
        relative = size / max(1.0, float(new.abs().max()))
        return (mean, new), relative, s

    def done(relative: float) -> bool:
        # the M-step need only be as accurate as EM is close to its fixed point
        ok = relative <= tol and state["inner_now"] <= max(inner_tol, 0.01 * tol)
        state["inner_now"] = max(inner_tol, min(state["inner_now"], 0.01 * relative))
        return ok

    theta, gram = (loc, precision), None  # gram: the E-step Gram matrix that gave theta
    converged = False
    extrapolations = rejected = 0
    step_max = 1.0
    while state["maps"] < int(max_iter):
        t1, rel1, s1 = em_map(theta)
        if complete or done(rel1):
            theta, gram, converged = t1, s1, True
            break
        if state["maps"] >= int(max_iter):
            theta, gram = t1, s1
            break
        t2, rel2, s2 = em_map(t1)
        if done(rel2):
            theta, gram, converged = t2, s2, True
            break
        if not accelerate or state["maps"] >= int(max_iter):
            theta, gram = t2, s2
            continue
        r = [a - b for a, b in zip(t1, theta, strict=True)]
        v = [c - 2 * a + b for c, a, b in zip(t2, t1, theta, strict=True)]
        r_norm = math.sqrt(sum(float((u * u).sum()) for u in r))
        v_norm = math.sqrt(sum(float((u * u).sum()) for u in v))
        wanted = min(-r_norm / max(v_norm, 1e-300), -1.0)
        alpha = max(wanted, -step_max)
        if alpha == -1.0:  # plain EM; let the bound grow if it held the step back
            theta, gram = t2, s2
            step_max *= 4.0 if wanted < -1.0 else 1.0
            continue
        jump = tuple(
            b - 2 * alpha * dr + alpha * alpha * dv
            for b, dr, dv in zip(theta, r, v, strict=True)
        )
        p_jump = 0.5 * (jump[1] + jump[1].T)
        if keep is not None:
            p_jump = p_jump * keep
        if not _is_positive_definite(p_jump):
            theta, gram, rejected, step_max = t2, s2, rejected + 1, max(1.0, step_max / 4)
            continue
        t3, rel3, s3 = em_map((jump[0], p_jump))
        extrapolations += 1
        if not math.isfinite(rel3) or rel3 > rel2:  # the extrapolation did not help
            theta, gram, rejected, step_max = t2, s2, rejected + 1, max(1.0, step_max / 4)
            continue
        if alpha == -step_max:
            step_max *= 4.0
        theta, gram = t3, s3
        if done(rel3):
            converged = True
            break
    return ExactSolution(
        loc=theta[0],
        precision=theta[1],
        iterations=state["maps"],
        converged=converged,
        covariance=gram,
        info={"floored": state["floored"], "inner_iterations": state["inner"],
              "extrapolations": extrapolations, "rejected": rejected},
    )  # fmt: skip


def em_path(
    x: Tensor | np.ndarray,
    mask: Tensor | np.ndarray | None = None,
    penalties: Sequence[float] | Tensor | None = None,
    *,
    num_penalties: int = 30,
    penalty_ratio: float = 0.01,
    tol: float = 1e-4,
    max_iter: int = 500,
    inner_tol: float = 1e-9,
    accelerate: bool = True,
    progress: bool | None = False,
) -> PenaltyPath:
    """:func:`em_score_matching` along decreasing penalties (default :func:`exact_penalties`),
    each warm-started from the previous penalty's fit.

    :returns: a :class:`~pyro_msm.graphical.PenaltyPath` labelled ``"em"``; ``info`` holds
        ``iterations``, ``converged`` and the final E-step Gram matrices ``covariances``
        ``(k, d, d)`` (used by :func:`refit_support` and the eBIC refit).
    """
    data, observed = _float64(x, mask)
    grid = _grid(data, observed, penalties, num_penalties, penalty_ratio)
    _, loc, precision = empty_graph_penalty(data, observed)
    return em_path_from(
        _in_memory_estep(data, observed), grid, loc, precision,
        complete=bool(observed.all()), tol=tol, max_iter=max_iter, inner_tol=inner_tol,
        accelerate=accelerate, progress=progress,
    )  # fmt: skip


def em_path_from(
    estep: EStep,
    penalties: Tensor,
    loc: Tensor,
    precision: Tensor,
    *,
    complete: bool = False,
    tol: float = 1e-4,
    max_iter: int = 500,
    inner_tol: float = 1e-9,
    accelerate: bool = True,
    progress: bool | None = False,
) -> PenaltyPath:
    """The EM path for any E-step (:data:`EStep`): :func:`em_iterations` at each of the
    decreasing ``penalties``, warm-started from the previous fit, starting from
    ``(loc, precision)`` (e.g. :func:`empty_graph_penalty`'s diagonal fixed point). This is how
    a table that never fits in memory is fitted
    (:func:`pyro_msm.streaming.streamed_em_path`).

    :returns: a :class:`~pyro_msm.graphical.PenaltyPath` labelled ``"em"`` (see
        :func:`em_path`).
    """
    grid = torch.as_tensor(penalties, dtype=torch.float64, device=loc.device).flatten()
    start = time.perf_counter()
    state = (loc.detach().to(torch.float64), precision.detach().to(torch.float64))
    precisions, locs, grams, iterations, converged = [], [], [], [], []
    bar = _bar(len(grid), "em", progress)
    try:
        for gamma in grid.tolist():
            p, _ = _floor_to_positive_definite(0.5 * (state[1] + state[1].T))
            sol = em_iterations(
                estep, state[0], p, gamma, complete=complete, tol=tol, max_iter=max_iter,
                inner_tol=inner_tol, accelerate=accelerate,
            )  # fmt: skip
            state = (sol.loc, sol.precision)
            precisions.append(sol.precision)
            locs.append(sol.loc)
            grams.append(sol.covariance)
            iterations.append(sol.iterations)
            converged.append(sol.converged)
            bar.update(1)
            bar.set_postfix(penalty=f"{gamma:.3g}", em_iters=sol.iterations)
    finally:
        bar.close()
    return PenaltyPath(
        method="em",
        penalties=grid.clone(),
        precisions=torch.stack(precisions),
        locs=torch.stack(locs),
        seconds=time.perf_counter() - start,
        info={"iterations": iterations, "converged": converged, "covariances": torch.stack(grams)},
    )


def imputation_penalty(mask: Tensor | np.ndarray, *, scale: float = 1.0) -> float:
    r"""The penalty of :func:`imputed_path`'s imputation fit: the universal rate of the noise
    in the expected Gram matrix,

    .. math::
        \gamma = 2c\,\sqrt{\bar n_{\mathrm{pair}} \log d}\,/\,n,

    with :math:`\bar n_{\mathrm{pair}}` the mean over pairs :math:`j \ne k` of the rows that
    observe both entries. At the diagonal model an absent edge's gradient entry
    :math:`S_{jk}(1/S_{jj} + 1/S_{kk})` (:mod:`~pyro_msm.graphical.quadratic`) is a sum over
    those :math:`n_{jk}` rows divided by :math:`n` (the E-step imputes the others
    independently), with standard deviation about :math:`2\sqrt{n_{jk}}/n`; the
    :math:`\sqrt{\log d}` is the union bound over the pairs. On complete data it is
    :math:`2c\sqrt{\log d / n}`, the rate of Lin, Drton & Shojaie (2016) for regularised
    score matching. ``scale`` is :math:`c` (1: no tuning; 0.75 and 1.5 were measured too,
    docs/benchmarks.md).

    :param mask: boolean ``(n, d)``, True where observed.
    :param scale: :math:`c > 0`.
    """
    observed = mask if isinstance(mask, Tensor) else torch.as_tensor(mask, device="cpu")
    if observed.dim() != 2 or observed.dtype != torch.bool:
        raise ValueError("mask must be a boolean (n, d) tensor or array")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be positive and finite, got {scale}")
    n, d = observed.shape
    if n == 0 or d < 2:
        raise ValueError(f"need at least one row and two columns, got shape {(n, d)}")
    m = observed.to(torch.float64)
    counts = m.T @ m
    pairs = float(counts.sum() - counts.diagonal().sum()) / (d * (d - 1))
    return 2.0 * scale * math.sqrt(pairs * math.log(d)) / n


def imputed_path(
    x: Tensor | np.ndarray,
    mask: Tensor | np.ndarray | None = None,
    penalties: Sequence[float] | Tensor | None = None,
    *,
    num_penalties: int = 30,
    penalty_ratio: float = 0.01,
    imputation: float | None = None,
    loss: str = "score_matching",
    tol: float = 1e-4,
    max_iter: int = 300,
    progress: bool | None = False,
) -> PenaltyPath:
    r"""Sparse path on statistics imputed once by score matching (module doc):
    :func:`em_score_matching` at the penalty ``imputation`` gives :math:`(\hat\mu, \hat P)`;
    the E-step under that fit (:func:`~pyro_msm.infer.gaussian.expected_statistics`) gives the
    completed mean :math:`\bar\mu` and expected Gram matrix :math:`S`; the path is
    :func:`~pyro_msm.graphical.quadratic_path` on :math:`S` (``loss="score_matching"``) or the
    graphical lasso path :func:`~pyro_msm.graphical.graphical_lasso_path` on :math:`S`
    (``loss="likelihood"``), every estimate satisfying that loss's optimality conditions on
    :math:`S` to its solver's tolerance. On complete data :math:`S` is the sample covariance
    and this is the complete-data path of that loss.

    Which loss ranks edges better depends on the graph (docs/benchmarks.md, issue 9, sixth
    session): on the same imputed :math:`S`, score matching is ahead on chains and
    Erdos-Renyi graphs with n = 2000, the likelihood on graphs with hubs and stars.

    :param x: ``(n, d)``, NaN where missing unless ``mask`` is given.
    :param penalties: decreasing penalties (default ``num_penalties`` log-spaced from the
        empty-graph penalty of the path's loss on :math:`S`,
        :func:`~pyro_msm.graphical.quadratic.max_penalty` or
        :func:`~pyro_msm.graphical.likelihood_max_penalty`, down by ``penalty_ratio``).
    :param imputation: penalty of the imputation fit (default :func:`imputation_penalty`).
    :param loss: ``"score_matching"``, ``"likelihood"`` (the penalised loss of the path; the
        imputation is score matching either way) or ``"auto"``: the likelihood when the
        imputation fit's graph has a hub (:func:`~pyro_msm.graphical.degree_ratio` at least
        :data:`HUB_DEGREE_RATIO`), score matching otherwise.
    :param tol: relative tolerance of the imputation fit's EM.
    :param max_iter: EM maps of the imputation fit at most.
    :param progress: accepted for a common signature with the other paths (the path takes
        seconds; no bar is shown).
    :returns: a :class:`~pyro_msm.graphical.PenaltyPath` labelled ``"imputed"`` (or
        ``"imputed_likelihood"``); ``info`` holds ``imputation_penalty``, the imputation fit
        ``imputation_fit`` (an :class:`ExactSolution`), the Gram matrix ``covariance``, the
        ``loss`` used, the fit's ``degree_ratio`` and the path solver's ``iterations``.
    """
    del progress
    if loss not in PATH_LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {PATH_LOSSES}")
    data, observed = _float64(x, mask)
    start = time.perf_counter()
    gamma = imputation_penalty(observed) if imputation is None else float(imputation)
    if not gamma >= 0:
        raise ValueError(f"imputation must be a non-negative penalty, got {imputation}")
    fit = em_score_matching(data, observed, gamma, tol=tol, max_iter=max_iter)
    _, mean, s = expected_statistics(data, observed, fit.loc, fit.precision)
    ratio = degree_ratio(fit.precision)
    if loss == "auto":
        loss = "likelihood" if ratio >= HUB_DEGREE_RATIO else "score_matching"
    likelihood = loss == "likelihood"
    if penalties is None:
        top = likelihood_max_penalty(s) if likelihood else max_penalty(s)
        grid = penalty_grid(top, num_penalties, penalty_ratio, device=s.device)
    else:
        grid = _grid(data, observed, penalties, num_penalties, penalty_ratio)
    solve = graphical_lasso_path if likelihood else quadratic_path
    precisions, iterations = solve(s, grid)
    return PenaltyPath(
        method="imputed_likelihood" if likelihood else "imputed",
        penalties=grid.clone(),
        precisions=precisions,
        locs=mean.expand(len(grid), -1).clone(),
        seconds=time.perf_counter() - start,
        info={"imputation_penalty": gamma, "imputation_fit": fit, "covariance": s,
              "loss": loss, "degree_ratio": ratio, "iterations": iterations},
    )  # fmt: skip


def refit_support(
    x: Tensor | np.ndarray,
    mask: Tensor | np.ndarray | None,
    support: Tensor,
    *,
    solver: str = "em",
    init: tuple[Tensor, Tensor] | None = None,
    tol: float = 1e-6,
    max_iter: int = 2000,
) -> ExactSolution:
    """Refit without penalty, constrained to a set of edges: minimise the solver's criterion
    over precisions with :math:`P_{jk} = 0` for every pair off ``support`` (the diagonal is
    free). This removes the L1 shrinkage of the selected entries.

    :param support: boolean ``(d, d)`` (symmetrised; the diagonal is added).
    :param solver: ``"em"`` (EM score matching; on complete data the constrained quadratic
        problem) or ``"marginal"`` (the exact marginal objective).
    :param init: warm start, e.g. the penalised fit (entries off the support are zeroed).
    :returns: an :class:`ExactSolution` satisfying the constrained optimality conditions
        (:func:`em_kkt_violation` / :func:`marginal_kkt_violation` with ``support``).
    """
    if solver == "em":
        return em_score_matching(
            x, mask, 0.0, init=init, tol=tol, max_iter=max_iter, support=support
        )
    if solver == "marginal":
        return marginal_score_matching(
            x, mask, 0.0, init=init, tol=tol, max_iter=max_iter, support=support
        )
    raise ValueError(f"unknown refit solver {solver!r}; choose 'em' or 'marginal'")

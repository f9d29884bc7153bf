r"""The L1-penalised Gaussian likelihood (graphical lasso) on fixed statistics, in torch.

For a Gram matrix :math:`S` (the sample covariance, or the expected one of an E-step) the
graphical lasso minimises

.. math::
    L_\lambda(P) = -\log\det P + \mathrm{tr}(SP) + \lambda \sum_{i \ne j} |P_{ij}|

over positive-definite precisions (the diagonal unpenalised, as in scikit-learn's
``graphical_lasso``). Its gradient is :math:`S - P^{-1}`; the solution is diagonal,
:math:`\mathrm{diag}(1/S_{ii})`, for :math:`\lambda \ge \max_{i \ne j} |S_{ij}|`
(:func:`likelihood_max_penalty`).

:func:`~pyro_msm.graphical.imputed_path` with ``criterion="likelihood"`` runs this path on
the statistics imputed by EM score matching: the score-matching imputation, then the
likelihood's edge ordering, which is the more efficient of the two on graphs dominated by
hubs (docs/benchmarks.md, issue 9).

The solver is G-ISTA (proximal gradient on the primal, Rolfs et al. 2012): a
Barzilai-Borwein step, halved until the trial point is positive definite and satisfies the
sufficient-decrease condition, then soft-thresholding of the off-diagonal entries. It stops on
the optimality conditions (:func:`likelihood_kkt_violation`), the same test as every other
exact solver of the package (:func:`~pyro_msm.graphical.quadratic.subgradient_violation`).
Everything runs on the device and in the dtype of :math:`S`.

References

[1] Friedman, Hastie & Tibshirani, "Sparse inverse covariance estimation with the graphical
    lasso", Biostatistics 9, 2008.
[2] Rolfs, Rajaratnam, Guillot, Wong & Maleki, "Iterative thresholding algorithm for sparse
    inverse covariance estimation", NeurIPS 2012.
[3] Barzilai & Borwein, "Two-point step size gradient methods", IMA Journal of Numerical
    Analysis 8, 1988.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .quadratic import (
    QuadraticSolution,
    _check_covariance,
    _warm_started_path,
    soft_threshold_offdiagonal,
    subgradient_violation,
)

__all__ = [
    "likelihood_objective",
    "likelihood_max_penalty",
    "likelihood_kkt_violation",
    "graphical_lasso",
    "graphical_lasso_path",
]


def _smooth(p: Tensor, s: Tensor) -> tuple[float, Tensor] | None:
    """``(-log det P + tr(SP), P^{-1})``, or None when ``P`` is not positive definite."""
    chol, info = torch.linalg.cholesky_ex(p)
    if int(info) != 0:
        return None
    log_det = 2.0 * float(torch.log(chol.diagonal()).sum())
    return -log_det + float((s * p).sum()), torch.cholesky_inverse(chol)


def _precision_and_covariance(precision: Tensor, covariance: Tensor) -> tuple[Tensor, Tensor]:
    """The symmetrised precision and the checked covariance, in the precision's dtype."""
    s = _check_covariance(covariance)
    if not isinstance(precision, Tensor) or precision.shape != s.shape:
        shape = tuple(precision.shape) if isinstance(precision, Tensor) else type(precision)
        raise ValueError(
            f"precision must be a {tuple(s.shape)} tensor like covariance, got {shape}"
        )
    if not bool(torch.isfinite(precision).all()):
        raise ValueError("precision has NaN or infinite entries")
    p = 0.5 * (precision + precision.T)
    return p, s.to(p)


def likelihood_objective(precision: Tensor, covariance: Tensor, penalty: float) -> float:
    r""":math:`L_\lambda(P) = -\log\det P + \mathrm{tr}(SP) + \lambda\sum_{i\ne j}|P_{ij}|`;
    ``inf`` where ``precision`` is not positive definite.

    :raises ValueError: on a covariance that is not square, finite with a positive diagonal,
        or a precision of another shape or with non-finite entries.
    """
    p, s = _precision_and_covariance(precision, covariance)
    smooth = _smooth(p, s)
    if smooth is None:
        return float("inf")
    off = p - torch.diag(p.diagonal())
    return smooth[0] + float(penalty) * float(off.abs().sum())


def likelihood_max_penalty(covariance: Tensor) -> float:
    r"""The smallest :math:`\lambda` whose solution is diagonal: :math:`\max_{i\ne j}|S_{ij}|`
    (the off-diagonal gradient at :math:`\mathrm{diag}(1/S_{ii})`)."""
    s = _check_covariance(covariance)
    off = s.abs() - torch.diag(s.diagonal().abs())
    return float(off.max())


def likelihood_kkt_violation(
    precision: Tensor, covariance: Tensor, penalty: float, *, support: Tensor | None = None
) -> float:
    r"""Largest violation of the optimality conditions of :math:`L_\lambda` at ``precision``
    (gradient :math:`S - P^{-1}`; :func:`~pyro_msm.graphical.quadratic.subgradient_violation`);
    ``inf`` where ``precision`` is not positive definite.

    :param support: optional boolean ``(d, d)``: entries off it are constrained to zero.
    :raises ValueError: as :func:`likelihood_objective`.
    """
    p, s = _precision_and_covariance(precision, covariance)
    smooth = _smooth(p, s)
    if smooth is None:
        return float("inf")
    return subgradient_violation(p, s - smooth[1], penalty, support=support)


def graphical_lasso(
    covariance: Tensor,
    penalty: float,
    *,
    init: Tensor | None = None,
    tol: float = 1e-7,
    max_iter: int = 5000,
    support: Tensor | None = None,
) -> QuadraticSolution:
    r"""Minimise :math:`L_\lambda` (module doc) by G-ISTA with Barzilai-Borwein steps.

    Stops when :func:`likelihood_kkt_violation` is at most ``tol`` times
    :math:`\max_i S_{ii}` (the scale of the gradient).

    :param covariance: :math:`S`, ``(d, d)`` symmetric positive semi-definite with a positive
        diagonal; with ``penalty=0`` it must be positive definite (the solution is
        :math:`S^{-1}`) unless ``support`` makes the constrained problem well posed.
    :param penalty: :math:`\lambda \ge 0`.
    :param init: positive-definite warm start (default :math:`\mathrm{diag}(1/S_{ii})`).
    :param tol: relative tolerance of the optimality conditions.
    :param max_iter: iteration cap (``converged`` is False if it is reached).
    :param support: optional boolean ``(d, d)``; entries off it are held at zero (the
        constrained maximum-likelihood refit of a support: use ``penalty=0``).
    :returns: a :class:`~pyro_msm.graphical.quadratic.QuadraticSolution` (precision, iterations,
        converged).
    :raises ValueError: on a negative penalty or an ``init`` that is not positive definite.
    :raises RuntimeError: if no step keeps the iterate positive definite (a step size under
        1e-20: a singular ``covariance`` with ``penalty=0``).
    """
    s = _check_covariance(covariance)
    if not penalty >= 0:
        raise ValueError(f"penalty must be non-negative, got {penalty}")
    d = s.shape[0]
    eye = torch.eye(d, dtype=torch.bool, device=s.device)
    allowed = keep = None
    if support is not None:
        if support.shape != s.shape:
            raise ValueError(f"support has shape {tuple(support.shape)}, expected {tuple(s.shape)}")
        allowed = support.to(torch.bool) | support.to(torch.bool).T | eye
        keep = allowed.to(s.dtype)
    p = torch.diag(1.0 / s.diagonal()) if init is None else init.detach().to(s).clone()
    if p.shape != s.shape:
        raise ValueError(f"init has shape {tuple(p.shape)}, expected {tuple(s.shape)}")
    p = 0.5 * (p + p.T)
    if keep is not None:
        p = p * keep
    current = _smooth(p, s)
    if current is None:
        raise ValueError("init must be positive definite (on the support, if one is given)")
    value, inverse = current
    scale = float(s.diagonal().max())
    rounding = 64 * torch.finfo(s.dtype).eps
    gradient = s - inverse
    step = float(torch.linalg.eigvalsh(p)[0]) ** 2  # 1/L of the smooth part near P
    converged = False
    k = 0
    for k in range(1, int(max_iter) + 1):  # noqa: B007
        if subgradient_violation(p, gradient, penalty, support=allowed) <= tol * scale:
            converged = True
            break
        while True:
            trial = soft_threshold_offdiagonal(p - step * gradient, step * penalty)
            if keep is not None:
                trial = trial * keep
            change = trial - p
            result = _smooth(trial, s)
            if result is not None:
                model = float((gradient * change).sum()) + float((change * change).sum()) / (
                    2.0 * step
                )
                # the slack absorbs rounding of the values near the optimum
                if result[0] <= value + model + rounding * max(1.0, abs(value)):
                    break
            step *= 0.5
            if step < 1e-20:
                raise RuntimeError("graphical_lasso: the step size underflowed")
        new_value, new_inverse = result
        new_gradient = s - new_inverse
        curvature = float((change * (new_gradient - gradient)).sum())
        p, value, inverse, gradient = trial, new_value, new_inverse, new_gradient
        # Barzilai-Borwein step for the next iteration (the backtracking above keeps it safe)
        step = float((change * change).sum()) / curvature if curvature > 0 else 2.0 * step
    return QuadraticSolution(precision=0.5 * (p + p.T), iterations=k, converged=converged)


def graphical_lasso_path(
    covariance: Tensor,
    penalties: Sequence[float] | Tensor,
    *,
    tol: float = 1e-7,
    max_iter: int = 5000,
) -> tuple[Tensor, list[int]]:
    """Solve :func:`graphical_lasso` along ``penalties`` in the given order (normally
    decreasing), each warm-started from the previous solution.

    :returns: precisions ``(k, d, d)`` and the iteration count per penalty.
    :raises RuntimeError: if a penalty does not converge within ``max_iter``.
    """
    return _warm_started_path(
        graphical_lasso, covariance, penalties, failure="the graphical lasso", tol=tol,
        max_iter=max_iter,
    )  # fmt: skip

r"""The complete-data fast path: L1-penalised Gaussian score matching solved exactly.

For complete rows and the model :math:`N(\mu, P^{-1})`, the mean per-row Hyvarinen loss of
METHOD.md, :math:`\frac1n\sum_i [-2\,\mathrm{tr}P + \lVert P(x_i - \mu)\rVert^2]`, is minimised
in :math:`\mu` by the sample mean for any invertible :math:`P`; profiled, it is the quadratic

.. math::
    F_\gamma(P) = \mathrm{tr}(P S P) - 2\,\mathrm{tr}(P) + \gamma \sum_{i \ne j} |P_{ij}|,

with :math:`S` the sample covariance (normalised by :math:`n`). This is twice the
:math:`\tfrac12\mathrm{tr}(PSP) - \mathrm{tr}P` often written (Lin, Drton & Shojaie 2016); the
factor 2 follows METHOD.md's per-row loss, so a penalty :math:`\gamma` here means the same as in
:func:`~pyro_msm.graphical.score_matching_path`, which penalises the mean per-row loss of
:class:`~pyro_msm.infer.MissingScoreMatching` in the same way. On symmetric matrices the
gradient of the smooth part is :math:`SP + PS - 2I` and its Lipschitz constant
:math:`2\lambda_{\max}(S)`.

Facts the tests check: at :math:`\gamma = 0` the minimiser is :math:`S^{-1}`; for
:math:`\gamma \ge \gamma_{\max} = \max_{i\ne j} |S_{ij}|(1/S_{ii} + 1/S_{jj})`
(:func:`max_penalty`) it is :math:`\mathrm{diag}(1/S_{ii})`; and every returned solution
satisfies the optimality (KKT) conditions to the requested tolerance (:func:`kkt_violation`).

The solver is FISTA (accelerated proximal gradient with soft-thresholding of the off-diagonal
entries and the gradient restart of O'Donoghue & Candes), vectorised over the matrix, run to a
tight tolerance; :func:`quadratic_path` warm-starts each penalty from the previous solution.

References

[1] Lin, Drton & Shojaie, "Estimation of high-dimensional graphical models using regularized
    score matching", Electronic Journal of Statistics 10, 2016.
[2] Beck & Teboulle, "A fast iterative shrinkage-thresholding algorithm for linear inverse
    problems", SIAM J. Imaging Sciences 2, 2009.
[3] O'Donoghue & Candes, "Adaptive restart for accelerated gradient schemes", Foundations of
    Computational Mathematics 15, 2015.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "sample_covariance",
    "quadratic_objective",
    "max_penalty",
    "penalty_grid",
    "soft_threshold_offdiagonal",
    "kkt_violation",
    "subgradient_violation",
    "QuadraticSolution",
    "quadratic_score_matching",
    "quadratic_path",
]


def _check_covariance(s: Tensor) -> Tensor:
    if not isinstance(s, Tensor):
        raise TypeError(f"covariance must be a torch.Tensor, got {type(s).__name__}")
    if s.dim() != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"covariance must be square (d, d), got shape {tuple(s.shape)}")
    if not s.is_floating_point():
        raise TypeError(f"covariance must be floating point, got {s.dtype}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("covariance has NaN or infinite entries")
    if not bool((s.diagonal() > 0).all()):
        raise ValueError("covariance must have a positive diagonal (a constant column?)")
    return 0.5 * (s + s.T)


def sample_covariance(x: Tensor) -> Tensor:
    """Sample covariance of complete rows about their mean, normalised by ``n`` (the matrix
    :math:`S` of the profiled score-matching loss).

    :param x: ``(n, d)`` finite rows, ``n >= 2``.
    :raises ValueError: on NaN/infinite entries or fewer than two rows.
    """
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError("x must be a 2-D tensor (n, d)")
    if x.shape[0] < 2:
        raise ValueError(f"sample_covariance needs at least 2 rows, got {x.shape[0]}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x has NaN or infinite entries; the fast path needs complete data")
    centred = x - x.mean(0)
    return centred.T @ centred / x.shape[0]


def quadratic_objective(precision: Tensor, covariance: Tensor, penalty: float) -> Tensor:
    r""":math:`F_\gamma(P) = \mathrm{tr}(PSP) - 2\,\mathrm{tr}P + \gamma\sum_{i\ne j}|P_{ij}|`."""
    p = 0.5 * (precision + precision.mT)
    off = p - torch.diag_embed(p.diagonal(dim1=-2, dim2=-1))
    smooth = (p @ covariance * p).sum((-2, -1)) - 2 * p.diagonal(dim1=-2, dim2=-1).sum(-1)
    return smooth + penalty * off.abs().sum((-2, -1))


def max_penalty(covariance: Tensor) -> float:
    r"""The smallest :math:`\gamma` whose solution is diagonal:
    :math:`\max_{i \ne j} |S_{ij}|\,(1/S_{ii} + 1/S_{jj})` (the off-diagonal gradient at
    :math:`\mathrm{diag}(1/S_{ii})`, the diagonal minimiser)."""
    s = _check_covariance(covariance)
    inv = 1.0 / s.diagonal()
    g = s.abs() * (inv[:, None] + inv[None, :])
    g.fill_diagonal_(0.0)
    return float(g.max())


def penalty_grid(
    maximum: float,
    num: int = 100,
    ratio: float = 0.01,
    *,
    minimum: float | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Log-spaced decreasing penalties from ``maximum`` to ``minimum`` (default
    ``ratio * maximum``), float64, on ``device`` (default the CPU, never torch's default
    device: the grid is made from Python numbers and follows no data)."""
    if not maximum > 0:
        raise ValueError(f"maximum penalty must be positive, got {maximum}")
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num_penalties (grid length) must be a positive integer, got {num!r}")
    low = ratio * maximum if minimum is None else float(minimum)
    if not 0 < low <= maximum:
        raise ValueError(f"need 0 < minimum <= maximum, got {low} and {maximum}")
    return torch.logspace(
        math.log10(maximum), math.log10(low), num, dtype=torch.float64, device=device or "cpu"
    )


def soft_threshold_offdiagonal(matrix: Tensor, threshold: Tensor | float) -> Tensor:
    """Soft-threshold the off-diagonal entries by ``threshold`` (a scalar or an entrywise
    tensor); the diagonal is unchanged."""
    shrunk = torch.sign(matrix) * torch.clamp(matrix.abs() - threshold, min=0.0)
    eye = torch.eye(matrix.shape[-1], dtype=torch.bool, device=matrix.device)
    return torch.where(eye, matrix, shrunk)


def kkt_violation(
    precision: Tensor, covariance: Tensor, penalty: float, *, support: Tensor | None = None
) -> float:
    r"""Largest violation of the optimality conditions of :math:`F_\gamma` at ``precision``:
    with :math:`G = SP + PS - 2I`, :math:`G_{ii} = 0`; :math:`G_{ij} + \gamma\,
    \mathrm{sign}(P_{ij}) = 0` where :math:`P_{ij} \ne 0`; :math:`|G_{ij}| \le \gamma` where
    :math:`P_{ij} = 0`.

    :param support: optional boolean ``(d, d)``: the problem constrained to
        :math:`P_{ij} = 0` off it (no condition there), as in a refit.
    """
    p = 0.5 * (precision + precision.T)
    s = covariance.to(p)
    eye = torch.eye(p.shape[0], dtype=torch.bool, device=p.device)
    g = s @ p + p @ s - 2 * eye.to(p.dtype)
    return subgradient_violation(p, g, penalty, support=support)


def subgradient_violation(
    precision: Tensor, gradient: Tensor, penalty: float, *, support: Tensor | None = None
) -> float:
    r"""Largest violation of the optimality conditions of a smooth function plus
    :math:`\gamma\sum_{i\ne j}|P_{ij}|`, given its gradient at ``precision`` (shared by every
    exact solver): the diagonal gradient vanishes; :math:`G_{ij} + \gamma\,\mathrm{sign}(P_{ij})
    = 0` on nonzero entries; :math:`|G_{ij}| \le \gamma` on zero entries. Entries outside
    ``support`` (a boolean ``(d, d)``, optional) are constrained to zero and carry no condition.
    """
    p = precision
    g = gradient
    eye = torch.eye(p.shape[0], dtype=torch.bool, device=p.device)
    active = (p != 0) & ~eye
    violation = torch.where(
        eye,
        g.abs(),
        torch.where(
            active, (g + penalty * torch.sign(p)).abs(), torch.clamp(g.abs() - penalty, min=0)
        ),
    )
    if support is not None:
        violation = torch.where(support | eye, violation, torch.zeros_like(violation))
    return float(violation.max())


@dataclass
class QuadraticSolution:
    """A solution of :func:`quadratic_score_matching` (or of
    :func:`~pyro_msm.graphical.graphical_lasso`).

    :ivar precision: the minimiser ``(d, d)``.
    :ivar iterations: iterations used (FISTA, or G-ISTA for the graphical lasso).
    :ivar converged: whether the tolerance was met within ``max_iter``.
    """

    precision: Tensor
    iterations: int
    converged: bool


def quadratic_score_matching(
    covariance: Tensor,
    penalty: float,
    *,
    init: Tensor | None = None,
    tol: float = 1e-10,
    max_iter: int = 20000,
    support: Tensor | None = None,
) -> QuadraticSolution:
    r"""Minimise :math:`F_\gamma` (module doc) by FISTA with restarts.

    Stops when the largest change of an entry in one iteration is below
    ``tol * max(1, max |P|)``.

    :param covariance: :math:`S`, ``(d, d)`` symmetric positive semi-definite with a positive
        diagonal (from :func:`sample_covariance`; use float64 for tight tolerances).
    :param penalty: :math:`\gamma \ge 0`.
    :param init: warm start (default :math:`\mathrm{diag}(1/S_{ii})`).
    :param tol: relative tolerance on the iterate change.
    :param max_iter: iteration cap (``converged`` is False if it is reached).
    :param support: optional boolean ``(d, d)``; entries off it are held at zero (the
        constrained problem of a refit: use ``penalty=0``). The diagonal is always free.
    :returns: a :class:`QuadraticSolution`.
    """
    s = _check_covariance(covariance)
    if not penalty >= 0:
        raise ValueError(f"penalty must be non-negative, got {penalty}")
    d = s.shape[0]
    eye = torch.eye(d, dtype=s.dtype, device=s.device)
    p = torch.diag(1.0 / s.diagonal()) if init is None else init.detach().to(s).clone()
    if p.shape != s.shape:
        raise ValueError(f"init has shape {tuple(p.shape)}, expected {tuple(s.shape)}")
    p = 0.5 * (p + p.T)
    keep = None
    if support is not None:
        if support.shape != s.shape:
            raise ValueError(f"support has shape {tuple(support.shape)}, expected {tuple(s.shape)}")
        keep = (support | support.T | torch.eye(d, dtype=torch.bool, device=s.device)).to(s.dtype)
        p = p * keep
    step = 1.0 / (2.0 * float(torch.linalg.eigvalsh(s)[-1]))
    y, theta = p, 1.0
    converged = False
    k = 0
    for k in range(1, int(max_iter) + 1):  # noqa: B007
        gradient = s @ y + y @ s - 2 * eye
        new = soft_threshold_offdiagonal(y - step * gradient, step * penalty)
        if keep is not None:
            new = new * keep
        change = new - p
        size = float(change.abs().max())
        if size <= tol * max(1.0, float(new.abs().max())):
            p = new
            converged = True
            break
        if float(((y - new) * change).sum()) > 0:  # gradient restart: momentum points uphill
            theta = 1.0
            y = new
        else:
            theta_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * theta * theta))
            y = new + ((theta - 1.0) / theta_next) * change
            theta = theta_next
        p = new
    return QuadraticSolution(precision=0.5 * (p + p.T), iterations=k, converged=converged)


def _warm_started_path(
    solve: Callable[..., QuadraticSolution],
    covariance: Tensor,
    penalties: Sequence[float] | Tensor,
    *,
    failure: str,
    **options: Any,
) -> tuple[Tensor, list[int]]:
    """Solve ``solve(covariance, penalty, init=previous, **options)`` along ``penalties`` in
    the given order, each warm-started from the previous solution (shared by every exact path
    on fixed statistics).

    :param failure: the error message's subject, e.g. ``"the fast path"``.
    :returns: precisions ``(k, d, d)`` and the iteration count per penalty.
    :raises RuntimeError: if a penalty does not converge within the solver's ``max_iter``.
    """
    values = [float(g) for g in penalties]
    if not values:
        raise ValueError("penalties is empty")
    out, iterations = [], []
    current = None
    for penalty in values:
        solution = solve(covariance, penalty, init=current, **options)
        if not solution.converged:
            raise RuntimeError(
                f"{failure} did not converge at penalty {penalty:.4g} within "
                f"{options.get('max_iter')} iterations (an ill-conditioned or singular "
                "covariance with a small penalty: raise max_iter, the smallest penalty or "
                "standardise the data)"
            )
        current = solution.precision
        out.append(current)
        iterations.append(solution.iterations)
    return torch.stack(out), iterations


def quadratic_path(
    covariance: Tensor,
    penalties: Sequence[float] | Tensor,
    *,
    tol: float = 1e-10,
    max_iter: int = 20000,
) -> tuple[Tensor, list[int]]:
    """Solve :func:`quadratic_score_matching` along ``penalties`` in the given order (normally
    decreasing), each warm-started from the previous solution.

    :returns: precisions ``(k, d, d)`` and the iteration count per penalty.
    :raises RuntimeError: if a penalty does not converge within ``max_iter``.
    """
    return _warm_started_path(
        quadratic_score_matching, covariance, penalties, failure="the fast path", tol=tol,
        max_iter=max_iter,
    )  # fmt: skip

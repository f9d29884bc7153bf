r"""Baselines for sparse Gaussian graphs from incomplete tables: impute then graphical lasso, and
EM graphical lasso.

All return a :class:`~pyro_msm.graphical.PenaltyPath`, the same object the score-matching
path returns, so the metrics treat every method alike. Their penalty :math:`\alpha` is the
graphical lasso's (on the log-likelihood scale:
:math:`-\log\det\Theta + \mathrm{tr}(S\Theta) + \alpha\sum_{i\ne j}|\Theta_{ij}|`), not the
score-matching :math:`\gamma`; paths run from :math:`\alpha_{\max} = \max_{i\ne j}|S_{ij}|`
(the empty graph) down.

- :func:`impute_glasso_path`: mean imputation or scikit-learn's ``IterativeImputer``, then
  ``graphical_lasso`` on the imputed table's covariance at each penalty;
  :func:`impute_glasso_cv` selects one penalty with ``GraphicalLassoCV``.
- :func:`em_glasso`: EM for the penalised Gaussian likelihood of the observed entries
  (Stadler & Buhlmann 2012). E-step: for each row, the conditional mean of the missing
  block and its conditional covariance :math:`\Theta_{uu}^{-1}` under the current fit
  (:func:`~pyro_msm.infer.gaussian.expected_statistics`, shared with EM score matching),
  giving the expected sufficient
  statistics :math:`\mu = \frac1n\sum_i \hat x_i` and
  :math:`S = \frac1n\sum_i [(\hat x_i-\mu)(\hat x_i-\mu)^\top + C_i]`; M-step: scikit-learn's
  ``graphical_lasso(S, alpha)``. :func:`em_glasso_path` warm-starts each penalty's EM from the
  previous penalty's fit.

The score-matching baselines (zero filling, mean imputation) are estimators of
:class:`~pyro_msm.infer.MissingScoreMatching` (``"zeroed"``, ``"mean_impute"``): run them with
:func:`~pyro_msm.graphical.score_matching_path`.

scikit-learn is optional (extra ``graph``): it is imported when a baseline is called, with an
:class:`ImportError` that says how to install it.

References

[1] Friedman, Hastie & Tibshirani, "Sparse inverse covariance estimation with the graphical
    lasso", Biostatistics 9, 2008.
[2] Stadler & Buhlmann, "Missing values: sparse inverse covariance estimation and an extension
    to sparse regression", Statistics and Computing 22, 2012.
[3] van Buuren & Groothuis-Oudshoorn, "mice: Multivariate imputation by chained equations in
    R", J. Statistical Software 45, 2011 (the scheme of ``IterativeImputer``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..infer.gaussian import expected_statistics, pairwise_moments
from .path import PenaltyPath, as_data_and_mask
from .quadratic import penalty_grid

__all__ = [
    "IMPUTERS",
    "require_sklearn",
    "impute",
    "glasso_max_penalty",
    "glasso_path",
    "impute_glasso_path",
    "impute_glasso_cv",
    "em_glasso",
    "em_glasso_path",
]

#: Imputers of :func:`impute`.
IMPUTERS = ("mean", "iterative")


def require_sklearn() -> Any:
    """Import scikit-learn or raise an ImportError naming the extra that installs it."""
    try:
        import sklearn  # noqa: F401
        import sklearn.covariance
    except ImportError as err:  # pragma: no cover - exercised only without scikit-learn
        raise ImportError(
            "the graphical-lasso baselines need scikit-learn: pip install 'pyro-msm[graph]' "
            "(or pip install scikit-learn)"
        ) from err
    return sklearn


def impute(x: Tensor, mask: Tensor, method: str = "mean", *, seed: int = 0) -> np.ndarray:
    """Fill the missing entries of a table.

    :param x: ``(n, d)`` with arbitrary finite values at missing entries.
    :param mask: boolean ``(n, d)``, True where observed.
    :param method: ``"mean"`` (observed column means) or ``"iterative"`` (scikit-learn's
        ``IterativeImputer``, Bayesian ridge regressions of each column on the others, chained,
        ``max_iter=10``).
    :param seed: ``random_state`` of the iterative imputer.
    :returns: the completed table as a float64 array.
    """
    if method not in IMPUTERS:
        raise ValueError(f"unknown imputer {method!r}; choose one of {IMPUTERS}")
    values = x.detach().to(torch.float64).cpu().numpy().copy()
    observed = mask.cpu().numpy()
    if method == "mean":
        means = np.where(observed, values, 0.0).sum(0) / observed.sum(0).clip(min=1)
        return np.where(observed, values, means[None, :])
    require_sklearn()
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    values[~observed] = np.nan
    imputer = IterativeImputer(max_iter=10, random_state=int(seed), sample_posterior=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # convergence chatter
        warnings.filterwarnings("ignore", message=".*[Cc]onverge.*")
        return imputer.fit_transform(values)


def glasso_max_penalty(covariance: np.ndarray | Tensor) -> float:
    """The graphical lasso's empty-graph penalty :math:`\\max_{i\\ne j}|S_{ij}|`."""
    s = np.abs(np.asarray(covariance, dtype=np.float64)).copy()
    np.fill_diagonal(s, 0.0)
    return float(s.max())


def _glasso(covariance: np.ndarray, alpha: float, max_iter: int = 200) -> np.ndarray | None:
    """scikit-learn's graphical lasso precision, or None if it fails (non-SPD iterates at tiny
    penalties)."""
    from sklearn.covariance import graphical_lasso
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        try:
            _, precision = graphical_lasso(covariance, float(alpha), max_iter=max_iter)
        except (FloatingPointError, ValueError):
            return None
    if not np.all(np.isfinite(precision)):
        return None
    return precision


def glasso_path(
    covariance: np.ndarray | Tensor,
    penalties: Sequence[float] | Tensor | None = None,
    *,
    num_penalties: int = 30,
    penalty_ratio: float = 0.01,
    method: str = "glasso",
) -> PenaltyPath:
    """scikit-learn's ``graphical_lasso`` at each penalty (default: a log grid from
    :func:`glasso_max_penalty` down to ``penalty_ratio`` times it). Penalties at which the
    solver fails are left out of the path and listed in ``info["failed"]``."""
    require_sklearn()
    s = np.asarray(covariance.cpu() if isinstance(covariance, Tensor) else covariance)
    s = 0.5 * (s + s.T).astype(np.float64)
    if penalties is None:
        grid = penalty_grid(glasso_max_penalty(s), num_penalties, penalty_ratio)
    else:
        grid = torch.as_tensor(penalties, dtype=torch.float64).flatten()
    start = time.perf_counter()
    kept, estimates, failed = [], [], []
    for alpha in grid.tolist():
        precision = _glasso(s, alpha)
        if precision is None:
            failed.append(alpha)
            continue
        kept.append(alpha)
        estimates.append(torch.as_tensor(precision))
    if not estimates:
        raise RuntimeError(f"{method}: the graphical lasso failed at every penalty")
    return PenaltyPath(
        method=method,
        penalties=torch.tensor(kept, dtype=torch.float64),
        precisions=torch.stack(estimates),
        seconds=time.perf_counter() - start,
        info={"failed": failed},
    )


def impute_glasso_path(
    x: Tensor | np.ndarray,
    mask: Tensor | np.ndarray | None = None,
    *,
    imputer: str = "mean",
    penalties: Sequence[float] | Tensor | None = None,
    num_penalties: int = 30,
    penalty_ratio: float = 0.01,
    seed: int = 0,
) -> PenaltyPath:
    """Impute (:func:`impute`), then :func:`glasso_path` on the imputed table's covariance.

    :param x: ``(n, d)``, NaN where missing unless ``mask`` is given.
    :returns: a :class:`PenaltyPath` labelled ``"{imputer}_glasso"``; ``locs`` holds the
        imputed table's column means.
    """
    data, observed = as_data_and_mask(x, mask)
    start = time.perf_counter()
    table = impute(data, observed, imputer, seed=seed)
    covariance = np.cov(table, rowvar=False, bias=True)
    path = glasso_path(
        covariance,
        penalties,
        num_penalties=num_penalties,
        penalty_ratio=penalty_ratio,
        method=f"{imputer}_glasso",
    )
    path.locs = torch.as_tensor(table.mean(0)).expand(len(path), -1).clone()
    path.seconds = time.perf_counter() - start
    return path


def impute_glasso_cv(
    x: Tensor | np.ndarray,
    mask: Tensor | np.ndarray | None = None,
    *,
    imputer: str = "mean",
    cv: int = 5,
    seed: int = 0,
) -> tuple[Tensor, float]:
    """Impute, then scikit-learn's ``GraphicalLassoCV`` (penalty chosen by ``cv``-fold
    cross-validated likelihood on the imputed table).

    :returns: the selected precision ``(d, d)`` (float64) and penalty.
    """
    require_sklearn()
    from sklearn.covariance import GraphicalLassoCV
    from sklearn.exceptions import ConvergenceWarning

    data, observed = as_data_and_mask(x, mask)
    table = impute(data, observed, imputer, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        model = GraphicalLassoCV(cv=cv).fit(table)
    return torch.as_tensor(model.precision_), float(model.alpha_)


def _expected_statistics(
    x: Tensor, mask: Tensor, loc: Tensor, precision: Tensor
) -> tuple[Tensor, Tensor]:
    """E-step: mean and covariance of the completed rows under ``N(loc, precision^-1)``."""
    _, mu, covariance = expected_statistics(x, mask, loc, precision)
    return mu, covariance


def em_glasso(
    x: Tensor | np.ndarray,
    mask: Tensor | np.ndarray | None = None,
    penalty: float = 0.1,
    *,
    init: tuple[Tensor, Tensor] | None = None,
    max_iter: int = 50,
    tol: float = 1e-4,
) -> tuple[Tensor, Tensor, int]:
    """EM graphical lasso at one penalty (module doc).

    :param x: ``(n, d)``, NaN where missing unless ``mask`` is given.
    :param penalty: the graphical lasso's :math:`\\alpha \\ge 0`.
    :param init: starting ``(loc, precision)``; default the pairwise-available moments.
    :param max_iter: EM iterations at most.
    :param tol: stop when no entry of the precision moves by more than ``tol`` times its
        largest entry.
    :returns: ``(loc, precision, iterations)``, float64.
    :raises RuntimeError: if the M-step fails at the first iteration.
    """
    require_sklearn()
    if not penalty >= 0:
        raise ValueError(f"penalty must be non-negative, got {penalty}")
    data, observed = as_data_and_mask(x, mask)
    data = data.to(torch.float64)
    if init is None:
        loc, covariance = pairwise_moments(data, observed)
        precision = torch.cholesky_inverse(torch.linalg.cholesky(covariance))
    else:
        loc, precision = (t.detach().to(torch.float64) for t in init)
    iterations = 0
    for iterations in range(1, int(max_iter) + 1):  # noqa: B007
        loc, covariance = _expected_statistics(data, observed, loc, precision)
        new = _glasso(covariance.numpy(), penalty)
        if new is None:
            if iterations == 1:
                raise RuntimeError(f"em_glasso: the graphical lasso failed at penalty {penalty}")
            break
        new_t = torch.as_tensor(new)
        change = float((new_t - precision).abs().max())
        precision = 0.5 * (new_t + new_t.T)
        if change <= tol * float(precision.abs().max()):
            break
    return loc, precision, iterations


def em_glasso_path(
    x: Tensor | np.ndarray,
    mask: Tensor | np.ndarray | None = None,
    penalties: Sequence[float] | Tensor | None = None,
    *,
    num_penalties: int = 30,
    penalty_ratio: float = 0.01,
    max_iter: int = 10,
    tol: float = 1e-3,
    progress: bool = False,
) -> PenaltyPath:
    """:func:`em_glasso` along decreasing penalties (default: a log grid from the empty-graph
    penalty of the pairwise-available covariance), each warm-started from the previous fit.
    Penalties at which the M-step fails are left out (``info["failed"]``). Thanks to the warm
    start, ``max_iter`` EM iterations per penalty (default 10) suffice for the path's edge
    ordering; use :func:`em_glasso` with more for a converged single fit."""
    from tqdm.auto import tqdm

    require_sklearn()
    data, observed = as_data_and_mask(x, mask)
    if penalties is None:
        _, covariance = pairwise_moments(data.to(torch.float64), observed)
        grid = penalty_grid(glasso_max_penalty(covariance), num_penalties, penalty_ratio)
    else:
        grid = torch.as_tensor(penalties, dtype=torch.float64).flatten()
    start = time.perf_counter()
    kept, precisions, locs, failed, iterations = [], [], [], [], []
    state = None
    for alpha in tqdm(grid.tolist(), desc="     em_glasso", disable=not progress, leave=False):
        try:
            loc, precision, its = em_glasso(
                data, observed, alpha, init=state, max_iter=max_iter, tol=tol
            )
        except RuntimeError:
            failed.append(alpha)
            continue
        state = (loc, precision)
        kept.append(alpha)
        precisions.append(precision)
        locs.append(loc)
        iterations.append(its)
    if not precisions:
        raise RuntimeError("em_glasso_path: the graphical lasso failed at every penalty")
    return PenaltyPath(
        method="em_glasso",
        penalties=torch.tensor(kept, dtype=torch.float64),
        precisions=torch.stack(precisions),
        locs=torch.stack(locs),
        seconds=time.perf_counter() - start,
        info={"failed": failed, "iterations": iterations},
    )

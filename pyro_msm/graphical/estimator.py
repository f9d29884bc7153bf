"""A scikit-learn-shaped estimator of sparse Gaussian graphs by penalised score matching from
incomplete tables."""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import constraints

from ..infer import ESTIMATORS
from ..persistence import SaveLoadMixin
from ..tables import as_table, is_dataframe
from .exact import em_path, exact_penalties, imputed_path, marginal_path, refit_support
from .metrics import DEFAULT_EDGE_THRESHOLD, edges_from_precision
from .nonnegative import nonnegative_path
from .path import PROX_RULES, PenaltyPath, as_data_and_mask, score_matching_path
from .quadratic import max_penalty, penalty_grid, quadratic_path, sample_covariance
from .selection import (
    cross_validate,
    ebic,
    ebic_from_losses,
    ebic_score_matching,
    support_refits,
)

__all__ = [
    "GraphicalScoreMatching",
    "SOLVERS",
    "SELECTIONS",
    "GridEdgeWarning",
    "EM_PATH_MAX_ITER",
]

#: Solvers of :class:`GraphicalScoreMatching`.
SOLVERS = (
    "auto",
    "imputed",
    "imputed_likelihood",
    "em",
    "marginal",
    "quadratic",
    "nonnegative",
    "iterative",
)
#: The loss of :func:`~pyro_msm.graphical.imputed_path` per solver (``"imputed_auto"`` is
#: ``solver="auto"`` with missing entries).
_IMPUTED_LOSSES = {
    "imputed": "score_matching",
    "imputed_likelihood": "likelihood",
    "imputed_auto": "auto",
}
#: Selection rules of :class:`GraphicalScoreMatching`.
SELECTIONS = ("ebic", "ebic_sm", "cv")

#: The default eBIC parameter of the likelihood eBIC (``selection="ebic"``). Measured on the
#: graph engine's full grid (72 cells, 3 seeds; held-out seeds 3-4; 48 complete tables),
#: docs/benchmarks.md, issue 9: 0.05 gave the highest mean F1 of the selected graph among
#: 0-0.5 with missing entries and on complete data; 0.5 picked the empty graph or the first
#: point after it at 50% missing, and the former 0.25 selected too few edges on stars, hubs
#: and Erdos-Renyi graphs.
LIKELIHOOD_EBIC_BETA = 0.05

#: Default path length of the exact solvers (the iterative solver keeps the paper's 100).
EXACT_NUM_PENALTIES = 20

#: EM maps per penalty of the estimator's EM path (``solver="em"``, ``max_iter=None``), as EM
#: graphical lasso's ten iterations. Warm-started along the path, EM converges within it at
#: moderate missing rates (50% MCAR: Erdos-Renyi d=20 and d=50, the same path-AUC as with no
#: cap); at 80% MCAR EM's rate is close to 1 and the converged path took 10-30x longer with no
#: better ranking (hub d=20, n=500, 3 seeds; docs/benchmarks.md, issue 9, third session).
#: ``path_.info["converged"]`` says which penalties stopped at the cap.
EM_PATH_MAX_ITER = 10


def _is_orthant(support: Any) -> bool:
    """Whether ``support`` names the non-negative orthant (``"nonnegative"``, or the constraints
    ``positive`` / ``nonnegative`` / ``greater_than(0)``, possibly made independent)."""
    if isinstance(support, str):
        if support not in ("nonnegative", "positive"):
            raise ValueError(
                f"unknown support {support!r}: use 'nonnegative' or a domain object"
            )
        return True
    base = support
    while isinstance(base, constraints.independent):
        base = base.base_constraint
    if base in (constraints.positive, constraints.nonnegative):
        return True
    bound = getattr(base, "lower_bound", None)
    upper = getattr(base, "upper_bound", None)
    return (
        isinstance(base, (constraints.greater_than, constraints.greater_than_eq))
        and upper is None
        and bool(torch.all(torch.as_tensor(bound) == 0))
    )


class GridEdgeWarning(UserWarning):
    """The selected penalty is the largest or the smallest of the grid: the criterion may
    prefer a penalty outside it; widen the grid (``penalty_ratio``, ``penalties``)."""


@contextlib.contextmanager
def _threads(n_jobs: int | None) -> Iterator[None]:
    """Run with ``torch.set_num_threads(n_jobs)`` and restore the previous count."""
    if n_jobs is None:
        yield
        return
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0 or n_jobs < -1:
        raise ValueError(f"n_jobs must be a positive integer, -1 or None, got {n_jobs!r}")
    import os

    previous = torch.get_num_threads()
    torch.set_num_threads((os.cpu_count() or 1) if n_jobs == -1 else n_jobs)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class GraphicalScoreMatching(SaveLoadMixin):
    r"""Sparse Gaussian graphical model by L1-penalised (marginal) score matching from a table
    with missing entries.

    ``fit(X)`` (a pandas DataFrame or an array, NaN/None/``pd.NA`` = missing) or
    ``fit(X, mask)`` (True = observed) computes a penalty path and selects one penalty.

    **Solvers** (``solver``):

    - ``"imputed"``: EM score matching at one penalty
      (:func:`~pyro_msm.graphical.imputation_penalty`, the noise level of the expected Gram
      matrix) fixes the E-step's expected Gram matrix, and the path is the exact complete-data
      quadratic path on it (:func:`~pyro_msm.graphical.imputed_path`). Deterministic; seconds
      at d = 100; on chains and Erdos-Renyi graphs the best edge ranking of the solvers
      measured (docs/benchmarks.md, "Issue 9, fifth session" and "sixth session").
    - ``"imputed_likelihood"``: the same score-matching imputation, then the graphical lasso
      path on its statistics (``imputed_path(..., loss="likelihood")``, in torch). On graphs
      with hubs or stars it ranks edges better than the score-matching path on the same
      statistics (and than EM graphical lasso, mean or iterative imputation + graphical lasso);
      on chains and Erdos-Renyi graphs the score-matching path does (docs/benchmarks.md, issue
      9, sixth session). The selection and ``refit`` refit supports by maximum likelihood on
      those statistics.
    - ``"em"``: EM score matching (:func:`~pyro_msm.graphical.em_path`): closed-form E-step,
      the exact complete-data quadratic problem as M-step, iterated at every penalty to
      convergence or :data:`EM_PATH_MAX_ITER` maps (``max_iter``), warm-started.
      Deterministic; about the cost of EM graphical lasso.
    - ``"marginal"``: the exact marginal objective minimised by accelerated proximal gradient
      (:func:`~pyro_msm.graphical.marginal_path`). Deterministic; slower than EM (every
      iteration factorises the observed block of every missingness pattern, and its step is
      small near the boundary of the positive-definite cone, where its solution lies at high
      missing rates).
    - ``"quadratic"``: the exact complete-data path (:func:`~pyro_msm.graphical.quadratic_path`);
      needs a table with nothing missing.
    - ``"nonnegative"``: the truncated Gaussian graphical model on :math:`\mathbb{R}_+^d` by
      generalised score matching (:func:`~pyro_msm.graphical.nonnegative_path`): exact on
      complete data, Monte Carlo EM with missing entries; chosen by ``"auto"`` for
      ``support="nonnegative"`` (or ``constraints.positive`` / ``nonnegative``). The model is
      centred (the Gaussian's mean at the origin) or not by a score test of the centring
      (``path_.info["centred"]`` and ``["centring_z"]``; pass ``path_kwargs={"centred": ...}``
      to fix it; :func:`~pyro_msm.graphical.nonnegative_centring_statistic`). Its selection
      is genscore's eBIC of the generalised loss (:func:`~pyro_msm.graphical.ebic_from_losses`)
      whatever ``selection`` says.
    - ``"iterative"``: :func:`~pyro_msm.graphical.score_matching_path`, proximal Adam on
      minibatches with any ``estimator`` of :class:`~pyro_msm.infer.MissingScoreMatching`
      (``guide`` for the guided ones); for energies without closed forms (``support``).
    - ``"auto"`` (default): ``"quadratic"`` on complete data; with missing entries the
      imputed path with ``loss="auto"``: ``"imputed_likelihood"`` when the imputation fit's
      graph has a hub (a node of at least :data:`~pyro_msm.graphical.HUB_DEGREE_RATIO` times
      the mean degree, :func:`~pyro_msm.graphical.degree_ratio`), ``"imputed"`` otherwise
      (``solver_`` says which; the most accurate fast solvers in
      ``benchmarks/graph_engine.py``, docs/benchmarks.md);
      ``"nonnegative"`` for the non-negative orthant, ``"iterative"`` for any other
      ``support``. On complete data all of them minimise the
      same objective.

    **Selection** (``selection``): ``"ebic"`` (default), the eBIC of the observed-data
    Gaussian likelihood (:func:`~pyro_msm.graphical.ebic`), exact for this model, with each
    edge's BIC term the log of the rows that observe its pair (``sample_size="pairs"``),
    beta :data:`LIKELIHOOD_EBIC_BETA` (0.05) and each support refitted without penalty
    (``ebic_refit``; the calibration, :mod:`~pyro_msm.graphical.selection`); ``"ebic_sm"``,
    the eBIC of the score-matching loss calibrated as in genscore
    (:func:`~pyro_msm.graphical.ebic_score_matching`; measured to select too many edges on
    Gaussian data, docs/benchmarks.md, so not the default); ``"cv"``, ``cv_folds``-fold
    cross-validation of the held-out marginal loss (:func:`~pyro_msm.graphical.cross_validate`;
    the path is refitted on every fold). A :class:`GridEdgeWarning` is raised when the selected
    penalty is an end of the grid. ``refit=True`` refits the selected support without penalty
    (:func:`~pyro_msm.graphical.refit_support`).

    **Speed.** The exact solvers run on full batches in float64 with torch; ``n_jobs`` sets
    torch's thread count for the fit (``torch.set_num_threads``; None leaves it, -1 uses every
    core). ``progress=None`` shows a progress bar only for fits that last more than two
    seconds.

    Attributes after ``fit``: ``path_`` (:class:`~pyro_msm.graphical.PenaltyPath`),
    ``penalties_`` ``(k,)``, ``precisions_`` ``(k, d, d)``, ``criterion_`` ``(k,)`` (the
    selection scores: eBIC, or the mean held-out loss), ``ebic_`` (alias of ``criterion_`` for
    the eBIC rules), ``penalty_index_`` and ``penalty_`` (the selection), ``precision_`` and
    ``covariance_`` ``(d, d)`` and ``location_`` ``(d,)`` (float64 tensors; refitted when
    ``refit``), ``partial_correlation_`` ``(d, d)``, ``adjacency_`` (boolean ``(d, d)``),
    ``edges_`` (pairs ``(i, j)``, ``i < j``), ``edge_names_`` (pairs of column names),
    ``solver_``, ``n_features_in_`` and, for a DataFrame, ``feature_names_in_``.

    :param estimator: estimator of :class:`~pyro_msm.infer.MissingScoreMatching` for the
        iterative solver (default ``"variational"``, the paper's Marg-Var).
    :param solver: one of :data:`SOLVERS`.
    :param guide: guide factory for guided estimators (iterative solver).
    :param penalties: decreasing penalties (default: ``num_penalties`` log-spaced from the
        empty-graph penalty down by ``penalty_ratio``).
    :param num_penalties: length of the default grid (None: 20 for the exact solvers, 100 for
        the iterative one).
    :param penalty_ratio: smallest over largest default penalty.
    :param selection: one of :data:`SELECTIONS`.
    :param ebic_beta: eBIC parameter in ``[0, 1]`` (None: 0.05 for ``"ebic"``, 0.5 for the
        score-matching eBICs, genscore's default; :mod:`~pyro_msm.graphical.selection`).
    :param ebic_refit: score each path estimate after refitting its support without penalty
        (:func:`~pyro_msm.graphical.support_refits`: EM on the support, genscore's
        ``BIC_refit`` is its first map; for ``"imputed"`` the constrained quadratic problem on
        the path's imputed statistics, for ``"imputed_likelihood"`` the constrained
        maximum-likelihood problem on them).
    :param cv_folds: folds for ``selection="cv"``.
    :param refit: refit the selected support without penalty.
    :param threshold: an edge is :math:`|P_{ij}| >` ``threshold``.
    :param tol: the exact solvers' relative tolerance (None: each solver's default; for
        ``"imputed"``, that of its imputation fit's EM); for the iterative solver, the
        convergence check of :func:`~pyro_msm.graphical.score_matching_path`.
    :param max_iter: iterations per penalty of the exact solvers (None: each path's default;
        for ``"em"``, :data:`EM_PATH_MAX_ITER` EM maps; for ``"imputed"``, EM maps of its
        imputation fit).
    :param support: a domain for truncated data: ``"nonnegative"`` (or the orthant constraints
        ``constraints.positive`` / ``constraints.nonnegative``) for the exact non-negative
        solver, any other domain for the iterative solver.
    :param num_particles: particles per row (iterative solver).
    :param guide_steps: guide updates per model step (iterative solver).
    :param lr: Adam learning rate (iterative solver).
    :param batch_size: rows per step (iterative solver; None: all).
    :param warmup_steps: steps at the largest penalty (iterative solver).
    :param steps_per_penalty: steps per penalty (iterative solver; the minimum when ``tol``).
    :param prox: ``"adam"`` or ``"plain"`` (iterative solver).
    :param n_jobs: torch threads during the fit (None: unchanged; -1: all cores).
    :param seed: RNG seed (iterative solver, CV folds).
    :param progress: progress bar: True, False, or None (only for fits longer than 2 s).
    :param path_kwargs: further keywords for the path function of the solver.

    References

    [1] Givens, Liu & Reeve, "Score Matching with Missing Data", ICML 2025, arXiv:2506.00557.

    [2] Lin, Drton & Shojaie, "Estimation of high-dimensional graphical models using
    regularized score matching", Electronic Journal of Statistics 10, 2016.

    [3] Uehara, Matsuda & Kim, "Imputation estimators for unnormalized models with missing
    data", AISTATS 2020.

    [4] Yu, Drton & Shojaie, "Generalized score matching for non-negative data", JMLR 20, 2019.
    """

    def __init__(
        self,
        estimator: str = "variational",
        *,
        solver: str = "auto",
        guide: Callable[[Callable], Callable] | None = None,
        penalties: Sequence[float] | Tensor | None = None,
        num_penalties: int | None = None,
        penalty_ratio: float = 0.01,
        selection: str = "ebic",
        ebic_beta: float | None = None,
        ebic_refit: bool = True,
        cv_folds: int = 5,
        refit: bool = False,
        threshold: float = DEFAULT_EDGE_THRESHOLD,
        tol: float | None = None,
        max_iter: int | None = None,
        support: Any | None = None,
        num_particles: int = 10,
        guide_steps: int = 10,
        lr: float = 0.01,
        batch_size: int | None = 100,
        warmup_steps: int = 200,
        steps_per_penalty: int = 10,
        prox: str = "adam",
        n_jobs: int | None = None,
        seed: int = 0,
        progress: bool | None = None,
        path_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.estimator = estimator
        self.solver = solver
        self.guide = guide
        self.penalties = penalties
        self.num_penalties = num_penalties
        self.penalty_ratio = penalty_ratio
        self.selection = selection
        self.ebic_beta = ebic_beta
        self.ebic_refit = ebic_refit
        self.cv_folds = cv_folds
        self.refit = refit
        self.threshold = threshold
        self.tol = tol
        self.max_iter = max_iter
        self.support = support
        self.num_particles = num_particles
        self.guide_steps = guide_steps
        self.lr = lr
        self.batch_size = batch_size
        self.warmup_steps = warmup_steps
        self.steps_per_penalty = steps_per_penalty
        self.prox = prox
        self.n_jobs = n_jobs
        self.seed = seed
        self.progress = progress
        self.path_kwargs = path_kwargs

    # -- scikit-learn protocol ---------------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments (scikit-learn's protocol)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params: Any) -> GraphicalScoreMatching:
        """Set constructor arguments (scikit-learn's protocol)."""
        valid = self.get_params()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"GraphicalScoreMatching has no parameter {key!r}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        return f"GraphicalScoreMatching(solver={self.solver!r}, selection={self.selection!r})"

    # -- fitting -----------------------------------------------------------------------------------
    def _check(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; choose one of {ESTIMATORS}")
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {SOLVERS}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown selection {self.selection!r}; choose one of {SELECTIONS}")
        if self.prox not in PROX_RULES:
            raise ValueError(f"unknown prox {self.prox!r}; choose one of {PROX_RULES}")
        if self.ebic_beta is not None and not 0.0 <= self.ebic_beta <= 1.0:
            raise ValueError(f"ebic_beta must be in [0, 1], got {self.ebic_beta}")
        if not self.threshold >= 0:
            raise ValueError(f"threshold must be non-negative, got {self.threshold}")
        if self.progress not in (None, True, False):
            raise ValueError(f"progress must be True, False or None, got {self.progress!r}")

    def _solver(self, complete: bool) -> str:
        solver = self.solver
        orthant = _is_orthant(self.support)
        if solver == "nonnegative" and not orthant:
            raise ValueError(
                "solver='nonnegative' fits data on the non-negative orthant: pass "
                "support='nonnegative'"
            )
        if orthant and solver in ("auto", "nonnegative"):
            return "nonnegative"
        if solver == "auto":
            if self.support is not None:
                return "iterative"
            return "quadratic" if complete else "imputed_auto"
        if solver == "quadratic" and not complete:
            raise ValueError(
                "solver='quadratic' is the complete-data fast path, but the table has missing "
                "entries; use solver='imputed' (or 'auto')"
            )
        if (
            solver in ("imputed", "imputed_likelihood", "em", "marginal", "quadratic")
            and self.support is not None
        ):
            raise ValueError(
                f"solver={solver!r} is for Gaussian data on R^d; with support= use "
                "solver='iterative' (or 'auto')"
            )
        return solver

    def _grid(self, data: Tensor, observed: Tensor, solver: str) -> Tensor | None:
        if self.penalties is not None:
            return torch.as_tensor(self.penalties, dtype=torch.float64, device="cpu").flatten()
        if solver in ("iterative", "nonnegative") or solver.startswith("imputed"):
            return None  # the path's own default grid
        num = EXACT_NUM_PENALTIES if self.num_penalties is None else int(self.num_penalties)
        if solver == "quadratic":
            s = sample_covariance(data.detach().to(torch.float64))
            return penalty_grid(max_penalty(s), num, self.penalty_ratio)
        return exact_penalties(data, observed, num, self.penalty_ratio)

    def _path(self, data: Tensor, observed: Tensor, solver: str, grid: Tensor | None,
              progress: bool | None) -> PenaltyPath:  # fmt: skip
        extra = dict(self.path_kwargs or {})
        if solver == "quadratic":
            return self._quadratic(data, grid)
        if solver == "nonnegative":
            num = 20 if self.num_penalties is None else int(self.num_penalties)
            return nonnegative_path(
                data, observed, penalties=grid, num_penalties=num,
                penalty_ratio=self.penalty_ratio, seed=self.seed, progress=progress is True,
                **extra,
            )  # fmt: skip
        if solver.startswith("imputed"):
            extra.setdefault("loss", _IMPUTED_LOSSES[solver])
            if self.tol is not None:
                extra.setdefault("tol", self.tol)
            if self.max_iter is not None:
                extra.setdefault("max_iter", self.max_iter)
            num = EXACT_NUM_PENALTIES if self.num_penalties is None else int(self.num_penalties)
            return imputed_path(
                data, observed, grid, num_penalties=num, penalty_ratio=self.penalty_ratio,
                **extra,
            )  # fmt: skip
        if solver in ("em", "marginal"):
            if self.tol is not None:
                extra.setdefault("tol", self.tol)
            if self.max_iter is not None:
                extra.setdefault("max_iter", self.max_iter)
            elif solver == "em":
                extra.setdefault("max_iter", EM_PATH_MAX_ITER)
            fn = em_path if solver == "em" else marginal_path
            return fn(data, observed, grid, progress=progress, **extra)
        num = 100 if self.num_penalties is None else int(self.num_penalties)
        if self.tol is not None:
            extra.setdefault("tol", self.tol)
        return score_matching_path(
            data,
            observed,
            grid,
            estimator=self.estimator,
            guide=self.guide,
            num_particles=self.num_particles,
            guide_steps=self.guide_steps,
            support=self.support,
            lr=self.lr,
            batch_size=self.batch_size,
            warmup_steps=self.warmup_steps,
            steps_per_penalty=self.steps_per_penalty,
            num_penalties=num,
            penalty_ratio=self.penalty_ratio,
            prox=self.prox,
            seed=self.seed,
            progress=progress is not False,
            **extra,
        )

    def fit(self, X: Any, mask: Tensor | np.ndarray | None = None) -> GraphicalScoreMatching:
        """Fit the path and select a penalty.

        :param X: ``(n, d)`` table: a pandas DataFrame (NaN, None or ``pd.NA`` mark missing
            entries; column names are kept), a NumPy array or a tensor (NaN = missing unless
            ``mask`` is given).
        :param mask: boolean ``(n, d)``, True where observed.
        :returns: ``self``.
        :raises ValueError: for bad input, or ``solver="quadratic"`` with missing entries.
        :raises TypeError: for non-numeric columns (named in the message).
        """
        self._check()
        frame = is_dataframe(X)
        values, labels = as_table(X, dtype=None if isinstance(X, Tensor) else torch.float64)
        data, observed = as_data_and_mask(values, mask)
        complete = bool(observed.all())
        solver = self._solver(complete)
        with _threads(self.n_jobs):
            grid = self._grid(data, observed, solver)
            path = self._path(data, observed, solver, grid, self.progress)
            index, scores = self._select(data, observed, solver, path)
            loc = path.locs[index].to(torch.float64)
            precision = path.precisions[index].to(torch.float64)
            if self.refit:
                loc, precision = self._refit(data, observed, solver, path, loc, precision)
        if len(path) > 1 and index in (0, len(path) - 1):
            end = "largest" if index == 0 else "smallest"
            warnings.warn(
                f"the selected penalty {float(path.penalties[index]):.4g} is the {end} of the "
                f"grid ({self.selection} selection); the criterion may prefer one outside it: "
                + (
                    "pass larger penalties"
                    if index == 0
                    else "lower penalty_ratio or pass smaller penalties"
                ),
                GridEdgeWarning,
                stacklevel=2,
            )
        names = labels.names(int(data.shape[1]))
        self.solver_ = path.method if solver == "imputed_auto" else solver
        self.path_ = path
        self.penalties_ = path.penalties
        self.precisions_ = path.precisions
        self.criterion_ = scores
        if self.selection != "cv":
            self.ebic_ = scores
        self.penalty_index_ = index
        self.penalty_ = float(path.penalties[index])
        self.precision_ = precision
        self.covariance_ = torch.linalg.inv(precision)
        self.location_ = loc
        scale = precision.diagonal().rsqrt()
        partial = -precision * scale[:, None] * scale[None, :]
        partial.fill_diagonal_(1.0)
        self.partial_correlation_ = partial
        self.adjacency_ = edges_from_precision(precision, self.threshold)
        rows, cols = torch.nonzero(torch.triu(self.adjacency_, diagonal=1), as_tuple=True)
        self.edges_ = list(zip(rows.tolist(), cols.tolist(), strict=True))
        self.edge_names_ = [(names[i], names[j]) for i, j in self.edges_]
        self.n_features_in_ = int(data.shape[1])
        self._names = names
        if frame:
            self.feature_names_in_ = np.asarray(names, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return self

    def _beta(self, likelihood: bool) -> float:
        if self.ebic_beta is not None:
            return float(self.ebic_beta)
        return LIKELIHOOD_EBIC_BETA if likelihood else 0.5

    def _select(
        self, data: Tensor, observed: Tensor, solver: str, path: PenaltyPath
    ) -> tuple[int, Tensor]:
        if solver == "nonnegative":
            scores = ebic_from_losses(
                path.losses, path.precisions, int(data.shape[0]), beta=self._beta(False),
                threshold=self.threshold,
            )  # fmt: skip
        elif self.selection == "ebic":
            precisions = path.precisions
            if self.ebic_refit:  # the imputed paths refit on their own statistics
                fixed = path.info.get("covariance") if solver.startswith("imputed") else None
                precisions = support_refits(
                    data, observed, path.locs, precisions, threshold=self.threshold,
                    covariance=fixed, loss=path.info.get("loss", "score_matching"),
                )  # fmt: skip
            scores = ebic(
                data, observed, path.locs, precisions, beta=self._beta(True),
                threshold=self.threshold, sample_size="pairs",
            )  # fmt: skip
        elif self.selection == "ebic_sm":
            scores = ebic_score_matching(
                data, observed, path.locs, path.precisions, beta=self._beta(False),
                threshold=self.threshold, refit=self.ebic_refit,
            )  # fmt: skip
        else:
            grid = path.penalties
            # every fold solves the loss of the full path, on whose scale the grid is
            fold_solver = path.method if solver == "imputed_auto" else solver

            def fit(x: Tensor, m: Tensor) -> PenaltyPath:
                return self._path(x, m, fold_solver, grid, False)

            scores = cross_validate(
                data, observed, fit, folds=int(self.cv_folds), seed=self.seed
            ).mean(0)
        if not bool(torch.isfinite(scores).any()):
            raise ValueError("no estimate on the path is positive definite")
        return int(torch.argmin(scores)), scores

    def _refit(
        self, data: Tensor, observed: Tensor, solver: str, path: PenaltyPath, loc: Tensor,
        precision: Tensor,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        if solver.startswith("imputed") and path.info["loss"] == "likelihood":
            # constrained maximum likelihood on the path's statistics
            (refitted,) = support_refits(
                data, observed, loc[None], precision[None], threshold=self.threshold,
                covariance=path.info["covariance"], loss="likelihood",
            )  # fmt: skip
            return loc, refitted
        support = edges_from_precision(precision, self.threshold)
        method = "marginal" if solver == "marginal" else "em"
        if solver in ("iterative", "nonnegative") and self.support is not None:
            raise ValueError("refit=True needs a Gaussian model on R^d (no support=)")
        sol = refit_support(data, observed, support, solver=method, init=(loc, precision))
        return sol.loc, sol.precision

    def _quadratic(self, data: Tensor, grid: Tensor) -> PenaltyPath:
        import time

        start = time.perf_counter()
        x = data.detach().to(torch.float64)
        s = sample_covariance(x)
        precisions, iterations = quadratic_path(s, grid)
        return PenaltyPath(
            method="quadratic",
            penalties=grid,
            precisions=precisions,
            locs=x.mean(0).expand(len(grid), -1).clone(),
            seconds=time.perf_counter() - start,
            info={"iterations": iterations},
        )

    # -- results -----------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "precision_"):
            raise RuntimeError("this GraphicalScoreMatching is not fitted yet; call fit(X) first")

    def edge_table(self) -> Any:
        """The selected edges as a pandas DataFrame with columns ``source``, ``target`` (column
        names), ``i``, ``j`` (indices), ``precision`` and ``partial_correlation``, sorted by
        decreasing absolute partial correlation."""
        import pandas as pd

        self._check_fitted()
        rows = [
            {
                "source": self._names[i],
                "target": self._names[j],
                "i": i,
                "j": j,
                "precision": float(self.precision_[i, j]),
                "partial_correlation": float(self.partial_correlation_[i, j]),
            }
            for i, j in self.edges_
        ]
        columns = ["source", "target", "i", "j", "precision", "partial_correlation"]
        table = pd.DataFrame(rows, columns=columns)
        order = table["partial_correlation"].abs().sort_values(ascending=False).index
        return table.loc[order].reset_index(drop=True)

    def plot_graph(self, **kwargs: Any) -> Any:
        """Draw the selected graph (:func:`pyro_msm.plots.plot_graph`; keywords pass through).

        :returns: the matplotlib Figure.
        """
        from ..plots import plot_graph

        self._check_fitted()
        return plot_graph(self.precision_, names=self._names, threshold=self.threshold, **kwargs)

    def plot_path(self, **kwargs: Any) -> Any:
        """Draw the penalty path with the selection marked (:func:`pyro_msm.plots.plot_path`;
        keywords pass through).

        :returns: the matplotlib Figure.
        """
        from ..plots import plot_path

        self._check_fitted()
        return plot_path(
            self.penalties_, self.precisions_, selected=self.penalty_index_,
            criterion=self.criterion_, threshold=self.threshold, **kwargs,
        )  # fmt: skip

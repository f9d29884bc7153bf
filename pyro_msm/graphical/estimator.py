"""A scikit-learn-shaped estimator of sparse Gaussian graphs by penalised marginal score
matching."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..infer import ESTIMATORS
from .metrics import DEFAULT_EDGE_THRESHOLD, edges_from_precision
from .path import PROX_RULES, PenaltyPath, as_data_and_mask, score_matching_path
from .quadratic import max_penalty, penalty_grid, quadratic_path, sample_covariance
from .selection import select_ebic

__all__ = ["GraphicalScoreMatching", "SOLVERS"]

#: Solvers of :class:`GraphicalScoreMatching`.
SOLVERS = ("auto", "quadratic", "iterative")


class GraphicalScoreMatching:
    r"""Sparse Gaussian graphical model by L1-penalised marginal score matching.

    ``fit(X)`` (NaN = missing) or ``fit(X, mask)`` (True = observed) computes a penalty path
    and selects one penalty by eBIC (:mod:`pyro_msm.graphical.selection`, which says why eBIC
    and not stability selection).

    - ``solver="iterative"``: :func:`~pyro_msm.graphical.score_matching_path` (the paper's
      protocol: proximal Adam on minibatches with any ``estimator`` of
      :class:`~pyro_msm.infer.MissingScoreMatching`; ``guide`` for the guided ones).
    - ``solver="quadratic"``: the exact complete-data fast path
      (:func:`~pyro_msm.graphical.quadratic_path`); needs a table with nothing missing.
    - ``solver="auto"`` (default): quadratic when nothing is missing and no ``support`` is
      given, iterative otherwise. Both minimise the same objective on complete data.

    Attributes after ``fit``: ``path_`` (:class:`~pyro_msm.graphical.PenaltyPath`),
    ``penalties_`` ``(k,)``, ``precisions_`` ``(k, d, d)``, ``ebic_`` ``(k,)``,
    ``penalty_index_`` and ``penalty_`` (the selection), ``precision_`` and ``covariance_``
    ``(d, d)`` and ``location_`` ``(d,)`` at the selected penalty (float64 tensors),
    ``adjacency_`` (boolean ``(d, d)``), ``edges_`` (list of pairs ``(i, j)``, ``i < j``),
    ``solver_`` and ``n_features_in_``.

    :param estimator: an estimator of :class:`~pyro_msm.infer.MissingScoreMatching`
        (default ``"variational"``, the paper's Marg-Var).
    :param solver: one of :data:`SOLVERS`.
    :param guide: guide factory for guided estimators (default
        :class:`~pyro_msm.guides.AmortizedNormal`).
    :param penalties: decreasing penalties (default: ``num_penalties`` log-spaced from the
        empty-graph penalty down by ``penalty_ratio``).
    :param num_penalties: length of the default grid.
    :param penalty_ratio: smallest over largest default penalty.
    :param ebic_beta: eBIC parameter in ``[0, 1]``.
    :param threshold: an edge is :math:`|P_{ij}| >` ``threshold``.
    :param support: a domain for truncated data (iterative solver, ``"truncated"`` objective).
    :param num_particles: particles per row (IW, variational model steps).
    :param guide_steps: guide updates per model step.
    :param lr: Adam learning rate.
    :param batch_size: rows per step (None: all).
    :param warmup_steps: steps at the largest penalty.
    :param steps_per_penalty: steps per penalty.
    :param prox: ``"adam"`` or ``"plain"`` (see :func:`~pyro_msm.graphical.score_matching_path`).
    :param seed: RNG seed.
    :param progress: progress bar.
    :param path_kwargs: further keywords for :func:`~pyro_msm.graphical.score_matching_path`.

    References

    [1] Givens, Liu & Reeve, "Score Matching with Missing Data", ICML 2025, arXiv:2506.00557.

    [2] Lin, Drton & Shojaie, "Estimation of high-dimensional graphical models using
    regularized score matching", Electronic Journal of Statistics 10, 2016.
    """

    def __init__(
        self,
        estimator: str = "variational",
        *,
        solver: str = "auto",
        guide: Callable[[Callable], Callable] | None = None,
        penalties: Sequence[float] | Tensor | None = None,
        num_penalties: int = 100,
        penalty_ratio: float = 0.01,
        ebic_beta: float = 0.5,
        threshold: float = DEFAULT_EDGE_THRESHOLD,
        support: Any | None = None,
        num_particles: int = 10,
        guide_steps: int = 10,
        lr: float = 0.01,
        batch_size: int | None = 100,
        warmup_steps: int = 200,
        steps_per_penalty: int = 10,
        prox: str = "adam",
        seed: int = 0,
        progress: bool = False,
        path_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.estimator = estimator
        self.solver = solver
        self.guide = guide
        self.penalties = penalties
        self.num_penalties = num_penalties
        self.penalty_ratio = penalty_ratio
        self.ebic_beta = ebic_beta
        self.threshold = threshold
        self.support = support
        self.num_particles = num_particles
        self.guide_steps = guide_steps
        self.lr = lr
        self.batch_size = batch_size
        self.warmup_steps = warmup_steps
        self.steps_per_penalty = steps_per_penalty
        self.prox = prox
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
        return f"GraphicalScoreMatching(estimator={self.estimator!r}, solver={self.solver!r})"

    # -- fitting -----------------------------------------------------------------------------------
    def _check(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; choose one of {ESTIMATORS}")
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {SOLVERS}")
        if self.prox not in PROX_RULES:
            raise ValueError(f"unknown prox {self.prox!r}; choose one of {PROX_RULES}")
        if not 0.0 <= self.ebic_beta <= 1.0:
            raise ValueError(f"ebic_beta must be in [0, 1], got {self.ebic_beta}")
        if not self.threshold >= 0:
            raise ValueError(f"threshold must be non-negative, got {self.threshold}")

    def fit(
        self, X: Tensor | np.ndarray, mask: Tensor | np.ndarray | None = None
    ) -> GraphicalScoreMatching:
        """Fit the path and select a penalty.

        :param X: ``(n, d)`` table, NaN where missing (unless ``mask`` is given).
        :param mask: boolean ``(n, d)``, True where observed.
        :returns: ``self``.
        :raises ValueError: for bad input, or ``solver="quadratic"`` with missing entries.
        """
        self._check()
        data, observed = as_data_and_mask(X, mask)
        complete = bool(observed.all())
        solver = self.solver
        if solver == "auto":
            solver = "quadratic" if complete and self.support is None else "iterative"
        if solver == "quadratic" and not complete:
            raise ValueError(
                "solver='quadratic' is the complete-data fast path, but the table has "
                f"{int((~observed).sum())} missing entries; use solver='iterative'"
            )
        if solver == "quadratic":
            path = self._quadratic(data)
        else:
            path = score_matching_path(
                data,
                observed,
                self.penalties,
                estimator=self.estimator,
                guide=self.guide,
                num_particles=self.num_particles,
                guide_steps=self.guide_steps,
                support=self.support,
                lr=self.lr,
                batch_size=self.batch_size,
                warmup_steps=self.warmup_steps,
                steps_per_penalty=self.steps_per_penalty,
                num_penalties=self.num_penalties,
                penalty_ratio=self.penalty_ratio,
                prox=self.prox,
                seed=self.seed,
                progress=self.progress,
                **(self.path_kwargs or {}),
            )
        index, scores = select_ebic(
            data, observed, path.locs, path.precisions, beta=self.ebic_beta,
            threshold=self.threshold,
        )  # fmt: skip
        self.solver_ = solver
        self.path_ = path
        self.penalties_ = path.penalties
        self.precisions_ = path.precisions
        self.ebic_ = scores
        self.penalty_index_ = index
        self.penalty_ = float(path.penalties[index])
        self.precision_ = path.precisions[index]
        self.covariance_ = torch.linalg.inv(self.precision_)
        self.location_ = path.locs[index]
        self.adjacency_ = edges_from_precision(self.precision_, self.threshold)
        rows, cols = torch.nonzero(torch.triu(self.adjacency_, diagonal=1), as_tuple=True)
        self.edges_ = list(zip(rows.tolist(), cols.tolist(), strict=True))
        self.n_features_in_ = int(data.shape[1])
        return self

    def _quadratic(self, data: Tensor) -> PenaltyPath:
        import time

        start = time.perf_counter()
        x = data.detach().to(torch.float64)
        s = sample_covariance(x)
        if self.penalties is None:
            grid = penalty_grid(max_penalty(s), int(self.num_penalties), self.penalty_ratio)
        else:
            grid = torch.as_tensor(self.penalties, dtype=torch.float64).flatten()
        precisions, iterations = quadratic_path(s, grid)
        return PenaltyPath(
            method="quadratic",
            penalties=grid,
            precisions=precisions,
            locs=x.mean(0).expand(len(grid), -1).clone(),
            seconds=time.perf_counter() - start,
            info={"iterations": iterations},
        )

r"""Sparse Gaussian graphical models from incomplete data by L1-penalised marginal score
matching.

- :class:`GraphicalScoreMatching`: the scikit-learn-shaped estimator (path + selection).
- :func:`imputed_path`, :func:`em_path`, :func:`marginal_path`: exact deterministic solvers with
  missing entries (the quadratic path on statistics imputed once, the default; EM score
  matching at every penalty; the exact marginal objective by accelerated proximal gradient).
- :func:`score_matching_path`: the penalty path with any estimator of
  :class:`~pyro_msm.infer.MissingScoreMatching` (proximal Adam, the paper's protocol).
- :func:`quadratic_path`, :func:`quadratic_score_matching`: the exact complete-data fast path.
- :func:`graphical_lasso_path`, :func:`graphical_lasso`: the L1-penalised Gaussian likelihood on
  fixed statistics in torch (``imputed_path(..., loss="likelihood")``).
- Metrics (:func:`path_auc`, :func:`f1_score`, :func:`matthews_corrcoef`, parameter errors),
  graph generators (:func:`star_graph`, :func:`hub_graph`, :func:`dense_graph`, ...,
  :func:`simulate_graph`), eBIC (:func:`select_ebic`) and baselines
  (:mod:`pyro_msm.graphical.baselines`, scikit-learn needed, imported lazily).
"""

from .baselines import (
    em_glasso,
    em_glasso_path,
    glasso_path,
    impute,
    impute_glasso_cv,
    impute_glasso_path,
)
from .estimator import SELECTIONS, SOLVERS, GraphicalScoreMatching, GridEdgeWarning
from .exact import (
    HUB_DEGREE_RATIO,
    PATH_LOSSES,
    ExactSolution,
    em_kkt_violation,
    em_path,
    em_score_matching,
    empty_graph_penalty,
    exact_penalties,
    imputation_penalty,
    imputed_path,
    marginal_kkt_violation,
    marginal_newton,
    marginal_objective,
    marginal_path,
    marginal_score_matching,
    refit_support,
)
from .generators import (
    GRAPHS,
    GraphProblem,
    chain_graph,
    dense_graph,
    erdos_renyi_graph,
    hub_graph,
    make_graph,
    precision_from_graph,
    simulate_graph,
    star_graph,
)
from .likelihood import (
    graphical_lasso,
    graphical_lasso_path,
    likelihood_kkt_violation,
    likelihood_max_penalty,
    likelihood_objective,
)
from .metrics import (
    DEFAULT_EDGE_THRESHOLD,
    confusion,
    degree_ratio,
    edge_metrics,
    edges_from_precision,
    f1_score,
    fisher_divergence,
    frobenius_error,
    gaussian_kl,
    matthews_corrcoef,
    parameter_errors,
    path_auc,
    path_roc,
    roc_auc,
    stein_loss,
)
from .nonnegative import (
    nonnegative_imputation_penalty,
    nonnegative_kkt_violation,
    nonnegative_path,
    nonnegative_score_matching,
)
from .path import PenaltyPath, default_penalties, score_matching_path
from .quadratic import (
    kkt_violation,
    max_penalty,
    penalty_grid,
    quadratic_objective,
    quadratic_path,
    quadratic_score_matching,
    sample_covariance,
    subgradient_violation,
)
from .selection import (
    cross_validate,
    ebic,
    ebic_from_losses,
    ebic_score_matching,
    observed_log_likelihood,
    select_ebic,
    support_refits,
)

__all__ = [
    "GraphicalScoreMatching",
    "GridEdgeWarning",
    "SOLVERS",
    "SELECTIONS",
    "ExactSolution",
    "imputed_path",
    "imputation_penalty",
    "PATH_LOSSES",
    "HUB_DEGREE_RATIO",
    "em_path",
    "em_score_matching",
    "em_kkt_violation",
    "marginal_path",
    "marginal_score_matching",
    "marginal_newton",
    "marginal_kkt_violation",
    "marginal_objective",
    "empty_graph_penalty",
    "exact_penalties",
    "refit_support",
    "subgradient_violation",
    "ebic_from_losses",
    "ebic_score_matching",
    "support_refits",
    "cross_validate",
    "PenaltyPath",
    "score_matching_path",
    "default_penalties",
    "quadratic_path",
    "quadratic_score_matching",
    "quadratic_objective",
    "sample_covariance",
    "max_penalty",
    "penalty_grid",
    "kkt_violation",
    "graphical_lasso",
    "graphical_lasso_path",
    "likelihood_objective",
    "likelihood_max_penalty",
    "likelihood_kkt_violation",
    "ebic",
    "select_ebic",
    "observed_log_likelihood",
    "GRAPHS",
    "GraphProblem",
    "star_graph",
    "hub_graph",
    "dense_graph",
    "erdos_renyi_graph",
    "chain_graph",
    "make_graph",
    "precision_from_graph",
    "simulate_graph",
    "DEFAULT_EDGE_THRESHOLD",
    "confusion",
    "edges_from_precision",
    "degree_ratio",
    "edge_metrics",
    "f1_score",
    "matthews_corrcoef",
    "roc_auc",
    "path_roc",
    "path_auc",
    "frobenius_error",
    "fisher_divergence",
    "stein_loss",
    "gaussian_kl",
    "parameter_errors",
    "impute",
    "glasso_path",
    "impute_glasso_path",
    "impute_glasso_cv",
    "em_glasso",
    "em_glasso_path",
    "nonnegative_path",
    "nonnegative_score_matching",
    "nonnegative_kkt_violation",
    "nonnegative_imputation_penalty",
]

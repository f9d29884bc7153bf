"""Reproducible experiments shared by the command line demo, the benchmarks and the tests."""

from .accuracy import GAUSSIAN_ACCURACY, gaussian_accuracy
from .gaussian import (
    DEFAULT_ESTIMATORS,
    DEMO_ESTIMATORS,
    GUIDES,
    MECHANISMS,
    Comparison,
    EstimatorSpec,
    FitResult,
    GaussianProblem,
    compare_estimators,
    complete_data_estimate,
    fit_gaussian,
    format_table,
    make_gaussian_model,
    make_guide,
    precision_error,
    random_precision,
    score_mse,
    simulate_gaussian,
)
from .graphs import GRAPH_EXPERIMENTS
from .reporting import Experiment

#: The experiments of ``pyro-msm reproduce``, by name.
EXPERIMENTS: dict[str, Experiment] = {
    e.name: e for e in (GAUSSIAN_ACCURACY, *GRAPH_EXPERIMENTS)
}

__all__ = [
    "EXPERIMENTS",
    "Experiment",
    "gaussian_accuracy",
    "DEFAULT_ESTIMATORS",
    "DEMO_ESTIMATORS",
    "MECHANISMS",
    "Comparison",
    "make_guide",
    "GUIDES",
    "EstimatorSpec",
    "FitResult",
    "GaussianProblem",
    "complete_data_estimate",
    "compare_estimators",
    "fit_gaussian",
    "format_table",
    "make_gaussian_model",
    "precision_error",
    "random_precision",
    "score_mse",
    "simulate_gaussian",
]

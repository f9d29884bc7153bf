"""Reproducible experiments shared by the command line demo, the benchmarks and the tests."""

from ..datasets.simulated import MECHANISMS, GaussianProblem, random_precision, simulate_gaussian
from .accuracy import GAUSSIAN_ACCURACY, gaussian_accuracy
from .gaussian import (
    DEFAULT_ESTIMATORS,
    DEMO_ESTIMATORS,
    GUIDES,
    Comparison,
    EstimatorSpec,
    FitResult,
    compare_estimators,
    complete_data_estimate,
    fit_gaussian,
    format_table,
    make_gaussian_model,
    make_guide,
    precision_error,
    score_mse,
)
from .graphs import GRAPH_EXPERIMENTS
from .interaction import interaction, plot_interaction
from .reporting import Experiment, summarise
from .truncated import plot_truncated, truncated


def _by(*keys: str, metrics: tuple[str, ...]):
    def summarise_rows(rows):
        return summarise(rows, keys, metrics)

    return summarise_rows


TRUNCATED = Experiment(
    "truncated",
    "truncated Gaussian (d=10, MCAR 0.2): precision error and Fisher divergence over n",
    truncated,
    plot_truncated,
    _by("n", "method", metrics=("precision_error", "fisher")),
    (
        ("n", "n"),
        ("method", "method"),
        ("precision_error_mean", "P rel. err"),
        ("fisher_mean", "Fisher div."),
        ("fisher_sd", "sd"),
        ("diverged", "diverged"),
    ),
)
INTERACTION = Experiment(
    "interaction",
    "squared-interaction model (missing 0.5): parameter error and Fisher divergence over d",
    interaction,
    plot_interaction,
    _by("d", "method", metrics=("theta_error", "fisher")),
    (
        ("d", "d"),
        ("method", "method"),
        ("theta_error_mean", "theta rel. err"),
        ("fisher_mean", "Fisher div."),
        ("fisher_sd", "sd"),
        ("diverged", "diverged"),
    ),
)

#: The experiments of ``pyro-msm reproduce``, by name.
EXPERIMENTS: dict[str, Experiment] = {
    e.name: e for e in (GAUSSIAN_ACCURACY, TRUNCATED, INTERACTION, *GRAPH_EXPERIMENTS)
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

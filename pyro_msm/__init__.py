"""pyro_msm: score matching for unnormalised models of data with missing coordinates, on Pyro."""

from . import datasets, distributions, graphical, guides, infer, missingness
from .arviz_bridge import to_inference_data
from .imputation import imputation_coverage, impute
from .infer import IWScoreMatching, MissingScoreMatching, VariationalScoreMatching
from .primitives import observe

__version__ = "0.1.0"


def __getattr__(name: str):
    # the imputer needs scikit-learn (an optional dependency): imported on first use
    if name == "ScoreMatchingImputer":
        from .imputer import ScoreMatchingImputer

        return ScoreMatchingImputer
    raise AttributeError(f"module 'pyro_msm' has no attribute {name!r}")

__all__ = [
    "observe",
    "MissingScoreMatching",
    "IWScoreMatching",
    "VariationalScoreMatching",
    "impute",
    "imputation_coverage",
    "ScoreMatchingImputer",
    "to_inference_data",
    "datasets",
    "distributions",
    "graphical",
    "guides",
    "infer",
    "missingness",
    "__version__",
]

"""Score-matching losses for models with missing data, and the pieces they are made of."""

from .em import CompletedRowsObjective
from .health import FitHealth, FitHealthError, FitHealthWarning
from .proposals import (
    DistributionProposal,
    GaussianConditionalProposal,
    MomentMatchedProposal,
    PreparedProposal,
    Proposal,
    WideGaussianProposal,
)
from .regularizers import CurvaturePenalty, HeldOutMonitor
from .score_matching import (
    ESTIMATORS,
    IWScoreMatching,
    MissingScoreMatching,
    VariationalScoreMatching,
)

__all__ = [
    "ESTIMATORS",
    "MissingScoreMatching",
    "IWScoreMatching",
    "VariationalScoreMatching",
    "Proposal",
    "PreparedProposal",
    "GaussianConditionalProposal",
    "MomentMatchedProposal",
    "WideGaussianProposal",
    "DistributionProposal",
    "FitHealth",
    "FitHealthWarning",
    "FitHealthError",
    "CurvaturePenalty",
    "HeldOutMonitor",
    "CompletedRowsObjective",
]

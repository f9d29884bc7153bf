"""Score-matching losses for models with missing data, and the pieces they are made of."""

from .proposals import (
    DistributionProposal,
    GaussianConditionalProposal,
    MomentMatchedProposal,
    PreparedProposal,
    Proposal,
    WideGaussianProposal,
)
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
]

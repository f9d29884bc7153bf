"""Guides (variational conditionals :math:`q_\\phi(x_u \\mid x_o)`) for the missing coordinates
of :func:`~pyro_msm.observe` sites."""

from .amortized import AmortizedNormal, no_guide
from .base import MaskedSiteGuide
from .flow import AmortizedFlow, MissingBlockFlow
from .gaussian import GaussianConditionalGuide, MissingBlockGaussian

__all__ = [
    "MaskedSiteGuide",
    "AmortizedNormal",
    "AmortizedFlow",
    "MissingBlockFlow",
    "GaussianConditionalGuide",
    "MissingBlockGaussian",
    "no_guide",
]

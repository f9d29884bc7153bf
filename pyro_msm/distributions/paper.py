"""The two energy families of the experiments of Givens, Liu & Reeve (2025), by their old
address: this module only re-exports them from their own modules,
:mod:`pyro_msm.distributions.squared_interaction` and :mod:`pyro_msm.distributions.truncated`
(shared sampling helpers: :mod:`pyro_msm.distributions.gibbs`). Import from
:mod:`pyro_msm.distributions` in new code.
"""

from .gibbs import colour_classes
from .squared_interaction import SquaredInteractionEnergy
from .truncated import TruncatedGaussianEnergy, random_halfspace, truncated_standard_normal

__all__ = [
    "SquaredInteractionEnergy",
    "TruncatedGaussianEnergy",
    "colour_classes",
    "random_halfspace",
    "truncated_standard_normal",
]

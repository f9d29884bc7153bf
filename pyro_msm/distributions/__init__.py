"""Unnormalised data distributions (``log_prob = -energy``)."""

from .domains import HalfSpace
from .energy import Energy, FunctionEnergy
from .gaussian import GaussianEnergy
from .neural import EnergyMLP, MLPEnergy
from .sampling import mala_sample
from .squared_interaction import SquaredInteractionEnergy
from .truncated import TruncatedGaussianEnergy, random_halfspace

__all__ = [
    "Energy",
    "FunctionEnergy",
    "GaussianEnergy",
    "EnergyMLP",
    "MLPEnergy",
    "SquaredInteractionEnergy",
    "TruncatedGaussianEnergy",
    "HalfSpace",
    "random_halfspace",
    "mala_sample",
]

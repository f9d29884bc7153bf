"""Unnormalised data distributions (``log_prob = -energy``)."""

from .domains import HalfSpace
from .energy import Energy, FunctionEnergy
from .gaussian import GaussianEnergy
from .neural import EnergyMLP, MLPEnergy
from .paper import SquaredInteractionEnergy, TruncatedGaussianEnergy, random_halfspace
from .sampling import mala_sample

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

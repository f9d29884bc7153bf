"""Unnormalised data distributions (``log_prob = -energy``)."""

from .energy import Energy, FunctionEnergy
from .gaussian import GaussianEnergy
from .neural import EnergyMLP, MLPEnergy
from .sampling import mala_sample

__all__ = ["Energy", "FunctionEnergy", "GaussianEnergy", "EnergyMLP", "MLPEnergy", "mala_sample"]

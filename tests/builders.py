"""Models and masked tables shared by the guide tests."""

from __future__ import annotations

import pyro
import torch

import pyro_msm
from pyro_msm.distributions import GaussianEnergy

NAN = float("nan")
# a fixed 3-d Gaussian
MU3 = torch.tensor([1.0, -0.5, 0.0])
P3 = torch.tensor([[2.0, 0.6, -0.4], [0.6, 1.5, 0.5], [-0.4, 0.5, 1.0]])


def gaussian_model(loc: torch.Tensor, precision: torch.Tensor, subsample_size=None, record=None):
    """``model(x)``: rows of ``x`` (NaN = missing) observed from a fixed Gaussian energy; with
    ``record``, each call appends ``(subsample indices, merged value)``."""

    def model(x):
        with pyro.plate("rows", x.shape[0], subsample_size=subsample_size) as idx:
            value = pyro_msm.observe("x", GaussianEnergy(loc, precision), obs=x[idx])
        if record is not None:
            record.append((idx.clone(), value.detach().clone()))
        return value

    return model


def with_missing(full: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``full`` with NaN where ``mask`` is False."""
    return torch.where(mask, full, torch.tensor(NAN, dtype=full.dtype))


def mcar(full: torch.Tensor, rate: float, keep_one: bool = True) -> torch.Tensor:
    """``full`` with entries set to NaN at random; with ``keep_one`` every row keeps an observed
    coordinate."""
    mask = torch.rand(full.shape) > rate
    if keep_one:
        mask[torch.arange(full.shape[0]), torch.randint(full.shape[-1], full.shape[:1])] = True
    return with_missing(full, mask)

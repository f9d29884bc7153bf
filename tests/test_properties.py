"""Property-based tests (hypothesis, bounded): random shapes, masks, dtypes and scales give
finite losses and gradients for every unguided estimator, and with nothing missing every
estimator reduces to classical score matching."""

from __future__ import annotations

import math
import warnings

import pyro
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyro_msm
from pyro_msm.distributions import GaussianEnergy
from pyro_msm.guides import no_guide
from pyro_msm.infer import MissingScoreMatching

SETTINGS = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
UNGUIDED = ("iw", "em", "zeroed", "mean_impute", "complete_case", "closed_form")


@st.composite
def problems(draw):
    n = draw(st.integers(1, 8))
    d = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    scale = 10.0 ** draw(st.integers(-2, 3))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * scale).to(dtype)
    mask = torch.rand(n, d, generator=g) > draw(st.sampled_from([0.0, 0.3, 0.7]))
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    precision = (torch.eye(d, dtype=torch.float64) + 0.3 * a @ a.T) / scale**2
    loc = torch.randn(d, generator=g, dtype=torch.float64) * scale
    return x, mask, loc.to(dtype), precision.to(dtype)


def model(data, mask):
    loc = pyro.param("loc")
    precision = pyro.param("P")
    with pyro.plate("rows", data.shape[0]):
        pyro_msm.observe("x", GaussianEnergy(loc, precision), obs=data, obs_mask=mask)


def loss_and_grads(estimator, problem, **kwargs):
    x, mask, loc, precision = problem
    pyro.clear_param_store()
    pyro.param("loc", loc.clone())
    pyro.param("P", precision.clone())
    loss = MissingScoreMatching(estimator, 6, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # empty rows, dropped rows
        value = loss.loss_and_grads(model, no_guide, x, mask)
    grads = [pyro.param(name).unconstrained().grad for name in ("loc", "P")]
    return value, grads


@pytest.mark.parametrize("estimator", UNGUIDED)
@SETTINGS
@given(problem=problems())
def test_random_problems_give_finite_losses_and_gradients(estimator, problem):
    value, grads = loss_and_grads(estimator, problem)
    assert math.isfinite(value)
    for grad in grads:
        assert grad is None or bool(torch.isfinite(grad).all())


@SETTINGS
@given(problem=problems(), objective=st.sampled_from(["exact", "sliced", "denoising"]))
def test_random_problems_finite_for_every_objective(problem, objective):
    value, grads = loss_and_grads("iw", problem, objective=objective)
    assert math.isfinite(value)
    assert all(g is None or bool(torch.isfinite(g).all()) for g in grads)


@SETTINGS
@given(problem=problems())
def test_complete_data_reduces_to_classical_score_matching(problem):
    x, _, loc, precision = problem
    full = torch.ones(x.shape, dtype=torch.bool)
    p64, diff = precision.double(), (x.double() - loc.double())
    classical = float((-2 * torch.trace(p64) + (diff @ p64).square().sum(-1)).sum())
    tolerance = 1e-8 if x.dtype == torch.float64 else 2e-4
    for estimator in UNGUIDED:
        value, _ = loss_and_grads(estimator, (x, full, loc, precision))
        assert value == pytest.approx(classical, rel=tolerance, abs=tolerance * abs(classical))

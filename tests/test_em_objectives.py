"""Every estimator with every objective (issue 12, item 8): finite losses and gradients on a
Gaussian, and EM's M-step against its closed form for the exact, sliced, denoising and
truncated objectives."""

from __future__ import annotations

import math
import warnings

import pyro
import pytest
import torch
from pyro.distributions import constraints

import pyro_msm
from pyro_msm.distributions import GaussianEnergy
from pyro_msm.guides import GaussianConditionalGuide, no_guide
from pyro_msm.infer import (
    ESTIMATORS,
    CompletedRowsObjective,
    GaussianConditionalProposal,
    MissingScoreMatching,
)
from pyro_msm.infer.objectives import (
    OBJECTIVES,
    DenoisingObjective,
    ExpectedCompleteDataObjective,
    Particles,
    SlicedObjective,
)

MU = torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64)
P = torch.tensor([[2.0, 0.6, -0.4], [0.6, 1.5, 0.5], [-0.4, 0.5, 1.0]], dtype=torch.float64)


def incomplete(n: int, rate: float = 0.4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = GaussianEnergy(MU, P).sample((n,))
    mask = torch.rand(n, 3, generator=g) > rate
    mask[torch.arange(n), torch.randint(3, (n,), generator=g)] = True
    return torch.where(mask, x, torch.tensor(math.nan, dtype=x.dtype))


def trainable_model(data):
    loc = pyro.param("loc", torch.zeros(3, dtype=data.dtype))
    tril = pyro.param("L", torch.eye(3, dtype=data.dtype), constraint=constraints.lower_cholesky)
    with pyro.plate("rows", data.shape[0]):
        pyro_msm.observe("x", GaussianEnergy(loc, precision_tril=tril), obs=data)


PAIRS = [(e, o) for e in ESTIMATORS for o in OBJECTIVES if e != "closed_form" or o == "exact"]


@pytest.mark.parametrize("estimator, objective", PAIRS)
def test_every_estimator_with_every_objective_gives_finite_loss_and_gradients(
    estimator, objective
):
    x = incomplete(30)
    guided = estimator in ("variational", "hybrid")
    guide = GaussianConditionalGuide(trainable_model) if guided else no_guide
    loss = MissingScoreMatching(estimator, 4, objective=objective, guide_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # complete-case drop counts
        value = loss.loss_and_grads(trainable_model, guide, x)
    assert math.isfinite(value)
    for name in ("loc", "L"):
        grad = pyro.param(name).unconstrained().grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def em_closed_form(x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """EM's M-step loss at the model (MU, P) with draws from the model's own conditional:
    per row -2 tr P + |P (m - mu)|^2 + tr(P C P) (m, C the conditional mean and covariance,
    padded); the denoising loss is sigma^2 times that without the trace, plus
    tr((I - sigma^2 P)^2)."""
    rows = []
    cov = torch.linalg.inv(P)
    for row in x:
        o = ~torch.isnan(row)
        u = ~o
        m = row.clone()
        c = torch.zeros(3, 3, dtype=P.dtype)
        if u.any():
            s_uo = cov[u][:, o]
            s_oo_inv = torch.linalg.inv(cov[o][:, o])
            m[u] = MU[u] + s_uo @ s_oo_inv @ (row[o] - MU[o])
            idx = u.nonzero()[:, 0]
            c[idx[:, None], idx] = cov[u][:, u] - s_uo @ s_oo_inv @ s_uo.T
        quad = (P @ (m - MU)).square().sum() + torch.trace(P @ c @ P)
        if sigma is None:
            rows.append(-2 * torch.trace(P) + quad)
        else:
            eye = torch.eye(3, dtype=P.dtype)
            rows.append(sigma**2 * quad + torch.trace((eye - sigma**2 * P) @ (eye - sigma**2 * P)))
    return torch.stack(rows)


def fixed_model(data):
    with pyro.plate("rows", data.shape[0]):
        pyro_msm.observe("x", GaussianEnergy(MU, P), obs=data)


@pytest.mark.parametrize(
    "objective, sigma",
    [
        ("exact", None),
        # rows with nothing missing carry one particle, so one projection per particle would
        # leave their directions unaveraged: average 200 per particle instead
        (SlicedObjective(num_projections=200), None),
        ("truncated", None),
        (DenoisingObjective(0.3), 0.3),
    ],
)
def test_em_m_step_matches_its_closed_form(objective, sigma):
    """With the model's own conditional as the proposal the frozen weights are uniform, and the
    M-step loss converges to its closed form as the particles grow (sliced and denoising also
    average over their random directions and noise)."""
    x = incomplete(40, seed=3)
    proposal = GaussianConditionalProposal(MU, torch.linalg.inv(P), defensive=0.0)
    loss = MissingScoreMatching("em", 4000, objective=objective, proposal=proposal)
    pyro.set_rng_seed(1)
    value = loss.loss(fixed_model, no_guide, x)
    expected = float(em_closed_form(x, sigma).sum())
    assert value == pytest.approx(expected, rel=0.03)


def test_completed_rows_with_the_exact_objective_is_the_expected_complete_data_loss():
    x = incomplete(10)
    mask = ~torch.isnan(x)
    z = torch.where(mask, torch.nan_to_num(x), torch.randn(5, 10, 3, dtype=x.dtype))
    weights = torch.softmax(torch.randn(5, 10, dtype=x.dtype), 0)
    particles = Particles(z, weights, mask, torch.ones(10, dtype=x.dtype))
    fn = GaussianEnergy(MU, P).expand((10,))
    wrapped = CompletedRowsObjective(pyro_msm.infer.objectives.ExactObjective())(fn, particles)
    direct = ExpectedCompleteDataObjective()(fn, particles)
    assert torch.allclose(wrapped, direct, rtol=1e-12)

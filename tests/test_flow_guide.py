"""Tests for :class:`pyro_msm.guides.flow.AmortizedFlow`, the amortised conditional flow
q(x_u | x_o), and its per-coordinate site distribution ``MissingBlockFlow``.

The density checks are exact: against a brute-force change of variables (the full Jacobian
determinant of noise -> missing block, by autograd, for each row), against the standard normal
(an untrained affine flow is the identity), and by integrating the density over a grid of the
missing block. The training check uses a Gaussian model with fixed, known parameters, whose
conditional of the missing coordinates is known in closed form (``conditional_gaussian``); with
``guide_steps=0`` every SVI step is a model step that also updates the guide on the reverse KL.
"""

from __future__ import annotations

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from builders import MU3, P3, gaussian_model, mcar, with_missing
from pyro.infer import SVI
from torch.autograd.functional import jacobian

import pyro_msm
from pyro_msm.distributions import GaussianEnergy
from pyro_msm.guides.flow import AmortizedFlow, MissingBlockFlow
from pyro_msm.infer import MissingScoreMatching
from pyro_msm.infer.gaussian import conditional_gaussian
from pyro_msm.infer.sites import find_data_sites, guide_log_prob

TRANSFORMS = ["affine", "spline"]


def standard_normal(value):
    return -0.5 * value**2 - 0.5 * math.log(2 * math.pi)


def built_guide(x, transform, hidden=(16, 16), perturb=0.3):
    """A guide called once on ``x`` (parameters created), with every parameter perturbed so
    that the layers are far from the identity and mix coordinates."""
    loc, precision = MU3.to(x.dtype), P3.to(x.dtype)
    d = x.shape[-1]
    if d != 3:
        loc, precision = torch.zeros(d, dtype=x.dtype), torch.eye(d, dtype=x.dtype)
    guide = AmortizedFlow(gaussian_model(loc, precision), transform=transform, hidden_dims=hidden)
    guide(x)
    with torch.no_grad():
        for p in guide.flows.parameters():
            p.add_(perturb * torch.randn_like(p))
    return guide


def brute_force(guide, row, observed, noise):
    """Push ``noise`` (at the missing coordinates of one row) through the layers, the observed
    values held fixed, and return the missing block and its log density by the change of
    variables with the full (not assumed triangular) Jacobian."""
    missing = (~observed).nonzero().squeeze(-1)
    context = torch.cat([row, observed.to(row.dtype)])

    def push(e):
        z = row.index_put((missing,), e)
        for conditional in guide.flows:
            z = torch.where(observed, row, conditional.condition(context)(z))
        return z[missing]

    jac = jacobian(push, noise)
    log_det = torch.linalg.slogdet(jac)[1]
    return push(noise), standard_normal(noise).sum() - log_det, jac


# -- the density is the density of the missing block ----------------------------------------------
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_density_matches_brute_force_change_of_variables(transform):
    """Rows of d = 4 with 1, 2 and 3 missing coordinates: the site's log density at a value
    equals log N(noise_u) - log|det d x_u / d noise_u| computed with the full Jacobian."""
    mask = torch.tensor(
        [[True, False, True, True], [False, True, False, True], [True, False, False, False]]
    )
    x = with_missing(torch.randn(3, 4), mask)
    guide = built_guide(x, transform)
    data = torch.nan_to_num(x, nan=0.0)
    q = guide.distribution(data, mask)
    for i in range(3):
        noise = torch.randn(int((~mask[i]).sum()))
        block, expected, jac = brute_force(guide, data[i], mask[i], noise)
        if jac.shape[0] == 3:  # the layers really couple the missing coordinates
            assert (jac.tril(-1).abs() + jac.triu(1).abs()).sum() > 1e-2
        value = data.clone()
        value[i, ~mask[i]] = block.detach()
        value[:, mask[i]] = 100.0  # observed entries of a value are ignored
        got = q.missing_log_prob(value)[i]
        torch.testing.assert_close(got, expected.detach(), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_cached_draw_density_equals_inverted_density(transform):
    """The terms cached with a draw (used by the loss) equal the exact inversion at a copy of
    the draw, and they are zero at observed coordinates."""
    x = mcar(torch.randn(20, 3), 0.4)
    guide = built_guide(x, transform)
    observed = ~torch.isnan(x)
    q = guide.distribution(torch.nan_to_num(x, nan=0.0), observed)
    value = q.rsample((4,))
    cached = q.log_prob(value)
    assert cached.shape == (4, 20, 3)
    assert torch.equal(cached[:, observed], torch.zeros(4, int(observed.sum())))
    torch.testing.assert_close(cached, q.log_prob(value.clone()), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_density_integrates_to_one_over_the_missing_block(transform):
    """d = 3, float64: a row with one missing coordinate (1-d grid) and a row with two (2-d
    grid): the density of the missing block integrates to 1 (within 1% on a grid covering the
    draws; a density that counted observed coordinates would not)."""
    mask = torch.tensor([[True, False, True], [False, True, False]])
    x = with_missing(torch.randn(2, 3, dtype=torch.float64), mask)
    # (larger perturbations give linear rational splines near-discontinuous derivatives, and
    # densities too spiky for a grid; the brute-force test above covers those)
    guide = built_guide(x, transform, perturb=0.1)
    data = torch.nan_to_num(x, nan=0.0)
    q = guide.distribution(data, mask)
    with torch.no_grad():
        draws = q.sample((2000,))
        lo, hi = draws.min(0).values - 3, draws.max(0).values + 3
        # one missing coordinate
        grid = torch.linspace(float(lo[0, 1]), float(hi[0, 1]), 2001, dtype=torch.float64)
        value = data[0].expand(len(grid), 3).clone()
        value[:, 1] = grid
        dens = guide.distribution(value, mask[0].expand(len(grid), 3)).missing_log_prob(value)
        total = torch.trapezoid(dens.exp(), grid)
        assert abs(float(total) - 1) < 0.01
        # two missing coordinates
        g0 = torch.linspace(float(lo[1, 0]), float(hi[1, 0]), 301, dtype=torch.float64)
        g2 = torch.linspace(float(lo[1, 2]), float(hi[1, 2]), 301, dtype=torch.float64)
        a, b = torch.meshgrid(g0, g2, indexing="ij")
        value = data[1].expand(a.numel(), 3).clone()
        value[:, 0], value[:, 2] = a.reshape(-1), b.reshape(-1)
        rows = guide.distribution(value, mask[1].expand(a.numel(), 3))
        dens = rows.missing_log_prob(value).exp().reshape(a.shape)
        total = torch.trapezoid(torch.trapezoid(dens, g2, dim=1), g0)
        assert abs(float(total) - 1) < 0.01


def test_missing_block_flow_with_user_built_pyro_transforms():
    """MissingBlockFlow takes Pyro's conditional autoregressive transforms as built by their
    helpers (here a "stable" affine layer and a spline layer), and refuses transforms that
    are not triangular."""
    from pyro.distributions import transforms as T

    layers = [
        T.conditional_affine_autoregressive(3, 6, hidden_dims=[12], stable=True),
        T.conditional_spline_autoregressive(3, 6, hidden_dims=[12], count_bins=4),
    ]
    x = mcar(torch.randn(10, 3), 0.4)
    observed = ~torch.isnan(x)
    data = torch.nan_to_num(x, nan=0.0)
    context = torch.cat([data, observed.float()], -1)
    q = MissingBlockFlow(layers, context, data, observed)
    value = q.rsample((3,))
    assert torch.equal(value[:, observed], data[observed].expand(3, -1))
    torch.testing.assert_close(q.log_prob(value), q.log_prob(value.clone()), atol=2e-4, rtol=0)
    with pytest.raises(TypeError, match="triangular"):
        MissingBlockFlow([T.conditional_planar(3, 6)], context, data, observed)


def test_untrained_affine_flow_is_standard_normal_on_the_missing_block():
    """Affine layers start at the identity: the site's log density (as Pyro computes it and as
    the loss reads it) is the N(0, 1) density of the missing entries only; observed entries of
    the draw are the data."""
    x = mcar(torch.randn(7, 3), 0.4)
    missing = torch.isnan(x)
    assert missing.any() and (~missing).any()
    model = gaussian_model(MU3, P3)
    guide = AmortizedFlow(model)
    r = 5
    with pyro.plate("_pyro_msm_particles", r, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x)
    site = guide_trace.nodes["x_unobserved"]
    draws = site["value"]
    assert draws.shape == (r, 7, 3)
    assert torch.equal(draws[:, ~missing], x[~missing].expand(r, -1))
    expected = (standard_normal(draws) * missing).sum(-1)
    guide_trace.compute_log_prob()
    torch.testing.assert_close(site["log_prob"], expected)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    lp = guide_log_prob(guide_trace, find_data_sites(model_trace))["x"]
    assert lp.shape == (r, 7)
    torch.testing.assert_close(lp, expected)
    # the observed entries would have changed the answer
    some_observed = (~missing).any(-1)
    assert (standard_normal(draws) * ~missing).sum(-1)[:, some_observed].abs().min() > 1e-3


# -- the guide in the loss ------------------------------------------------------------------------
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_particle_plate_completed_rows_keep_observed_values(transform):
    x = mcar(GaussianEnergy(MU3, P3).sample((6,)), 0.4)
    missing = torch.isnan(x)
    model = gaussian_model(MU3, P3)
    guide = AmortizedFlow(model, transform=transform, hidden_dims=(8, 8))
    r = 4
    with pyro.plate("_pyro_msm_particles", r, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x)
    draws = guide_trace.nodes["x_unobserved"]["value"]
    assert draws.shape == (r, 6, 3) and draws.requires_grad
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    completed = model_trace.nodes["x"]["value"]
    assert torch.equal(completed[:, ~missing], x[~missing].expand(r, -1))
    assert torch.equal(completed[:, missing], draws[:, missing])
    lp = guide_log_prob(guide_trace, find_data_sites(model_trace))["x"]
    q = guide.distribution(torch.nan_to_num(x, nan=0.0), ~missing)
    torch.testing.assert_close(lp, q.missing_log_prob(draws.detach().clone()), atol=2e-4, rtol=0)


def test_kl_gradient_reaches_the_flow_through_the_draws():
    """rsample is reparameterised: one model step of the variational loss gives every layer's
    output weights a nonzero gradient, also through the model's density alone."""
    x = mcar(GaussianEnergy(MU3, P3).sample((30,)), 0.4)
    model = gaussian_model(MU3, P3)
    guide = AmortizedFlow(model, hidden_dims=(8, 8))
    loss = MissingScoreMatching("variational", num_particles=3, guide_steps=0)
    loss.differentiable_loss(model, guide, x).backward()
    for layer in guide.flows:
        assert layer.nn.layers[-1].weight.grad.abs().sum() > 0
    # the model term only: E_q[-log q_theta(x_o, x_u)] differentiated through the draws
    guide.zero_grad()
    with pyro.plate("_pyro_msm_particles", 3, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    site = find_data_sites(model_trace)[0]
    (-site.fn.log_prob(site.value).sum()).backward()
    for layer in guide.flows:
        assert layer.nn.layers[-1].weight.grad.abs().sum() > 0


def test_flow_learns_the_gaussian_conditional():
    """d = 3, coordinate 0 always observed, 1 and 2 each missing with probability 1/2, so rows
    miss nothing, {1}, {2} or {1, 2}. The model's conditional is N(mean, inv(P_uu)), correlated
    when both are missing (correlation -0.41), which a diagonal guide cannot represent.

    After 300 steps, with 4000 guide draws per row: RMS error of the conditional mean over
    missing entries below 0.08 (conditional sds 0.82-1.1; about 0.04 is typical), worst entry
    below 0.3; per missing pattern, the row-averaged covariance within 0.08 of inv(P_uu)
    entrywise and every row's within 0.25 (about 0.05 and 0.14 are typical; the sampling error
    of a variance with 4000 draws is about 3%); the correlation within 0.1."""
    n = 160
    full = GaussianEnergy(MU3, P3).sample((n,))
    mask = torch.ones(n, 3, dtype=torch.bool)
    mask[:, 1:] = torch.rand(n, 2) > 0.5
    x = with_missing(full, mask)
    model = gaussian_model(MU3, P3)
    guide = AmortizedFlow(model, hidden_dims=(32, 32))
    loss = MissingScoreMatching("variational", 4, guide_steps=0)
    for lr, steps in ((1e-2, 200), (2e-3, 100)):
        svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), loss)
        for _ in range(steps):
            assert math.isfinite(svi.step(x))
    data = torch.nan_to_num(x, nan=0.0)
    truth, _ = conditional_gaussian(data, mask, MU3, P3)
    s = 4000
    with torch.no_grad():
        draws = guide.distribution(data, mask).sample((s,))
    assert torch.equal(draws[:, mask], data[mask].expand(s, -1))
    err = (draws.mean(0) - truth)[~mask]
    assert err.pow(2).mean().sqrt() < 0.08
    assert err.abs().max() < 0.3
    for pattern in ([1], [2], [1, 2]):
        rows = (~mask[:, pattern]).all(-1) & (mask.sum(-1) == 3 - len(pattern))
        assert rows.sum() > 20
        block = draws[:, rows][:, :, pattern]
        centred = block - block.mean(0)
        cov = torch.einsum("sri,srj->rij", centred, centred) / (s - 1)
        true_cov = torch.linalg.inv(P3[pattern][:, pattern])
        assert (cov.mean(0) - true_cov).abs().max() < 0.08
        assert (cov - true_cov).abs().max() < 0.25
        if len(pattern) == 2:
            corr = cov[:, 0, 1] / (cov[:, 0, 0] * cov[:, 1, 1]).sqrt()
            true_corr = true_cov[0, 1] / (true_cov[0, 0] * true_cov[1, 1]).sqrt()
            assert (corr.mean() - true_corr).abs() < 0.1


def test_spline_flow_trains():
    """Smoke test: finite losses, the guide's parameters move, draws keep observed values."""
    x = mcar(GaussianEnergy(MU3, P3).sample((40,)), 0.4)
    model = gaussian_model(MU3, P3)
    guide = AmortizedFlow(model, transform="spline", hidden_dims=(12, 12), num_transforms=1)
    guide(x)
    before = [p.detach().clone() for p in guide.flows.parameters()]
    svi = SVI(
        model,
        guide,
        pyro.optim.Adam({"lr": 1e-2}),
        MissingScoreMatching("variational", num_particles=3, guide_steps=1),
    )
    for _ in range(6):
        assert math.isfinite(svi.step(x))
    after = list(guide.flows.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    draws = guide(x)["x_unobserved"]
    observed = ~torch.isnan(x)
    assert torch.equal(draws[observed], x[observed])


# -- parameters, shapes and errors ----------------------------------------------------------------
def test_parameters_follow_the_data_dtype_and_names():
    x = mcar(torch.randn(5, 3, dtype=torch.float64), 0.3)
    guide = AmortizedFlow(gaussian_model(MU3.double(), P3.double()), num_transforms=3)
    with pytest.raises(RuntimeError, match="call the guide once"):
        guide.distribution(x, ~torch.isnan(x))
    value = guide(x)["x_unobserved"]
    assert value.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in guide.parameters())
    assert len(guide.flows) == 3
    names = list(pyro.get_param_store().keys())
    assert names and all(name.startswith("AmortizedFlow.flows$$$") for name in names)
    # the model's data site refuses the dtype mismatch before the guide does
    with pytest.raises((TypeError, ValueError), match="float64"):
        guide(x.float())


def test_rows_of_another_dimension_are_refused():
    def model(x):
        d = x.shape[-1]
        with pyro.plate("rows", x.shape[0]):
            pyro_msm.observe("x", GaussianEnergy(torch.zeros(d), torch.eye(d)), obs=x)

    guide = AmortizedFlow(model, hidden_dims=(8,))
    guide(torch.randn(2, 3))
    with pytest.raises(ValueError, match="built for rows of 3 coordinates, got 4"):
        guide(torch.randn(2, 4))


def test_expand_and_shapes():
    x = mcar(torch.randn(4, 3), 0.3)
    guide = AmortizedFlow(gaussian_model(MU3, P3), hidden_dims=(8,))
    guide(x)
    q = guide.distribution(torch.nan_to_num(x, nan=0.0), ~torch.isnan(x))
    assert isinstance(q, MissingBlockFlow)
    assert q.batch_shape == (4, 3) and q.event_shape == ()
    wide = q.expand((2, 4, 3))
    assert wide.rsample().shape == (2, 4, 3)
    assert wide.missing_log_prob(wide.rsample()).shape == (2, 4)
    with pytest.raises(ValueError, match="coordinates of a row"):
        q.expand((4, 4))


def test_constructor_validation_and_site_errors():
    model = gaussian_model(MU3, P3)
    with pytest.raises(TypeError, match="callable"):
        AmortizedFlow("model")
    with pytest.raises(ValueError, match="num_transforms"):
        AmortizedFlow(model, num_transforms=0)
    with pytest.raises(ValueError, match="hidden_dims"):
        AmortizedFlow(model, hidden_dims=(8, 0))
    with pytest.raises(ValueError, match="unknown transform"):
        AmortizedFlow(model, transform="planar")
    with pytest.raises(ValueError, match="at least the row dimension"):
        AmortizedFlow(model, hidden_dims=(2,))(torch.randn(3, 3))

    def plain(x):
        with pyro.plate("rows", x.shape[0]):
            pyro.sample("x", GaussianEnergy(MU3, P3), obs=x)

    with pytest.raises(ValueError, match="no masked data site"):
        AmortizedFlow(plain)(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="no_such_site"):
        AmortizedFlow(model, site="no_such_site")(torch.zeros(4, 3))

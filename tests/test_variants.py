"""Score-matching variants with missing data: each reduces to its classical form without missing
values, agrees with the exact objective where theory says so, and recovers known parameters."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import SVI
from pyro.optim import Adam

import pyro_msm
from pyro_msm.distributions import FunctionEnergy, GaussianEnergy, TruncatedGaussianEnergy
from pyro_msm.distributions.domains import HalfSpace, boundary_distance, moving_section
from pyro_msm.guides import AmortizedNormal, no_guide
from pyro_msm.infer import MissingScoreMatching
from pyro_msm.infer.estimators import importance_particles
from pyro_msm.infer.gaussian import marginal_score_matching_loss
from pyro_msm.infer.mechanisms import self_masking_logistic
from pyro_msm.infer.objectives import (
    DenoisingObjective,
    ExactObjective,
    Particles,
    SlicedObjective,
    TruncatedObjective,
)
from pyro_msm.infer.proposals import GaussianConditionalProposal

D = torch.float64
LOC = torch.tensor([0.5, -0.3, 0.2], dtype=D)
PREC = torch.tensor([[2.0, 0.6, -0.3], [0.6, 1.5, 0.4], [-0.3, 0.4, 1.2]], dtype=D)


def rows(n=6, rate=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = dist.MultivariateNormal(LOC, precision_matrix=PREC).sample((n,))
    mask = torch.rand(n, 3, generator=g) > rate
    mask[:, 0] = True
    return x * mask, mask


def single(x, mask):
    return Particles(
        x.unsqueeze(0),
        torch.ones(1, x.shape[0], dtype=x.dtype),
        mask,
        torch.ones(x.shape[0], dtype=x.dtype),
    )


def classical(x):
    a = -(x - LOC) @ PREC
    return -2 * torch.trace(PREC) + (a * a).sum(-1), a


# -- reduction to the classical complete-data forms ---------------------------------------------
def test_sliced_is_unbiased_for_classical_without_missing():
    x, _ = rows()
    full = torch.ones_like(x, dtype=torch.bool)
    expected, _ = classical(x)
    for projection in ("rademacher", "gaussian", "sphere"):
        sliced = SlicedObjective(num_projections=20_000, projection=projection)
        got = sliced(GaussianEnergy(LOC, PREC), single(x, full))
        # Monte Carlo over 20000 directions: relative error well under 5%
        torch.testing.assert_close(got, expected, rtol=0.05, atol=0.1)


def test_sliced_with_one_direction_is_the_sliced_classical_loss():
    x, _ = rows()
    full = torch.ones_like(x, dtype=torch.bool)
    torch.manual_seed(3)
    sliced = SlicedObjective(projection="gaussian")
    v = sliced.directions(full, D)[0]
    torch.manual_seed(3)
    got = sliced(GaussianEnergy(LOC, PREC), single(x, full))
    _, a = classical(x)
    expected = 2 * ((v @ -PREC) * v).sum(-1) + ((v * a).sum(-1)) ** 2
    torch.testing.assert_close(got, expected)


def test_denoising_without_missing_is_classical_denoising():
    x, _ = rows()
    full = torch.ones_like(x, dtype=torch.bool)
    obj = DenoisingObjective(noise_scale=0.3)
    torch.manual_seed(4)
    noisy, sigma = obj.perturb(x, full)
    p = single(noisy, full)
    p.clean, p.noise_scale = x, sigma
    got = obj(GaussianEnergy(LOC, PREC), p)
    a = -(noisy - LOC) @ PREC
    expected = 0.09 * ((a + (noisy - x) / 0.09) ** 2).sum(-1)
    torch.testing.assert_close(got, expected)
    assert torch.equal(noisy == x, torch.zeros_like(full))  # every coordinate was noised


def test_truncated_without_missing_is_generalised_score_matching():
    x, _ = rows()
    x = x.abs() * 0.7  # inside the orthant, some coordinates beyond the cap
    full = torch.ones_like(x, dtype=torch.bool)
    fn = GaussianEnergy(LOC, PREC)
    fn.support = constraints.independent(constraints.positive, 1)
    got = TruncatedObjective()(fn, single(x, full))
    a = -(x - LOC) @ PREC
    g = x.clamp(max=1.0)
    dg = (x < 1.0).to(D)
    expected = (g * (2 * -torch.diagonal(PREC) + a * a) + 2 * dg * a).sum(-1)
    torch.testing.assert_close(got, expected)


def test_every_objective_through_the_loss_without_missing_values():
    x, _ = rows(n=8)
    full = torch.ones_like(x, dtype=torch.bool)

    def model(data):
        with pyro.plate("rows", data.shape[0]):
            pyro_msm.observe("x", GaussianEnergy(LOC, PREC), obs=data)

    expected, _ = classical(x)
    for estimator in ("iw", "em", "zeroed", "mean_impute", "complete_case"):
        got = MissingScoreMatching(estimator).loss(model, None, x)
        assert abs(got - float(expected.sum())) < 1e-8 * abs(float(expected.sum()))
    # sliced through the loss, averaged over many steps
    sliced = MissingScoreMatching("iw", objective=SlicedObjective(num_projections=5000))
    assert abs(sliced.loss(model, None, x) / float(expected.sum()) - 1) < 0.05
    assert full.all()


# -- agreement with the exact objective under missingness ---------------------------------------
def test_sliced_averages_to_the_exact_objective_for_the_same_particles():
    x, mask = rows(n=20)
    torch.manual_seed(0)
    tril = torch.linalg.cholesky(PREC).requires_grad_(True)
    fn = GaussianEnergy(LOC, precision_tril=tril)
    proposal = GaussianConditionalProposal(LOC, torch.linalg.inv(PREC))
    p = importance_particles(fn, x, mask, proposal, 10)
    exact = ExactObjective()(fn, p)
    (g_exact,) = torch.autograd.grad(exact.sum(), tril, retain_graph=True)
    sliced = SlicedObjective(num_projections=20_000)(fn, p)
    (g_sliced,) = torch.autograd.grad(sliced.sum(), tril)
    torch.testing.assert_close(sliced, exact, rtol=0.05, atol=0.1)
    torch.testing.assert_close(g_sliced, g_exact, rtol=0.05, atol=0.5)


def test_exact_objective_matches_the_gaussian_marginal_with_many_particles():
    x, mask = rows(n=10)
    fn = GaussianEnergy(LOC, PREC)
    proposal = GaussianConditionalProposal(LOC, torch.linalg.inv(PREC), defensive=0.0)
    p = importance_particles(fn, x, mask, proposal, 50_000)
    torch.testing.assert_close(
        ExactObjective()(fn, p),
        marginal_score_matching_loss(x, mask, LOC, PREC),
        rtol=0.02,
        atol=0.05,
    )


# -- domains ---------------------------------------------------------------------------------------
def test_boundary_distance_of_the_supported_domains():
    x = torch.tensor([[0.3, 2.0, 0.5], [1.5, 0.2, 0.7]], dtype=D)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    orthant = constraints.independent(constraints.positive, 1)
    torch.testing.assert_close(boundary_distance(orthant, x, mask), x)
    box = constraints.independent(constraints.interval(0.0, 2.5), 1)
    torch.testing.assert_close(boundary_distance(box, x, mask), torch.minimum(x, 2.5 - x))
    half = HalfSpace(torch.tensor([1.0, 1.0, 0.0], dtype=D), 3.0)
    got = boundary_distance(half, x, mask)
    torch.testing.assert_close(got[:, 0], (3.0 - x[:, :2].sum(-1)) / 2**0.5)
    half2 = HalfSpace(torch.tensor([0.0, 0.0, 1.0], dtype=D), 3.0)
    assert torch.isinf(boundary_distance(half2, x, mask)[0]).all()  # touches a missing coord


def test_half_space_sections_that_move_with_the_observed_coordinates_are_flagged():
    half = HalfSpace(torch.tensor([1.0, 1.0, 0.0], dtype=D), 3.0)
    mask = torch.tensor(
        [
            [True, False, True],  # x_1 missing and bounded by c - x_0: moves
            [False, False, True],  # both constrained coordinates missing: fixed section
            [True, True, False],  # the missing coordinate is not in the constraint
            [True, True, True],
        ]
    )
    assert moving_section(half, mask).tolist() == [True, False, False, False]
    orthant = constraints.independent(constraints.positive, 1)
    assert not moving_section(orthant, mask).any()

    truth = TruncatedGaussianEnergy(torch.zeros(3, dtype=D), torch.eye(3, dtype=D), half)
    x = torch.tensor([[0.5, float("nan"), 0.2], [0.1, 0.3, 0.2]], dtype=D)

    def model(data):
        with pyro.plate("rows", data.shape[0]):
            pyro_msm.observe("x", truth, obs=data)

    loss = MissingScoreMatching("iw", objective="truncated", num_particles=4)
    with pytest.warns(UserWarning, match="boundary term"):
        loss.loss(model, no_guide, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # complete rows: no warning
        loss.loss(model, no_guide, x[1:])


def test_draws_outside_the_support_get_zero_weight_and_empty_rows_are_dropped():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=D)
    mask = torch.tensor([[True, False], [True, False]])
    fn = FunctionEnergy(lambda v: 0.5 * (v * v).sum(-1), 2)
    fn.support = constraints.independent(constraints.positive, 1)

    class Fixed:
        def sample(self, x, mask, r):
            draws = torch.tensor([[[0.0, 0.5], [0.0, -1.0]], [[0.0, -0.3], [0.0, -2.0]]], dtype=D)
            return draws, torch.zeros(2, 2, dtype=D)

    p = importance_particles(fn, x, mask, Fixed(), 2)
    torch.testing.assert_close(p.weights[:, 0], torch.tensor([1.0, 0.0], dtype=D))
    assert p.outside.tolist() == [False, True]
    assert p.row_weight.tolist() == [1.0, 0.0]


# -- recovery on simulated data --------------------------------------------------------------
def gaussian_model(d):
    def model(data):
        loc = pyro.param("loc", torch.zeros(d))
        tril = pyro.param("tril", torch.eye(d), constraint=constraints.lower_cholesky)
        with pyro.plate("rows", data.shape[0]):
            pyro_msm.observe("x", GaussianEnergy(loc, precision_tril=tril), obs=data)

    return model


def fitted_covariance():
    tril = pyro.param("tril").detach()
    return torch.linalg.inv(tril @ tril.T)


def test_denoising_recovers_the_noised_covariance():
    """Denoising score matching of N(mu, S) at noise sigma fits N(mu, S + sigma^2 I) exactly."""
    torch.manual_seed(0)
    cov = torch.tensor([[1.0, 0.5], [0.5, 0.8]])
    full = dist.MultivariateNormal(torch.zeros(2), cov).sample((3000,))
    x = pyro_msm.missingness.apply_mask(
        full, pyro_msm.missingness.mcar_mask(full.shape, 0.2, seed=1)
    )
    sigma = 0.5
    loss = MissingScoreMatching("iw", objective=DenoisingObjective(sigma))
    svi = SVI(gaussian_model(2), no_guide, Adam({"lr": 0.03}), loss)
    for _ in range(600):
        svi.step(x)
    target = torch.cov(full.T) + sigma**2 * torch.eye(2)
    torch.testing.assert_close(fitted_covariance(), target, atol=0.08, rtol=0)


def test_truncated_iw_recovers_a_truncated_gaussian_that_plain_score_matching_misses():
    torch.manual_seed(0)
    loc, cov = torch.tensor([0.3, 0.2]), torch.tensor([[1.0, 0.4], [0.4, 1.0]])
    orthant = constraints.independent(constraints.positive, 1)
    truth = TruncatedGaussianEnergy(loc, torch.linalg.inv(cov), orthant)
    full = truth.sample((5000,))  # truncated score matching is noisy: n=2000 gave 0.2 error
    assert (full > 0).all()
    x = pyro_msm.missingness.apply_mask(
        full, pyro_msm.missingness.mcar_mask(full.shape, 0.2, seed=2)
    )

    def model(data, truncated):
        mu = pyro.param("loc", torch.zeros(2))
        tril = pyro.param("tril", torch.eye(2), constraint=constraints.lower_cholesky)
        if truncated:
            fn = TruncatedGaussianEnergy(mu, None, orthant, precision_tril=tril)
        else:
            fn = GaussianEnergy(mu, precision_tril=tril)
        with pyro.plate("rows", data.shape[0]):
            pyro_msm.observe("x", fn, obs=data)

    errors = {}
    for truncated in (True, False):
        pyro.clear_param_store()
        objective = "truncated" if truncated else "exact"
        loss = MissingScoreMatching("iw", objective=objective, num_particles=20)
        svi = SVI(model, no_guide, Adam({"lr": 0.03}), loss)
        for _ in range(400):
            svi.step(x, truncated)
        errors[truncated] = float((pyro.param("loc").detach() - loc).norm())
    assert errors[True] < 0.12, errors
    assert errors[False] > 3 * errors[True], errors


def test_known_mnar_mechanism_removes_the_bias_of_ignoring_it():
    torch.manual_seed(0)
    cov = torch.tensor([[1.0, 0.6], [0.6, 1.0]])
    full = dist.MultivariateNormal(torch.zeros(2), cov).sample((1000,))
    slope, intercept = torch.tensor([0.0, 2.0]), torch.tensor([-30.0, -0.5])  # x_1 self-masks
    p_missing = torch.sigmoid(slope * full + intercept)
    mask = torch.rand(full.shape) >= p_missing
    x = pyro_msm.missingness.apply_mask(full, mask)
    mechanism = self_masking_logistic(slope, intercept)
    locs = {}
    for known in (True, False):
        pyro.clear_param_store()
        # the tilt is strong: the moment-matched proposal (fitted to the observed entries, which
        # MNAR biases) leaves an O(1/r) bias at r=10, so use many particles from a wide proposal
        loss = MissingScoreMatching(
            "iw", 40, proposal="wide", missingness=mechanism if known else None
        )
        svi = SVI(gaussian_model(2), no_guide, Adam({"lr": 0.05}), loss)
        for _ in range(300):
            svi.step(x)
        locs[known] = pyro.param("loc").detach()
    err_known = float(locs[True].norm())
    err_ignored = float(locs[False].norm())
    assert err_known < 0.08, locs
    assert err_ignored > 2 * err_known, locs


def test_hybrid_bias_shrinks_as_the_guide_improves():
    """With the model fixed, the hybrid estimate of the marginal loss approaches the exact value as
    its guide (the IW proposal) is trained; the plain variational plug-in keeps a larger bias."""
    torch.manual_seed(0)
    loc, prec = LOC.float(), PREC.float()
    full = dist.MultivariateNormal(loc, precision_matrix=prec).sample((200,))
    mask = pyro_msm.missingness.mcar_mask(full.shape, 0.4, seed=3)
    mask[:, 0] = True
    x = pyro_msm.missingness.apply_mask(full, mask)
    exact = float(marginal_score_matching_loss(full * mask, mask, loc, prec).sum())

    def model(data):
        with pyro.plate("rows", data.shape[0]):
            pyro_msm.observe("x", GaussianEnergy(loc, prec), obs=data)

    guide = AmortizedNormal(model, hidden_dims=(32,), init_scale=3.0)
    hybrid = MissingScoreMatching("hybrid", num_particles=5, guide_steps=0)

    def hybrid_error():
        values = [hybrid.loss(model, guide, x) for _ in range(20)]
        return abs(sum(values) / len(values) - exact)

    guide(x)
    before = hybrid_error()
    svi = SVI(model, guide, Adam({"lr": 0.01}), MissingScoreMatching("variational", guide_steps=0))
    for _ in range(400):
        svi.step(x)
    after = hybrid_error()
    assert after < 0.5 * before, (before, after)


def test_denoising_with_a_guide_sees_the_noisy_rows():
    x, _ = rows(n=30)
    x = x.float()

    def model(data):
        with pyro.plate("rows", data.shape[0]):
            pyro_msm.observe("x", GaussianEnergy(LOC.float(), PREC.float()), obs=data)

    seen = []
    guide = AmortizedNormal(model, hidden_dims=(8,))
    original = guide.loc_and_scale

    def spy(data, observed_mask):
        seen.append(data.clone())
        return original(data, observed_mask)

    guide.loc_and_scale = spy
    loss = MissingScoreMatching("variational", objective=DenoisingObjective(0.5))
    value = loss.loss(model, guide, x)
    assert torch.isfinite(torch.tensor(value))
    observed = ~torch.isnan(x) & (x != 0)
    assert not torch.allclose(seen[-1][observed], torch.nan_to_num(x)[observed])


def test_invalid_combinations_are_refused():
    with pytest.raises(ValueError, match="objective"):
        MissingScoreMatching("closed_form", objective="sliced")
    with pytest.raises(ValueError, match="importance"):
        MissingScoreMatching("variational", missingness=lambda z, m: z.sum(-1))
    with pytest.raises(ValueError, match="unknown objective"):
        MissingScoreMatching(objective="nope")
    with pytest.raises(ValueError, match="projection"):
        SlicedObjective(projection="nope")
    with pytest.raises(ValueError, match="noise_scale"):
        DenoisingObjective(0.0)

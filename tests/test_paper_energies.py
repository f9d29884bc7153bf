"""The paper's energy families: closed forms against autodiff, samplers against references.

Moment checks use independent chains / exact draws, so the tolerance is a multiple of the
estimated standard error of the sample mean (``Z`` standard errors; a false alarm has
probability below 1e-4 per comparison) plus the reference's own (quadrature) error.
"""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from scipy import integrate, stats

import pyro_msm
from pyro_msm.distributions.domains import HalfSpace, in_support
from pyro_msm.distributions.gaussian import GaussianEnergy
from pyro_msm.distributions.gibbs import colour_classes
from pyro_msm.distributions.squared_interaction import (
    SquaredInteractionEnergy,
    _quartic_conditional,
)
from pyro_msm.distributions.truncated import (
    TruncatedGaussianEnergy,
    random_halfspace,
    truncated_standard_normal,
)
from pyro_msm.infer.derivatives import score_and_diag_jacobian
from pyro_msm.infer.estimators import weighted_particles

D = torch.float64
Z = 4.0  # standard errors allowed in a moment comparison


def assert_mean_close(draws, reference, what, extra=0.0):
    """``draws``: (n, k) independent draws; ``reference``: (k,) exact expectations."""
    draws = torch.as_tensor(draws, dtype=D)
    reference = torch.as_tensor(reference, dtype=D)
    mean = draws.mean(0)
    se = draws.std(0) / math.sqrt(draws.shape[0])
    err = (mean - reference).abs()
    assert bool((err <= Z * se + extra).all()), (what, mean, reference, se)


def autodiff_score_and_diag(fn, x):
    """Per point: gradient and Hessian diagonal of ``log_prob`` by torch.autograd.functional."""
    grads, diags = [], []
    for point in x:
        grads.append(torch.autograd.functional.jacobian(lambda z: fn.log_prob(z), point))
        hess = torch.autograd.functional.hessian(lambda z: fn.log_prob(z), point)
        diags.append(torch.diagonal(hess))
    return torch.stack(grads), torch.stack(diags)


def grid_expectations(log_density, funcs, lo, hi, num=1201):
    """E[f] for a 2-d unnormalised density on [lo, hi]^2 by the trapezoidal rule."""
    t = np.linspace(lo, hi, num)
    x1, x2 = np.meshgrid(t, t, indexing="ij")
    w = np.exp(log_density(x1, x2))

    def integral(values):
        return np.trapezoid(np.trapezoid(values, t, axis=1), t)

    z = integral(w)
    return [integral(w * f(x1, x2)) / z for f in funcs]


# ================================================================================================
# SquaredInteractionEnergy
# ================================================================================================
THETA2 = torch.tensor([[-1.0, -0.8], [-0.8, -0.5]], dtype=D)


def test_squared_closed_forms_equal_autodiff():
    g = torch.Generator().manual_seed(0)
    valid = SquaredInteractionEnergy.random_theta(5, edge_prob=0.6, seed=1, dtype=D)
    # the formulas hold for any theta (validation only concerns integrability)
    general = torch.randn(5, 5, generator=g, dtype=D).triu()
    for theta, validate in ((valid, True), (general, False)):
        fn = SquaredInteractionEnergy(theta, validate=validate)
        x = 1.3 * torch.randn(6, 5, generator=g, dtype=D)
        a_ref, b_ref = autodiff_score_and_diag(fn, x)
        a, b = fn.score_and_diag_jacobian(x)
        torch.testing.assert_close(fn.score(x), a_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(a, a_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(b, b_ref, rtol=1e-10, atol=1e-10)
    # d = 1 by hand: q = exp(theta x^4), a = 4 theta x^3, b = 12 theta x^2
    fn = SquaredInteractionEnergy(torch.tensor([[-0.7]], dtype=D))
    x = torch.tensor([[1.5], [-0.4]], dtype=D)
    a, b = fn.score_and_diag_jacobian(x)
    torch.testing.assert_close(a, 4 * -0.7 * x**3)
    torch.testing.assert_close(b, 12 * -0.7 * x**2)


def test_squared_energy_is_the_sum_over_pairs_and_triangle_conventions_agree():
    theta = SquaredInteractionEnergy.random_theta(4, edge_prob=0.7, seed=2, dtype=D)
    x = torch.randn(3, 4, dtype=D)
    expected = torch.zeros(3, dtype=D)
    for i in range(4):
        for j in range(i, 4):
            expected += theta[i, j] * x[:, i] ** 2 * x[:, j] ** 2
    symmetric = SquaredInteractionEnergy(theta)
    upper = SquaredInteractionEnergy(theta.triu())
    torch.testing.assert_close(symmetric.log_prob(x), expected)
    torch.testing.assert_close(upper.log_prob(x), expected)
    torch.testing.assert_close(symmetric.coupling.diagonal(), 2 * theta.diagonal())


def test_squared_closed_forms_broadcast_over_a_batch_of_parameters():
    thetas = torch.stack(
        [SquaredInteractionEnergy.random_theta(3, edge_prob=1.0, seed=s, dtype=D) for s in range(4)]
    )
    batched = SquaredInteractionEnergy(thetas)
    assert batched.batch_shape == (4,)
    x = torch.randn(5, 4, 3, dtype=D)
    a, b = batched.score_and_diag_jacobian(x)
    for k in range(4):
        a_k, b_k = SquaredInteractionEnergy(thetas[k]).score_and_diag_jacobian(x[:, k])
        torch.testing.assert_close(a[:, k], a_k)
        torch.testing.assert_close(b[:, k], b_k)
        torch.testing.assert_close(batched.log_prob(x)[:, k], -batched.energy(x)[:, k])


@pytest.mark.parametrize(
    "theta, match",
    [
        ([[1.0, 0.0], [0.0, -1.0]], "diagonal"),
        ([[0.0, 0.0], [0.0, -1.0]], "diagonal"),
        ([[-1.0, 0.3], [0.3, -1.0]], "<= 0"),
        ([[-1.0, 0.3], [0.0, -1.0]], "<= 0"),
        ([[-1.0, -0.3], [-0.2, -1.0]], "symmetric or upper triangular"),
        ([[-1.0, math.nan], [math.nan, -1.0]], "non-finite"),
        ([-1.0, -1.0], "shape"),
        ([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], "shape"),
    ],
)
def test_squared_rejects_non_integrable_or_ambiguous_theta(theta, match):
    with pytest.raises(ValueError, match=match):
        SquaredInteractionEnergy(torch.tensor(theta))


def test_from_unconstrained_always_gives_a_valid_theta_and_trains():
    g = torch.Generator().manual_seed(0)
    raws = [
        50 * torch.randn(6, 6, generator=g),
        torch.full((6, 6), -1e4),
        torch.full((6, 6), 1e4),
        torch.randn(3, 6, 6, generator=g, dtype=D),  # batched
    ]
    for raw in raws:
        raw = raw.clone().requires_grad_(True)
        fn = SquaredInteractionEnergy.from_unconstrained(raw)  # validates: raises if invalid
        theta = fn.theta.detach()
        assert bool((theta.diagonal(dim1=-2, dim2=-1) < 0).all())
        assert bool((theta.triu(1) <= 0).all())
        x = torch.randn((4,) + raw.shape[:-2] + (6,), generator=g, dtype=raw.dtype)
        lp = fn.log_prob(x)
        assert bool(torch.isfinite(lp).all())
        (grad,) = torch.autograd.grad(lp.sum(), raw)
        assert bool(torch.isfinite(grad).all())
    raw = torch.randn(4, 4, generator=g, dtype=D)
    edges = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]).bool()
    theta = SquaredInteractionEnergy.from_unconstrained(raw, edges=edges).theta
    assert bool((theta.triu(1)[~edges.triu(1)] == 0).all())
    assert bool((theta[0, 1] < 0) & (theta[2, 3] < 0))
    # unconstrain inverts constrain on the upper triangle
    back = SquaredInteractionEnergy.unconstrain(SquaredInteractionEnergy.constrain(raw))
    torch.testing.assert_close(back.triu(), raw.triu())


def test_random_theta_for_the_paper_experiment():
    for d in (10, 25, 50):
        theta = SquaredInteractionEnergy.random_theta(d, seed=d)
        SquaredInteractionEnergy.check_theta(theta)
        assert theta.shape == (d, d) and bool((theta == theta.T).all())
        edges = int((theta.triu(1) != 0).sum())
        pairs = d * (d - 1) // 2
        # Erdos-Renyi(0.1): edge count within 5 binomial standard deviations of its mean
        assert abs(edges - 0.1 * pairs) <= 5 * math.sqrt(0.09 * pairs) + 1
    a = SquaredInteractionEnergy.random_theta(20, seed=3)
    torch.testing.assert_close(a, SquaredInteractionEnergy.random_theta(20, seed=3))
    assert not torch.equal(a, SquaredInteractionEnergy.random_theta(20, seed=4))
    fn = SquaredInteractionEnergy.random(30, seed=0, num_sweeps=30)
    x = fn.simulate(200, seed=5)
    assert x.shape == (200, 30) and bool(torch.isfinite(x).all())
    torch.testing.assert_close(x, fn.simulate(200, seed=5))


@pytest.mark.parametrize("gamma", [-6.0, -1.0, 0.0, 2.0])
def test_quartic_conditional_sampler_is_exact(gamma):
    """The Gibbs conditional exp(-t^4 + gamma t^2), including gamma > 0 (bimodal)."""
    g = torch.Generator().manual_seed(1)
    t, done = _quartic_conditional(torch.full((20_000,), gamma, dtype=D), 2, 50, g)
    assert bool(done.all())

    def moment(k):
        def f(s):
            return s**k * math.exp(-(s**4) + gamma * s * s)

        return (
            integrate.quad(f, -np.inf, np.inf)[0]
            / integrate.quad(lambda s: math.exp(-(s**4) + gamma * s * s), -np.inf, np.inf)[0]
        )

    assert_mean_close(torch.stack([t * t, t**4], -1), [moment(2), moment(4)], gamma)


def test_squared_sampler_d1_matches_gamma_function_moments():
    fn = SquaredInteractionEnergy(torch.tensor([[-1.0]], dtype=D))
    x = fn.simulate(10_000, seed=0)
    # E x^2 = Gamma(3/4) / Gamma(1/4), E x^4 = 1/4 under exp(-x^4)
    expected = [math.gamma(0.75) / math.gamma(0.25), 0.25]
    assert_mean_close(torch.cat([x**2, x**4], -1), expected, "d=1")


@pytest.mark.parametrize("theta12", [-0.8, -3.0])
def test_squared_sampler_d2_matches_grid_integral(theta12):
    theta = THETA2.clone()
    theta[0, 1] = theta[1, 0] = theta12
    fn = SquaredInteractionEnergy(theta)
    x = fn.simulate(8000, seed=1)
    t11, t22 = float(theta[0, 0]), float(theta[1, 1])

    def log_q(a, b):
        return t11 * a**4 + t22 * b**4 + theta12 * a * a * b * b

    funcs = [lambda a, b: a * a, lambda a, b: b * b, lambda a, b: a * a * b * b]
    reference = grid_expectations(log_q, funcs, -4.0, 4.0)
    stats_ = torch.stack([x[:, 0] ** 2, x[:, 1] ** 2, (x[:, 0] * x[:, 1]) ** 2], -1)
    assert_mean_close(stats_, reference, theta12, extra=1e-6)


def test_colour_classes_are_independent_sets_covering_all_nodes():
    theta = SquaredInteractionEnergy.random_theta(30, edge_prob=0.2, seed=0)
    adj = (theta != 0) & ~torch.eye(30, dtype=torch.bool)
    blocks = colour_classes(adj)
    assert sorted(torch.cat(blocks).tolist()) == list(range(30))
    for idx in blocks:
        assert not bool(adj[idx][:, idx].any())
    assert len(colour_classes(torch.ones(5, 5, dtype=torch.bool))) == 5
    assert len(colour_classes(torch.eye(5, dtype=torch.bool))) == 1


def test_squared_expand_inside_plate_and_through_the_loss():
    theta = SquaredInteractionEnergy.random_theta(3, edge_prob=1.0, seed=0)

    def model(n):
        with pyro.plate("rows", n):
            return pyro.sample("x", SquaredInteractionEnergy(theta, num_sweeps=20))

    trace = poutine.trace(model).get_trace(7)
    site = trace.nodes["x"]
    assert site["fn"].batch_shape == (7,) and isinstance(site["fn"], SquaredInteractionEnergy)
    assert site["value"].shape == (7, 3)
    assert site["fn"].log_prob(site["value"]).shape == (7,)
    # closed forms of the expanded model broadcast over particles (r, n, d)
    z = torch.randn(4, 7, 3)
    a, b = score_and_diag_jacobian(site["fn"], z)
    a0, b0 = SquaredInteractionEnergy(theta).score_and_diag_jacobian(z)
    torch.testing.assert_close(a, a0)
    torch.testing.assert_close(b, b0)

    data = SquaredInteractionEnergy(theta).simulate(64, seed=0)
    data[::3, 1] = math.nan
    raw0 = SquaredInteractionEnergy.unconstrain(theta)

    def train_model(x):
        raw = pyro.param("raw", raw0.clone())
        with pyro.plate("rows", x.shape[0]):
            pyro_msm.observe("x", SquaredInteractionEnergy.from_unconstrained(raw), obs=x)

    loss = pyro_msm.MissingScoreMatching("iw", num_particles=4)
    value = loss.differentiable_loss(train_model, pyro_msm.guides.no_guide, data)
    (grad,) = torch.autograd.grad(value, pyro.param("raw").unconstrained())
    assert torch.isfinite(value) and bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0


# ================================================================================================
# TruncatedGaussianEnergy
# ================================================================================================
LOC = torch.tensor([0.3, -0.5], dtype=D)
PREC = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=D)
ORTHANT = constraints.independent(constraints.positive, 1)


def box(lo, hi):
    return constraints.independent(
        constraints.interval(torch.tensor(lo, dtype=D), torch.tensor(hi, dtype=D)), 1
    )


def test_truncated_closed_forms_equal_autodiff_and_the_gaussian():
    g = torch.Generator().manual_seed(0)
    a_ = torch.randn(4, 4, generator=g, dtype=D)
    prec = a_ @ a_.T / 4 + torch.eye(4, dtype=D)
    loc = torch.randn(4, generator=g, dtype=D)
    supports = [
        ORTHANT,
        box([-1.0] * 4, [2.0] * 4),
        HalfSpace(torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=D), 0.3),
    ]
    for support in supports:
        fn = TruncatedGaussianEnergy(loc, prec, support)
        x = fn.simulate(5, seed=1)
        a_ref, b_ref = autodiff_score_and_diag(fn, x)
        a, b = fn.score_and_diag_jacobian(x)
        torch.testing.assert_close(a, a_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(b, b_ref, rtol=1e-10, atol=1e-10)
        a_g, b_g = GaussianEnergy(loc, prec).score_and_diag_jacobian(x)
        torch.testing.assert_close(a, a_g)
        torch.testing.assert_close(b, b_g)


def test_truncated_log_prob_is_finite_outside_and_masked_on_request():
    fn = TruncatedGaussianEnergy(LOC, PREC, ORTHANT)
    x = torch.tensor([[0.5, 0.2], [-0.5, 0.2], [0.1, -3.0]], dtype=D)
    inside = torch.tensor([True, False, False])
    torch.testing.assert_close(fn.log_prob(x), GaussianEnergy(LOC, PREC).log_prob(x))
    assert bool(torch.isfinite(fn.log_prob(x)).all())
    assert torch.equal(fn.in_domain(x), inside)
    assert torch.equal(in_support(fn.support, x), inside)
    masked = fn.masked_log_prob(x)
    assert masked[0] == fn.log_prob(x)[0] and bool(torch.isneginf(masked[1:]).all())
    # the IW estimator gives draws outside the support zero weight
    obs = torch.tensor([[0.5, 0.0]], dtype=D)
    mask = torch.tensor([[True, False]])
    draws = torch.tensor([[[0.0, 0.7]], [[0.0, -0.7]], [[0.0, 1.5]]], dtype=D)
    particles = weighted_particles(fn, obs, mask, draws, torch.zeros(3, 1, dtype=D))
    assert particles.weights[1, 0] == 0 and abs(float(particles.weights.sum()) - 1) < 1e-12


def test_truncated_support_validation():
    assert TruncatedGaussianEnergy(LOC, PREC, constraints.positive).support.event_dim == 1
    with pytest.raises(TypeError, match="unsupported support"):
        TruncatedGaussianEnergy(LOC, PREC, constraints.simplex)
    with pytest.raises(ValueError, match="HalfSpace normal"):
        TruncatedGaussianEnergy(LOC, PREC, HalfSpace(torch.ones(3, dtype=D), 0.0))
    with pytest.raises(ValueError, match="empty domain"):
        TruncatedGaussianEnergy(LOC, PREC, box([1.0, 0.0], [0.0, 1.0]))
    with pytest.raises(ValueError, match="HalfSpace support"):
        TruncatedGaussianEnergy(LOC, PREC, ORTHANT, sampler="conditioning")
    with pytest.raises(ValueError, match="unknown sampler"):
        TruncatedGaussianEnergy(LOC, PREC, ORTHANT, sampler="slice")


def truncnorm_moments(loc, sd, lo, hi):
    a, b = (np.asarray(lo) - loc) / sd, (np.asarray(hi) - loc) / sd
    dist = stats.truncnorm(a, b, loc=loc, scale=sd)
    return dist.mean(), dist.var()


@pytest.mark.parametrize("sampler", ["auto", "rejection", "gibbs"])
@pytest.mark.parametrize("domain", ["orthant", "box"])
def test_truncated_diagonal_precision_matches_scipy_truncnorm(sampler, domain):
    """Per-coordinate truncation with a diagonal precision: a product of truncated normals."""
    loc = np.array([0.3, -0.5])
    prec = np.array([2.0, 0.5])
    lo, hi = ([0.0, 0.0], [np.inf, np.inf]) if domain == "orthant" else ([-1.0, 0.5], [0.5, 2.0])
    support = ORTHANT if domain == "orthant" else box(lo, hi)
    fn = TruncatedGaussianEnergy(
        torch.tensor(loc), torch.diag(torch.tensor(prec)), support, sampler=sampler
    )
    x = fn.simulate(10_000, seed=2)
    assert x.dtype == D and bool(fn.in_domain(x).all())
    mean, var = truncnorm_moments(loc, 1 / np.sqrt(prec), lo, hi)
    assert_mean_close(x, mean, ("mean", sampler, domain))
    assert_mean_close((x - torch.tensor(mean)) ** 2, var, ("var", sampler, domain))


@pytest.mark.parametrize("sampler", ["auto", "gibbs"])
def test_truncated_correlated_orthant_matches_grid_integral(sampler):
    fn = TruncatedGaussianEnergy(LOC, PREC, ORTHANT, sampler=sampler)
    x = fn.simulate(10_000, seed=3)
    assert bool(fn.in_domain(x).all())
    p, m = PREC.numpy(), LOC.numpy()

    def log_q(a, b):
        da, db = a - m[0], b - m[1]
        return -0.5 * (p[0, 0] * da * da + 2 * p[0, 1] * da * db + p[1, 1] * db * db)

    reference = grid_expectations(log_q, [lambda a, b: a, lambda a, b: b], 0.0, 9.0, num=1801)
    assert_mean_close(x, reference, sampler, extra=1e-5)


@pytest.mark.parametrize("sampler", ["auto", "rejection", "gibbs"])
@pytest.mark.parametrize("shift", [0.0, 1.5])
def test_truncated_halfspace_mean_matches_closed_form(sampler, shift):
    """For w'x <= c: E x = mu - Sigma w / s * phi(alpha) / Phi(alpha), s^2 = w' Sigma w,
    alpha = (c - w' mu) / s (the shifted hyperplane keeps about 10% of the mass)."""
    base = TruncatedGaussianEnergy.with_random_halfspace(LOC, PREC, seed=4)
    w = base.support.normal
    cov = torch.linalg.inv(PREC)
    s = float(torch.sqrt(w @ cov @ w))
    point = LOC - shift * s * w  # moves the boundary 'shift' sds towards w' x < w' mu
    support = random_halfspace(point, seed=4)
    fn = TruncatedGaussianEnergy(LOC, PREC, support, sampler=sampler)
    x = fn.simulate(10_000, seed=5)
    assert bool(fn.in_domain(x).all())
    alpha = float((support.offset - w @ LOC) / s)
    expected = LOC - cov @ w / s * stats.norm.pdf(alpha) / stats.norm.cdf(alpha)
    assert_mean_close(x, expected, (sampler, shift))


def test_low_acceptance_falls_back_to_gibbs_and_rejection_refuses():
    loc, prec = torch.tensor([-3.0, -3.0], dtype=D), torch.eye(2, dtype=D)
    strict = TruncatedGaussianEnergy(
        loc, prec, ORTHANT, sampler="rejection", max_rejection_rounds=3
    )
    with pytest.raises(RuntimeError, match="unfilled"):
        strict.simulate(1000, seed=0)
    fn = TruncatedGaussianEnergy(loc, prec, ORTHANT)  # acceptance 1.8e-6: auto uses Gibbs
    x = fn.simulate(10_000, seed=6)
    assert bool(fn.in_domain(x).all())
    mean, _ = truncnorm_moments(np.array([-3.0, -3.0]), np.ones(2), [0.0, 0.0], [np.inf] * 2)
    assert_mean_close(x, mean, "fallback")


def test_float32_draws_near_a_strict_boundary_stay_inside():
    fn = TruncatedGaussianEnergy(torch.tensor([-30.0, 0.0]), torch.eye(2), ORTHANT)
    x = fn.simulate(5000, seed=7)
    assert x.dtype == torch.float32 and bool(fn.in_domain(x).all())
    mean, _ = truncnorm_moments(np.array([-30.0, 0.0]), np.ones(2), [0.0, 0.0], [np.inf] * 2)
    assert_mean_close(x, mean, "float32")
    # draws within float32 rounding of a strict bound (x > 1) or of a hyperplane
    above_one = constraints.independent(constraints.greater_than(1.0), 1)
    fn = TruncatedGaussianEnergy(torch.tensor([-1e5]), torch.eye(1), above_one)
    x = fn.simulate(5000, seed=8)
    assert bool((x > 1).all()) and bool(fn.in_domain(x).all())
    loc = torch.tensor([1.0, 2.0, 3.0])
    half = TruncatedGaussianEnergy.with_random_halfspace(loc, 1e10 * torch.eye(3))
    x = half.simulate(5000, seed=8)
    assert bool(half.in_domain(x).all())


def test_truncated_standard_normal_in_extreme_tails():
    g = torch.Generator().manual_seed(9)
    n = 20_000
    for lo, hi in [(-1.0, 1.0), (5.0, math.inf), (40.0, 41.0), (-41.0, -40.0), (-2.0, -1.9)]:
        t = truncated_standard_normal(torch.full((n,), lo), torch.full((n,), hi), g)
        assert bool(((t >= lo) & (t <= hi)).all()), (lo, hi)
        assert_mean_close(t.unsqueeze(-1), [stats.truncnorm(lo, hi).mean()], (lo, hi))
    # beyond float64's normal CDF: the exponential tail approximation, inside the bounds
    t = truncated_standard_normal(torch.full((n,), -math.inf), torch.full((n,), -50.0), g)
    assert bool((t <= -50.0).all())
    assert abs(float(t.mean()) - stats.truncnorm(-np.inf, -50.0).mean()) < 1e-3


def test_random_halfspace_passes_through_the_point_and_is_seeded():
    point = torch.tensor([0.2, -1.0, 3.0], dtype=D)
    h = random_halfspace(point, seed=11)
    assert abs(float(h.normal.norm()) - 1) < 1e-12
    assert abs(float(h.normal @ point - h.offset)) < 1e-12
    torch.testing.assert_close(h.normal, random_halfspace(point, seed=11).normal)
    assert not torch.equal(h.normal, random_halfspace(point, seed=12).normal)
    fn = TruncatedGaussianEnergy.with_random_halfspace(point, torch.eye(3, dtype=D), seed=11)
    torch.testing.assert_close(fn.support.normal, h.normal)


def test_truncated_expand_inside_plate_with_per_row_parameters():
    locs = torch.tensor([[0.0, 0.0], [-2.0, 1.0], [1.0, -3.0]], dtype=D)

    def model():
        with pyro.plate("rows", 3):
            with pyro.plate("reps", 4, dim=-2):
                return pyro.sample("x", TruncatedGaussianEnergy(locs, PREC, ORTHANT))

    trace = poutine.trace(model).get_trace()
    site = trace.nodes["x"]
    assert isinstance(site["fn"], TruncatedGaussianEnergy)
    assert site["fn"].batch_shape == (4, 3) and site["value"].shape == (4, 3, 2)
    assert site["fn"].support is ORTHANT
    assert bool(site["fn"].in_domain(site["value"]).all())
    assert site["fn"].log_prob(site["value"]).shape == (4, 3)
    expanded = TruncatedGaussianEnergy(locs, PREC, ORTHANT).expand((5, 3))
    x = expanded.simulate(1000, seed=10)
    assert x.shape == (1000, 5, 3, 2) and bool(expanded.in_domain(x).all())
    # each row's draws follow that row's parameters: row 1 against an unbatched model
    row = x[:, :, 1].reshape(-1, 2)
    ref = TruncatedGaussianEnergy(locs[1], PREC, ORTHANT).simulate(5000, seed=11)
    se = torch.sqrt(row.var(0) / row.shape[0] + ref.var(0) / ref.shape[0])
    assert bool(((row.mean(0) - ref.mean(0)).abs() <= Z * se).all()), (row.mean(0), ref.mean(0))


def test_the_old_module_paths_still_import_the_same_objects():
    """``pyro_msm.distributions.paper`` (the energies' old home) and the package re-export the
    objects of the per-model modules, not copies."""
    from pyro_msm.distributions import gibbs, paper, squared_interaction, truncated

    assert paper.SquaredInteractionEnergy is squared_interaction.SquaredInteractionEnergy
    assert paper.TruncatedGaussianEnergy is truncated.TruncatedGaussianEnergy
    assert paper.random_halfspace is truncated.random_halfspace
    assert paper.truncated_standard_normal is truncated.truncated_standard_normal
    assert paper.colour_classes is gibbs.colour_classes
    assert pyro_msm.distributions.SquaredInteractionEnergy is SquaredInteractionEnergy
    assert pyro_msm.distributions.TruncatedGaussianEnergy is TruncatedGaussianEnergy
    assert SquaredInteractionEnergy.__module__ == "pyro_msm.distributions.squared_interaction"
    assert TruncatedGaussianEnergy.__module__ == "pyro_msm.distributions.truncated"

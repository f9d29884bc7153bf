"""The mathematics of METHOD.md, checked against closed forms and finite differences."""

import math

import pyro.distributions as dist
import pytest
import torch

from pyro_msm.distributions import EnergyMLP, FunctionEnergy, GaussianEnergy, MLPEnergy
from pyro_msm.infer.derivatives import score, score_and_diag_jacobian
from pyro_msm.infer.estimators import (
    complete_case_particles,
    importance_particles,
    mean_impute_particles,
    score_function_weights,
    variational_particles,
    zeroed_particles,
)
from pyro_msm.infer.gaussian import (
    conditional_gaussian,
    conditional_gaussian_noise,
    gaussian_fisher_divergence,
    marginal_score_matching_loss,
    nearest_positive_definite,
    pairwise_moments,
    restrict,
    sample_conditional_gaussian,
)
from pyro_msm.infer.objectives import exact_objective
from pyro_msm.infer.proposals import (
    DistributionProposal,
    GaussianConditionalProposal,
    MomentMatchedProposal,
    WideGaussianProposal,
)

D = torch.float64


def random_problem(d=4, n=7, seed=0, rate=0.4):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=D)
    precision = a @ a.T / d + torch.eye(d, dtype=D)
    loc = torch.randn(d, generator=g, dtype=D)
    x = torch.randn(n, d, generator=g, dtype=D) + loc
    mask = torch.rand(n, d, generator=g) > rate
    mask[0] = True  # one complete row
    mask[1, 1:] = False  # one row with a single observed coordinate
    return loc, precision, x * mask, mask


def reference_marginal_loss(x, mask, loc, precision):
    """Per-row loop with explicit block inversion (test reference only)."""
    cov = torch.linalg.inv(precision)
    out = []
    for xi, mi in zip(x, mask, strict=True):
        o = mi.nonzero().squeeze(-1)
        q = torch.linalg.inv(cov[o][:, o])
        s = -q @ (xi[o] - loc[o])
        out.append(-2 * torch.trace(q) + s @ s)
    return torch.stack(out)


# -- Gaussian closed forms ------------------------------------------------------------------------
def test_marginal_loss_matches_block_inversion():
    loc, precision, x, mask = random_problem()
    got = marginal_score_matching_loss(x, mask, loc, precision)
    torch.testing.assert_close(got, reference_marginal_loss(x, mask, loc, precision))


def test_marginal_loss_without_missing_is_classical():
    loc, precision, x, _ = random_problem()
    full = torch.ones_like(x, dtype=torch.bool)
    classical = -2 * torch.trace(precision) + ((x - loc) @ precision).pow(2).sum(-1)
    torch.testing.assert_close(marginal_score_matching_loss(x, full, loc, precision), classical)


def test_marginal_loss_gradient_matches_finite_differences():
    loc, precision, x, mask = random_problem()
    tril = torch.linalg.cholesky(precision).requires_grad_(True)
    loc = loc.clone().requires_grad_(True)

    def f(loc_, tril_):
        p = tril_.tril() @ tril_.tril().T
        return marginal_score_matching_loss(x, mask, loc_, p).sum()

    assert torch.autograd.gradcheck(f, (loc, tril))


def test_restrict_is_block_plus_identity():
    _, precision, _, _ = random_problem()
    keep = torch.tensor([True, False, True, False])
    r = restrict(precision, keep)
    o = keep.nonzero().squeeze(-1)
    u = (~keep).nonzero().squeeze(-1)
    torch.testing.assert_close(r[o][:, o], precision[o][:, o])
    torch.testing.assert_close(r[u][:, u], torch.eye(len(u), dtype=D))
    assert r[o][:, u].abs().max() == 0


def test_conditional_gaussian_matches_textbook_formula():
    loc, precision, x, mask = random_problem()
    cov = torch.linalg.inv(precision)
    mean, chol = conditional_gaussian(x, mask, loc, precision)
    for i in range(x.shape[0]):
        o = mask[i].nonzero().squeeze(-1)
        u = (~mask[i]).nonzero().squeeze(-1)
        if len(u) == 0:
            torch.testing.assert_close(mean[i], x[i])
            continue
        gain = cov[u][:, o] @ torch.linalg.inv(cov[o][:, o])
        torch.testing.assert_close(mean[i, u], loc[u] + gain @ (x[i, o] - loc[o]))
        cond_cov = cov[u][:, u] - gain @ cov[o][:, u]
        cond_prec = chol[i] @ chol[i].T
        torch.testing.assert_close(torch.linalg.inv(cond_prec[u][:, u]), cond_cov)


def test_conditional_samples_and_log_density():
    loc, precision, x, mask = random_problem()
    mean, chol = conditional_gaussian(x, mask, loc, precision)
    draws, log_q = sample_conditional_gaussian(mean, chol, mask, 4)
    cov = torch.linalg.inv(precision)
    for i in range(x.shape[0]):
        o = mask[i].nonzero().squeeze(-1)
        u = (~mask[i]).nonzero().squeeze(-1)
        torch.testing.assert_close(draws[:, i, o], x[i, o].expand(4, -1))
        if len(u) == 0:
            torch.testing.assert_close(log_q[:, i], torch.zeros(4, dtype=D))
            continue
        gain = cov[u][:, o] @ torch.linalg.inv(cov[o][:, o])
        cond = dist.MultivariateNormal(mean[i, u], cov[u][:, u] - gain @ cov[o][:, u])
        torch.testing.assert_close(log_q[:, i], cond.log_prob(draws[:, i, u]))
    # the draws are a function of conditional_gaussian_noise's random numbers: the same numbers
    # give the same draws, and the rows of a subset drawn with the whole table's numbers are the
    # whole draw's rows (what replicated data parallelism relies on)
    torch.manual_seed(3)
    noise = conditional_gaussian_noise(mask, 4, D)
    assert bool(((noise == 0) | ~mask).all())  # nothing on observed coordinates
    torch.manual_seed(3)
    again, again_lq = sample_conditional_gaussian(mean, chol, mask, 4)
    given, given_lq = sample_conditional_gaussian(mean, chol, mask, 4, noise=noise)
    torch.testing.assert_close(given, again, rtol=0, atol=0)
    torch.testing.assert_close(given_lq, again_lq, rtol=0, atol=0)
    rows = torch.tensor([1, 3])
    part, part_lq = sample_conditional_gaussian(
        mean[rows], chol[rows], mask[rows], 4, noise=noise[:, rows]
    )
    torch.testing.assert_close(part, given[:, rows])
    torch.testing.assert_close(part_lq, given_lq[:, rows])
    # moments of many draws
    big, _ = sample_conditional_gaussian(mean, chol, mask, 200_000)
    torch.testing.assert_close(big.mean(0), mean, atol=0.02, rtol=0)


def test_pairwise_moments_on_complete_data_are_sample_moments():
    _, _, x, _ = random_problem(n=50)
    full = torch.ones_like(x, dtype=torch.bool)
    m, c = pairwise_moments(x, full)
    torch.testing.assert_close(m, x.mean(0))
    torch.testing.assert_close(c, torch.cov(x.T))


def test_pairwise_moments_are_positive_definite_under_heavy_missingness():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 6, generator=g, dtype=D)
    mask = torch.rand(12, 6, generator=g) > 0.7
    _, c = pairwise_moments(x, mask)
    assert torch.linalg.eigvalsh(c).min() > 0
    bad = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=D)  # indefinite
    assert torch.linalg.eigvalsh(nearest_positive_definite(bad)).min() > 0


def test_fisher_divergence_closed_form_matches_monte_carlo():
    loc, precision, _, _ = random_problem()
    loc_hat = loc + 0.3
    p_hat = precision + 0.2 * torch.eye(4, dtype=D)
    draws = dist.MultivariateNormal(loc, precision_matrix=precision).sample((400_000,))
    s_hat = -(draws - loc_hat) @ p_hat
    s = -(draws - loc) @ precision
    mc = 0.5 * (s_hat - s).pow(2).sum(-1).mean()
    closed = gaussian_fisher_divergence(loc_hat, p_hat, loc, precision)
    assert abs(float(mc - closed)) < 0.01 * float(closed)


# -- derivatives ----------------------------------------------------------------------------------
def test_autodiff_matches_gaussian_closed_forms():
    loc, precision, x, _ = random_problem()
    z = x.expand(3, -1, -1)
    closed = GaussianEnergy(loc, precision)
    generic = FunctionEnergy(lambda v: 0.5 * ((v - loc) @ precision * (v - loc)).sum(-1), 4)
    mvn = dist.MultivariateNormal(loc, precision_matrix=precision)
    a0, b0 = score_and_diag_jacobian(closed, z)
    for fn in (generic, mvn, mvn.expand((7,))):
        a, b = score_and_diag_jacobian(fn, z)
        torch.testing.assert_close(a, a0)
        torch.testing.assert_close(b, b0)
        torch.testing.assert_close(score(fn, z), a0)


def test_neural_diag_jacobian_matches_full_hessian():
    torch.manual_seed(1)
    net = EnergyMLP(3, (16, 16)).double()
    fn = MLPEnergy(net)
    z = torch.randn(2, 5, 3, dtype=D)
    a, b = score_and_diag_jacobian(fn, z)
    for k in range(2):
        for i in range(5):
            h = torch.autograd.functional.hessian(lambda v: fn.log_prob(v), z[k, i])
            torch.testing.assert_close(b[k, i], torch.diagonal(h))
            g = torch.autograd.functional.jacobian(lambda v: fn.log_prob(v), z[k, i])
            torch.testing.assert_close(a[k, i], g)


def test_derivatives_keep_the_graph_to_parameters():
    torch.manual_seed(2)
    net = EnergyMLP(3, (8,)).double()
    z = torch.randn(4, 3, dtype=D)
    a, b = score_and_diag_jacobian(MLPEnergy(net), z)
    (b.sum() + a.pow(2).sum()).backward()
    *weights, out_bias = list(net.net.parameters())
    # the output bias shifts the energy by a constant: scores do not depend on it
    assert out_bias.grad is None
    for p in weights:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


# -- distributions --------------------------------------------------------------------------------
def test_gaussian_energy_parameterisations_agree():
    loc, precision, x, _ = random_problem()
    tril = torch.linalg.cholesky(precision)
    e1 = GaussianEnergy(loc, precision)
    e2 = GaussianEnergy(loc, precision_tril=tril)
    torch.testing.assert_close(e1.log_prob(x), e2.log_prob(x))
    mvn = dist.MultivariateNormal(loc, precision_matrix=precision)
    diff = e1.log_prob(x) - mvn.log_prob(x)
    torch.testing.assert_close(diff, diff[0].expand_as(diff))  # equal up to the normaliser
    with pytest.raises(ValueError, match="exactly one"):
        GaussianEnergy(loc, precision, precision_tril=tril)


def test_gaussian_energy_samples_are_exact():
    loc, precision, _, _ = random_problem()
    draws = GaussianEnergy(loc, precision).sample((200_000,))
    torch.testing.assert_close(draws.mean(0), loc, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), torch.linalg.inv(precision), atol=0.02, rtol=0)


def test_mala_samples_an_energy_without_exact_sampler():
    loc = torch.tensor([1.0, -2.0])
    precision = torch.tensor([[2.0, 0.8], [0.8, 1.0]])
    fn = FunctionEnergy(
        lambda v: 0.5 * ((v - loc) @ precision * (v - loc)).sum(-1), 2, num_mcmc_steps=400
    )
    draws = fn.sample((4000,))
    assert draws.shape == (4000, 2)
    # 4000 independent chains: standard errors about 0.02 for the mean, 0.03 for the covariance
    torch.testing.assert_close(draws.mean(0), loc, atol=0.1, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), torch.linalg.inv(precision), atol=0.12, rtol=0)


def test_function_energy_rejects_bad_output_shape():
    fn = FunctionEnergy(lambda v: v, 3)
    with pytest.raises(ValueError, match="expected"):
        fn.log_prob(torch.zeros(2, 3))


# -- estimators and the objective ----------------------------------------------------------------
def _exact_and_grad(x, mask, loc, tril):
    t = tril.clone().requires_grad_(True)
    loss = marginal_score_matching_loss(x, mask, loc, t.tril() @ t.tril().T)
    return loss.detach(), torch.autograd.grad(loss.sum(), t)[0]


def _estimate_and_grad(make_particles, loc, tril):
    t = tril.clone().requires_grad_(True)
    fn = GaussianEnergy(loc, precision_tril=t)
    loss = exact_objective(fn, make_particles(fn))
    return loss.detach(), torch.autograd.grad(loss.sum(), t)[0]


@pytest.mark.parametrize("proposal", ["true", "moment", "wide"])
def test_iw_converges_to_the_exact_marginal_loss(proposal):
    # a batch large enough for the moment-matched proposal to see the data's moments
    loc, precision, x, mask = random_problem(n=200, rate=0.3)
    tril = torch.linalg.cholesky(precision)
    exact, g_exact = _exact_and_grad(x, mask, loc, tril)
    prop = {
        "true": GaussianConditionalProposal(loc, torch.linalg.inv(precision), defensive=0.0),
        "moment": MomentMatchedProposal(),
        "wide": WideGaussianProposal(),
    }[proposal]
    errors, grad_errors = [], []
    for r in (10, 20_000):
        torch.manual_seed(5)
        est, g = _estimate_and_grad(
            lambda fn, r=r: importance_particles(fn, x, mask, prop, r), loc, tril
        )
        errors.append(float((est - exact).abs().max()))
        grad_errors.append(float((g - g_exact).abs().max()))
    scale = float(exact.abs().mean())
    assert errors[1] < 0.05 * scale, errors
    assert errors[1] < errors[0]
    assert grad_errors[1] < 0.05 * float(g_exact.abs().max()), grad_errors
    # the complete row and the single-observed row are handled exactly at any r
    torch.testing.assert_close(est[0], exact[0])


def test_variational_surrogate_gradient_matches_the_exact_gradient():
    """With draws from the true conditional the surrogate's value is the plug-in marginal loss and
    its gradient is the exact loss's gradient (METHOD.md, covariance identity)."""
    loc, precision, x, mask = random_problem()
    tril = torch.linalg.cholesky(precision)
    exact, g_exact = _exact_and_grad(x, mask, loc, tril)
    mean, chol = conditional_gaussian(x, mask, loc, precision)
    torch.manual_seed(6)
    draws, _ = sample_conditional_gaussian(mean, chol, mask, 400_000)
    est, g = _estimate_and_grad(lambda fn: variational_particles(fn, x, mask, draws), loc, tril)
    assert float((est - exact).abs().max()) < 0.01 * float(exact.abs().max())
    error = float((g - g_exact).abs().max())
    assert error < 0.02 * float(g_exact.abs().max())
    # without the covariance term the gradient is wrong: the check can fail
    t = tril.clone().requires_grad_(True)
    fn = GaussianEnergy(loc, precision_tril=t)
    naive = variational_particles(fn, x, mask, draws)
    naive.weights = naive.weights.detach()
    g_naive = torch.autograd.grad(exact_objective(fn, naive).sum(), t)[0]
    assert float((g_naive - g_exact).abs().max()) > 5 * error


def test_score_function_weights_value_and_gradient():
    theta = torch.tensor(0.7, dtype=D, requires_grad=True)
    z = torch.randn(50, 3, dtype=D)
    log_q = -0.5 * theta * z * z  # (r=50, n=3)
    h = (z**3).detach()
    w = score_function_weights(log_q)
    torch.testing.assert_close(w.detach(), torch.full_like(w, 1 / 50))
    (g,) = torch.autograd.grad((w * h).sum(), theta)
    dl = -0.5 * z * z  # d log_q / d theta
    cov = ((dl - dl.mean(0)) * (h - h.mean(0))).mean(0).sum()
    torch.testing.assert_close(g, cov)


def test_baseline_particles():
    loc, precision, x, mask = random_problem()
    z = zeroed_particles(x, mask)
    torch.testing.assert_close(z.z[0], x)
    assert torch.equal(z.scored, mask)
    mi = mean_impute_particles(x, mask)
    col = (x * mask).sum(0) / mask.sum(0)
    torch.testing.assert_close(mi.z[0][~mask], col.expand_as(x)[~mask])
    assert mi.scored.all()
    cc = complete_case_particles(x, mask)
    assert torch.equal(cc.row_weight.bool(), mask.all(-1))
    # zeroed equals classical score matching restricted to observed outputs
    fn = GaussianEnergy(loc, precision)
    a = -(x - loc) @ precision
    expected = ((2 * -torch.diagonal(precision) + a * a) * mask).sum(-1)
    torch.testing.assert_close(exact_objective(fn, z), expected)


def test_distribution_proposals_score_the_missing_block():
    loc, precision, x, mask = random_problem()
    cov = torch.linalg.inv(precision)
    mvn = dist.MultivariateNormal(loc, cov)
    draws, log_q = DistributionProposal(mvn).sample(x, mask, 3)
    for i in range(x.shape[0]):
        u = (~mask[i]).nonzero().squeeze(-1)
        if len(u):
            marg = dist.MultivariateNormal(loc[u], cov[u][:, u])
            torch.testing.assert_close(log_q[:, i], marg.log_prob(draws[:, i, u]))
    wide = WideGaussianProposal(scale=4.0)
    draws, log_q = wide.sample(x, mask, 3)
    expected = (dist.Normal(0.0, 4.0).log_prob(draws) * ~mask).sum(-1)
    torch.testing.assert_close(log_q, expected)
    with pytest.raises(TypeError, match="factorise"):
        DistributionProposal(
            dist.LowRankMultivariateNormal(loc, torch.ones(4, 1, dtype=D), torch.ones(4, dtype=D))
        )


def test_float64_and_effective_sample_size():
    loc, precision, x, mask = random_problem()
    fn = GaussianEnergy(loc, precision)
    p = importance_particles(fn, x, mask, MomentMatchedProposal(), 10)
    assert p.z.dtype == D and p.weights.dtype == D
    ess = p.effective_sample_size
    assert ((ess >= 1 - 1e-9) & (ess <= 10 + 1e-9)).all()
    torch.testing.assert_close(ess[0], torch.tensor(10.0, dtype=D))  # complete row
    assert math.isfinite(float(exact_objective(fn, p).sum()))


def test_missingness_patterns_reconstruct_the_mask():
    from pyro_msm.infer.gaussian import missingness_patterns

    mask = torch.tensor([[1, 0, 1], [1, 1, 1], [1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    patterns, inverse = missingness_patterns(mask)
    assert patterns.shape == (3, 3)
    assert torch.equal(patterns[inverse], mask)

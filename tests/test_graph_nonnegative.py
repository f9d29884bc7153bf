"""The truncated Gaussian graphical model on the non-negative orthant
(:mod:`pyro_msm.graphical.nonnegative`): the statistics form of the generalised score-matching
loss against a direct evaluation, its gradient against finite differences, the exact solver
against the closed-form minimiser and its optimality conditions, recovery of a known truth, the
Gibbs E-step against truncated-normal closed forms, and EM's fixed point on complete data."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pyro.distributions import constraints

import pyro_msm.graphical.nonnegative as nn
from pyro_msm.distributions import TruncatedGaussianEnergy
from pyro_msm.graphical import PenaltyPath, precision_from_graph
from pyro_msm.graphical.generators import chain_graph
from pyro_msm.missingness import mcar_mask

ROOT = Path(__file__).resolve().parents[1]
ORTHANT = constraints.independent(constraints.nonnegative, 1)


def _random_model(d, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.3
    k = a @ a.T + torch.eye(d, dtype=torch.float64)
    eta = torch.randn(d, generator=g, dtype=torch.float64) * 0.5
    return k, eta


def _rows(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).abs() * 1.3


def _direct_loss(x, caps, k, eta):
    """Mean over rows of sum_j h_j a_j^2 + 2 h_j d_j a_j + 2 h_j' a_j, a = grad log q by
    autograd, d_j a_j = -K_jj (METHOD.md's per-row scale)."""
    z = x.clone().requires_grad_(True)
    log_q = (-0.5 * (z @ k * z).sum(-1) + z @ eta).sum()
    (a,) = torch.autograd.grad(log_q, z)
    h = torch.minimum(x, caps)
    hp = (x < caps).to(x.dtype)
    per_row = (h * a**2 + 2 * h * (-k.diagonal()) + 2 * hp * a).sum(-1)
    return per_row.mean()


def _truncated_data(d, n, seed):
    adjacency = chain_graph(d)
    precision = precision_from_graph(adjacency, condition_number=5.0, seed=seed)
    truth = TruncatedGaussianEnergy(torch.zeros(d, dtype=torch.float64), precision, ORTHANT)
    return adjacency, precision, truth.simulate(n, seed=seed)


@pytest.mark.parametrize("centred", [False, True])
def test_statistics_form_equals_direct_generalised_score_matching_loss(centred):
    d = 4
    x = _rows(60, d, 0)
    caps = nn.nonnegative_caps(x, cap=0.8)
    assert bool(((x > caps) & (x < caps)).sum() == 0) and bool((x > caps).any())
    k, eta = _random_model(d, 1)
    stats = nn.nonnegative_statistics(x, caps, centred=centred)
    eta_used = torch.zeros(d, dtype=torch.float64) if centred else eta
    direct = _direct_loss(x, caps, k, eta_used)
    torch.testing.assert_close(nn.nonnegative_objective(k, stats, 0.0, eta), direct)
    penalised = nn.nonnegative_objective(k, stats, 0.3, eta)
    off = k.abs().sum() - k.diagonal().abs().sum()
    torch.testing.assert_close(penalised, direct + 0.3 * off)
    # the statistics average over every leading dimension (draws x rows)
    stacked = nn.nonnegative_statistics(torch.stack([x, x]), caps, centred=centred)
    torch.testing.assert_close(stacked.gamma, stats.gamma)


def test_gradient_matches_finite_differences():
    d = 4
    x = _rows(50, d, 2)
    stats = nn.nonnegative_statistics(x, nn.nonnegative_caps(x))
    k, eta = _random_model(d, 3)
    theta = nn._theta(k, eta, stats)
    grad = nn._gradient(theta, stats)
    eps = 1e-6
    for i, j in [(0, 0), (0, 2), (1, 3), (3, 3)]:
        e = torch.zeros(d, d, dtype=torch.float64)
        e[i, j] = e[j, i] = 1.0
        fd = (
            nn.nonnegative_objective(k + eps * e, stats, 0.0, eta)
            - nn.nonnegative_objective(k - eps * e, stats, 0.0, eta)
        ) / (2 * eps)
        expected = grad[i, j] * (1 if i == j else 2)  # <G_sym, E>
        assert abs(float(fd - expected)) < 1e-6 * max(1.0, abs(float(expected)))
    for j in range(d):  # eta enters theta's last row as -eta
        e = torch.zeros(d, dtype=torch.float64)
        e[j] = 1.0
        fd = (
            nn.nonnegative_objective(k, stats, 0.0, eta + eps * e)
            - nn.nonnegative_objective(k, stats, 0.0, eta - eps * e)
        ) / (2 * eps)
        assert abs(float(fd + grad[d, j])) < 1e-6 * max(1.0, abs(float(grad[d, j])))


@pytest.mark.parametrize("centred", [False, True])
def test_unpenalised_solution_is_the_closed_form_minimiser(centred):
    d = 4
    x = _rows(200, d, 4)
    sol = nn.nonnegative_score_matching(x, penalty=0.0, tol=1e-11, centred=centred)
    assert sol.converged and sol.em_iterations == 0
    # the objective is quadratic in v = (upper triangle of K, eta): solve H v = -grad(0)
    stats = nn.nonnegative_statistics(x, nn.nonnegative_caps(x), centred=centred)
    iu = torch.triu_indices(d, d)
    m = iu.shape[1] + (0 if centred else d)

    def f(v):
        k = torch.zeros(d, d, dtype=torch.float64)
        k = k.index_put((iu[0], iu[1]), v[: iu.shape[1]])
        k = k + k.T - torch.diag(k.diagonal())
        eta = None if centred else v[iu.shape[1] :]
        return nn.nonnegative_objective(k, stats, 0.0, eta)

    zero = torch.zeros(m, dtype=torch.float64)
    hess = torch.autograd.functional.hessian(f, zero)
    grad0 = torch.autograd.functional.jacobian(f, zero)
    v = torch.linalg.solve(hess, -grad0)
    torch.testing.assert_close(sol.precision[iu[0], iu[1]], v[: iu.shape[1]], atol=1e-8, rtol=0)
    if not centred:
        torch.testing.assert_close(sol.eta, v[iu.shape[1] :], atol=1e-8, rtol=0)
        torch.testing.assert_close(sol.loc, torch.linalg.solve(sol.precision, sol.eta))


@pytest.mark.parametrize("centred", [False, True])
def test_exact_path_satisfies_the_optimality_conditions(centred):
    x = _rows(300, 6, 5)
    path = nn.nonnegative_path(x, num_penalties=8, tol=1e-8, centred=centred)
    assert isinstance(path, PenaltyPath) and len(path) == 8
    assert path.info["method"] == "exact" and all(path.info["converged"])
    assert path.info["centred"] is centred and math.isnan(path.info["centring_z"])
    stats = nn.nonnegative_statistics(x, path.info["caps"], centred=centred)
    scale = float(stats.g.abs().max())
    for gamma, k, eta in zip(path.penalties, path.precisions, path.info["eta"], strict=True):
        violation = nn.nonnegative_kkt_violation(k, stats, float(gamma), eta)
        assert violation <= 1e-8 * scale
        # a perturbed solution violates them
        bumped = k + 1e-3 * torch.ones_like(k)
        assert nn.nonnegative_kkt_violation(bumped, stats, float(gamma), eta) > 1e-5 * scale
    off = ~torch.eye(6, dtype=torch.bool)
    first = path.precisions[0]
    assert bool((first[off] == 0).all())  # the grid starts at the empty graph ...
    below = nn.nonnegative_score_matching(
        x, penalty=0.97 * float(path.penalties[0]), centred=centred
    )
    assert int((below.precision[off] != 0).sum()) >= 2  # ... and it is the smallest such
    assert path.precisions[-1][off].ne(0).sum() > first[off].ne(0).sum()


def test_recovers_a_known_truncated_graph_as_n_grows():
    d = 5
    adjacency, precision, x = _truncated_data(d, 8000, seed=0)
    assert bool((x >= 0).all())
    errors = []
    for n in (250, 8000):
        sol = nn.nonnegative_score_matching(x[:n], penalty=0.0, centred=True)
        errors.append(float((sol.precision - precision).norm() / precision.norm()))
    assert errors[1] < 0.1 and errors[1] < 0.5 * errors[0], errors
    # the non-centred model also recovers the truth's mean (zero): eta ~ 0
    sol = nn.nonnegative_score_matching(x, penalty=0.0, centred=False)
    assert not sol.centred
    assert float((sol.precision - precision).norm() / precision.norm()) < 0.12
    assert float(sol.eta.abs().max()) < 0.3  # eta is the hardest parameter near the boundary
    # along a penalty path the truth's edges enter first
    path = nn.nonnegative_path(x, num_penalties=15)
    from pyro_msm.graphical import path_auc

    assert path_auc(adjacency, path.precisions) > 0.95


def test_lower_truncated_normal_inverse_cdf_is_accurate_in_the_tails():
    u = (torch.arange(1, 20000, dtype=torch.float64) - 0.5) / 20000
    for a in (-3.0, 0.0, 2.0, 8.0, 45.0):
        t = nn._lower_truncated_normal(torch.full_like(u, a), u)
        assert bool((t >= a).all()) and bool((t.diff() >= 0).all())
        # quadrature of the mean over u against the closed form a-free: phi(a) / (1 - Phi(a))
        log_mills = (
            -0.5 * a * a
            - 0.5 * math.log(2 * math.pi)
            - float(torch.special.log_ndtr(torch.tensor(-a, dtype=torch.float64)))
        )
        expected = math.exp(log_mills)
        assert abs(float(t.mean()) - expected) < 2e-3 * max(1.0, expected), a


def test_gibbs_e_step_matches_truncated_normal_moments_in_one_dimension():
    n, m = 4000, 8
    observed = torch.zeros(n, 1, dtype=torch.bool)
    for mean, sd in ((0.7, 1.0), (-1.5, 0.5)):
        k = torch.tensor([[1 / sd**2]], dtype=torch.float64)
        eta = torch.tensor([mean / sd**2], dtype=torch.float64)
        z = torch.ones(m, n, 1, dtype=torch.float64)
        g = torch.Generator().manual_seed(0)
        draws = nn.truncated_conditional_gibbs(
            z, observed, k, eta, generator=g, fixed_scan=True, stratified=True
        )
        alpha = -mean / sd
        lam = math.exp(-0.5 * alpha**2) / math.sqrt(2 * math.pi) / (0.5 * math.erfc(alpha / 2**0.5))
        expected_mean = mean + sd * lam
        expected_var = sd**2 * (1 + alpha * lam - lam**2)
        se = math.sqrt(expected_var / (n * m))
        assert bool((draws >= 0).all())
        assert abs(float(draws.mean()) - expected_mean) < 4 * se
        assert abs(float(draws.var()) / expected_var - 1) < 0.05


def test_gibbs_conditional_of_a_missing_coordinate_given_an_observed_one():
    # d = 2, x_1 observed, x_2 missing: x_2 | x_1 ~ N((eta_2 - K_21 x_1) / K_22, 1/K_22) on x >= 0
    n, m = 300, 64
    k = torch.tensor([[1.5, 0.6], [0.6, 2.0]], dtype=torch.float64)
    eta = torch.tensor([0.2, 0.4], dtype=torch.float64)
    x1 = torch.linspace(0.0, 3.0, n, dtype=torch.float64)
    z = torch.stack([x1, torch.full_like(x1, 0.5)], -1).expand(m, n, 2).clone()
    observed = torch.zeros(n, 2, dtype=torch.bool)
    observed[:, 0] = True
    g = torch.Generator().manual_seed(1)
    draws = nn.truncated_conditional_gibbs(z, observed, k, eta, num_sweeps=2, generator=g)
    assert torch.equal(draws[..., 0], z[..., 0])  # observed entries never move
    mu = (eta[1] - k[1, 0] * x1) / k[1, 1]
    sd = k[1, 1].rsqrt()
    alpha = -mu / sd
    lam = torch.exp(-0.5 * alpha**2 - torch.special.log_ndtr(-alpha)) / math.sqrt(2 * math.pi)
    expected = mu + sd * lam
    se = sd / math.sqrt(m * n)
    assert abs(float((draws[..., 1].mean(0) - expected).mean())) < 4 * se
    assert float((draws[..., 1].mean(0) - expected).abs().max()) < 6 * sd / math.sqrt(m)


def test_em_on_complete_data_is_the_exact_solution():
    x = _rows(300, 5, 6)
    exact = nn.nonnegative_path(x, num_penalties=6, tol=1e-9)
    em = nn.nonnegative_path(x, num_penalties=6, tol=1e-9, method="em", imputation_ratio=None)
    assert em.info["method"] == "em" and exact.info["method"] == "exact"
    torch.testing.assert_close(em.penalties, exact.penalties)
    torch.testing.assert_close(em.precisions, exact.precisions, atol=1e-8, rtol=0)
    torch.testing.assert_close(em.info["eta"], exact.info["eta"], atol=1e-8, rtol=0)
    assert max(em.info["em_iterations"]) <= 2  # a fixed point after one M-step
    # fixed imputation (the default): the E-step statistics are the data's, so the path is
    # the exact one
    fixed = nn.nonnegative_path(x, num_penalties=6, tol=1e-9, method="em")
    assert fixed.info["imputation_penalty"] > 0 and fixed.info["em_iterations"][0] >= 1
    torch.testing.assert_close(fixed.penalties, exact.penalties)
    torch.testing.assert_close(fixed.precisions, exact.precisions, atol=1e-8, rtol=0)


def test_em_with_missing_entries_recovers_the_truth():
    d = 5
    _, precision, x = _truncated_data(d, 3000, seed=1)
    mask = mcar_mask(x.shape, 0.3, seed=2)
    xm = torch.where(mask, x, torch.nan)
    sol = nn.nonnegative_score_matching(xm, penalty=0.0, centred=True, max_em_iter=50)
    assert sol.converged and sol.em_iterations >= 2
    complete = nn.nonnegative_score_matching(x, penalty=0.0, centred=True)
    err_em = float((sol.precision - precision).norm() / precision.norm())
    err_complete = float((complete.precision - precision).norm() / precision.norm())
    # complete-case rows only (about 17% of them) do worse than EM on all rows
    rows = mask.all(1)
    cc = nn.nonnegative_score_matching(x[rows], penalty=0.0, centred=True)
    err_cc = float((cc.precision - precision).norm() / precision.norm())
    assert err_em < 0.15 and err_em < err_cc, (err_em, err_complete, err_cc)


def test_fixed_imputation_path_is_exact_on_its_statistics_and_recovers_the_truth():
    adjacency, _, x = _truncated_data(8, 1500, seed=5)
    xm = torch.where(mcar_mask(x.shape, 0.3, seed=6), x, torch.nan)
    path = nn.nonnegative_path(xm, num_penalties=8, tol=1e-8, centred=True)
    stats = path.info["statistics"]
    assert path.info["method"] == "em" and all(path.info["converged"])
    assert path.info["imputation_penalty"] > 0 and stats.centred
    scale = float(stats.g.abs().max())
    for gamma, k in zip(path.penalties, path.precisions, strict=True):
        assert nn.nonnegative_kkt_violation(k, stats, float(gamma)) <= 1e-8 * scale
    off = ~torch.eye(8, dtype=torch.bool)
    assert bool((path.precisions[0][off] == 0).all())  # from the empty graph
    from pyro_msm.graphical import path_auc

    assert path_auc(adjacency, path.precisions) > 0.9


@pytest.mark.parametrize("centred", [False, True])
def test_imputation_penalty_is_the_noise_of_the_null_gradient(centred):
    """The noise-rate rule against its definition, row by row: at the diagonal minimiser the
    per-row terms t_r = x_k s_j + x_j s_k average to the loss's off-diagonal gradient (complete
    data), and the rule is sqrt(log d) times the root mean square over pairs of their standard
    deviation over the rows observing both entries (sqrt(n_jk) sd / n)."""
    n, d = 40, 4
    x = _rows(n, d, 11)
    caps = nn.nonnegative_caps(x, cap=0.8)
    full = nn.nonnegative_statistics(x, caps, centred=centred)
    theta = nn._diagonal_solution(full)
    k, eta = theta[:d].diagonal(), (torch.zeros(d) if centred else -theta[d])
    h, dh = torch.minimum(x, caps), (x < caps).double()
    s = h * (k * x - eta) - dh
    grad = nn._gradient(theta, full)[:d]
    for j in range(d):
        for k2 in range(d):
            if j != k2:
                mean = float((x[:, k2] * s[:, j] + x[:, j] * s[:, k2]).mean())
                assert mean == pytest.approx(float(grad[j, k2]), abs=1e-12)
    # with missing entries, on the rows observing both (statistics: any with the same caps)
    mask = torch.rand(n, d, generator=torch.Generator().manual_seed(3)) > 0.3
    stats = nn.nonnegative_statistics(torch.where(mask, x, 0.5), caps, centred=centred)
    theta = nn._diagonal_solution(stats)
    k, eta = theta[:d].diagonal(), (torch.zeros(d) if centred else -theta[d])
    s = h * (k * x - eta) - dh
    total = 0.0
    for j in range(d):
        for k2 in range(d):
            rows = mask[:, j] & mask[:, k2]
            if j != k2 and int(rows.sum()) > 1:
                t = x[rows, k2] * s[rows, j] + x[rows, j] * s[rows, k2]
                total += int(rows.sum()) * float(t.var()) / n**2
    expected = math.sqrt(total / (d * (d - 1)) * math.log(d))
    xm = torch.where(mask, x, torch.nan)
    assert nn.nonnegative_imputation_penalty(xm, None, stats) == pytest.approx(expected)
    assert nn.nonnegative_imputation_penalty(x, mask, stats, scale=2.0) == pytest.approx(
        2 * expected
    )
    with pytest.raises(ValueError, match="scale"):
        nn.nonnegative_imputation_penalty(x, mask, stats, scale=0.0)


def test_noise_rate_imputation_recovers_a_chain_with_missing_entries():
    adjacency, _, x = _truncated_data(8, 1500, seed=5)
    xm = torch.where(mcar_mask(x.shape, 0.3, seed=6), x, torch.nan)
    path = nn.nonnegative_path(xm, num_penalties=8, tol=1e-8, imputation_ratio="rate")
    stats = path.info["statistics"]
    gamma = path.info["imputation_penalty"]
    assert 0 < gamma < float(path.penalties[0]) and all(path.info["converged"])
    scale = float(stats.g.abs().max())
    for g, k, e in zip(path.penalties, path.precisions, path.info["eta"], strict=True):
        assert nn.nonnegative_kkt_violation(k, stats, float(g), e) <= 1e-8 * scale
    twice = nn.nonnegative_path(xm, num_penalties=2, imputation_ratio="rate", imputation_scale=2)
    assert twice.info["imputation_penalty"] == pytest.approx(2 * gamma)
    default = nn.nonnegative_path(xm, num_penalties=2)  # the rule is the default
    assert default.info["imputation_penalty"] == pytest.approx(gamma)
    from pyro_msm.graphical import path_auc

    assert path_auc(adjacency, path.precisions) > 0.9
    for bad in ("glasso", ""):
        with pytest.raises(ValueError, match="imputation_ratio"):
            nn.nonnegative_path(xm, imputation_ratio=bad)
    with pytest.raises(ValueError, match="imputation_scale"):
        nn.nonnegative_path(xm, imputation_ratio="rate", imputation_scale=-1.0)


def test_bad_input_is_refused_with_a_remedy():
    x = _rows(20, 3, 7)
    with pytest.raises(ValueError, match="negative observed"):
        nn.nonnegative_path(-x)
    xm = x.clone()
    xm[0, 0] = math.nan
    with pytest.raises(ValueError, match="complete data"):
        nn.nonnegative_path(xm, method="exact")
    with pytest.raises(ValueError, match="unknown method"):
        nn.nonnegative_path(x, method="gibbs")
    with pytest.raises(ValueError, match="cap"):
        nn.nonnegative_path(x, cap=0.0)
    with pytest.raises(ValueError, match="num_draws"):
        nn.nonnegative_path(xm, num_draws=0)
    with pytest.raises(ValueError, match="imputation_ratio"):
        nn.nonnegative_path(xm, imputation_ratio=0.0)
    with pytest.raises(TypeError, match="one penalty"):
        nn.nonnegative_score_matching(x, penalties=[1.0])


def test_benchmark_smoke_run():
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "graph_nonnegative.py"), "--smoke",
         "--shift", "0.3"],  # fmt: skip
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "nonnegative_em" in done.stdout and "path-AUC" in done.stdout
    assert "nonnegative_em_r0.3_centred" in done.stdout
    assert "nonnegative_em_noncentred" in done.stdout and "(centred: " in done.stdout
    assert "(mean 0.3 sd)" in done.stdout


def test_squarem_reaches_the_same_em_fixed_point_in_fewer_iterations():
    _, _, x = _truncated_data(4, 400, seed=3)
    xm = torch.where(mcar_mask(x.shape, 0.4, seed=4), x, torch.nan)
    kwargs = dict(penalty=0.01, em_tol=1e-7, max_em_iter=400, tol=1e-9, num_draws=8)
    fast = nn.nonnegative_score_matching(xm, squarem=True, **kwargs)
    plain = nn.nonnegative_score_matching(xm, squarem=False, **kwargs)
    assert fast.converged and plain.converged
    # both are fixed points of the same deterministic (common-random-number) EM map to 1e-7;
    # the Monte Carlo map has nearby fixed points (measured 7e-4 apart here), far inside the
    # Monte Carlo error of the statistics, so agreement is asked to 1e-2
    torch.testing.assert_close(fast.precision, plain.precision, atol=1e-2, rtol=0)
    torch.testing.assert_close(fast.eta, plain.eta, atol=1e-2, rtol=0)
    assert fast.em_iterations < plain.em_iterations


@pytest.mark.parametrize("support", ["nonnegative", constraints.positive])
def test_estimator_routes_the_orthant_to_the_exact_nonnegative_solver(support):
    from pyro_msm.graphical import GraphicalScoreMatching, path_auc

    adjacency, _, x = _truncated_data(8, 1500, seed=3)
    est = GraphicalScoreMatching(support=support, num_penalties=8, progress=False).fit(x)
    assert est.solver_ == "nonnegative"
    # the path equals the function's own, and the selection is its eBIC of the path's losses
    direct = nn.nonnegative_path(x, num_penalties=8)
    torch.testing.assert_close(est.precisions_, direct.precisions)
    # the truth is centred, and the score test keeps the centred model
    assert est.path_.info["centred"] is True and abs(est.path_.info["centring_z"]) <= 3.0
    scores = est.criterion_
    assert int(torch.argmin(scores)) == est.penalty_index_
    assert path_auc(adjacency, est.precisions_) > 0.9
    with pytest.raises(ValueError, match="support='nonnegative'"):
        GraphicalScoreMatching(solver="nonnegative").fit(x)


def _quadrature_weight_moments(m, s, c):
    """Reference for truncated_normal_weight_moments: composite 64-node Gauss-Legendre in
    u = x / s with panels at every scale (1e-8 ... 1e2 from 0 and from the cap, unit steps
    around the mode), the density phi(alpha + u) / Phi(-alpha) normalised in log space."""
    a, w = -m / s, c / s
    nodes, weights = np.polynomial.legendre.leggauss(64)
    mode = max(0.0, -a)
    points = [0.0, w] + [10.0**k for k in range(-8, 3)] + [w + 10.0**k for k in range(-8, 3)]
    points += [mode + k for k in range(-10, 11)]
    edges = sorted({p for p in points if 0.0 <= p <= w + mode + 60.0})
    log_z = float(torch.special.log_ndtr(torch.tensor(-a, dtype=torch.float64)))
    out = np.zeros(5)
    for lo, hi in zip(edges[:-1], edges[1:], strict=False):
        u = 0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)
        density = np.exp(-0.5 * (a + u) ** 2 - 0.5 * math.log(2 * math.pi) - log_z)
        wt = 0.5 * (hi - lo) * weights * density
        x = s * u
        h = np.minimum(x, c)
        below = 1.0 if hi <= w else 0.0  # panels never straddle the cap
        out[:3] += [(wt * h).sum(), (wt * h * x).sum(), (wt * h * x * x).sum()]
        out[3:] += [below * wt.sum(), below * (wt * x).sum()]
    return out


@pytest.mark.parametrize(
    "m, s, c",
    [
        (0.7, 1.0, 1.2),  # mode inside, cap above the mean
        (3.0, 0.5, 1.0),  # boundary far in the lower tail, cap below the mean
        (-1.5, 0.5, 0.8),  # alpha = 3: the last recurrence point
        (-1.5, 0.5, 0.01),  # a cap far below the conditional's scale
        (-0.9, 0.3, 0.05),
        (-6.0, 0.3, 0.2),  # alpha = 20: Gauss-Laguerre
        (-10.0, 0.1, 0.5),  # alpha = 100
        (-300.0, 0.3, 0.001),  # alpha = 1000, the exponential regime
    ],
)
def test_truncated_normal_weight_moments_match_quadrature(m, s, c):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    got = torch.stack(nn.truncated_normal_weight_moments(t(m), t(s), t(c)))
    ref = torch.as_tensor(_quadrature_weight_moments(m, s, c))
    # relative accuracy, with an absolute floor at the moments' natural scale c^k s^l
    scale = torch.tensor([c, c * c, c**3, 1.0, c], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12 * float(scale.max()))
    # a plain Monte Carlo average of the sampler's own draws agrees to its error
    n = 200_000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # a midpoint rule in u
    x = s * (nn._lower_truncated_normal(torch.full_like(u, -m / s), u) + m / s)
    h = torch.minimum(x, t(c))
    below = (x < c).to(x.dtype)
    mc = [h.mean(), (h * x).mean(), (h * x * x).mean(), below.mean(), (below * x).mean()]
    mc = torch.stack(mc)
    torch.testing.assert_close(mc, ref, rtol=2e-3, atol=1e-4 * float(scale.max()))


def test_weight_moments_broadcast_and_vectorise():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(50, 3, generator=g, dtype=torch.float64) * 4
    s = torch.rand(3, generator=g, dtype=torch.float64) + 0.1
    c = torch.rand(3, generator=g, dtype=torch.float64) + 0.05
    got = nn.truncated_normal_weight_moments(m, s, c)
    assert all(v.shape == (50, 3) for v in got)
    for i, j in [(0, 0), (7, 2), (49, 1)]:
        one = nn.truncated_normal_weight_moments(m[i, j], s[j], c[j])
        for a, b in zip(got, one, strict=True):
            torch.testing.assert_close(a[i, j], b, rtol=1e-12, atol=0)
    h0, h1, h2, p0, p1 = got
    # Cauchy-Schwarz keeps each row's Gamma_j semi-definite: E[h] E[h x^2] >= E[h x]^2
    assert bool((h0 * h2 >= h1 * h1 * (1 - 1e-12)).all())
    assert bool((p0 >= 0).all() and (p0 <= 1).all() and (h0 <= c).all() and (p1 <= c).all())


@pytest.mark.parametrize(
    "mean, sd, cap, name",
    [(0.5, 0.0, 1.0, "sd"), (0.5, -1.0, 1.0, "sd"), (0.5, 1.0, 0.0, "cap"),
     (float("nan"), 1.0, 1.0, "mean"), (0.5, 1.0, float("inf"), "cap")],
)  # fmt: skip
def test_weight_moments_refuse_invalid_parameters(mean, sd, cap, name):
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    with pytest.raises(ValueError, match=f"{name} must be"):
        nn.truncated_normal_weight_moments(t(mean), t(sd), t(cap))


@pytest.mark.parametrize("fn", ["rao_blackwellised_statistics", "truncated_conditional_gibbs"])
def test_conditional_steps_refuse_mismatched_shapes(fn):
    z = torch.rand(10, 3, dtype=torch.float64)
    observed = torch.rand(10, 3) > 0.3
    eye = torch.eye(3, dtype=torch.float64)
    caps = torch.ones(3, dtype=torch.float64)

    def call(zz, obs, prec, eta):
        if fn == "rao_blackwellised_statistics":
            return nn.rao_blackwellised_statistics(zz, obs, prec, eta, caps)
        return nn.truncated_conditional_gibbs(zz, obs, prec, eta)

    call(z, observed, eye, None)  # the right shapes pass
    with pytest.raises(ValueError, match=rf"{fn}: precision must be \(3, 3\)"):
        call(z, observed, torch.eye(4, dtype=torch.float64), None)
    with pytest.raises(ValueError, match=rf"{fn}: eta must be \(3,\)"):
        call(z, observed, eye, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=rf"{fn}: observed must be \(n, d\)"):
        call(z, observed[:, :2], eye, None)


def test_rao_blackwellised_statistics_equal_plain_ones_without_missing_entries():
    x = _rows(80, 4, 8)
    caps = nn.nonnegative_caps(x)
    k, eta = _random_model(4, 9)
    observed = torch.ones(80, 4, dtype=torch.bool)
    for centred in (False, True):
        rb = nn.rao_blackwellised_statistics(x, observed, k, eta, caps, centred=centred)
        plain = nn.nonnegative_statistics(x, caps, centred=centred)
        torch.testing.assert_close(rb.gamma, plain.gamma, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(rb.g, plain.g, rtol=1e-13, atol=1e-14)


def _two_column_chains(m, seed):
    # d = 2, x_1 observed, x_2 missing: exact draws of x_2 | x_1 (one Gibbs update is exact)
    n = 40
    k = torch.tensor([[1.5, 0.6], [0.6, 2.0]], dtype=torch.float64)
    eta = torch.tensor([0.2, 0.4], dtype=torch.float64)
    x1 = torch.linspace(0.0, 3.0, n, dtype=torch.float64)
    z = torch.stack([x1, torch.ones_like(x1)], -1).expand(m, n, 2).clone()
    observed = torch.zeros(n, 2, dtype=torch.bool)
    observed[:, 0] = True
    g = torch.Generator().manual_seed(seed)
    draws = nn.truncated_conditional_gibbs(z, observed, k, eta, generator=g)
    return draws, observed, k, eta


def test_rao_blackwellised_statistics_of_a_lone_missing_coordinate_are_exact():
    caps = torch.tensor([1.0, 0.4], dtype=torch.float64)
    exact = None
    for seed in (0, 1):
        draws, observed, k, eta = _two_column_chains(3, seed)
        rb = nn.rao_blackwellised_statistics(draws, observed, k, eta, caps)
        if exact is None:
            exact = rb
            continue
        # every term involves x_2 at most through one factor given x_1, so the statistics
        # integrate it out exactly: they do not depend on the draws
        torch.testing.assert_close(rb.gamma, exact.gamma, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(rb.g, exact.g, rtol=1e-13, atol=1e-15)
    # plain Monte Carlo statistics converge to them as the draws grow
    errors = []
    for m in (10, 4000):
        draws, observed, _, _ = _two_column_chains(m, 2)
        plain = nn.nonnegative_statistics(draws, caps)
        errors.append(float((plain.gamma - exact.gamma).abs().max()))
        errors[-1] = max(errors[-1], float((plain.g - exact.g).abs().max()))
    assert errors[1] < 0.01 * float(exact.gamma.abs().max()) and errors[1] < errors[0] / 5


def test_rao_blackwellised_e_step_has_the_monte_carlo_expectation_with_less_variance():
    # d = 4, two missing coordinates per row: Gibbs chains run to stationarity; across
    # independent replicates the Rao-Blackwellised and plain statistics have the same mean
    # (to Monte Carlo error) and the Rao-Blackwellised ones a smaller variance
    d, n, m, reps = 4, 30, 200, 12
    k, eta = _random_model(d, 10)
    x = _rows(n, d, 11)
    observed = torch.ones(n, d, dtype=torch.bool)
    observed[: n // 2, 1:3] = False
    observed[n // 2 :, 0] = False
    observed[n // 2 :, 3] = False
    caps = nn.nonnegative_caps(x, observed)
    rb, plain = [], []
    for rep in range(reps):
        g = torch.Generator().manual_seed(100 + rep)
        chains = nn.truncated_conditional_gibbs(
            x.expand(m, n, d).clone(), observed, k, eta, num_sweeps=25, generator=g
        )
        for out, fn in ((rb, True), (plain, False)):
            st = (
                nn.rao_blackwellised_statistics(chains, observed, k, eta, caps)
                if fn
                else nn.nonnegative_statistics(chains, caps)
            )
            out.append(torch.cat([st.gamma.flatten(), st.g.flatten()]))
    rb, plain = torch.stack(rb), torch.stack(plain)
    se = ((rb.var(0) + plain.var(0)) / reps).sqrt()
    z = (rb.mean(0) - plain.mean(0)) / se.clamp(min=1e-12)
    assert float(z.abs().max()) < 5.0 and float(z.abs().mean()) < 1.2
    assert float(rb.var(0).sum()) < 0.5 * float(plain.var(0).sum())


def _rao_blackwellised_by_rows(z, observed, k, eta, caps, centred):
    """The Rao-Blackwellised statistics term by term, chain by chain and row by row, from the
    definition in rao_blackwellised_statistics's docstring."""
    m, n, d = z.shape
    p = d if centred else d + 1
    gamma = torch.zeros(d, p, p, dtype=torch.float64)
    g = torch.zeros(d, p, dtype=torch.float64)
    sd = k.diagonal().rsqrt()
    for c in range(m):
        for r in range(n):
            x, miss = z[c, r], ~observed[r]
            mean = (eta - x @ k + x * k.diagonal()) / k.diagonal()
            mom = nn._truncated_moments(mean, sd, caps)  # conditional of each x_a given the rest
            xt = x if centred else torch.cat([x, torch.ones(1, dtype=torch.float64)])
            ex = xt.clone()  # E[x_a] where missing
            ex[:d] = torch.where(miss, mom[5], x)
            outer = torch.outer(xt, xt)
            for a in range(d):
                for b in range(p):
                    am, bm = bool(miss[a]), b < d and bool(miss[b])
                    if a == b and am:
                        outer[a, a] = mom[6][a]
                    elif am and bm:
                        outer[a, b] = 0.5 * (ex[a] * xt[b] + xt[a] * ex[b])
                    elif am:
                        outer[a, b] = ex[a] * xt[b]
                    elif bm:
                        outer[a, b] = xt[a] * ex[b]
                    outer[b, a] = outer[a, b]
            for j in range(d):
                if miss[j]:
                    w0, w1, w2, p0, p1 = (v[j] for v in mom[:5])
                    term = w0 * torch.outer(xt, xt)
                    term[j, :] = w1 * xt
                    term[:, j] = w1 * xt
                    term[j, j] = w2
                    gj = p0 * xt
                    gj[j] = p1 + w0
                else:
                    h = torch.minimum(x[j], caps[j])
                    hp = (x[j] < caps[j]).to(torch.float64)
                    term = h * outer
                    gj = hp * ex
                    gj[j] = hp * x[j] + h
                gamma[j] += term
                g[j] += gj
    return gamma / (m * n), g / (m * n)


@pytest.mark.parametrize("centred", [False, True])
def test_rao_blackwellised_statistics_equal_their_row_by_row_definition(centred):
    # the chain-aware product (observed parts once per row, only missing columns per chain)
    # gives the statistics of the definition, term by term
    d, n, m = 4, 12, 3
    k, eta = _random_model(d, 12)
    x = _rows(n, d, 13)
    observed = mcar_mask((n, d), 0.45, seed=14)
    observed[0] = False  # a row with every entry missing
    observed[1] = True  # and a complete one
    caps = nn.nonnegative_caps(x, observed)
    g = torch.Generator().manual_seed(15)
    chains = nn.truncated_conditional_gibbs(
        x.expand(m, n, d).clone(), observed, k, eta, num_sweeps=2, generator=g
    )
    rb = nn.rao_blackwellised_statistics(chains, observed, k, eta, caps, centred=centred)
    gamma, gvec = _rao_blackwellised_by_rows(chains, observed, k, eta, caps, centred)
    torch.testing.assert_close(rb.gamma, gamma, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(rb.g, gvec, rtol=1e-12, atol=1e-13)


def _shifted_chain(d, n, shift, seed):
    """A chain graph's truncated Gaussian whose mean is ``shift`` marginal standard deviations
    inside the orthant (0: the centred model)."""
    precision = precision_from_graph(chain_graph(d), condition_number=5.0, seed=0)
    loc = shift * torch.linalg.inv(precision).diagonal().sqrt()
    truth = TruncatedGaussianEnergy(loc, precision, ORTHANT)
    return precision, truth.simulate(n, seed=seed)


def test_centring_statistic_is_standard_normal_under_the_centred_model():
    # at the true precision the Stein identity holds exactly: Z ~ N(0, 1) over data sets
    zs = []
    for seed in range(20):
        precision, x = _shifted_chain(8, 400, 0.0, seed)
        zs.append(nn.nonnegative_centring_statistic(x, None, precision))
    zs = torch.tensor(zs)
    assert abs(float(zs.mean())) < 0.7 and 0.6 < float(zs.std()) < 1.5, zs
    # a mean inside the orthant (eta = K mu > 0 on a chain) drives it far below
    precision, x = _shifted_chain(8, 1000, 0.7, 1)
    assert nn.nonnegative_centring_statistic(x, None, precision) < -10.0


def test_centring_statistic_follows_its_definition_with_missing_entries():
    g = torch.Generator().manual_seed(0)
    n, d = 40, 4
    x = _rows(n, d, 3)
    mask = torch.rand(n, d, generator=g) > 0.3
    k, _ = _random_model(d, 1)
    imputed = torch.rand(n, d, generator=g, dtype=torch.float64)
    caps = nn.nonnegative_caps(torch.where(mask, x, 0.0), mask)
    # row by row: t_rj = h'_j - h_j (K xhat_r)_j over rows observing x_j, u_r = sum_j t_rj / s_j
    xhat = torch.where(mask, x, imputed)
    t = torch.zeros(n, d, dtype=torch.float64)
    for r in range(n):
        for j in range(d):
            if mask[r, j]:
                h = min(float(x[r, j]), float(caps[j]))
                t[r, j] = float(x[r, j] < caps[j]) - h * float(k[j] @ xhat[r])
    s = torch.tensor([float(t[mask[:, j], j].std()) for j in range(d)], dtype=torch.float64)
    u = (t / s).sum(1)
    want = float(u.sum() / u.square().sum().sqrt())
    got = nn.nonnegative_centring_statistic(
        torch.where(mask, x, torch.nan), None, k, imputed=imputed
    )
    assert got == pytest.approx(want, rel=1e-12)
    # the missing entries of x never enter, only their imputations
    assert nn.nonnegative_centring_statistic(x + 5.0 * ~mask, mask, k, imputed=imputed) == got
    with pytest.raises(ValueError, match="imputed"):
        nn.nonnegative_centring_statistic(x, mask, k)
    with pytest.raises(ValueError, match="imputed must be"):
        nn.nonnegative_centring_statistic(x, mask, k, imputed=imputed[:-1])
    with pytest.raises(ValueError, match="non-finite"):
        nn.nonnegative_centring_statistic(x, mask, k, imputed=torch.full_like(x, torch.nan))
    with pytest.raises(ValueError, match=r"precision must be \(4, 4\)"):
        nn.nonnegative_centring_statistic(x, mask, k[:-1], imputed=imputed)
    with pytest.raises(ValueError, match="precision has non-finite"):
        nn.nonnegative_centring_statistic(x, mask, k * math.nan, imputed=imputed)
    with pytest.raises(ValueError, match="NaN at 1 observed"):
        bad = x.clone()
        bad[0, 0] = math.nan
        nn.nonnegative_centring_statistic(bad, torch.ones_like(mask), k)
    with pytest.raises(ValueError, match="negative"):
        nn.nonnegative_centring_statistic(-x, None, k)


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_auto_centring_chooses_the_model_the_data_support(rate):
    for shift, centred in ((0.0, True), (1.0, False)):
        _, x = _shifted_chain(8, 1000, shift, 1)
        if rate:
            x = torch.where(mcar_mask(x.shape, rate, seed=3), x, torch.nan)
        path = nn.nonnegative_path(x, num_penalties=5)
        z = path.info["centring_z"]
        assert path.info["centred"] is centred, z
        assert (abs(z) <= nn.CENTRING_THRESHOLD) is centred and (centred or z < 0)
        # the chosen path is the explicit model's, to the bit
        same = nn.nonnegative_path(x, num_penalties=5, centred=centred)
        assert torch.equal(path.precisions, same.precisions)
        assert bool((path.info["eta"] == 0).all()) is centred
        if rate:
            fit = path.info["imputation_precision"]
            assert fit.shape == (8, 8) and path.info["imputed"].shape == x.shape
            assert torch.equal(path.info["imputed"][~x.isnan()], x[~x.isnan()])
        else:
            assert path.info["imputed"] is None
    sol = nn.nonnegative_score_matching(x, penalty=0.05)
    assert sol.centred is False and bool((sol.eta != 0).any())


def test_centred_option_is_checked():
    with pytest.raises(ValueError, match="centred must be"):
        nn.nonnegative_path(_rows(50, 3, 0), centred="yes")


def test_auto_centring_falls_back_to_the_other_model_with_a_warning(monkeypatch):
    _, x = _shifted_chain(6, 400, 0.0, 2)
    x = torch.where(mcar_mask(x.shape, 0.3, seed=3), x, torch.nan)
    original = nn.nonnegative_path

    def centred_fails(*args, centred="auto", **kwargs):
        if centred is True:
            raise ValueError("nonnegative_path: precision needs a positive diagonal")
        return original(*args, centred=centred, **kwargs)

    monkeypatch.setattr(nn, "nonnegative_path", centred_fails)
    with pytest.warns(RuntimeWarning, match="centred imputation fit failed"):
        path = original(x, num_penalties=4)
    assert path.info["centred"] is False and math.isnan(path.info["centring_z"])
    want = original(x, num_penalties=4, centred=False)
    assert torch.equal(path.precisions, want.precisions)

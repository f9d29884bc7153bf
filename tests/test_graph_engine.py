"""The graph engine: exact EM and marginal solvers with missing entries, the score-matching
eBIC, cross-validation, refits, the estimator's table handling and plots."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_msm.graphical import (
    GraphicalScoreMatching,
    GridEdgeWarning,
    cross_validate,
    ebic_score_matching,
    edges_from_precision,
    em_kkt_violation,
    em_path,
    em_score_matching,
    empty_graph_penalty,
    f1_score,
    frobenius_error,
    imputation_penalty,
    imputed_path,
    kkt_violation,
    marginal_kkt_violation,
    marginal_newton,
    marginal_objective,
    marginal_path,
    marginal_score_matching,
    path_auc,
    quadratic_path,
    quadratic_score_matching,
    refit_support,
    sample_covariance,
    score_matching_path,
    simulate_graph,
)
from pyro_msm.graphical.estimator import EM_PATH_MAX_ITER, LIKELIHOOD_EBIC_BETA
from pyro_msm.graphical.path import as_data_and_mask
from pyro_msm.infer.gaussian import (
    conditional_gaussian,
    estep_plan,
    expected_statistics,
    grouped_marginal_gradient,
    grouped_marginal_hvp,
    grouped_marginal_loss,
    marginal_score_matching_loss,
    pattern_statistics,
)

ROOT = Path(__file__).resolve().parents[1]


def _problem(graph="chain", d=5, n=300, rate=0.3, seed=0):
    problem = simulate_graph(graph, d=d, n=n, missing_rate=rate, seed=seed)
    data, mask = as_data_and_mask(problem.observed.double())
    return problem, data, mask


# --------------------------------------------------------------------------------------------------
# the pattern-grouped closed forms
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.3, 0.75])  # 0.75: mostly the covariance form of the E-step
def test_grouped_closed_forms_equal_the_per_row_ones(rate):
    torch.manual_seed(0)
    n, d = 200, 7
    x = torch.randn(n, d, dtype=torch.float64) @ torch.randn(d, d, dtype=torch.float64)
    mask = torch.rand(n, d) > rate
    mask[0] = False  # a row with nothing observed contributes nothing
    x = torch.where(mask, x, torch.zeros((), dtype=torch.float64))
    a = torch.randn(d, d, dtype=torch.float64)
    precision = a @ a.T + d * torch.eye(d, dtype=torch.float64)
    loc = torch.randn(d, dtype=torch.float64)
    grouped = grouped_marginal_loss(pattern_statistics(x, mask), loc, precision)
    per_row = marginal_score_matching_loss(x, mask, loc, precision).mean()
    assert float(grouped) == pytest.approx(float(per_row), rel=1e-10)
    # the E-step against the per-row conditional of conditional_gaussian
    completed, mean, s = expected_statistics(x, mask, loc, precision)
    cond_mean, chol = conditional_gaussian(x, mask, loc, precision)
    missing = (~mask).to(x.dtype)
    cond_cov = torch.cholesky_inverse(chol) * missing.unsqueeze(-1) * missing.unsqueeze(-2)
    assert torch.allclose(completed, cond_mean, atol=1e-10)
    centred = cond_mean - cond_mean.mean(0)
    want = (centred.T @ centred + cond_cov.sum(0)) / n
    assert torch.allclose(mean, cond_mean.mean(0), atol=1e-12)
    assert torch.allclose(s, want, atol=1e-10)
    # the index plan built once per mask (EM's repeated E-steps) gives the same statistics
    planned = expected_statistics(x, mask, loc, precision, plan=estep_plan(mask))
    for got, ref in zip(planned, (completed, mean, s), strict=True):
        assert torch.allclose(got, ref, atol=1e-12)


@pytest.mark.parametrize("rate", [0.3, 0.75])
def test_closed_form_marginal_gradient_is_the_derivative_of_the_loss(rate):
    """grouped_marginal_gradient: the loss's value, autograd's gradient through the batched
    factorisations, and central finite differences along a random symmetric direction."""
    torch.manual_seed(1)
    n, d = 150, 6
    x = torch.randn(n, d, dtype=torch.float64) @ torch.randn(d, d, dtype=torch.float64)
    mask = torch.rand(n, d) > rate
    stats = pattern_statistics(torch.where(mask, x, torch.zeros((), dtype=x.dtype)), mask)
    a = torch.randn(d, d, dtype=torch.float64)
    precision = a @ a.T + d * torch.eye(d, dtype=torch.float64)
    loc = torch.randn(d, dtype=torch.float64)
    value, g_loc, g_p = grouped_marginal_gradient(stats, loc, precision)
    loc_r, p_r = loc.clone().requires_grad_(True), precision.clone().requires_grad_(True)
    ref = grouped_marginal_loss(stats, loc_r, 0.5 * (p_r + p_r.T))
    ref_loc, ref_p = torch.autograd.grad(ref, (loc_r, p_r))
    assert float(value) == pytest.approx(float(ref), rel=1e-12)
    assert torch.allclose(g_loc, ref_loc, atol=1e-10)
    assert torch.allclose(g_p, 0.5 * (ref_p + ref_p.T), atol=1e-10)
    direction = torch.randn(d, d, dtype=torch.float64)
    direction = direction + direction.T
    shift = torch.randn(d, dtype=torch.float64)
    h = 1e-6
    up = grouped_marginal_loss(stats, loc + h * shift, precision + h * direction)
    down = grouped_marginal_loss(stats, loc - h * shift, precision - h * direction)
    numeric = float(up - down) / (2 * h)
    analytic = float((g_p * direction).sum() + (g_loc * shift).sum())
    assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("fn", [grouped_marginal_loss, grouped_marginal_gradient])
def test_marginal_loss_and_gradient_refuse_parameters_of_another_width(fn):
    x = torch.randn(20, 3, dtype=torch.float64)
    mask = torch.rand(20, 3) > 0.3
    stats = pattern_statistics(torch.where(mask, x, torch.zeros((), dtype=x.dtype)), mask)
    eye = torch.eye(4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"precision \(3, 3\).*got \(3,\) and \(4, 4\)"):
        fn(stats, torch.zeros(3, dtype=torch.float64), eye)
    with pytest.raises(ValueError, match=r"loc must be \(3,\)"):
        fn(stats, torch.zeros(4, dtype=torch.float64), eye[:3, :3])


# --------------------------------------------------------------------------------------------------
# the exact solvers
# --------------------------------------------------------------------------------------------------


def test_marginal_solver_satisfies_its_optimality_conditions():
    _, data, mask = _problem("chain", d=4, n=200, rate=0.3, seed=1)
    top, _, _ = empty_graph_penalty(data, mask)
    penalty = 0.2 * top
    sol = marginal_score_matching(data, mask, penalty, tol=1e-8, max_iter=3000)
    assert sol.converged
    violation = marginal_kkt_violation(data, mask, sol.loc, sol.precision, penalty)
    assert violation < 1e-5
    off = sol.precision - torch.diag(sol.precision.diagonal())
    assert (off == 0).any() and (off != 0).any()  # a sparse, non-trivial solution
    # a perturbed point is worse and violates the conditions
    worse = sol.precision + 0.05 * torch.eye(4, dtype=torch.float64)
    assert marginal_kkt_violation(data, mask, sol.loc, worse, penalty) > 1e-3
    value = marginal_objective(data, mask, sol.loc, sol.precision)
    assert value < marginal_objective(data, mask, sol.loc, worse)


def test_marginal_solver_does_not_call_a_collapsed_step_convergence():
    """A step far below the data's nominal step moves the iterate by almost nothing; that is
    not convergence (the path used to freeze this way near the positive-definite boundary)."""
    _, data, mask = _problem("chain", d=4, n=200, rate=0.3, seed=1)
    top, _, _ = empty_graph_penalty(data, mask)
    stalled = marginal_score_matching(data, mask, 0.2 * top, step=1e-12, max_iter=5)
    assert not stalled.converged
    # and it is indeed far from a solution
    assert marginal_kkt_violation(data, mask, stalled.loc, stalled.precision, 0.2 * top) > 1e-3


def test_closed_form_marginal_hessian_vector_products_match_autograd():
    """grouped_marginal_hvp: batched directional derivatives of the closed-form gradient equal
    autograd's double backward through the loss (the Hessian of the Newton solver)."""
    _, data, mask = _problem("hub", d=5, n=200, rate=0.5, seed=0)
    stats = pattern_statistics(data, mask)
    gen = torch.Generator().manual_seed(0)
    loc = 0.1 * torch.randn(5, dtype=torch.float64, generator=gen)
    a = torch.randn(5, 5, dtype=torch.float64, generator=gen)
    precision = a @ a.T / 5 + torch.eye(5, dtype=torch.float64)
    d_loc = torch.randn(3, 5, dtype=torch.float64, generator=gen)
    d_p = torch.randn(3, 5, 5, dtype=torch.float64, generator=gen)
    d_p = d_p + d_p.mT
    h_loc, h_p = grouped_marginal_hvp(stats, loc, precision, d_loc, d_p)
    for i in range(3):
        _, (r_loc, r_p) = torch.autograd.functional.hvp(
            lambda m, p: grouped_marginal_loss(stats, m, 0.5 * (p + p.mT)),
            (loc, precision), (d_loc[i], d_p[i]),
        )  # fmt: skip
        assert torch.allclose(h_loc[i], r_loc, atol=1e-10)
        assert torch.allclose(h_p[i], 0.5 * (r_p + r_p.mT), atol=1e-10)


def test_marginal_newton_satisfies_the_conditions_and_equals_fista():
    """Proximal Newton lands on FISTA's solution of the same well-conditioned problem, with a
    smaller KKT violation, in a handful of iterations (quadratic convergence); with a support it
    keeps the entries off it at zero and satisfies the constrained conditions."""
    _, data, mask = _problem("chain", d=5, n=300, rate=0.3, seed=0)
    top, _, _ = empty_graph_penalty(data, mask)
    penalty = 0.2 * top
    fista = marginal_score_matching(data, mask, penalty, tol=1e-9, max_iter=3000)
    newton = marginal_score_matching(data, mask, penalty, tol=1e-10, method="newton")
    assert fista.converged and newton.converged
    assert newton.iterations <= 15
    kkt = marginal_kkt_violation(data, mask, newton.loc, newton.precision, penalty)
    assert kkt < 1e-9
    # the solver stops on the very quantity marginal_kkt_violation reports
    assert newton.info["kkt"] == pytest.approx(kkt, rel=1e-6, abs=1e-14)
    assert torch.allclose(newton.precision, fista.precision, atol=1e-6)
    assert torch.allclose(newton.loc, fista.loc, atol=1e-6)
    off = newton.precision - torch.diag(newton.precision.diagonal())
    assert (off == 0).any() and (off != 0).any()
    support = edges_from_precision(newton.precision)
    refit = marginal_score_matching(data, mask, 0.0, init=(newton.loc, newton.precision),
                                    tol=1e-10, method="newton", support=support)  # fmt: skip
    assert refit.converged
    assert bool((refit.precision[~(support | torch.eye(5, dtype=torch.bool))] == 0).all())
    assert marginal_kkt_violation(data, mask, refit.loc, refit.precision, 0.0,
                                  support=support) < 1e-9  # fmt: skip


def test_newton_solver_and_hessian_products_refuse_bad_input():
    _, data, mask = _problem("chain", d=4, n=100, rate=0.3, seed=0)
    stats = pattern_statistics(data, mask)
    loc, eye = torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="penalty must be non-negative"):
        marginal_newton(stats, -1.0, (loc, eye))
    with pytest.raises(ValueError, match="init must be"):
        marginal_newton(stats, 0.1, (loc[:3], eye[:3, :3]))
    with pytest.raises(ValueError, match="not positive definite"):
        marginal_newton(stats, 0.1, (loc, -eye))
    with pytest.raises(ValueError, match="d_precision"):
        grouped_marginal_hvp(stats, loc, eye, torch.zeros(2, 4, dtype=torch.float64),
                             torch.zeros(3, 4, 4, dtype=torch.float64))  # fmt: skip
    with pytest.raises(ValueError, match="unknown method"):
        marginal_score_matching(data, mask, 0.1, method="bfgs")


def test_marginal_and_em_agree_at_the_top_of_the_path():
    """At and above the empty-graph penalty both solvers return the diagonal fit."""
    _, data, mask = _problem("star", d=5, n=300, rate=0.4, seed=2)
    top, loc, diagonal = empty_graph_penalty(data, mask)
    em = em_score_matching(data, mask, 1.01 * top)
    assert torch.allclose(em.precision, diagonal, atol=1e-6)
    assert torch.allclose(em.loc, loc, atol=1e-8)
    below = em_score_matching(data, mask, 0.8 * top)
    assert bool(edges_from_precision(below.precision).any())
    marginal = marginal_score_matching(data, mask, 1.01 * top, tol=1e-10)
    off = marginal.precision - torch.diag(marginal.precision.diagonal())
    assert float(off.abs().max()) == 0.0


def test_em_fixed_point_satisfies_the_m_step_conditions():
    _, data, mask = _problem("hub", d=6, n=400, rate=0.4, seed=3)
    top, _, _ = empty_graph_penalty(data, mask)
    penalty = 0.15 * top
    sol = em_score_matching(data, mask, penalty, tol=1e-9, max_iter=2000, inner_tol=1e-12)
    assert sol.converged
    assert em_kkt_violation(data, mask, sol.loc, sol.precision, penalty) < 1e-6
    # the stored Gram matrix is the E-step at the fixed point
    _, _, s = expected_statistics(data, mask, sol.loc, sol.precision)
    assert torch.allclose(s, sol.covariance, atol=1e-6)


def test_em_on_complete_data_is_the_quadratic_solution():
    problem = simulate_graph("star", d=6, n=500, missing_rate=0.0, seed=4)
    x = problem.x.double()
    s = sample_covariance(x)
    for penalty in (0.05, 0.3):
        em = em_score_matching(x, None, penalty, inner_tol=1e-12)
        quad = quadratic_score_matching(s, penalty, tol=1e-12)
        assert em.iterations == 1 and em.converged
        assert torch.allclose(em.precision, quad.precision, atol=1e-8)
        assert torch.allclose(em.loc, x.mean(0), atol=1e-12)
        assert kkt_violation(em.precision, s, penalty) < 1e-6


def test_deterministic_marginal_path_is_the_iterative_limit():
    """Full-batch proximal Adam on the closed-form marginal loss, run to its convergence check,
    lands (to Adam's step size) on the exact marginal solution."""
    _, data, mask = _problem("chain", d=4, n=200, rate=0.3, seed=5)
    top, _, _ = empty_graph_penalty(data, mask)
    grid = torch.tensor([0.5 * top, 0.2 * top], dtype=torch.float64)
    exact = marginal_path(data, mask, grid, tol=1e-9)
    assert all(exact.info["converged"])
    iterative = score_matching_path(
        data, mask, grid, estimator="closed_form", batch_size=None, lr=0.01, warmup_steps=200,
        steps_per_penalty=50, tol=1e-3, max_steps_per_penalty=600, prox="adam",
    )  # fmt: skip
    gap = (iterative.precisions - exact.precisions).abs().max()
    assert float(gap) < 0.03
    assert float(exact.precisions[0].abs().max()) > 0.5  # not a trivial match at zero
    assert len(iterative.info["steps"]) == 2 and all(s >= 50 for s in iterative.info["steps"])


def test_imputed_path_is_the_quadratic_path_on_its_imputed_statistics():
    """Every estimate of the imputed path satisfies the complete-data optimality conditions on
    the E-step's Gram matrix under the imputation fit, and that fit is EM's fixed point at
    imputation_penalty."""
    _, data, mask = _problem("hub", d=6, n=400, rate=0.4, seed=3)
    path = imputed_path(data, mask, num_penalties=6)
    fit, s = path.info["imputation_fit"], path.info["covariance"]
    gamma = path.info["imputation_penalty"]
    assert gamma == imputation_penalty(mask) and fit.converged
    assert em_kkt_violation(data, mask, fit.loc, fit.precision, gamma) < 1e-3
    completed, mean, gram = expected_statistics(data, mask, fit.loc, fit.precision)
    assert torch.allclose(gram, s, atol=1e-12)
    assert torch.allclose(path.locs, mean.expand(6, -1))
    assert torch.equal(completed[mask], data[mask])
    for penalty, precision in zip(path.penalties.tolist(), path.precisions, strict=True):
        assert kkt_violation(precision, s, penalty) < 1e-6
    assert path.penalties[0] > path.penalties[-1]  # from the empty graph down
    assert not edges_from_precision(path.precisions[0]).any()  # the top is the empty graph
    assert edges_from_precision(path.precisions[-1]).any()
    # explicit penalties and imputation penalty are honoured
    again = imputed_path(data, mask, path.penalties[:3], imputation=0.0)
    assert again.info["imputation_penalty"] == 0.0
    assert torch.equal(again.penalties, path.penalties[:3])
    with pytest.raises(ValueError, match="non-negative"):
        imputed_path(data, mask, imputation=-1.0)


def test_imputed_selection_refits_each_support_on_the_imputed_statistics():
    """The default estimator scores each estimate of the imputed path after the constrained
    quadratic refit on the path's statistics (support_refits(covariance=S))."""
    from pyro_msm.graphical import ebic, support_refits

    _, data, mask = _problem("hub", d=7, n=500, rate=0.4, seed=9)
    model = GraphicalScoreMatching(solver="imputed", num_penalties=6)
    model.fit(data.masked_fill(~mask, float("nan")))
    path, s = model.path_, model.path_.info["covariance"]
    refits = support_refits(data, mask, path.locs, path.precisions, covariance=s)
    for precision, refit in zip(path.precisions, refits, strict=True):
        support = edges_from_precision(precision) | torch.eye(7, dtype=torch.bool)
        assert bool((refit[~support] == 0).all())
        assert kkt_violation(refit, s, 0.0, support=support) < 1e-6
    want = ebic(data, mask, path.locs, refits, beta=LIKELIHOOD_EBIC_BETA, sample_size="pairs")
    assert torch.allclose(model.ebic_, want)
    assert model.penalty_index_ == int(torch.argmin(want))
    with pytest.raises(ValueError, match="covariance must be"):
        support_refits(data, mask, path.locs, path.precisions, covariance=s[:6, :6])


def test_imputed_path_on_complete_data_is_the_quadratic_path():
    problem = simulate_graph("star", d=6, n=500, missing_rate=0.0, seed=4)
    x = problem.x.double()
    path = imputed_path(x, None, num_penalties=5)
    s = sample_covariance(x)
    assert torch.allclose(path.info["covariance"], s, atol=1e-12)
    want, _ = quadratic_path(s, path.penalties)
    assert torch.allclose(path.precisions, want, atol=1e-12)
    assert torch.allclose(path.locs[0], x.mean(0), atol=1e-12)


def test_imputation_penalty_is_the_noise_rate_of_the_gram_matrix():
    n, d = 400, 9
    full = torch.ones(n, d, dtype=torch.bool)
    assert imputation_penalty(full) == pytest.approx(2 * math.sqrt(math.log(d) / n))
    assert imputation_penalty(full, scale=0.5) == pytest.approx(math.sqrt(math.log(d) / n))
    # half the rows observe each pair: sqrt(1/2) of the complete-data rate
    half = full.clone()
    half[::2, 0] = False
    half[1::2, 1:] = False  # rows observe column 0 only or columns 1.. only
    half[1::2, 0] = True
    m = half.double()
    pairs = float((m.T @ m).sum() - (m.T @ m).diagonal().sum()) / (d * (d - 1))
    assert imputation_penalty(half) == pytest.approx(2 * math.sqrt(pairs * math.log(d)) / n)
    for bad in (torch.ones(n, d), torch.ones(n, 1, dtype=torch.bool)):
        with pytest.raises(ValueError):
            imputation_penalty(bad)
    with pytest.raises(ValueError, match="scale"):
        imputation_penalty(full, scale=0.0)


def test_imputed_path_recovers_a_known_graph_and_is_the_estimators_default():
    """On a 30-node chain with 50% MCAR the imputed path ranks the true edges first (path ROC
    AUC near one) and the default estimator uses it."""
    problem = simulate_graph("chain", d=30, n=1000, missing_rate=0.5, seed=2)
    data, mask = as_data_and_mask(problem.observed.double())
    path = imputed_path(data, mask, num_penalties=12)
    assert path_auc(problem.adjacency, path.precisions) > 0.98
    model = GraphicalScoreMatching(num_penalties=12).fit(problem.observed)
    assert model.solver_ == "imputed" and model.path_.method == "imputed"
    assert torch.allclose(model.precisions_, path.precisions, atol=1e-12)
    assert f1_score(problem.adjacency, model.adjacency_) > 0.8


def test_em_recovers_a_known_sparse_truth_as_n_grows():
    errors = []
    for n in (400, 6400):
        problem = simulate_graph("chain", d=5, n=n, missing_rate=0.3, seed=6)
        data, mask = as_data_and_mask(problem.observed.double())
        sol = refit_support(data, mask, problem.adjacency, solver="em", tol=1e-8)
        errors.append(frobenius_error(sol.precision, problem.precision, relative=True))
    assert errors[1] < 0.5 * errors[0] and errors[1] < 0.05
    # the penalised path finds the chain at large n
    path = em_path(data, mask, num_penalties=12)
    fitted = edges_from_precision(path.precisions)
    assert any(bool(f.equal(problem.adjacency)) for f in fitted)


def test_marginal_recovers_a_known_truth():
    problem = simulate_graph("chain", d=4, n=4000, missing_rate=0.3, seed=7)
    data, mask = as_data_and_mask(problem.observed.double())
    sol = refit_support(data, mask, problem.adjacency, solver="marginal", tol=1e-9)
    assert frobenius_error(sol.precision, problem.precision, relative=True) < 0.06


@pytest.mark.parametrize("solver", ["em", "marginal"])
def test_refit_solves_the_constrained_problem(solver):
    problem, data, mask = _problem("star", d=5, n=300, rate=0.3, seed=8)
    support = problem.adjacency
    sol = refit_support(data, mask, support, solver=solver, tol=1e-10, max_iter=5000)
    off_support = ~(support | torch.eye(5, dtype=torch.bool))
    assert bool((sol.precision[off_support] == 0).all())
    check = em_kkt_violation if solver == "em" else marginal_kkt_violation
    assert check(data, mask, sol.loc, sol.precision, 0.0, support=support) < 1e-5
    # unconstrained, the same point is not optimal (the support is binding)
    assert check(data, mask, sol.loc, sol.precision, 0.0) > 1e-3


def test_refit_on_complete_data_is_the_constrained_quadratic_solution():
    problem = simulate_graph("hub", d=6, n=500, missing_rate=0.0, seed=9)
    x = problem.x.double()
    s = sample_covariance(x)
    sol = refit_support(x, None, problem.adjacency, solver="em")
    quad = quadratic_score_matching(s, 0.0, support=problem.adjacency, tol=1e-12)
    assert torch.allclose(sol.precision, quad.precision, atol=1e-7)
    assert kkt_violation(quad.precision, s, 0.0, support=problem.adjacency) < 1e-8


# --------------------------------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------------------------------


def test_score_matching_ebic_by_hand_and_selection():
    problem = simulate_graph("star", d=8, n=2000, missing_rate=0.3, seed=10, extra_edges=2)
    data, mask = as_data_and_mask(problem.observed.double())
    path = em_path(data, mask, num_penalties=15)
    scores = ebic_score_matching(data, mask, path.locs, path.precisions, refit=False)
    k = 7
    edges = int(torch.triu(edges_from_precision(path.precisions[k]), 1).sum())
    # the loss of the table standardised by its observed standard deviations
    m = mask.double()
    centre = (data * m).sum(0) / m.sum(0)
    sd = ((((data - centre) * m) ** 2).sum(0) / m.sum(0)).sqrt()
    stats = pattern_statistics(torch.where(mask, data / sd, 0.0), mask)
    scaled = path.precisions[k] * sd[:, None] * sd[None, :]
    loss = float(grouped_marginal_loss(stats, path.locs[k] / sd, scaled))
    pairs = 8 * 7 // 2
    log_binom = math.lgamma(pairs + 1) - math.lgamma(edges + 1) - math.lgamma(pairs - edges + 1)
    assert float(scores[k]) == pytest.approx(2000 * loss + edges * math.log(2000) + log_binom)
    refit = ebic_score_matching(data, mask, path.locs, path.precisions)
    chosen = edges_from_precision(path.precisions[int(torch.argmin(refit))])
    assert f1_score(problem.adjacency, chosen) >= 0.9


def test_cross_validation_of_the_held_out_loss():
    problem = simulate_graph("chain", d=5, n=600, missing_rate=0.3, seed=11)
    data, mask = as_data_and_mask(problem.observed.double())
    grid = torch.logspace(0, -3, 8, dtype=torch.float64)
    losses = cross_validate(data, mask, lambda x, m: em_path(x, m, grid), folds=3)
    assert losses.shape == (3, 8) and bool(torch.isfinite(losses).all())
    mean = losses.mean(0)
    assert int(torch.argmin(mean)) not in (0,)  # the empty graph predicts worse
    assert float(mean[0]) > float(mean.min())
    with pytest.raises(ValueError, match="folds"):
        cross_validate(data, mask, lambda x, m: em_path(x, m, grid), folds=1)


def test_edge_of_grid_warning_fires_when_it_should():
    problem = simulate_graph("star", d=6, n=800, missing_rate=0.2, seed=12)
    top = float(imputed_path(problem.observed.double(), num_penalties=2).penalties[0])
    # every penalty gives the empty graph: the largest is selected
    with pytest.warns(GridEdgeWarning, match="largest"):
        GraphicalScoreMatching(penalties=[4 * top, 2 * top, 1.5 * top]).fit(problem.observed)
    # tiny penalties on a graph whose every pair is an edge: the smallest is selected
    dense = simulate_graph("erdos_renyi", d=5, n=3000, missing_rate=0.2, seed=12, p=1.0)
    with pytest.warns(GridEdgeWarning, match="smallest"):
        # (scored without refits: refitted, the three full supports score alike)
        GraphicalScoreMatching(penalties=[1e-2, 5e-3, 1e-3], ebic_refit=False).fit(dense.observed)
    # a default grid on a sparse graph: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", GridEdgeWarning)
        model = GraphicalScoreMatching(num_penalties=15).fit(problem.observed)
    assert 0 < model.penalty_index_ < 14


def test_default_selection_at_half_missing_in_fifty_dimensions():
    """At 50% MCAR and d = 50 the default (likelihood eBIC over the rows that observe each pair,
    beta 0.05, EM refits of each support) selects a graph close to the truth, not an end of the
    grid (docs/benchmarks.md, issue 9)."""
    from pyro_msm.graphical import ebic, observed_log_likelihood, support_refits

    problem = simulate_graph("chain", d=50, n=500, missing_rate=0.5, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GridEdgeWarning)
        model = GraphicalScoreMatching(num_penalties=8, progress=False).fit(problem.observed)
    assert f1_score(problem.adjacency, model.adjacency_) > 0.8
    assert 0 < model.penalty_index_ < 7
    path = model.path_
    data, mask = as_data_and_mask(problem.observed.double())
    # EM refits climb the observed-data likelihood from genscore's one-step refit
    one = support_refits(data, mask, path.locs[1:3], path.precisions[1:3], max_iter=1)
    ten = support_refits(data, mask, path.locs[1:3], path.precisions[1:3])
    for k in range(2):
        gain = observed_log_likelihood(data, mask, path.locs[k + 1], ten[k]).sum()
        assert float(gain) > float(
            observed_log_likelihood(data, mask, path.locs[k + 1], one[k]).sum()
        )
        on = edges_from_precision(path.precisions[k + 1]) | torch.eye(50, dtype=torch.bool)
        assert bool((ten[k][~on] == 0).all())
    # on complete data the pair counts are n: both sample sizes give the same criterion
    full = torch.ones_like(mask)
    x = problem.x.double()
    rows = ebic(x, full, path.locs[:3], path.precisions[:3], sample_size="rows")
    pairs = ebic(x, full, path.locs[:3], path.precisions[:3], sample_size="pairs")
    assert torch.allclose(rows, pairs, rtol=1e-12)
    with pytest.raises(ValueError, match="sample_size"):
        ebic(x, full, path.locs[:1], path.precisions[:1], sample_size="cells")


# --------------------------------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------------------------------


def test_dataframe_round_trip_keeps_names():
    pd = pytest.importorskip("pandas")
    problem = simulate_graph("chain", d=5, n=500, missing_rate=0.2, seed=13)
    names = ["alpha", "beta", "gamma", "delta", "epsilon"]
    frame = pd.DataFrame(problem.observed.numpy(), columns=names).astype("Float64")
    frame.iloc[0, 0] = pd.NA  # nullable missing values count as missing
    model = GraphicalScoreMatching(num_penalties=12, refit=True).fit(frame)
    assert model.solver_ == "imputed"
    assert list(model.feature_names_in_) == names and model.n_features_in_ == 5
    assert all(a in names and b in names for a, b in model.edge_names_)
    assert ("alpha", "beta") in model.edge_names_ and ("gamma", "delta") in model.edge_names_
    table = model.edge_table()
    assert list(table.columns[:2]) == ["source", "target"] and len(table) == len(model.edges_)
    assert table["partial_correlation"].abs().is_monotonic_decreasing
    i, j = model.edges_[0]
    p = model.precision_
    want = -p[i, j] / math.sqrt(float(p[i, i] * p[j, j]))
    assert float(model.partial_correlation_[i, j]) == pytest.approx(float(want))
    # arrays get default names and no feature_names_in_
    plain = GraphicalScoreMatching(num_penalties=12).fit(problem.observed.numpy())
    assert not hasattr(plain, "feature_names_in_")
    assert all(a.startswith("x") for a, _ in plain.edge_names_)
    with pytest.raises(TypeError, match="'text'"):
        GraphicalScoreMatching().fit(frame.assign(text="a"))


def test_estimator_em_path_caps_the_maps_per_penalty():
    """The estimator's EM path is em_path with EM_PATH_MAX_ITER maps per penalty (the cap binds
    at a high missing rate, where a converged path needs more maps)."""
    problem = simulate_graph("hub", d=6, n=300, missing_rate=0.75, seed=5)
    data, mask = as_data_and_mask(problem.observed.double())
    model = GraphicalScoreMatching(solver="em", num_penalties=6).fit(problem.observed)
    capped = em_path(data, mask, model.penalties_, max_iter=EM_PATH_MAX_ITER)
    assert torch.allclose(model.path_.precisions, capped.precisions, atol=1e-12)
    assert max(model.path_.info["iterations"]) <= EM_PATH_MAX_ITER
    converged = GraphicalScoreMatching(solver="em", num_penalties=6, max_iter=40).fit(
        problem.observed
    )
    assert max(converged.path_.info["iterations"]) > EM_PATH_MAX_ITER
    assert not all(model.path_.info["converged"])  # the capped points say so


def test_estimator_solvers_selections_and_threads():
    problem = simulate_graph("star", d=5, n=300, missing_rate=0.3, seed=14)
    threads = torch.get_num_threads()
    marginal = GraphicalScoreMatching(solver="marginal", num_penalties=4, n_jobs=1).fit(
        problem.observed
    )
    assert torch.get_num_threads() == threads  # restored
    assert marginal.solver_ == "marginal" and marginal.path_.method == "marginal"
    cv = GraphicalScoreMatching(num_penalties=6, selection="cv", cv_folds=2).fit(problem.observed)
    assert cv.criterion_.shape == (6,) and not hasattr(cv, "ebic_")
    genscore = GraphicalScoreMatching(selection="ebic_sm", num_penalties=6).fit(problem.observed)
    assert genscore.ebic_.shape == (6,)
    refitted = GraphicalScoreMatching(ebic_refit=True, num_penalties=6).fit(problem.observed)
    assert refitted.ebic_.shape == (6,)
    with pytest.raises(ValueError, match="unknown selection"):
        GraphicalScoreMatching(selection="aic").fit(problem.observed)
    with pytest.raises(ValueError, match="n_jobs"):
        GraphicalScoreMatching(n_jobs=0).fit(problem.observed)
    with pytest.raises(RuntimeError, match="not fitted"):
        GraphicalScoreMatching().edge_table()


def test_plots_of_graph_and_path(tmp_path):
    pytest.importorskip("matplotlib")
    problem = simulate_graph("star", d=6, n=600, missing_rate=0.2, seed=15)
    model = GraphicalScoreMatching(num_penalties=8).fit(problem.observed)
    fig = model.plot_graph(path=tmp_path / "graph.png")
    ax = fig.axes[0]
    assert len(ax.lines) == len(model.edges_)  # one segment per edge
    assert (tmp_path / "graph.png").stat().st_size > 0
    fig = model.plot_path(path=tmp_path / "path.png")
    assert len(fig.axes) == 3  # coefficients, edge count, criterion
    assert (tmp_path / "path.png").stat().st_size > 0


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "bench.csv"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "graph_engine.py"), "--smoke", "--out",
         str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    text = out.read_text()
    assert "path_auc" in text and "default" in text and "em_glasso" in text
    assert np.isfinite(float(text.splitlines()[1].split(",")[-1]))
    # the docs' table from the CSV: one cell row, the counts
    table = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "graph_engine.py"), "--table", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr[-2000:]
    lines = table.stdout.splitlines()
    assert lines[2].startswith("| chain, 6, 150, 30% |") and lines[-1].startswith("cells: 1,")
    # the likelihood path, without the score-matching eBIC column
    quick = tmp_path / "quick.csv"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "graph_engine.py"), "--smoke", "--no-ebic-sm",
         "--methods", "imputed", "imputed_likelihood", "--out", str(quick)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    import csv

    rows = list(csv.DictReader(quick.open()))
    assert [r["method"] for r in rows] == ["imputed", "imputed_likelihood"]
    assert all(math.isnan(float(r["f1_ebic_sm"])) for r in rows)
    assert all(0.5 <= float(r["path_auc"]) <= 1.0 for r in rows)


def test_fitted_estimator_saves_and_loads(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 4, generator=g, dtype=torch.float64)
    x[torch.rand(80, 4, generator=g) < 0.2] = float("nan")
    est = GraphicalScoreMatching(progress=False).fit(x)
    est.save(tmp_path / "graph.pkl")
    back = GraphicalScoreMatching.load(tmp_path / "graph.pkl")
    assert torch.equal(back.precision_, est.precision_) and back.edges_ == est.edges_
    assert back.get_params() == est.get_params()

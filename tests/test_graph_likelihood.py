"""The graphical lasso on fixed statistics (pyro_msm.graphical.likelihood) and the imputed
path's likelihood loss: closed forms, optimality conditions, agreement with scikit-learn."""

from __future__ import annotations

import pytest
import torch

from pyro_msm.graphical import (
    HUB_DEGREE_RATIO,
    GraphicalScoreMatching,
    chain_graph,
    degree_ratio,
    edges_from_precision,
    f1_score,
    graphical_lasso,
    graphical_lasso_path,
    imputed_path,
    likelihood_kkt_violation,
    likelihood_max_penalty,
    likelihood_objective,
    path_auc,
    sample_covariance,
    simulate_graph,
    star_graph,
    support_refits,
)
from pyro_msm.graphical.path import as_data_and_mask


def _covariance(graph="hub", d=8, n=400, seed=0, dtype=torch.float64):
    problem = simulate_graph(graph, d=d, n=n, missing_rate=0.0, seed=seed)
    return problem, sample_covariance(problem.x.to(dtype))


def test_closed_forms_at_both_ends_of_the_penalty():
    """lambda = 0 gives S^-1; lambda >= max |S_ij| the diagonal diag(1/S_ii), and just below
    it an off-diagonal entry enters."""
    _, s = _covariance()
    zero = graphical_lasso(s, 0.0)
    assert zero.converged
    assert torch.allclose(zero.precision, torch.linalg.inv(s), rtol=1e-6, atol=1e-6)
    top = likelihood_max_penalty(s)
    off = s - torch.diag(s.diagonal())
    assert top == pytest.approx(float(off.abs().max()))
    diagonal = graphical_lasso(s, top).precision
    assert torch.allclose(diagonal, torch.diag(1.0 / s.diagonal()), atol=1e-10)
    below = graphical_lasso(s, 0.9 * top).precision
    assert edges_from_precision(below).any()


@pytest.mark.parametrize("fraction", [0.5, 0.2, 0.05])
def test_solution_satisfies_the_optimality_conditions(fraction):
    """At the solution S - P^-1 vanishes on the diagonal, equals -lambda sign(P_ij) on the
    support and is at most lambda in absolute value off it; no point of a perturbation in
    any direction has a smaller objective."""
    _, s = _covariance("erdos_renyi", d=10, seed=3)
    penalty = fraction * likelihood_max_penalty(s)
    sol = graphical_lasso(s, penalty, tol=1e-9)
    assert sol.converged
    assert likelihood_kkt_violation(sol.precision, s, penalty) < 1e-8
    value = likelihood_objective(sol.precision, s, penalty)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        bump = 1e-3 * torch.randn(10, 10, generator=generator, dtype=s.dtype)
        assert likelihood_objective(sol.precision + bump + bump.T, s, penalty) >= value - 1e-12


def test_agrees_with_scikit_learns_graphical_lasso():
    covariance_module = pytest.importorskip("sklearn.covariance")
    _, s = _covariance("star", d=9, seed=5)
    penalty = 0.3 * likelihood_max_penalty(s)
    ours = graphical_lasso(s, penalty, tol=1e-10).precision
    _, theirs = covariance_module.graphical_lasso(
        s.numpy(), alpha=penalty, tol=1e-10, enet_tol=1e-10, max_iter=2000
    )
    theirs = torch.as_tensor(theirs)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert likelihood_objective(ours, s, penalty) <= likelihood_objective(theirs, s, penalty)


def test_support_constrained_refit_matches_the_covariance_on_the_support():
    """The constrained maximum-likelihood refit (penalty 0, zeros off the support) reproduces
    S on the support and the diagonal ((P^-1)_ij = S_ij there), and on the full support it is
    S^-1."""
    problem, s = _covariance("chain", d=7, n=600, seed=2)
    support = problem.adjacency.to(torch.bool)
    refit = graphical_lasso(s, 0.0, support=support, tol=1e-10)
    assert refit.converged
    allowed = support | torch.eye(7, dtype=torch.bool)
    assert bool((refit.precision[~allowed] == 0).all())
    implied = torch.linalg.inv(refit.precision)
    assert torch.allclose(implied[allowed], s[allowed], atol=1e-8)
    full = graphical_lasso(s, 0.0, support=torch.ones(7, 7, dtype=torch.bool)).precision
    assert torch.allclose(full, torch.linalg.inv(s), rtol=1e-6, atol=1e-6)


def test_path_is_warm_started_and_each_estimate_is_optimal():
    _, s = _covariance("hub", d=12, seed=4)
    top = likelihood_max_penalty(s)
    grid = torch.logspace(0, -2, 8, dtype=torch.float64) * top
    precisions, iterations = graphical_lasso_path(s, grid)
    assert precisions.shape == (8, 12, 12) and len(iterations) == 8
    for penalty, precision in zip(grid.tolist(), precisions, strict=True):
        assert likelihood_kkt_violation(precision, s, penalty) < 1e-6
    edges = [int(edges_from_precision(p).sum()) for p in precisions]
    assert edges[0] == 0 and edges[-1] > edges[len(edges) // 2] > 0


def test_follows_the_dtype_of_the_statistics():
    _, s = _covariance(dtype=torch.float32)
    sol = graphical_lasso(s, 0.2 * likelihood_max_penalty(s), tol=1e-5)
    assert sol.precision.dtype == torch.float32 and sol.converged


def test_bad_input_is_refused():
    _, s = _covariance(d=5)
    with pytest.raises(ValueError, match="non-negative"):
        graphical_lasso(s, -1.0)
    with pytest.raises(ValueError, match="positive definite"):
        graphical_lasso(s, 0.1, init=-torch.eye(5, dtype=s.dtype))
    with pytest.raises(ValueError, match="shape"):
        graphical_lasso(s, 0.1, init=torch.eye(4, dtype=s.dtype))
    with pytest.raises(ValueError, match="empty"):
        graphical_lasso_path(s, [])
    with pytest.raises(RuntimeError, match="the graphical lasso did not converge"):
        graphical_lasso_path(s, [0.01 * likelihood_max_penalty(s)], max_iter=2)
    assert likelihood_objective(-torch.eye(5, dtype=s.dtype), s, 0.1) == float("inf")
    assert likelihood_kkt_violation(-torch.eye(5, dtype=s.dtype), s, 0.1) == float("inf")
    eye = torch.eye(5, dtype=s.dtype)
    for check in (likelihood_objective, likelihood_kkt_violation):
        with pytest.raises(ValueError, match=r"precision must be a \(5, 5\) tensor"):
            check(torch.eye(4, dtype=s.dtype), s, 0.1)
        with pytest.raises(ValueError, match="precision has NaN"):
            check(eye.masked_fill(eye.bool(), float("nan")), s, 0.1)
        with pytest.raises(ValueError, match="covariance has NaN"):
            check(eye, s * float("nan"), 0.1)
    with pytest.raises(ValueError, match="covariance must be square"):
        likelihood_max_penalty(torch.ones(5, dtype=s.dtype))


# --------------------------------------------------------------------------------------------------
# the imputed path with the likelihood loss
# --------------------------------------------------------------------------------------------------


def test_imputed_likelihood_path_is_the_graphical_lasso_on_the_imputed_statistics():
    problem = simulate_graph("star", d=8, n=500, missing_rate=0.4, seed=6)
    data, mask = as_data_and_mask(problem.observed.double())
    path = imputed_path(data, mask, num_penalties=6, loss="likelihood")
    s = path.info["covariance"]
    assert path.method == "imputed_likelihood" and path.info["loss"] == "likelihood"
    assert path.penalties[0] == pytest.approx(likelihood_max_penalty(s))
    # the same imputation as the score-matching path
    sm = imputed_path(data, mask, num_penalties=6)
    assert torch.allclose(sm.info["covariance"], s, atol=1e-12)
    for penalty, precision in zip(path.penalties.tolist(), path.precisions, strict=True):
        assert likelihood_kkt_violation(precision, s, penalty) < 1e-5
    # complete data: the graphical lasso path on the sample covariance
    x = problem.x.double()
    complete = imputed_path(x, None, num_penalties=5, loss="likelihood")
    want, _ = graphical_lasso_path(sample_covariance(x), complete.penalties)
    assert torch.allclose(complete.precisions, want, atol=1e-12)
    with pytest.raises(ValueError, match="unknown loss"):
        imputed_path(data, mask, loss="glasso")


def test_likelihood_refits_solve_the_constrained_problem_on_the_statistics():
    problem = simulate_graph("hub", d=7, n=500, missing_rate=0.4, seed=9)
    data, mask = as_data_and_mask(problem.observed.double())
    path = imputed_path(data, mask, num_penalties=5, loss="likelihood")
    s = path.info["covariance"]
    refits = support_refits(data, mask, path.locs, path.precisions, covariance=s, loss="likelihood")
    for precision, refit in zip(path.precisions, refits, strict=True):
        support = edges_from_precision(precision) | torch.eye(7, dtype=torch.bool)
        assert bool((refit[~support] == 0).all())
        assert likelihood_kkt_violation(refit, s, 0.0, support=support) < 1e-6
    with pytest.raises(ValueError, match="unknown loss"):
        support_refits(data, mask, path.locs, path.precisions, covariance=s, loss="l2")
    with pytest.raises(ValueError, match="pass covariance"):
        support_refits(data, mask, path.locs, path.precisions, loss="likelihood")


def test_estimator_recovers_a_hub_graph_with_the_likelihood_path():
    """solver="imputed_likelihood" on a hub graph with 50% MCAR: the true edges come first
    (path ROC AUC near one) and the selected graph is close to the truth; the selection
    scores are the eBIC after maximum-likelihood refits on the imputed statistics."""
    problem = simulate_graph("hub", d=20, n=1000, missing_rate=0.5, seed=1)
    model = GraphicalScoreMatching(solver="imputed_likelihood", num_penalties=10)
    model.fit(problem.observed)
    assert model.solver_ == "imputed_likelihood"
    assert model.path_.info["loss"] == "likelihood"
    assert path_auc(problem.adjacency, model.precisions_) > 0.97
    assert f1_score(problem.adjacency, model.adjacency_) > 0.8
    with pytest.raises(ValueError, match="Gaussian data on R"):
        GraphicalScoreMatching(solver="imputed_likelihood", support="nonnegative").fit(
            problem.observed.abs()
        )


def test_degree_ratio_of_known_graphs():
    """Largest over mean degree: d/2 for a star (degrees d-1 and 1), d/(d-1) for a chain,
    1 for the empty graph."""
    d = 10
    eye = torch.eye(d, dtype=torch.float64)
    star = eye + 0.1 * star_graph(d).to(torch.float64)
    chain = eye + 0.1 * chain_graph(d).to(torch.float64)
    assert degree_ratio(star) == pytest.approx(d / 2)
    assert degree_ratio(chain) == pytest.approx(d / (d - 1))
    assert degree_ratio(eye) == 1.0
    with pytest.raises(ValueError, match=r"\(d, d\)"):
        degree_ratio(torch.stack([eye, eye]))


@pytest.mark.parametrize(("graph", "loss"), [("star", "likelihood"), ("chain", "score_matching")])
def test_auto_loss_takes_the_likelihood_for_hubs(graph, loss):
    """loss="auto" reads the imputation fit's degree ratio: a star's hub makes it the
    likelihood path, a chain the score-matching path; the estimator's default does the same
    and says which in solver_."""
    problem = simulate_graph(graph, d=20, n=1000, missing_rate=0.4, seed=3)
    data, mask = as_data_and_mask(problem.observed.double())
    path = imputed_path(data, mask, num_penalties=5, loss="auto")
    ratio = path.info["degree_ratio"]
    assert ratio == pytest.approx(degree_ratio(path.info["imputation_fit"].precision))
    assert (ratio >= HUB_DEGREE_RATIO) == (loss == "likelihood")
    assert path.info["loss"] == loss
    want = imputed_path(data, mask, num_penalties=5, loss=loss)
    assert torch.allclose(path.precisions, want.precisions, atol=1e-12)
    model = GraphicalScoreMatching(num_penalties=5).fit(problem.observed)
    assert model.solver_ == want.method
    assert torch.allclose(model.precisions_, want.precisions, atol=1e-12)


def test_refit_of_the_likelihood_path_is_the_constrained_maximum_likelihood():
    problem = simulate_graph("star", d=10, n=800, missing_rate=0.3, seed=2)
    model = GraphicalScoreMatching(solver="imputed_likelihood", num_penalties=8, refit=True)
    model.fit(problem.observed)
    s = model.path_.info["covariance"]
    support = model.adjacency_ | torch.eye(10, dtype=torch.bool)
    assert likelihood_kkt_violation(model.precision_, s, 0.0, support=support) < 1e-6
    selected = model.precisions_[model.penalty_index_]
    assert torch.equal(model.adjacency_, edges_from_precision(selected))


def test_cross_validation_folds_solve_the_loss_of_the_full_path(monkeypatch):
    """With selection="cv" every fold runs the path the full data chose under loss="auto"
    (the grid is on that loss's scale), whatever a fold's own degree ratio would choose."""
    import pyro_msm.graphical.estimator as estimator_module

    problem = simulate_graph("star", d=20, n=1000, missing_rate=0.4, seed=3)
    losses = []
    original = estimator_module.imputed_path

    def spy(*args, **kwargs):
        losses.append(kwargs.get("loss"))
        return original(*args, **kwargs)

    monkeypatch.setattr(estimator_module, "imputed_path", spy)
    model = GraphicalScoreMatching(num_penalties=5, selection="cv", cv_folds=2)
    model.fit(problem.observed)
    assert model.solver_ == "imputed_likelihood"
    assert losses == ["auto", "likelihood", "likelihood"]
    assert model.criterion_.shape == (5,) and bool(torch.isfinite(model.criterion_).all())

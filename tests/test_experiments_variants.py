"""The truncated-Gaussian and squared-interaction experiments, the shared harness and the
hybrid head-to-head: closed forms against Monte Carlo, and tiny smoke runs."""

import math
import warnings

import pytest
import torch

from pyro_msm.distributions import SquaredInteractionEnergy, TruncatedGaussianEnergy
from pyro_msm.distributions.energy import vecmat
from pyro_msm.experiments import fit_gaussian, simulate_gaussian
from pyro_msm.experiments.interaction import (
    interaction,
    interaction_fisher,
    plot_interaction,
    simulate_interaction,
)
from pyro_msm.experiments.reporting import head_to_head, read_csv, summarise, write_csv
from pyro_msm.experiments.truncated import (
    halfspace_truncated_moments,
    plot_truncated,
    sample_score_mse,
    simulate_truncated,
    truncated,
    truncated_score_mse,
)


def test_halfspace_moments_match_exact_draws():
    """Closed-form mean and covariance of the half-space-truncated Gaussian against 200k exact
    draws (the boundary is moved off the mean so that alpha != 0 is exercised)."""
    problem = simulate_truncated(4, 10, 0.0, seed=3)
    support = problem.support
    shifted = type(support)(support.normal, support.offset + 0.7)
    truth = TruncatedGaussianEnergy(problem.loc, problem.precision, shifted)
    x = truth.simulate(200_000, seed=1).double()
    mean, cov = halfspace_truncated_moments(problem.loc, problem.precision, shifted)
    sd = cov.diagonal().sqrt()
    assert torch.allclose(x.mean(0), mean, atol=float(5 * sd.max() / math.sqrt(200_000)) + 1e-3)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.02 * float(cov.abs().max()))


def test_truncated_score_mse_is_the_monte_carlo_mean_under_the_truncated_truth():
    problem = simulate_truncated(5, 10, 0.0, seed=0)
    gen = torch.Generator().manual_seed(0)
    loc_hat = problem.loc + 0.3 * torch.randn(5, generator=gen, dtype=torch.float64)
    noise = 0.2 * torch.randn(5, 5, generator=gen, dtype=torch.float64)
    precision_hat = problem.precision + noise @ noise.T
    exact = truncated_score_mse(
        loc_hat, precision_hat, problem.loc, problem.precision, problem.support
    )
    x = TruncatedGaussianEnergy(problem.loc, problem.precision, problem.support).simulate(
        200_000, seed=2
    )
    mc = sample_score_mse(loc_hat, precision_hat, problem.loc, problem.precision, x)
    assert mc == pytest.approx(exact, rel=0.02)
    truth = (problem.loc, problem.precision, problem.loc, problem.precision, problem.support)
    assert truncated_score_mse(*truth) == pytest.approx(0.0, abs=1e-12)


def test_orthant_problem_lies_in_its_domain():
    problem = simulate_truncated(3, 50, 0.2, seed=0, domain="orthant", n_eval=40)
    assert problem.domain == "orthant" and problem.x_eval.shape == (40, 3)
    assert bool((problem.x >= problem.loc.float()).all())
    assert bool((problem.x_eval >= problem.loc).all())
    with pytest.raises(ValueError, match="domain"):
        simulate_truncated(3, 5, 0.2, domain="box")


def test_interaction_fisher_matches_the_one_dimensional_closed_form():
    """For d=1, s_hat - s = 4 (theta_hat - theta) x^3 and E[x^6] = Gamma(7/4) / Gamma(1/4) /
    |theta|^(3/2) under exp(theta x^4)."""
    theta, theta_hat = torch.tensor([[-0.8]]), torch.tensor([[-0.5]])
    x = SquaredInteractionEnergy(theta.double()).simulate(400_000, seed=0, num_sweeps=0)
    moment6 = math.exp(math.lgamma(7 / 4) - math.lgamma(1 / 4)) * 0.8 ** (-1.5)
    exact = 0.5 * 16 * 0.3**2 * moment6
    assert interaction_fisher(theta_hat, theta, x) == pytest.approx(exact, rel=0.02)
    assert interaction_fisher(theta, theta, x) == 0.0


def test_vecmat_on_expanded_matrices_equals_the_batched_product():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(4, 4, generator=gen)
    v = torch.randn(3, 6, 4, generator=gen)
    expected = (v.unsqueeze(-2) @ m.expand(6, 4, 4)).squeeze(-2)
    assert torch.allclose(vecmat(v, m.expand(6, 4, 4)), expected, atol=1e-6)
    assert vecmat(v[0, 0], m.expand(6, 4, 4)).shape == (6, 4)
    batched = torch.randn(6, 4, 4, generator=gen)  # a genuine batch is not collapsed
    assert torch.allclose(vecmat(v, batched), (v.unsqueeze(-2) @ batched).squeeze(-2))


def test_fit_gaussian_hybrid_trains_its_guide():
    """The hybrid estimator is guided: its fit takes steps * (guide_steps + 1) SVI steps and
    records importance ESS from the guide proposal on every model update."""
    problem = simulate_gaussian(d=3, n=60, missing_rate=0.3, seed=0)
    fit = fit_gaussian(problem.observed, problem.mask, "hybrid", steps=4, guide_steps=2)
    assert fit.svi_steps == 12
    assert len(fit.losses) == len(fit.ess) == 4
    assert all(1.0 <= e <= 10.0 for e in fit.ess)


def test_truncated_smoke_run(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rows = truncated(
            ns=(400,), seeds=1, steps=40, progress=False, methods=("iw", "em", "zeroed")
        )
    by_method = {r["method"]: r for r in rows}
    assert list(by_method) == ["complete_oracle", "iw", "em", "zeroed"]
    for method in ("complete_oracle", "iw", "zeroed"):
        r = by_method[method]
        assert math.isfinite(r["fisher"]) and r["fisher"] > 0 and not r["diverged"]
        assert r["score_mse"] == pytest.approx(2 * r["fisher"])
    assert math.isnan(by_method["em"]["fisher"]) and "not available" in by_method["em"]["note"]
    assert 1 < by_method["iw"]["ess"] <= 10
    # complete-data truncated score matching is consistent; zero-filling 20% of a mean-shifted
    # table is not
    assert by_method["complete_oracle"]["fisher"] < by_method["zeroed"]["fisher"]
    assert plot_truncated(rows, tmp_path / "t.png").endswith("t.png")


def test_interaction_smoke_run(tmp_path):
    problem = simulate_interaction(4, 50, 0.5, seed=1, n_eval=30, num_sweeps=5)
    assert problem.x.shape == (50, 4) and problem.x_eval.shape == (30, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rows = interaction(
            dims=(4,),
            n=200,
            seeds=1,
            steps=10,
            progress=False,
            n_eval=500,
            methods=("iw", "zeroed", "complete_case"),
        )
    assert [r["method"] for r in rows] == ["complete_oracle", "iw", "zeroed", "complete_case"]
    for r in rows[:3]:
        assert math.isfinite(r["theta_error"]) and r["fisher"] > 0 and not r["diverged"]
    path = tmp_path / "rows.csv"
    write_csv(rows, str(path))
    back = read_csv([str(path)])
    assert back[1]["fisher"] == pytest.approx(rows[1]["fisher"]) and back[1]["d"] == 4
    assert plot_interaction(back, tmp_path / "i.png").endswith("i.png")


def test_summaries_count_divergence_and_pair_seeds():
    rows = [
        {"d": 2, "n": 9, "missing_rate": 0.5, "seed": s, "method": m, "fisher": v, "diverged": dv}
        for s, m, v, dv in [
            (0, "iw", 2.0, False),
            (0, "variational", 1.0, False),
            (0, "hybrid", 0.5, False),
            (1, "iw", 2.0, False),
            (1, "variational", math.nan, True),
            (1, "hybrid", 3.0, False),
        ]
    ]
    summary = {s["method"]: s for s in summarise(rows, ("method",), ["fisher"])}
    assert summary["variational"]["diverged"] == 1 and summary["variational"]["fisher_mean"] == 1
    assert summary["hybrid"]["fisher_mean"] == pytest.approx(1.75)
    (h,) = head_to_head(rows, "hybrid", ("iw", "variational"))
    assert (h["seeds"], h["wins"], h["beats_iw"], h["beats_variational"]) == (2, 1, 1, 2)
    assert h["ratio_iw_median"] == pytest.approx((0.25 + 1.5) / 2)
    assert h["ratio_variational_median"] == pytest.approx(0.5)

"""pyro_msm.datasets.simulate_gaussian: the truth it reports is the truth it samples from."""

import math

import pytest
import torch

import pyro_msm.experiments
from pyro_msm.datasets import GaussianProblem, random_precision, simulate_gaussian


@pytest.mark.parametrize("kappa", [1.0, 10.0, 300.0])
def test_random_precision_has_the_exact_condition_number(kappa):
    p = random_precision(6, condition_number=kappa, seed=3)
    assert torch.equal(p, p.T)
    eig = torch.linalg.eigvalsh(p)
    assert float(eig.min()) > 0
    assert float(eig.max() / eig.min()) == pytest.approx(kappa, rel=1e-9)
    # log-eigenvalues centred on zero: det P = 1
    assert float(torch.log(eig).sum()) == pytest.approx(0.0, abs=1e-9)


def test_the_rows_are_drawn_from_the_reported_gaussian():
    problem = simulate_gaussian(d=3, n=40_000, missing_rate=0.0, seed=1, dtype=torch.float64)
    assert isinstance(problem, GaussianProblem)
    x = problem.x
    n = x.shape[0]
    cov = problem.covariance
    # the sample mean within 4 standard errors of the true mean, coordinate by coordinate
    se = torch.sqrt(torch.diagonal(cov) / n)
    assert bool(((x.mean(0) - problem.loc).abs() < 4 * se).all())
    # the sample covariance within 4 standard errors (Var of a product of Gaussians:
    # S_ij has variance (C_ij^2 + C_ii C_jj) / n)
    sample = torch.cov(x.T)
    se_cov = torch.sqrt((cov**2 + torch.outer(torch.diagonal(cov), torch.diagonal(cov))) / n)
    assert bool(((sample - cov).abs() < 4 * se_cov).all())


def test_mask_rate_observed_table_and_reproducibility():
    problem = simulate_gaussian(d=5, n=4000, missing_rate=0.3, seed=2)
    rate = problem.realised_missing_rate
    assert abs(rate - 0.3) < 4 * math.sqrt(0.3 * 0.7 / (5 * 4000))
    observed = problem.observed
    assert torch.equal(torch.isnan(observed), ~problem.mask)
    assert torch.equal(observed[problem.mask], problem.x[problem.mask])
    again = simulate_gaussian(d=5, n=4000, missing_rate=0.3, seed=2)
    assert torch.equal(again.x, problem.x) and torch.equal(again.mask, problem.mask)
    other = simulate_gaussian(d=5, n=4000, missing_rate=0.3, seed=3)
    assert not torch.equal(other.x, problem.x)
    assert "MCAR 30% missing" in problem.describe()


@pytest.mark.parametrize("mechanism", ["mar", "mnar"])
def test_other_mechanisms_hide_about_the_requested_share(mechanism):
    problem = simulate_gaussian(d=8, n=3000, missing_rate=0.3, mechanism=mechanism, seed=0)
    assert problem.mechanism == mechanism
    assert 0.2 < problem.realised_missing_rate < 0.4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=0), "n must be at least 1"),
        (dict(mechanism="nmar"), "unknown mechanism"),
        (dict(missing_rate=1.0), "missing_rate"),
        (dict(loc_scale=-1.0), "loc_scale"),
        (dict(condition_number=0.5), "condition_number"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_gaussian(**{"d": 3, "n": 10, **kwargs})


def test_the_old_address_is_the_same_function():
    assert pyro_msm.experiments.simulate_gaussian is simulate_gaussian
    from pyro_msm.experiments.gaussian import simulate_gaussian as old

    assert old is simulate_gaussian

"""Imputations (guide, importance resampling, exact), their calibration, and the ArviZ bridge."""

import math
import warnings

import arviz as az
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
import xarray as xr
from pyro.infer import SVI

import pyro_msm
from pyro_msm import MissingScoreMatching, observe
from pyro_msm.arviz_bridge import assemble, draws_from_inference_data
from pyro_msm.distributions import GaussianEnergy, MLPEnergy
from pyro_msm.experiments import make_gaussian_model, simulate_gaussian
from pyro_msm.guides import AmortizedNormal, no_guide
from pyro_msm.imputation import Imputations, imputation_coverage, imputation_intervals, impute
from pyro_msm.infer.gaussian import conditional_gaussian
from pyro_msm.infer.mechanisms import self_masking_logistic


@pytest.fixture(scope="module")
def problem():
    return simulate_gaussian(d=4, n=1000, missing_rate=0.3, seed=1)


def _true_model(problem):
    """The Gaussian model of the harness, with its parameters at the truth."""
    return make_gaussian_model(
        problem.d, init_loc=problem.loc.float(), init_precision=problem.precision.float()
    )


def _exact_conditional(problem, scale: float = 1.0):
    """Exact conditional mean and standard deviation of every entry (0 where observed)."""
    loc, precision = problem.loc.float(), problem.precision.float() / scale**2
    mean, chol = conditional_gaussian(
        torch.nan_to_num(problem.observed), problem.mask, loc, precision
    )
    covariance = torch.cholesky_inverse(chol)
    sd = torch.diagonal(covariance, dim1=-2, dim2=-1).sqrt() * (~problem.mask)
    return mean, sd


# -- calibration: intervals cover held-out truths at the nominal rate ------------------------------


@pytest.mark.parametrize("method", ["exact", "iw"])
@pytest.mark.parametrize("prob", [0.5, 0.9])
def test_intervals_cover_held_out_truths_at_the_nominal_rate(problem, method, prob):
    imputations = impute(
        _true_model(problem), args=(problem.observed,), method=method, num_draws=400, seed=0
    )
    coverage = imputation_coverage(imputations, problem.x, prob=prob)
    assert coverage.count == int((~problem.mask).sum())
    assert abs(coverage.rate - prob) < 4 * coverage.standard_error, str(coverage)
    finite = ~torch.isnan(coverage.per_feature)
    assert bool(finite.all())
    assert torch.all((coverage.per_feature - prob).abs() < 5 * math.sqrt(prob * (1 - prob) / 250))


def test_overconfident_imputations_cover_less(problem):
    """The check can fail: a model whose conditional is half as wide as the truth's."""
    narrow = make_gaussian_model(
        problem.d, init_loc=problem.loc.float(), init_precision=4 * problem.precision.float()
    )
    imputations = impute(narrow, args=(problem.observed,), method="exact", num_draws=400, seed=0)
    coverage = imputation_coverage(imputations, problem.x, prob=0.9)
    # the interval is half as wide: P(|Z| < 1.645 / 2) = 0.59
    assert abs(coverage.rate - 0.59) < 4 * math.sqrt(0.59 * 0.41 / coverage.count)


def test_iw_resampling_matches_the_exact_conditional(problem):
    imputations = impute(
        _true_model(problem), args=(problem.observed,), method="iw", num_draws=500, seed=1
    )
    mean, sd = _exact_conditional(problem)
    missing = ~problem.mask
    draws = imputations.draws.reshape(-1, problem.n, problem.d)
    z = ((draws.mean(0) - mean) / sd)[missing]
    # Monte Carlo error of a mean of ~1000 resampled draws is about 0.03-0.05 sd
    assert float(z.abs().mean()) < 0.1
    ratio = draws.var(0)[missing] / (sd * sd)[missing]
    assert abs(float(ratio.mean()) - 1.0) < 0.05
    # the moment-matched proposal is the conditional itself here: nearly all particles count
    assert imputations.ess.shape == (2, problem.n)
    assert float(imputations.ess.mean()) > 0.9 * imputations.num_particles


def test_exact_draws_have_the_conditional_moments(problem):
    imputations = impute(
        _true_model(problem), args=(problem.observed,), method="exact", num_draws=2000, seed=2
    )
    mean, sd = _exact_conditional(problem)
    missing = ~problem.mask
    draws = imputations.draws.reshape(-1, problem.n, problem.d)
    z = ((draws.mean(0) - mean) / sd)[missing] * math.sqrt(draws.shape[0])
    assert abs(float(z.mean())) < 6 / math.sqrt(z.numel())  # z-scores are standard normal
    assert abs(float(z.std()) - 1) < 0.1


def test_known_mnar_mechanism_tilts_the_iw_conditional():
    """Self-masking: the conditional of a hidden entry is N(m, s^2) times the probability of
    being hidden, sigma(slope * x + b); its mean is computed by quadrature."""
    covariance = torch.tensor([[1.0, 0.6], [0.6, 1.0]])
    precision = torch.linalg.inv(covariance)
    loc = torch.zeros(2)
    slope, intercept = 2.0, torch.tensor([-5.0, 0.5])
    mechanism = self_masking_logistic(slope, intercept)
    data = torch.tensor([[0.5, math.nan], [-1.0, math.nan], [-2.0, math.nan]])

    def model(x):
        with pyro.plate("rows", x.shape[0]):
            observe("x", GaussianEnergy(loc, precision), obs=x)

    imputations = impute(
        model,
        args=(data,),
        method="iw",
        missingness=mechanism,
        num_draws=4000,
        num_particles=4000,
        num_chains=1,
        seed=0,
    )
    grid = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    for row, x1 in enumerate(data[:, 0].tolist()):
        m, s = 0.6 * x1, math.sqrt(1 - 0.36)
        density = torch.exp(-0.5 * ((grid - m) / s) ** 2) * torch.sigmoid(slope * grid + 0.5)
        tilted_mean = float((grid * density).sum() / density.sum())
        assert tilted_mean > m + 0.15  # the mechanism hides large values: the mean moves up
        drawn = imputations.draws[0, :, row, 1].double()
        assert abs(float(drawn.mean()) - tilted_mean) < 4 * float(drawn.std()) / math.sqrt(1000)


# -- the guide path ----------------------------------------------------------------------------


def test_guide_draws_come_from_the_guide(problem):
    """A guide that samples the exact conditional gives calibrated imputations; observed
    entries are the data in every draw."""
    loc, precision = problem.loc.float(), problem.precision.float()
    model = _true_model(problem)

    def exact_guide(data, mask=None):
        mean, chol = conditional_gaussian(
            torch.nan_to_num(data), ~torch.isnan(data), loc, precision
        )
        covariance = torch.cholesky_inverse(chol)
        with pyro.plate("rows", data.shape[0]):
            pyro.sample("x_unobserved", dist.MultivariateNormal(mean, covariance))

    imputations = impute(model, exact_guide, args=(problem.observed,), num_draws=300, seed=0)
    assert imputations.method == "guide" and imputations.ess is None
    assert imputations.draws.shape == (2, 300, problem.n, problem.d)
    observed = imputations.draws[:, :, problem.mask]
    assert torch.equal(observed, problem.x[problem.mask].expand_as(observed))
    coverage = imputation_coverage(imputations, problem.x, prob=0.9)
    assert abs(coverage.rate - 0.9) < 4 * coverage.standard_error, str(coverage)


def test_trained_amortized_guide_imputes_near_the_conditional_mean():
    pyro.set_rng_seed(0)
    p = simulate_gaussian(d=3, n=400, missing_rate=0.3, seed=2, condition_number=50.0)
    loc, precision = p.loc.float(), p.precision.float()

    def model(data):
        with pyro.plate("rows", data.shape[0]):
            observe("x", GaussianEnergy(loc, precision), obs=data)

    guide = AmortizedNormal(model, hidden_dims=(32, 32), condition_on_mask=True)
    loss = MissingScoreMatching("variational", guide_steps=10)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), loss)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # rows with nothing observed
        for _ in range(400):
            svi.step(p.observed)
    imputations = impute(model, guide, args=(p.observed,), loss=loss, num_draws=300, seed=0)
    assert imputations.method == "guide"
    exact_mean, _ = conditional_gaussian(torch.nan_to_num(p.observed), p.mask, loc, precision)
    missing = ~p.mask

    def rmse(estimate, reference):
        return float(((estimate - reference)[missing] ** 2).mean().sqrt())

    column_means = torch.nanmean(p.observed, 0).expand_as(p.x)
    # the guide's mean is the model's conditional mean up to a small fraction of what plain
    # column means miss, and it predicts the hidden truths as well as the exact conditional
    guide_mean = imputations.mean()
    assert rmse(guide_mean, exact_mean) < 0.25 * rmse(column_means, exact_mean)
    assert rmse(guide_mean, p.x) < 1.05 * rmse(exact_mean, p.x)


# -- options and errors --------------------------------------------------------------------------


def test_seed_reproduces_and_leaves_the_global_stream_alone(problem):
    model = _true_model(problem)
    state = torch.get_rng_state()
    a = impute(model, args=(problem.observed,), num_draws=20, num_particles=50, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = impute(model, args=(problem.observed,), num_draws=20, num_particles=50, seed=3)
    assert torch.equal(a.draws, b.draws)


def test_errors_name_the_problem(problem):
    model = _true_model(problem)
    args = (problem.observed,)
    with pytest.raises(ValueError, match="needs the trained guide"):
        impute(model, no_guide, args=args, method="guide")
    with pytest.raises(ValueError, match="unknown method"):
        impute(model, args=args, method="mcmc")
    with pytest.raises(ValueError, match="at least 1"):
        impute(model, args=args, num_draws=0)
    with pytest.raises(ValueError, match="only method='iw'"):
        impute(
            model, args=args, method="exact", missingness=self_masking_logistic(1.0, torch.zeros(4))
        )
    with pytest.raises(ValueError, match="site='y'"):
        impute(model, args=args, site="y")

    def neural(data):
        with pyro.plate("rows", data.shape[0]):
            observe(
                "x", MLPEnergy(pyro.module("net", pyro_msm.distributions.EnergyMLP(4))), obs=data
            )

    with pytest.raises(TypeError, match="GaussianEnergy"):
        impute(neural, args=args, method="exact")

    def subsampled(data):
        with pyro.plate("rows", data.shape[0], subsample_size=10) as idx:
            observe("x", GaussianEnergy(torch.zeros(4), torch.eye(4)), obs=data[idx])

    with pytest.raises(ValueError, match="subsamples 10 of 1000"):
        impute(subsampled, args=args)

    def empty_guide(data, mask=None):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="samples no 'x_unobserved'"):
        impute(model, empty_guide, args=args)
    with pytest.raises(ValueError, match="prob must be in"):
        imputation_intervals(torch.zeros(3, 2, 2), prob=1.0)
    with pytest.raises(ValueError, match="give mask="):
        imputation_coverage(torch.zeros(3, 2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="nothing was held out"):
        imputation_coverage(torch.zeros(3, 2, 2), torch.zeros(2, 2), mask=torch.ones(2, 2) > 0)


def test_intervals_are_the_equal_tailed_quantiles():
    draws = torch.randn(2, 301, 3, 2, dtype=torch.float64)
    lower, upper = imputation_intervals(draws, prob=0.8)
    pooled = draws.reshape(-1, 3, 2).numpy()
    np.testing.assert_allclose(lower.numpy(), np.quantile(pooled, 0.1, axis=0), rtol=1e-12)
    np.testing.assert_allclose(upper.numpy(), np.quantile(pooled, 0.9, axis=0), rtol=1e-12)


# -- the ArviZ object ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    return simulate_gaussian(d=4, n=200, missing_rate=0.3, seed=1)


@pytest.fixture(scope="module")
def iw_imputations(small):
    return impute(
        _true_model(small), args=(small.observed,), num_draws=100, num_particles=200, seed=0
    )


def test_inference_data_groups_dims_and_shapes(small, iw_imputations):
    frame = pd.DataFrame(small.observed.numpy(), columns=["a", "b", "c", "d"])
    frame.index = [f"r{i}" for i in range(small.n)]
    losses = [3.0, 2.0, 1.5]
    idata = pyro_msm.to_inference_data(
        iw_imputations,
        columns=frame.columns,
        rows=frame.index,
        training={"loss": losses, "ess": [9.0, 9.5, 9.8]},
    )
    assert isinstance(idata, az.InferenceData)
    assert set(idata.groups()) == {
        "posterior",
        "observed_data",
        "constant_data",
        "imputation_stats",
        "training",
    }
    table = idata.posterior["x"]
    assert table.dims == ("chain", "draw", "row", "feature")
    assert table.shape == (2, 100, small.n, small.d)
    assert list(table.coords["feature"].values) == ["a", "b", "c", "d"]
    assert table.coords["row"].values[5] == "r5"
    # observed entries: constant across draws and equal to the data
    mask = idata.constant_data["x_mask"].values
    np.testing.assert_array_equal(mask, small.mask.numpy())
    values = table.values
    np.testing.assert_array_equal(
        values[:, :, mask], np.broadcast_to(small.x.numpy()[mask], values[:, :, mask].shape)
    )
    observed = idata.observed_data["x"].values
    assert np.isnan(observed[~mask]).all()
    np.testing.assert_array_equal(observed[mask], small.x.numpy()[mask])
    # the missing entries, one per label
    missing = idata.posterior["x_missing"]
    assert missing.dims == ("chain", "draw", "entry")
    assert missing.shape[-1] == int((~mask).sum())
    row, feature = missing.coords["entry_row"].values[0], missing.coords["entry_feature"].values[0]
    assert missing.coords["entry"].values[0] == f"{row}, {feature}"
    np.testing.assert_array_equal(
        missing.values[..., 0], table.sel(row=row, feature=feature).values
    )
    assert idata.imputation_stats["ess"].dims == ("chain", "row")
    assert idata.imputation_stats.attrs["num_particles"] == 200
    np.testing.assert_array_equal(idata.training["loss"].values, losses)
    assert idata.training["loss"].dims == ("step",)
    assert idata.attrs["imputation_method"] == "iw"


def test_arviz_functions_run_on_it(iw_imputations):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idata = pyro_msm.to_inference_data(iw_imputations, columns=["a", "b", "c", "d"])
    summary = az.summary(idata, var_names=["x_missing"])
    assert len(summary) == idata.posterior["x_missing"].shape[-1]
    assert summary.index[0].startswith("x_missing[")
    first = idata.posterior["x_missing"].values[..., 0].ravel()
    assert summary["mean"].iloc[0] == pytest.approx(first.mean(), abs=1e-3)
    hdi = az.hdi(idata, var_names=["x_missing"], hdi_prob=0.9)["x_missing"]
    assert hdi.shape == (summary.shape[0], 2)
    assert bool((hdi.sel(hdi="lower") <= hdi.sel(hdi="higher")).all())
    entries = idata.posterior["entry"].values[:4]
    az.plot_forest(idata, var_names=["x_missing"], coords={"entry": entries})
    az.plot_posterior(idata, var_names=["x_missing"], coords={"entry": entries[:2]})
    plt.close("all")


def test_datatree_container_and_coverage_from_either(small, iw_imputations):
    """ArviZ 1.x returns an xarray DataTree; the adapter builds the same groups for it."""
    idata = pyro_msm.to_inference_data(iw_imputations)
    tree = pyro_msm.to_inference_data(iw_imputations, datatree=True)
    assert isinstance(tree, xr.DataTree)
    assert set(tree.children) == set(idata.groups())
    for group in idata.groups():
        xr.testing.assert_identical(tree[group].to_dataset(), idata[group])
    for obj in (idata, tree):
        draws, mask = draws_from_inference_data(obj)
        assert torch.equal(draws, iw_imputations.draws.to(draws.dtype))
        assert torch.equal(mask, small.mask)
        assert imputation_coverage(obj, small.x).rate == pytest.approx(
            imputation_coverage(iw_imputations, small.x).rate
        )
    assert isinstance(
        assemble({"posterior": idata.posterior}, {}, datatree=False), az.InferenceData
    )


def test_to_inference_data_draws_from_a_model_and_checks_labels(problem):
    model = _true_model(problem)
    idata = pyro_msm.to_inference_data(
        model, args=(problem.observed,), method="exact", num_draws=10, num_chains=3, seed=0
    )
    assert idata.posterior["x"].shape == (3, 10, problem.n, problem.d)
    assert "imputation_stats" not in idata.groups() and "training" not in idata.groups()
    assert idata.attrs["imputation_method"] == "exact"
    imputations = Imputations(
        "x", torch.zeros(1, 2, 3, 2), torch.zeros(3, 2), torch.ones(3, 2) > 0, "exact"
    )
    with pytest.raises(ValueError, match="columns has 3 labels for 2"):
        pyro_msm.to_inference_data(imputations, columns=["a", "b", "c"])
    with pytest.raises(ValueError, match="unique"):
        pyro_msm.to_inference_data(imputations, columns=["a", "a"])
    with pytest.raises(ValueError, match="already drawn"):
        pyro_msm.to_inference_data(imputations, num_draws=5)
    with pytest.raises(ValueError, match="different lengths"):
        pyro_msm.to_inference_data(imputations, training={"loss": [1, 2], "ess": [1]})

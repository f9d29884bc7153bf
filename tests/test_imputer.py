"""ScoreMatchingImputer: exact pieces, unbiasedness, calibration, scikit-learn protocol."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline

from pyro_msm import ScoreMatchingImputer
from pyro_msm.imputer import (
    _clustered_se,
    _leave_one_out_errors,
    _resampling_variance_factor,
    gaussian_pattern_loss,
)
from pyro_msm.infer.gaussian import conditional_gaussian, marginal_score_matching_loss


def _gaussian(n: int, seed: int, rate: float = 0.3):
    """Correlated Gaussian in odd units (means and scales far from 0 and 1), MCAR mask."""
    g = np.random.default_rng(seed)
    d = 4
    a = g.normal(size=(d, d))
    cov = a @ a.T / d + 0.3 * np.eye(d)
    loc = np.array([10.0, -3.0, 0.5, 200.0])
    scale = np.array([2.0, 0.1, 1.0, 50.0])
    cov = cov * np.outer(scale, scale)
    x = g.multivariate_normal(loc, cov, size=n)
    mask = g.random((n, d)) > rate
    mask[np.arange(n), g.integers(0, d, n)] = True
    return x, mask, loc, cov


def test_pattern_loss_equals_the_row_sum_of_the_exact_marginal_loss():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, dtype=torch.float64, generator=g)
    mask = torch.rand(60, 5, generator=g) > 0.4
    mask[:, 2] = True
    loc = torch.randn(5, dtype=torch.float64, generator=g)
    a = torch.randn(5, 5, dtype=torch.float64, generator=g)
    precision = a @ a.T + torch.eye(5, dtype=torch.float64)
    expected = marginal_score_matching_loss(x, mask, loc, precision).sum()
    assert torch.allclose(gaussian_pattern_loss(x, mask, loc, precision), expected, rtol=1e-12)


def test_observed_entries_untouched_and_gaps_at_the_true_conditional_mean():
    x, mask, loc, cov = _gaussian(4000, seed=1)
    table = np.where(mask, x, np.nan)
    imp = ScoreMatchingImputer(shrinkage=0.0, random_state=0).fit(table)
    out = imp.transform(table)
    assert np.array_equal(out[mask], table[mask])  # bit for bit
    # the truth's conditional mean of each gap
    t = torch.as_tensor
    precision = torch.linalg.inv(t(cov))
    truth_mean, _ = conditional_gaussian(t(np.nan_to_num(table)), t(mask), t(loc), precision)
    truth_mean = truth_mean.numpy()
    gaps = ~mask
    sd = np.sqrt(np.diag(cov))
    err = ((out - truth_mean) / sd)[gaps]
    # estimated vs true conditional mean: small and centred (consistent fit, unbiased filling)
    assert np.sqrt(np.mean(err**2)) < 0.06
    assert abs(err.mean()) < 0.02
    # and the residuals against the hidden values average zero (unbiased imputation)
    resid = ((x - out) / sd)[gaps]
    assert abs(resid.mean()) < 4 * resid.std() / math.sqrt(resid.size)


def test_intervals_and_draws_cover_at_the_nominal_rate():
    x, mask, _, _ = _gaussian(3000, seed=2)
    table = np.where(mask, x, np.nan)
    imp = ScoreMatchingImputer(random_state=0, n_imputations=200).fit(table)
    gaps = ~mask
    lower, upper = imp.interval(table, prob=0.9)
    assert np.array_equal(lower[mask], table[mask]) and np.array_equal(upper[mask], table[mask])
    inside = ((x >= lower) & (x <= upper))[gaps]
    se = math.sqrt(0.9 * 0.1 / inside.size)
    assert abs(inside.mean() - 0.9) < 4 * se
    draws = np.stack(imp.multiple_imputations(table))
    assert draws.shape == (200,) + x.shape
    assert np.array_equal(draws[:, mask], np.broadcast_to(table[mask], (200, mask.sum())))
    lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
    inside = ((x >= lo) & (x <= hi))[gaps]
    assert abs(inside.mean() - 0.9) < 5 * se
    # a single posterior draw differs from the mean where something was missing
    post = ScoreMatchingImputer(sample_posterior=True, random_state=0).fit(table)
    one = post.transform(table)
    assert np.array_equal(one[mask], table[mask]) and not np.allclose(one[gaps], lower[gaps])


def test_wide_table_is_never_worse_than_mean_imputation():
    # n = 3d, weak correlation: an unpenalised fit overfits; the chosen penalty must not
    g = np.random.default_rng(5)
    n, d = 90, 30
    x = g.normal(size=(n, d)) + 0.2 * g.normal(size=(n, 1))
    mask = g.random((n, d)) > 0.2
    table = np.where(mask, x, np.nan)
    out = ScoreMatchingImputer(random_state=0).fit_transform(table)
    means = np.nanmean(table, 0)
    gaps = ~mask
    rmse = np.sqrt(np.mean((out - x)[gaps] ** 2))
    rmse_mean = np.sqrt(np.mean((np.broadcast_to(means, x.shape) - x)[gaps] ** 2))
    assert rmse <= 1.02 * rmse_mean


def test_dataframes_pipeline_clone_pickle_and_save(tmp_path):
    x, mask, _, _ = _gaussian(300, seed=3)
    df = pd.DataFrame(np.where(mask, x, np.nan), columns=["a", "b", "c", "d"],
                      index=pd.RangeIndex(100, 400, name="id"))
    df["b"] = df["b"].astype("Float64")  # pd.NA marks missing
    imp = ScoreMatchingImputer(random_state=0).set_output(transform="pandas")
    out = imp.fit_transform(df)
    assert list(out.columns) == ["a", "b", "c", "d"] and out.index.equals(df.index)
    assert not out.isna().any().any()
    assert list(imp.get_feature_names_out()) == ["a", "b", "c", "d"]
    cloned = clone(imp)
    assert cloned.get_params() == imp.get_params() and not hasattr(cloned, "precision_")
    again = pickle.loads(pickle.dumps(imp))
    pd.testing.assert_frame_equal(again.transform(df), out)
    imp.save(tmp_path / "imp.pkl")
    pd.testing.assert_frame_equal(ScoreMatchingImputer.load(tmp_path / "imp.pkl").transform(df),
                                  out)
    y = np.nan_to_num(x[:, 0])
    pipe = make_pipeline(ScoreMatchingImputer(random_state=0), LinearRegression())
    pipe.fit(df[["b", "c", "d"]], y)
    assert pipe.predict(df[["b", "c", "d"]]).shape == (300,)
    with pytest.raises(TypeError, match="'label'"):
        ScoreMatchingImputer().fit(df.assign(label="u"))
    with pytest.raises(ValueError, match="shrinkage"):
        ScoreMatchingImputer(shrinkage=-1.0).fit(df)


def test_energy_option_trains_a_network_and_fills_gaps():
    torch.manual_seed(0)
    x, mask, _, _ = _gaussian(200, seed=4)
    table = np.where(mask, x, np.nan)
    imp = ScoreMatchingImputer("mlp", max_iter=30, num_particles=5, random_state=0).fit(table)
    out = imp.transform(table)
    assert np.array_equal(out[mask], table[mask]) and np.isfinite(out).all()
    assert isinstance(imp.energy_, torch.nn.Module)
    lower, upper = imp.interval(table, prob=0.8, num_draws=100)
    assert (lower <= out + 1e-9).all() and (out <= upper + 1e-9).all()


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
def test_float32_on_any_device_gives_the_float64_answer(device):
    # stated tolerance: 2e-3 column sd for filled values and interval ends, 1e-3 relative for
    # the precision (measured 4e-4 to 6e-4 and 1e-4 to 3e-4 at penalties 0.1, 0.003 and auto);
    # float32 L-BFGS stops at its own, coarser, tolerances
    x, mask, _, cov = _gaussian(400, seed=6)
    table = np.where(mask, x, np.nan)
    sd = np.sqrt(np.diag(cov))
    ref = ScoreMatchingImputer(random_state=0).fit(table)
    low = ScoreMatchingImputer(random_state=0, dtype="float32", device=device).fit(table)
    assert low.precision_.dtype == torch.float32 and low.precision_.device.type == device
    assert ref.precision_.dtype == torch.float64 and ref.precision_.device.type == "cpu"
    assert low.shrinkage_ == ref.shrinkage_  # the same penalty chosen on the same folds
    p_ref, p_low = ref.precision_, low.precision_.cpu().double()
    assert float((p_ref - p_low).abs().max() / p_ref.abs().max()) < 1e-3
    out_ref, out_low = ref.transform(table), low.transform(table)
    assert out_low.dtype == np.float64 and np.array_equal(out_low[mask], table[mask])
    assert np.abs((out_ref - out_low) / sd).max() < 2e-3
    for a, b in zip(ref.interval(table), low.interval(table), strict=True):
        assert np.abs((a - b) / sd).max() < 2e-3
    draws = np.stack(low.multiple_imputations(table, 3))
    assert np.isfinite(draws).all() and np.array_equal(draws[:, mask][0], table[mask])


def test_bad_options_name_the_argument():
    table = np.where(np.eye(4, dtype=bool), np.nan, np.arange(16.0).reshape(4, 4))
    for kwargs, word in (
        ({"dtype": "float16"}, "dtype"),
        ({"cv": 1}, "cv"),
        ({"selection": "min"}, "selection"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": "0.05"}, "alpha"),
    ):
        with pytest.raises(ValueError, match=word):
            ScoreMatchingImputer(**kwargs).fit(table)


def test_leave_one_out_errors_are_the_conditional_means_with_one_more_entry_hidden():
    g = torch.Generator().manual_seed(3)
    n, d = 40, 5
    z = torch.randn(n, d, dtype=torch.float64, generator=g)
    mask = torch.rand(n, d, generator=g) > 0.3
    mask[:, 1] = True
    loc = torch.randn(d, dtype=torch.float64, generator=g)
    a = torch.randn(d, d, dtype=torch.float64, generator=g)
    precision = a @ a.T + 0.5 * torch.eye(d, dtype=torch.float64)
    errors = _leave_one_out_errors(z, mask, loc, precision)
    assert torch.equal(errors[~mask], torch.zeros_like(errors[~mask]))
    for j in range(d):  # hide column j where observed: its conditional mean given the rest
        hidden = mask.clone()
        hidden[:, j] = False
        mean, _ = conditional_gaussian(z, hidden, loc, precision)
        rows = mask[:, j]
        assert torch.allclose(errors[rows, j], (z - mean)[rows, j], atol=1e-12)


def test_clustered_standard_error_is_the_plain_one_with_one_entry_per_row():
    g = torch.Generator().manual_seed(4)
    values = torch.randn(50, dtype=torch.float64, generator=g)
    ones = torch.ones(50, dtype=torch.float64)
    assert math.isclose(_clustered_se(values, ones), float(values.std() / math.sqrt(50)),
                        rel_tol=1e-12)
    # rows of two identical entries carry one row's information: twice the per-entry sum
    assert math.isclose(_clustered_se(2 * values, 2 * ones), _clustered_se(values, ones),
                        rel_tol=1e-12)


def test_independent_columns_give_mean_imputation_exactly():
    # no column predicts another: the diagonal model (mean imputation) must be kept
    for seed in range(3):
        g = np.random.default_rng(seed)
        x = g.normal(size=(300, 5)) * [1.0, 2.0, 0.5, 3.0, 1.0] + [0.0, 5.0, -1.0, 2.0, 9.0]
        table = np.where(g.random(x.shape) > 0.2, x, np.nan)
        imp = ScoreMatchingImputer(random_state=seed).fit(table)
        assert math.isinf(imp.shrinkage_) and math.isinf(imp.cv_shrinkage_)
        out = imp.transform(table)
        means = np.broadcast_to(np.nanmean(table, 0), x.shape)
        gaps = np.isnan(table)
        assert np.allclose(out[gaps], means[gaps], rtol=0, atol=1e-12)


def test_products_without_linear_structure_keep_mean_imputation():
    # x3 = x1 x2 + e depends on x1 and x2 but is uncorrelated with them: no linear predictor
    # beats the column mean, so the diagonal model is kept (heavy-tailed squared errors and all)
    for seed in range(2):
        g = np.random.default_rng(100 + seed)
        x = g.normal(size=(400, 6))
        x[:, 2] = x[:, 0] * x[:, 1] + 0.3 * g.normal(size=400)
        x[:, 5] = x[:, 3] * x[:, 4] + 0.3 * g.normal(size=400)
        table = np.where(g.random(x.shape) > 0.2, x, np.nan)
        imp = ScoreMatchingImputer(random_state=seed).fit(table)
        assert math.isinf(imp.shrinkage_)
        assert imp.validation_z_ < imp.validation_threshold_


def test_one_standard_error_rule_keeps_mean_imputation_without_clear_evidence():
    # independent columns: no penalty beats the diagonal model (mean imputation) clearly, so the
    # one-standard-error rule keeps it; "best" takes whatever minimised the held-out error
    g = np.random.default_rng(8)
    x = g.normal(size=(300, 5))
    table = np.where(g.random(x.shape) > 0.2, x, np.nan)
    one_se = ScoreMatchingImputer(random_state=0).fit(table)
    best = ScoreMatchingImputer(random_state=0, selection="best").fit(table)
    rmse = one_se.validation_rmse_
    assert math.isinf(one_se.shrinkage_)
    b = best.cv_shrinkage_
    assert rmse[b] == np.nanmin(list(rmse.values()))
    se = one_se.validation_se_
    # the rule in numbers: mean imputation is within one paired SE of the best
    assert rmse[math.inf] ** 2 - rmse[b] ** 2 <= se[math.inf] + 1e-12
    # with strong correlation the evidence is clear and a finite penalty is chosen; the whole
    # table's penalty is the folds' one scaled by the training share (cv - 1) / cv
    y = x + 2.0 * x[:, :1]
    fitted = ScoreMatchingImputer(random_state=0).fit(np.where(np.isnan(table), np.nan, y))
    assert not math.isinf(fitted.shrinkage_)
    assert 0.75 < fitted.shrinkage_ / fitted.cv_shrinkage_ < 0.85
    assert fitted.validation_z_ > 6 and one_se.validation_z_ < one_se.validation_threshold_


def test_resampling_variance_factor_of_k_fold_is_nadeau_and_bengios():
    # (1/J + n2/n1) sigma^2 against sigma^2 / J: for K equal folds, 1 + K / (K - 1)
    for k in (2, 5, 10):
        held, trained = [60] * k, [60 * (k - 1)] * k
        assert math.isclose(_resampling_variance_factor(held, trained), 1 + k / (k - 1))
    assert _resampling_variance_factor([], []) == 1.0


def test_too_few_rows_to_test_keep_the_diagonal_model():
    # two rows: two clusters cannot estimate a standard error, and Student's t with one degree
    # of freedom says so (the normal quantile would have accepted z = 5 here)
    x = np.array([[0.0, 1.0, np.nan], [1.0, 0.0, 2.0]])
    imp = ScoreMatchingImputer(random_state=0).fit(x)
    assert math.isinf(imp.shrinkage_)


def test_more_folds_than_rows_is_leave_one_row_out():
    # every row has >= 2 observed entries, so all 24 are eligible: cv = 24 puts each row in
    # its own fold, and a larger cv leaves the extra folds empty, which are skipped: the same
    # folds, the same validation errors, the same penalty and fit
    x, mask, _, _ = _gaussian(24, seed=3, rate=0.2)
    mask[:, :2] = True
    table = np.where(mask, x, np.nan)
    loo = ScoreMatchingImputer(cv=24, random_state=0).fit(table)
    many = ScoreMatchingImputer(cv=1000, random_state=0).fit(table)
    assert loo.shrinkage_ == many.shrinkage_
    assert loo.validation_rmse_ == pytest.approx(many.validation_rmse_, nan_ok=True)
    np.testing.assert_allclose(loo.transform(table), many.transform(table), rtol=0, atol=0)


def test_pruned_path_and_loose_validation_fits_choose_as_the_full_search(monkeypatch):
    # the first fold's pruning (PRUNE_Z) and the validation tolerance are shortcuts: the full,
    # tight search on every fold chooses the same penalty with the same held-out errors
    import pyro_msm.imputer as module

    g = np.random.default_rng(9)
    x = g.normal(size=(300, 5))
    x = x + 2.0 * x[:, :1]  # strong correlation: the large penalties are far off the best
    table = np.where(g.random(x.shape) > 0.2, x, np.nan)
    grid = (math.inf, 3.0, 1.0, 0.3, 0.1)  # the small penalties are slow to fit tightly
    fast = ScoreMatchingImputer(random_state=0, shrinkage_grid=grid).fit(table)
    monkeypatch.setattr(module, "PRUNE_Z", math.inf)
    monkeypatch.setattr(module, "VALIDATION_TOL", 1e-8)
    full = ScoreMatchingImputer(random_state=0, shrinkage_grid=grid).fit(table)
    assert fast.cv_shrinkage_ == full.cv_shrinkage_ and not math.isinf(fast.shrinkage_)
    pruned = 0
    for value, rmse in full.validation_rmse_.items():
        if math.isnan(fast.validation_rmse_[value]):
            pruned += 1
            # pruned: far from the best on the pooled folds too
            gap = rmse**2 - min(full.validation_rmse_.values()) ** 2
            assert math.isnan(rmse) or gap > 3 * full.validation_se_[value]
        else:
            assert abs(fast.validation_rmse_[value] - rmse) < 1e-3 * rmse
    assert pruned >= 1  # the shortcut was taken


# scikit-learn's own protocol checks; a fixed penalty keeps each of the ~40 fits to one L-BFGS
# run (the automatic choice is exercised by the tests above). No check is expected to fail.
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402


@parametrize_with_checks([ScoreMatchingImputer(shrinkage=0.1, max_iter=50)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)

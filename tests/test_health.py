"""The fit-health monitor (issue 12): degenerate importance weights warned, non-finite values
refused at once, diverging losses warned; each once, with the remedy."""

from __future__ import annotations

import math
import warnings

import pyro
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import SVI
from pyro.optim import Adam

import pyro_msm
from pyro_msm.distributions import FunctionEnergy, GaussianEnergy
from pyro_msm.guides import no_guide
from pyro_msm.infer import FitHealth, FitHealthError, FitHealthWarning, MissingScoreMatching
from pyro_msm.missingness import apply_mask, mcar_mask


def gaussian_truth(d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    precision = torch.eye(d, dtype=torch.float64) + a @ a.T
    return torch.zeros(d, dtype=torch.float64), precision


def fixed_model(loc, precision):
    def model(data):
        with pyro.plate("rows", data.shape[0]):
            pyro_msm.observe("x", GaussianEnergy(loc, precision), obs=data)

    return model


def sample_table(d: int, n: int, rate: float, seed: int = 0):
    loc, precision = gaussian_truth(d, seed)
    x = GaussianEnergy(loc, precision).sample((n,))
    mask = mcar_mask((n, d), rate, seed=seed + 1)
    mask[torch.arange(n), torch.randint(d, (n,))] = True
    return apply_mask(x, mask), loc, precision


def ess_warnings(d, rate, proposal, calls=8):
    x, loc, precision = sample_table(d, 150, rate)
    loss = MissingScoreMatching("iw", 10, proposal=proposal)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(calls):
            loss.loss(fixed_model(loc, precision), no_guide, x)
    return [w for w in record if issubclass(w.category, FitHealthWarning)], loss


def test_ess_warning_fires_on_the_wide_proposal_in_high_dimension():
    caught, loss = ess_warnings(20, 0.6, "wide")
    assert loss.diagnostics["ess"] < 1.5  # the collapse the issue measured (1.00 of 10)
    assert len(caught) == 1  # once, however many steps
    message = str(caught[0].message)
    assert "degenerate" in message and "moment_matched" in message and "of r=10" in message


def test_ess_warning_silent_on_the_moment_matched_proposal_in_low_dimension():
    caught, loss = ess_warnings(5, 0.2, "moment_matched")
    assert loss.diagnostics["ess"] > 8
    assert caught == []


def test_ess_warning_needs_patience_consecutive_steps():
    health = FitHealth(patience=3)
    low = torch.ones(50)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        health.check_ess(low, 10)
        health.check_ess(low, 10)
        health.check_ess(torch.full((50,), 9.0), 10)  # a healthy step resets the streak
        health.check_ess(low, 10)
        health.check_ess(low, 10)
        assert record == []
        health.check_ess(low, 10)
    assert len(record) == 1
    # one particle is always "collapsed": the share check is skipped there
    quiet = FitHealth(patience=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet.check_ess(torch.ones(50), 1)


def test_ess_check_judges_the_rows_of_every_rank_when_reduced():
    """Under data parallelism the ESS summary is summed over ranks before it is judged: a rank
    whose own rows are healthy still warns when the other ranks' rows are degenerate (here the
    'other rank' is simulated by the reducer), and a rank with no weighted rows takes part."""
    def add_degenerate_rank(sums: torch.Tensor) -> torch.Tensor:
        # another rank's 300 rows, each with ESS 1: sum 300, all collapsed, count 300
        return sums + torch.tensor([300.0, 300.0, 300.0], dtype=sums.dtype)

    healthy = torch.full((50,), 9.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FitHealth(patience=1).check_ess(healthy, 10)  # alone: fine
    with pytest.warns(FitHealthWarning, match="degenerate"):
        FitHealth(patience=1).check_ess(healthy, 10, reduce=add_degenerate_rank)
    with pytest.warns(FitHealthWarning, match=r"mean effective sample size 1\.00"):
        FitHealth(patience=1).check_ess(torch.zeros(0), 10, reduce=add_degenerate_rank)


def test_injected_nan_parameter_raises_at_once_and_keeps_the_others():
    x, loc, precision = sample_table(3, 40, 0.3)

    def model(data):
        m = pyro.param("loc", torch.zeros(3, dtype=data.dtype))
        eye = torch.eye(3, dtype=data.dtype)
        tril = pyro.param("L", eye, constraint=constraints.lower_cholesky)
        with pyro.plate("rows", data.shape[0]):
            pyro_msm.observe("x", GaussianEnergy(m, precision_tril=tril), obs=data)

    svi = SVI(model, no_guide, Adam({"lr": 0.1}), MissingScoreMatching())
    for _ in range(3):
        assert math.isfinite(svi.step(x))
    before = pyro.param("L").detach().clone()
    with torch.no_grad():
        pyro.param("loc").unconstrained()[1] = math.nan
    with pytest.raises(FitHealthError, match=r"non-finite parameter\(s\): loc") as info:
        svi.step(x)
    assert "step 4" in str(info.value)  # the first non-finite step, not later
    assert isinstance(info.value, RuntimeError)  # harnesses that catch RuntimeError keep working
    assert torch.equal(pyro.param("L").detach(), before)  # the optimiser did not move


def test_non_finite_gradient_raises_naming_the_parameter():
    """sqrt at 0 has an infinite derivative: the loss is finite, its gradient is not."""

    def model(data):
        theta = pyro.param("theta", torch.zeros((), dtype=data.dtype))

        def energy(z):
            return 0.5 * (z * z).sum(-1) + theta.sqrt() * z.sum(-1)

        with pyro.plate("rows", data.shape[0]):
            pyro_msm.observe("x", FunctionEnergy(energy, 2), obs=data)

    x = torch.randn(20, 2, dtype=torch.float64)
    svi = SVI(model, no_guide, Adam({"lr": 0.1}), MissingScoreMatching())
    with pytest.raises(FitHealthError, match="gradient of theta"):
        svi.step(x)


def test_non_finite_loss_names_the_site():
    health = FitHealth()
    rows = torch.tensor([1.0, math.nan, 2.0])
    with pytest.raises(FitHealthError, match=r"site 'y': 1 of 3 rows non-finite"):
        health.check_step(math.nan, site_losses={"y": rows})


def test_divergence_warned_once_and_not_for_noise():
    health = FitHealth()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for value in [-10.0, -11.0, -10.5, -12.0, -11.0] + [-12 + 200 * (i % 2) for i in range(20)]:
            health.check_step(value)  # noise of 20x the scale: no warning
    with pytest.warns(FitHealthWarning, match="diverging") as record:
        for value in [-12.0, 100.0, 1000.0, 5000.0, 39522.0]:
            health.check_step(value)
    assert len([w for w in record if "diverging" in str(w.message)]) == 1


def test_a_fit_at_a_huge_learning_rate_is_warned():
    """The issue's lr=5 run: the loss climbs by orders of magnitude."""
    x, loc, precision = sample_table(3, 100, 0.3, seed=2)

    def model(data):
        m = pyro.param("loc", torch.zeros(3, dtype=data.dtype))
        p = pyro.param("P", torch.eye(3, dtype=data.dtype))  # unconstrained: free to blow up
        with pyro.plate("rows", data.shape[0]):
            pyro_msm.observe("x", GaussianEnergy(m, p), obs=data)

    svi = SVI(model, no_guide, Adam({"lr": 5.0}), MissingScoreMatching("zeroed"))
    with pytest.warns(FitHealthWarning, match="diverging"):
        for _ in range(30):
            svi.step(x)


def test_health_can_be_switched_off():
    x, loc, precision = sample_table(3, 40, 0.3)
    model = fixed_model(loc, precision)
    bad = fixed_model(loc * math.nan, precision)
    assert math.isnan(MissingScoreMatching("zeroed", health=False).loss(bad, no_guide, x))
    with pytest.raises(FitHealthError):
        MissingScoreMatching("zeroed").loss(bad, no_guide, x)
    assert math.isfinite(MissingScoreMatching("zeroed", health=False).loss(model, no_guide, x))


def test_reset_forgets_the_history():
    health = FitHealth(patience=1)
    with pytest.warns(FitHealthWarning):
        health.check_ess(torch.ones(10), 10)
    health.reset()
    with pytest.warns(FitHealthWarning):
        health.check_ess(torch.ones(10), 10)


# -- the guards against estimator exploitation ----------------------------------------------------


def test_curvature_penalty_adds_lambda_sum_of_squared_diagonal_jacobian():
    """For a Gaussian b_j = -P_jj everywhere, so the penalty per row is lambda sum_{j in o} P_jj^2
    exactly, on top of the unchanged objective."""
    from pyro_msm.infer import CurvaturePenalty

    x, loc, precision = sample_table(4, 30, 0.3)
    mask = ~torch.isnan(x)
    model = fixed_model(loc, precision)
    pyro.set_rng_seed(3)
    plain = MissingScoreMatching("zeroed").loss(model, no_guide, x)
    penalised = MissingScoreMatching("zeroed", objective=CurvaturePenalty(0.1)).loss(
        model, no_guide, x
    )
    expected = 0.1 * float((mask.double() * precision.diagonal().square()).sum())
    assert penalised - plain == pytest.approx(expected, rel=1e-9)
    sliced = CurvaturePenalty(0.0, objective="sliced")
    pyro.set_rng_seed(5)  # the same proposal draws and projections for both
    wrapped = MissingScoreMatching("iw", objective=sliced).loss(model, no_guide, x)
    pyro.set_rng_seed(5)
    assert wrapped == pytest.approx(
        MissingScoreMatching("iw", objective="sliced").loss(model, no_guide, x), rel=1e-9
    )
    with pytest.raises(ValueError, match="weight"):
        CurvaturePenalty(-1.0)


def test_held_out_monitor_stops_after_patience_and_restores_the_best():
    from pyro_msm.infer import HeldOutMonitor

    x, loc, precision = sample_table(3, 60, 0.3)

    def model(data):
        m = pyro.param("loc", torch.zeros(3, dtype=data.dtype))
        with pyro.plate("rows", data.shape[0]):
            pyro_msm.observe("x", GaussianEnergy(m, precision), obs=data)

    monitor = HeldOutMonitor(model, x, every=2, patience=2)
    pyro.param("loc", loc.clone())  # the truth: the best the monitor will see
    assert monitor(0) is False and monitor.best_step == 0
    assert monitor(1) is False and len(monitor.history) == 1  # not an evaluation step
    with torch.no_grad():
        pyro.param("loc").unconstrained().add_(3.0)  # worse
    assert monitor(2) is False
    assert monitor(4) is True  # two evaluations without improvement
    assert monitor.history[1][1] > monitor.best_loss
    monitor.restore()
    assert torch.allclose(pyro.param("loc").detach(), loc)
    again = monitor.evaluate()
    assert again == pytest.approx(monitor.best_loss)  # fixed draws: the same value


def test_gradient_check_tells_an_overflowing_norm_from_a_non_finite_gradient():
    """The gradients are checked through one fused norm; a norm that overflows while every
    entry is finite is not an error, a single non-finite entry is (named)."""
    big = torch.nn.Parameter(torch.zeros(3))
    other = torch.nn.Parameter(torch.zeros(2))
    big.grad = torch.full((3,), 3e38)  # float32: finite entries, infinite norm
    other.grad = torch.ones(2)
    names = {id(big): "big", id(other): "other"}
    FitHealth().check_step(1.0, [big, other], gradients=True, names=names)
    other.grad = torch.tensor([1.0, math.nan])
    with pytest.raises(FitHealthError, match="gradient of other"):
        FitHealth().check_step(1.0, [big, other], gradients=True, names=names)

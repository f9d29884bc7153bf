"""SVI integration of :class:`pyro_msm.MissingScoreMatching` with a Gaussian energy model."""

from __future__ import annotations

import contextlib
import math
import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import SVI
from pyro.infer.autoguide import AutoNormal
from pyro.optim import Adam
from torch.distributions import transform_to

from pyro_msm import MissingScoreMatching, observe
from pyro_msm.distributions import FunctionEnergy, GaussianEnergy
from pyro_msm.infer import ESTIMATORS, GaussianConditionalProposal

D = 3
NAN = float("nan")
TRUE_LOC = torch.tensor([1.0, -0.5, 0.3])
TRUE_COV = torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.5, -0.3], [0.2, -0.3, 0.8]])
INIT_LOC = torch.tensor([0.2, 0.1, -0.4])
INIT_TRIL = torch.tensor([[1.2, 0.0, 0.0], [0.3, 0.9, 0.0], [-0.2, 0.4, 1.1]])


def make_data(n: int, missing: float = 0.0, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    """Gaussian rows with MCAR NaNs; no row is left fully missing."""
    g = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(TRUE_COV.double())
    x = TRUE_LOC.double() + torch.randn(n, D, generator=g, dtype=torch.float64) @ chol.T
    drop = torch.rand(n, D, generator=g) < missing
    drop[:, 0] &= ~drop[:, 1:].all(-1)  # keep at least one observed coordinate per row
    return x.masked_fill(drop, NAN).to(dtype)


def gaussian_model(data, mask=None, size=None, subsample=None):
    """``GaussianEnergy(loc, precision_tril=L)``; optionally a plate of ``size`` rows of which
    ``data`` holds the ``subsample``."""
    loc = pyro.param("loc", INIT_LOC.to(data.dtype))
    tril = pyro.param("L", INIT_TRIL.to(data.dtype), constraint=constraints.lower_cholesky)
    size = data.shape[0] if size is None else size
    with pyro.plate("data", size, subsample=subsample):
        return observe("x", GaussianEnergy(loc, precision_tril=tril), data, mask)


def random_subsample_model(full_data, subsample_size):
    loc = pyro.param("loc", INIT_LOC.to(full_data.dtype))
    tril = pyro.param("L", INIT_TRIL.to(full_data.dtype), constraint=constraints.lower_cholesky)
    with pyro.plate("data", full_data.shape[0], subsample_size=subsample_size) as idx:
        return observe("x", GaussianEnergy(loc, precision_tril=tril), full_data[idx])


def no_guide(*args, **kwargs):
    return None


def model_params() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def classical_loss(x: torch.Tensor, loc: torch.Tensor, tril: torch.Tensor) -> torch.Tensor:
    """Hand-written classical score matching for N(loc, (L L^T)^-1), summed over rows."""
    precision = tril @ tril.T
    residual = (x - loc) @ precision  # |P (x - mu)|^2, P symmetric
    return (-2 * torch.trace(precision) + (residual**2).sum(-1)).sum()


def make_loss(estimator: str, **kwargs) -> MissingScoreMatching:
    if estimator in ("iw", "variational"):
        kwargs.setdefault("num_particles", 4)
    return MissingScoreMatching(estimator, **kwargs)


def guide_for(estimator: str, model, **kwargs):
    return AutoNormal(model, **kwargs) if estimator in ("variational", "hybrid") else no_guide


# ----------------------------------------------------------------------------------------------
# SVI.step / SVI.evaluate_loss
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["iw", "zeroed", "mean_impute", "closed_form"])
def test_svi_step_returns_finite_float_and_moves_both_params(estimator):
    data = make_data(40, missing=0.3)
    svi = SVI(gaussian_model, no_guide, Adam({"lr": 0.05}), make_loss(estimator))
    value = svi.step(data)
    assert isinstance(value, float) and math.isfinite(value)
    before = model_params()
    value = svi.step(data)
    assert isinstance(value, float) and math.isfinite(value)
    after = model_params()
    assert set(after) == {"loc", "L"}
    for name in ("loc", "L"):
        assert torch.isfinite(after[name]).all()
        assert not torch.equal(before[name], after[name]), name
    assert torch.equal(after["L"], after["L"].tril()) and (after["L"].diagonal() > 0).all()


def test_svi_step_with_nan_data_and_validation_off_stays_finite():
    # PYRO_NOTES 3: NaN placeholders used to poison parameters when validation was off
    data = make_data(30, missing=0.3)
    svi = SVI(gaussian_model, no_guide, Adam({"lr": 0.05}), make_loss("iw"))
    with pyro.validation_enabled(False):
        for _ in range(3):
            assert math.isfinite(svi.step(data))
    for value in model_params().values():
        assert torch.isfinite(value).all()


@pytest.mark.parametrize("estimator", ["iw", "closed_form", "variational"])
def test_evaluate_loss_matches_loss_and_leaves_params_alone(estimator):
    data = make_data(30, missing=0.3)
    loss = make_loss(estimator)
    guide = guide_for(estimator, gaussian_model)
    svi = SVI(gaussian_model, guide, Adam({"lr": 0.05}), loss)
    pyro.set_rng_seed(0)  # the step's draws set the parameters below: same test whatever ran before
    svi.step(data)  # create every parameter, then clear the gradients SVI leaves behind
    for _, p in pyro.get_param_store().named_parameters():
        p.grad = None
    before = model_params()

    pyro.set_rng_seed(7)
    evaluated = svi.evaluate_loss(data)
    pyro.set_rng_seed(7)
    direct = loss.loss(gaussian_model, guide, data)
    pyro.set_rng_seed(7)
    differentiable = float(loss.differentiable_loss(gaussian_model, guide, data).detach())

    assert isinstance(evaluated, float) and math.isfinite(evaluated)
    assert evaluated == direct
    # float32: the no-grad and the differentiable evaluations may sum in another order
    assert evaluated == pytest.approx(differentiable, rel=1e-5, abs=1e-6)
    after = model_params()
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name
    for name, p in pyro.get_param_store().named_parameters():
        assert p.grad is None, name


def test_evaluate_loss_of_autodiff_energy_under_no_grad():
    # SVI.evaluate_loss runs under torch.no_grad(); derivatives by autodiff must still work
    data = make_data(20, missing=0.3, dtype=torch.float64)

    def function_model(x):
        loc = pyro.param("loc", INIT_LOC.double())
        tril = pyro.param("L", INIT_TRIL.double(), constraint=constraints.lower_cholesky)
        precision = tril @ tril.T

        def energy(z):
            diff = z - loc
            return 0.5 * ((diff @ precision) * diff).sum(-1)

        with pyro.plate("data", x.shape[0]):
            observe("x", FunctionEnergy(energy, D), x)

    for estimator in ("zeroed", "mean_impute"):
        pyro.clear_param_store()
        reference = make_loss(estimator).loss(gaussian_model, no_guide, data)
        svi = SVI(function_model, no_guide, Adam({"lr": 0.01}), make_loss(estimator))
        assert svi.evaluate_loss(data) == pytest.approx(reference, rel=1e-10)


# ----------------------------------------------------------------------------------------------
# the nn.Module form for plain PyTorch loops
# ----------------------------------------------------------------------------------------------


def test_module_form_is_differentiable_and_trains_with_torch_optim():
    data = make_data(200, missing=0.25, seed=3)
    module = MissingScoreMatching()(gaussian_model, no_guide)
    assert isinstance(module, torch.nn.Module)
    oracle = MissingScoreMatching("closed_form")

    warn_always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # torch warns once per process otherwise
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. float() of a tensor requiring grad
            out = module(data)
    finally:
        torch.set_warn_always(warn_always)
    assert isinstance(out, torch.Tensor) and out.dim() == 0 and out.requires_grad
    out.backward()
    params = dict(pyro.get_param_store().named_parameters())
    assert set(params) == {"loc", "L"}
    for name, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name

    start = oracle.loss(gaussian_model, no_guide, data)
    optimiser = torch.optim.Adam(params.values(), lr=0.05)
    history = []
    for _ in range(150):
        optimiser.zero_grad()
        out = module(data)
        out.backward()
        optimiser.step()
        history.append(float(out.detach()))
    end = oracle.loss(gaussian_model, no_guide, data)
    assert end < start - 0.25 * abs(start)
    assert sum(history[-10:]) < sum(history[:10])
    assert torch.allclose(pyro.param("loc").detach(), TRUE_LOC, atol=0.35)


# ----------------------------------------------------------------------------------------------
# no missing value: every estimator is classical score matching
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_complete_data_every_estimator_is_classical_score_matching(estimator):
    data = make_data(25, dtype=torch.float64)
    loss = make_loss(estimator)
    guide = guide_for(estimator, gaussian_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is missing, nothing to warn about
        value = loss.loss(gaussian_model, guide, data)
        objective = loss.differentiable_loss(gaussian_model, guide, data)

    # the hand-written loss, through the same constraint transform as the parameter store
    leaves = [pyro.param(k).unconstrained() for k in ("loc", "L")]
    loc = leaves[0].detach().clone().requires_grad_()
    raw_tril = leaves[1].detach().clone().requires_grad_()
    tril = transform_to(constraints.lower_cholesky)(raw_tril)
    assert torch.allclose(tril, INIT_TRIL.double())
    expected = classical_loss(data, loc, tril)
    assert value == pytest.approx(float(expected.detach()), rel=1e-10, abs=1e-10)
    objective_value = float(objective.detach())
    assert objective_value == pytest.approx(float(expected.detach()), rel=1e-10, abs=1e-10)

    # gradients too: the model parameters' gradient is the classical loss's
    got = torch.autograd.grad(objective, leaves)
    want = torch.autograd.grad(expected, [loc, raw_tril])
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, rtol=1e-8, atol=1e-8)


# ----------------------------------------------------------------------------------------------
# row weights follow subsampling
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_subsampled_loss_is_scaled_rows_loss(estimator):
    full, idx = 12, torch.tensor([9, 0, 4, 7])
    data = make_data(full, missing=0.3, seed=5, dtype=torch.float64)
    data[idx[1], 1] = NAN  # a subsampled row with a missing coordinate, for certain
    rows = data[idx]

    pyro.set_rng_seed(11)
    # an autoguide must use the model's subsample, not draw its own
    guide = guide_for(
        estimator, gaussian_model, create_plates=lambda *a: pyro.plate("data", full, subsample=idx)
    )
    expect_warning = (
        pytest.warns(UserWarning, match="drops")
        if estimator == "complete_case"
        else contextlib.nullcontext()
    )
    with expect_warning:
        sub_loss = make_loss(estimator).loss(gaussian_model, guide, rows, None, full, idx)
    pyro.clear_param_store()
    pyro.set_rng_seed(11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plain_loss = make_loss(estimator).loss(
            gaussian_model, guide_for(estimator, gaussian_model), rows
        )
    assert math.isfinite(plain_loss)
    assert sub_loss == pytest.approx(full / len(idx) * plain_loss, rel=1e-9)


def test_random_subsample_scales_by_size_over_batch():
    full, b = 20, 5
    data = make_data(full, missing=0.3, seed=6, dtype=torch.float64)
    loss = MissingScoreMatching("closed_form")
    pyro.set_rng_seed(4)
    sub = loss.loss(random_subsample_model, no_guide, data, b)
    pyro.set_rng_seed(4)  # the subsample is the first random draw of both runs
    idx = poutine.trace(random_subsample_model).get_trace(data, b).nodes["data"]["value"]
    assert idx.shape == (b,)
    plain = loss.loss(gaussian_model, no_guide, data[idx])
    assert sub == pytest.approx(full / b * plain, rel=1e-10)


# ----------------------------------------------------------------------------------------------
# the variational schedule
# ----------------------------------------------------------------------------------------------


def test_variational_schedule_freezes_model_on_guide_steps():
    data = make_data(30, missing=0.3, seed=8)
    mask = ~torch.isnan(data)
    guide = AutoNormal(gaussian_model)
    loss = MissingScoreMatching("variational", num_particles=4, guide_steps=2)
    svi = SVI(gaussian_model, guide, Adam({"lr": 0.05}), loss)

    kinds, values = [], []
    for step in range(7):
        before = model_params()
        values.append(svi.step(data))
        after = model_params()
        kinds.append(loss.diagnostics["step"])
        assert math.isfinite(values[-1]) and math.isfinite(loss.diagnostics["kl"])
        model_moved = [not torch.equal(before[k], after[k]) for k in ("loc", "L") if k in before]
        if kinds[-1] == "guide":
            assert model_moved == [False, False], step
            # model parameters had no gradient (so Adam skipped them); zeros would not do
            for name in ("loc", "L"):
                assert pyro.param(name).unconstrained().grad is None, name
            assert values[-1] == values[-2]  # a guide step reports the latest model loss
        elif step > 0:
            assert model_moved == [True, True], step
        if step > 0:
            guide_moved = [
                not torch.equal(before[k], after[k]) for k in after if k.startswith("AutoNormal")
            ]
            assert len(guide_moved) == 2 and all(guide_moved), step
    assert kinds == ["model", "guide", "guide", "model", "guide", "guide", "model"]

    # guide entries at observed coordinates receive no gradient and never drift (PYRO_NOTES 4)
    locs = pyro.param("AutoNormal.locs.x_unobserved").detach()
    scales = pyro.param("AutoNormal.scales.x_unobserved").detach()
    assert locs.shape == scales.shape == data.shape
    assert torch.equal(locs[mask], torch.zeros(int(mask.sum())))
    assert torch.allclose(scales[mask], torch.full((int(mask.sum()),), 0.1))  # init_scale
    assert (locs[~mask] != 0).all()
    assert (scales[~mask] != 0.1).all()


def test_variational_schedule_with_guide_steps_after_every_second_model_step():
    data = make_data(30, missing=0.3, seed=8)
    guide = AutoNormal(gaussian_model)
    loss = MissingScoreMatching("variational", num_particles=4, guide_steps=1, guide_every=2)
    svi = SVI(gaussian_model, guide, Adam({"lr": 0.05}), loss)
    kinds = []
    for _ in range(loss.svi_steps(5)):
        svi.step(data)
        kinds.append(loss.diagnostics["step"])
    # 5 model steps: two rounds of (model, model, guide), then the fifth model step
    assert kinds == ["model", "model", "guide", "model", "model", "guide", "model"]
    assert loss.cycle == 3 and loss.svi_steps(6) == 9
    default = MissingScoreMatching("variational", guide_steps=3)
    assert default.cycle == 4 and default.svi_steps(5) == 20  # (1 + guide_steps) per model step
    assert MissingScoreMatching("iw").svi_steps(5) == 5
    with pytest.raises(ValueError, match="guide_every"):
        MissingScoreMatching("variational", guide_every=0)


def test_iw_with_exact_conditional_proposal_approaches_closed_form():
    # with the model's own conditional as proposal the weights are uniform and the IW loss is a
    # plain Monte Carlo estimate of the exact marginal loss (METHOD.md's oracle)
    data = make_data(6, missing=0.4, seed=12, dtype=torch.float64)
    assert torch.isnan(data).any()
    tril = INIT_TRIL.double()
    covariance = torch.cholesky_inverse(torch.linalg.cholesky(tril @ tril.T))
    proposal = GaussianConditionalProposal(INIT_LOC.double(), covariance, defensive=0.0)
    exact = MissingScoreMatching("closed_form").loss(gaussian_model, no_guide, data)
    pyro.set_rng_seed(13)
    loss = MissingScoreMatching("iw", 20000, proposal=proposal)
    estimate = loss.loss(gaussian_model, no_guide, data)
    assert loss.diagnostics["ess"] == pytest.approx(20000, rel=1e-6)
    assert estimate == pytest.approx(exact, rel=0.02)


# ----------------------------------------------------------------------------------------------
# IW diagnostics
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("proposal", ["moment_matched", "wide"])
def test_iw_reports_effective_sample_size_between_one_and_r(proposal):
    r = 8
    data = make_data(40, missing=0.3, seed=9)
    loss = MissingScoreMatching("iw", r, proposal=proposal)
    svi = SVI(gaussian_model, no_guide, Adam({"lr": 0.05}), loss)
    assert "ess" not in loss.diagnostics
    svi.step(data)
    ess = loss.diagnostics["ess"]
    assert isinstance(ess, float)
    assert 1.0 <= ess <= r
    assert ess > 1.0 + 1e-3  # r draws are not all degenerate on this easy problem


# ----------------------------------------------------------------------------------------------
# warnings
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["iw", "zeroed", "mean_impute", "closed_form", "variational"])
def test_rows_without_observed_coordinate_warn_and_are_skipped(estimator):
    data = make_data(6, missing=0.2, seed=10, dtype=torch.float64)
    data[2] = NAN
    data[5] = NAN
    loss = make_loss(estimator)
    guide = guide_for(estimator, gaussian_model)
    with pytest.warns(UserWarning, match=r"site 'x': 2 of 6 rows .*no observed coordinate"):
        value = loss.loss(gaussian_model, guide, data)
    assert math.isfinite(value)
    if estimator in ("zeroed", "mean_impute", "closed_form"):  # deterministic: compare exactly
        kept = data[[0, 1, 3, 4]]
        pyro.clear_param_store()
        assert value == pytest.approx(make_loss(estimator).loss(gaussian_model, guide, kept))


def test_complete_case_warns_with_dropped_rows_and_scores_the_rest():
    data = make_data(8, dtype=torch.float64)
    data[1, 0] = NAN
    data[4, 2] = NAN
    data[6, 1] = NAN
    loss = MissingScoreMatching("complete_case")
    with pytest.warns(UserWarning, match=r"site 'x': complete-case analysis drops 3 of 8 rows"):
        value = loss.loss(gaussian_model, no_guide, data)
    complete = data[~torch.isnan(data).any(-1)]
    expected = classical_loss(complete, INIT_LOC.double(), INIT_TRIL.double())
    assert value == pytest.approx(float(expected.detach()), rel=1e-10)


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["IW", "marg-iw", "exact", ""])
def test_unknown_estimator(name):
    with pytest.raises(ValueError, match=r"unknown estimator"):
        MissingScoreMatching(name)


def test_model_without_observe_site():
    data = make_data(10)

    def plain_model(x):
        loc = pyro.param("loc", torch.zeros(D))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    with pytest.raises(ValueError, match=r"no masked data site.*pyro_msm\.observe"):
        MissingScoreMatching("iw").loss(plain_model, no_guide, data)
    svi = SVI(plain_model, no_guide, Adam({"lr": 0.01}), MissingScoreMatching("zeroed"))
    with pytest.raises(ValueError, match=r"no masked data site"):
        svi.step(data)


def test_model_with_extra_latent_site_names_it():
    data = make_data(10, missing=0.2)

    def latent_model(x):
        loc = pyro.param("loc", torch.zeros(D))
        shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            observe("x", GaussianEnergy(loc + shift, torch.eye(D)), x)

    with pytest.raises(ValueError, match=r"latent site 'shift'"):
        MissingScoreMatching("iw").loss(latent_model, no_guide, data)
    svi = SVI(
        latent_model,
        AutoNormal(latent_model),
        Adam({"lr": 0.01}),
        MissingScoreMatching("variational", 2, guide_steps=1),
    )
    with pytest.raises(ValueError, match=r"latent site 'shift'"):
        svi.step(data)

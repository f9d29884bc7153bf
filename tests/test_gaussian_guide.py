"""Tests for :class:`pyro_msm.guides.GaussianConditionalGuide` and its site distribution
:class:`pyro_msm.guides.MissingBlockGaussian`.

Oracles: the conditional of the missing block under the guide's joint Gaussian, computed row by
row with :class:`torch.distributions.MultivariateNormal` on the gathered blocks; Monte Carlo
moments of draws; and, for training, a fixed Gaussian model whose conditionals the guide's family
contains, so the reverse KL is minimised at the model's own mean and precision.
"""

from __future__ import annotations

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI

import pyro_msm
from pyro_msm.distributions import GaussianEnergy
from pyro_msm.guides import GaussianConditionalGuide, MissingBlockGaussian
from pyro_msm.infer import MissingScoreMatching
from pyro_msm.infer.gaussian import conditional_gaussian
from pyro_msm.missingness import apply_mask, mcar_mask

MU = torch.tensor([1.0, -0.5, 0.0, 0.3])
P = torch.tensor(
    [
        [2.0, 0.6, -0.4, 0.0],
        [0.6, 1.5, 0.5, 0.2],
        [-0.4, 0.5, 1.0, -0.3],
        [0.0, 0.2, -0.3, 1.2],
    ]
)


def fixed_model(loc, precision, subsample_size=None):
    def model(x):
        with pyro.plate("rows", x.shape[0], subsample_size=subsample_size) as idx:
            return pyro_msm.observe("x", GaussianEnergy(loc, precision), obs=x[idx])

    return model


def table(n, rate, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    full = torch.distributions.MultivariateNormal(MU, precision_matrix=P).sample((n,))
    mask = mcar_mask(full.shape, rate, seed=seed)
    return apply_mask(full.to(dtype), mask), mask


def test_log_prob_is_the_conditional_density_of_the_missing_block():
    x, mask = table(40, 0.5)
    guide = GaussianConditionalGuide(fixed_model(MU, P), init_loc=MU, init_precision=P)
    node = poutine.trace(guide).get_trace(x).nodes["x_unobserved"]
    value, log_prob = node["value"], node["fn"].log_prob(node["value"])
    assert torch.equal(value[mask], x[mask])  # observed entries are the data, exactly
    mean, _ = conditional_gaussian(torch.nan_to_num(x), mask, MU, P)
    for i in range(x.shape[0]):
        u = ~mask[i]
        if not u.any():
            assert log_prob[i] == 0
            continue
        ref = torch.distributions.MultivariateNormal(mean[i, u], precision_matrix=P[u][:, u])
        assert torch.allclose(log_prob[i], ref.log_prob(value[i, u]), atol=1e-4)


def test_draws_have_the_conditional_mean_and_covariance():
    x, mask = table(6, 0.5, seed=1)
    mask[0] = torch.tensor([True, False, False, True])  # a row with a 2-coordinate missing block
    q = MissingBlockGaussian(*conditional_gaussian(torch.nan_to_num(x), mask, MU, P), mask)
    draws = q.rsample((40000,))
    mean, _ = conditional_gaussian(torch.nan_to_num(x), mask, MU, P)
    assert torch.allclose(draws.mean(0), mean, atol=0.03)
    u = ~mask[0]
    cov = torch.cov(draws[:, 0][:, u].T)
    assert torch.allclose(cov, torch.linalg.inv(P[u][:, u]), atol=0.03)
    assert torch.equal(draws[:, mask], x[mask].expand(40000, -1))


def test_training_recovers_the_model_joint_from_its_conditionals():
    """With the model fixed, the reverse KL is zero exactly at the model's (mu, P): every
    missing pattern's conditional then matches. Started from the moments of the masked table,
    the guide moves to the model's parameters."""
    x, _ = table(400, 0.4, seed=2)
    model = fixed_model(MU, P)
    guide = GaussianConditionalGuide(model)
    guide(x)  # creates the parameters (moment matched)
    start = torch.linalg.norm(guide.precision_tril @ guide.precision_tril.T - P).item()
    loss = MissingScoreMatching("variational", guide_steps=0)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), loss)
    for _ in range(400):
        svi.step(x)
    tril = pyro.param("GaussianConditionalGuide.precision_tril").detach()
    error = torch.linalg.norm(tril @ tril.T - P).item()
    assert error < 0.15 and error < 0.5 * start
    assert torch.allclose(pyro.param("GaussianConditionalGuide.loc").detach(), MU, atol=0.15)


def test_subsampled_plate_and_particles():
    x, mask = table(50, 0.4, seed=3)
    model = fixed_model(MU, P, subsample_size=16)
    guide = GaussianConditionalGuide(model)
    loss = MissingScoreMatching("variational", num_particles=5)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), loss)
    for _ in range(3):
        assert torch.isfinite(torch.tensor(svi.step(x)))
    with pyro.plate("particles", 5, dim=-2):
        trace = poutine.trace(guide).get_trace(x)
    assert trace.nodes["x_unobserved"]["value"].shape == (5, 16, 4)


def test_follows_the_data_dtype():
    x, _ = table(20, 0.3, dtype=torch.float64)
    guide = GaussianConditionalGuide(fixed_model(MU.double(), P.double()))
    value = guide(x)["x_unobserved"]
    assert value.dtype == torch.float64 and guide.loc.dtype == torch.float64


def test_bad_input():
    model = fixed_model(MU, P)
    with pytest.raises(ValueError, match="square"):
        GaussianConditionalGuide(model, init_precision=torch.ones(4))
    with pytest.raises(ValueError, match="positive definite"):
        GaussianConditionalGuide(model, init_precision=-torch.eye(4))
    with pytest.raises(ValueError, match="init_loc"):
        GaussianConditionalGuide(model, init_loc=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="coordinates"):
        GaussianConditionalGuide(model, init_precision=torch.eye(3))(table(5, 0.3)[0])
    with pytest.raises(RuntimeError, match="call the guide once"):
        GaussianConditionalGuide(model).distribution(torch.zeros(2, 4), torch.ones(2, 4).bool())

    def any_width(x):  # a model whose dimension follows the data
        d = x.shape[-1]
        with pyro.plate("rows", x.shape[0]):
            return pyro_msm.observe("x", GaussianEnergy(torch.zeros(d), torch.eye(d)), obs=x)

    guide = GaussianConditionalGuide(any_width)
    guide(table(5, 0.3)[0])
    with pytest.raises(ValueError, match="built for rows of 4"):
        guide(torch.zeros(3, 5))


def test_experiment_harness_names_its_guides():
    from pyro_msm.experiments.gaussian import GUIDES, make_guide

    model = fixed_model(MU, P)
    assert isinstance(make_guide(model, "gaussian_conditional"), GaussianConditionalGuide)
    with pytest.raises(ValueError, match="unknown guide"):
        make_guide(model, "nope")
    assert set(GUIDES) == {"amortized_normal", "gaussian_conditional"}


def test_fit_gaussian_trains_the_named_guide():
    from pyro_msm.experiments import fit_gaussian

    x, mask = table(60, 0.3, seed=4)
    fit = fit_gaussian(x, mask, "variational", guide="gaussian_conditional", steps=2, guide_steps=1)
    assert fit.svi_steps == 4  # two cycles of one model step and one guide step
    names = set(pyro.get_param_store().keys())
    assert "GaussianConditionalGuide.precision_tril" in names
    assert not any(name.startswith("AmortizedNormal") for name in names)
    with pytest.raises(ValueError, match="unknown guide"):
        fit_gaussian(x, mask, "variational", guide="nope", steps=1)


def test_fit_gaussian_sizes_the_amortized_guide():
    """``guide_hidden_dims`` sets the widths of the amortised guide's MLP (the default is the
    paper's 200-200), and the demo's variational method carries its own widths."""
    from pyro_msm.experiments.gaussian import (
        DEMO_ESTIMATORS,
        DEMO_GUIDE_HIDDEN_DIMS,
        fit_gaussian,
        make_guide,
    )

    model = fixed_model(MU, P)
    assert make_guide(model).hidden_dims == (200, 200)
    assert make_guide(model, hidden_dims=[16, 8]).hidden_dims == (16, 8)
    x, mask = table(60, 0.3, seed=4)
    for widths, expected in ((None, [200, 200]), ((16, 8), [16, 8])):
        fit_gaussian(x, mask, "variational", steps=1, guide_steps=1, guide_hidden_dims=widths)
        weights = [
            value.shape[0]
            for name, value in pyro.get_param_store().items()
            if name.startswith("AmortizedNormal.net") and name.endswith("weight")
        ]
        assert weights == expected + [x.shape[1]]
    (variational,) = [s for s in DEMO_ESTIMATORS if s.estimator == "variational"]
    assert variational.guide_hidden_dims == DEMO_GUIDE_HIDDEN_DIMS
    assert all(s.guide_hidden_dims is None for s in DEMO_ESTIMATORS if s is not variational)


def test_estimator_spec_scales_its_model_updates():
    """A method's ``steps_fraction`` of the comparison's model updates (the demo's variational
    fit takes 5/6 of them), each model update followed by its guide steps."""
    from pyro_msm.experiments.gaussian import (
        DEMO_ESTIMATORS,
        DEMO_VARIATIONAL_STEPS_FRACTION,
        EstimatorSpec,
        compare_estimators,
        simulate_gaussian,
    )

    problem = simulate_gaussian(3, 80, 0.3, "mcar", seed=1)
    specs = [
        EstimatorSpec("iw", "iw"),
        EstimatorSpec("variational", "variational", guide_hidden_dims=(8,), steps_fraction=0.5),
    ]
    comparison = compare_estimators(problem, specs, steps=6, guide_steps=2, num_particles=2)
    assert comparison.row("iw")["steps"] == 6 and comparison.row("iw")["svi_steps"] == 6
    assert comparison.row("variational")["steps"] == 3
    assert comparison.row("variational")["svi_steps"] == 3 * (1 + 2)
    (variational,) = [s for s in DEMO_ESTIMATORS if s.estimator == "variational"]
    assert variational.steps_fraction == DEMO_VARIATIONAL_STEPS_FRACTION
    assert round(300 * DEMO_VARIATIONAL_STEPS_FRACTION) == 250
    assert all(s.steps_fraction == 1.0 for s in DEMO_ESTIMATORS if s is not variational)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps_fraction": 0.0}, "steps_fraction"),
        ({"steps_fraction": float("nan")}, "steps_fraction"),
        ({"guide_hidden_dims": ()}, "guide_hidden_dims"),
        ({"guide_hidden_dims": (64, 0)}, "guide_hidden_dims"),
    ],
)
def test_estimator_spec_refuses_bad_settings(kwargs, match):
    from pyro_msm.experiments.gaussian import EstimatorSpec

    with pytest.raises(ValueError, match=match):
        EstimatorSpec("variational", "variational", **kwargs)

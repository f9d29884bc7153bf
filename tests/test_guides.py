"""Tests for :mod:`pyro_msm.guides`: the amortised conditional ``AmortizedNormal``, Pyro's
``AutoNormal`` under the variational loss, and ``no_guide``.

Training tests use Gaussian models with fixed, known parameters, where the model's conditional
of the missing coordinates is known in closed form (:func:`conditional_gaussian`); with
``guide_steps=0`` every SVI step is a model step that also updates the guide on the reverse KL.
They use the paper's architecture (d -> 200 -> 200 -> d).
"""

from __future__ import annotations

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from builders import MU3, NAN, P3, gaussian_model, mcar
from pyro.infer import SVI
from pyro.infer.autoguide import AutoNormal

import pyro_msm
from pyro_msm.distributions import GaussianEnergy
from pyro_msm.guides import AmortizedNormal, no_guide
from pyro_msm.guides.flow import AmortizedFlow
from pyro_msm.infer import MissingScoreMatching
from pyro_msm.infer.gaussian import conditional_gaussian
from pyro_msm.infer.sites import find_data_sites, guide_log_prob

# a fixed 2-d Gaussian: only coordinate 1 is ever missing, so the conditional sd is constant
MU2 = torch.tensor([0.5, -1.0])
P2 = torch.tensor([[2.0, 0.9], [0.9, 1.5]])


def normal_log_density(value, loc, scale):
    return -0.5 * ((value - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)


# -- shapes, names and the masked density ---------------------------------------------------------
def test_trace_shape_and_log_density_counts_only_missing_coordinates():
    x = mcar(GaussianEnergy(MU3, P3).sample((7,)), 0.4)
    missing = torch.isnan(x)
    assert missing.any() and (~missing).any()
    guide = AmortizedNormal(gaussian_model(MU3, P3), init_scale=0.7)
    trace = poutine.trace(guide).get_trace(x)
    site = trace.nodes["x_unobserved"]
    value = site["value"]
    assert value.shape == x.shape
    assert [n for n, s in trace.nodes.items() if s["type"] == "sample"] == ["rows", "x_unobserved"]
    # parameters: the paper's d -> 200 -> 200 -> d MLP and a per-coordinate scale at init_scale
    assert [layer.weight.shape for layer in guide.net if hasattr(layer, "weight")] == [
        (200, 3),
        (200, 200),
        (3, 200),
    ]
    scale = pyro.param("AmortizedNormal.scale")
    assert torch.equal(scale, torch.full((3,), 0.7))
    # hand computation: Normal log densities of the missing entries only
    zero_filled = torch.nan_to_num(x, nan=0.0)
    loc = guide.net(zero_filled)
    terms = normal_log_density(value, loc, scale)
    expected = (terms * missing).sum(-1)
    trace.compute_log_prob()
    assert site["log_prob"].shape == (7,)
    torch.testing.assert_close(site["log_prob"], expected)
    # the observed entries would have changed the answer
    assert (terms * ~missing).sum(-1).abs().min() > 1e-3


def test_particle_plate_shapes_and_replayed_model_sees_the_data():
    x = mcar(GaussianEnergy(MU3, P3).sample((6,)), 0.4)
    missing = torch.isnan(x)
    model = gaussian_model(MU3, P3)
    guide = AmortizedNormal(model)
    r = 5
    with pyro.plate("_pyro_msm_particles", r, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x)
    draws = guide_trace.nodes["x_unobserved"]["value"]
    assert draws.shape == (r, 6, 3)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    completed = model_trace.nodes["x"]["value"]
    assert completed.shape == (r, 6, 3)
    assert torch.equal(completed[:, ~missing], x[~missing].expand(r, -1))
    assert torch.equal(completed[:, missing], draws[:, missing])
    # the loss's view of the guide density: (r, n), missing coordinates only
    sites = find_data_sites(model_trace)
    lp = guide_log_prob(guide_trace, sites)["x"]
    loc = guide.net(torch.nan_to_num(x, nan=0.0))
    scale = pyro.param("AmortizedNormal.scale")
    expected = (normal_log_density(draws, loc, scale) * missing).sum(-1)
    assert lp.shape == (r, 6)
    torch.testing.assert_close(lp, expected)


def test_guide_density_in_a_particle_plate_has_the_gradients_of_the_expanded_density():
    """The loss reads a plate-expanded Normal's density from its distinct means and scales: the
    value and the gradients to the guide's parameters are those of the density evaluated on
    the expanded (particles, rows, d) parameters entry by entry."""
    x = mcar(GaussianEnergy(MU3, P3).sample((9,)), 0.4).double()
    missing = torch.isnan(x)
    model = gaussian_model(MU3.double(), P3.double())
    guide = AmortizedNormal(model, hidden_dims=(5,)).double()
    r = 4
    with pyro.plate("_pyro_msm_particles", r, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    params = [p.unconstrained() for p in pyro.get_param_store().values()]
    draws = guide_trace.nodes["x_unobserved"]["value"]
    lp = guide_log_prob(guide_trace, find_data_sites(model_trace))["x"]
    fn = guide_trace.nodes["x_unobserved"]["fn"].base_dist.base_dist  # the expanded Normal
    assert fn.loc.shape == fn.scale.shape == (r, 9, 3)
    expected = (normal_log_density(draws, fn.loc.clone(), fn.scale.clone()) * missing).sum(-1)
    torch.testing.assert_close(lp, expected, rtol=1e-13, atol=1e-13)
    weights = torch.randn(r, 9, dtype=torch.float64)
    got = torch.autograd.grad((lp * weights).sum(), params, retain_graph=True)
    want = torch.autograd.grad((expected * weights).sum(), params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-13)


def test_parameters_follow_the_data_dtype():
    x = mcar(GaussianEnergy(MU3.double(), P3.double()).sample((5,)), 0.3)
    guide = AmortizedNormal(gaussian_model(MU3.double(), P3.double()))
    with pytest.raises(RuntimeError, match="call the guide once"):
        guide.loc_and_scale(x, ~torch.isnan(x))
    value = guide(x)["x_unobserved"]
    assert value.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in guide.parameters())
    assert all(p.device == x.device for p in guide.parameters())
    # the model's data site refuses the dtype mismatch before the guide does
    with pytest.raises((TypeError, ValueError), match="float64"):
        guide(x.float())


# -- training against the Gaussian conditional ----------------------------------------------------
def train(model, guide, x, steps, lr, num_particles=4):
    """Adam at ``lr`` for ``steps`` steps, then at ``lr / 6`` for ``steps // 2`` (to settle)."""
    loss = MissingScoreMatching("variational", num_particles, guide_steps=0)
    for rate, n_steps in ((lr, steps), (lr / 6, steps // 2)):
        svi = SVI(model, guide, pyro.optim.Adam({"lr": rate}), loss)
        for _ in range(n_steps):
            svi.step(x)


def test_amortized_normal_learns_the_gaussian_conditional():
    """d = 2 with only coordinate 1 missing: the model's conditional is
    N(mu_1 - P_10 / P_11 (x_0 - mu_0), 1 / P_11), so the optimal guide is known exactly.

    Tolerances: RMS error of the guide's mean over the missing entries below 0.1 (12% of the
    conditional sd 0.816; untrained it is about 1), worst entry below 0.25 (the extremes of
    x_0 are sparsely covered), scale within 5% of 1 / sqrt(P_11)."""
    n = 200
    full = GaussianEnergy(MU2, P2).sample((n,))
    mask = torch.ones(n, 2, dtype=torch.bool)
    mask[:, 1] = torch.rand(n) > 0.5
    x = torch.where(mask, full, torch.tensor(NAN))
    model = gaussian_model(MU2, P2)
    guide = AmortizedNormal(model)
    zero_filled = torch.where(mask, x, torch.zeros(()))
    truth, _ = conditional_gaussian(zero_filled, mask, MU2, P2)
    guide(x)
    with torch.no_grad():
        loc0, _ = guide.loc_and_scale(zero_filled, mask)
    assert (loc0 - truth)[~mask].pow(2).mean().sqrt() > 0.3  # the test starts far from the truth

    train(model, guide, x, steps=200, lr=1e-2)
    with torch.no_grad():
        loc, scale = guide.loc_and_scale(zero_filled, mask)
    err = (loc - truth)[~mask]
    assert err.pow(2).mean().sqrt() < 0.1
    assert err.abs().max() < 0.25
    assert abs(float(scale[0, 1]) - 1 / math.sqrt(float(P2[1, 1]))) < 0.05 / math.sqrt(1.5)
    # coordinate 0 is never missing: its scale gets no gradient and stays at init_scale exactly
    assert float(scale[0, 0]) == 1.0


def test_condition_on_mask_trains():
    """d = 3, one coordinate missing in half of the rows: the conditional mean (linear in x_o,
    with pattern-dependent coefficients) is learned from [x * m, m], and the scale of
    coordinate j reaches the conditional sd 1 / sqrt(P_jj). Tolerances: RMS error of the mean
    below 0.15 (it starts above 0.3), scales within 5%."""
    n = 240
    full = GaussianEnergy(MU3, P3).sample((n,))
    mask = torch.ones(n, 3, dtype=torch.bool)
    mask[torch.arange(n), torch.randint(3, (n,))] = torch.rand(n) > 0.5
    x = torch.where(mask, full, torch.tensor(NAN))
    model = gaussian_model(MU3, P3)
    guide = AmortizedNormal(model, condition_on_mask=True)
    zero_filled = torch.where(mask, x, torch.zeros(()))
    truth, _ = conditional_gaussian(zero_filled, mask, MU3, P3)
    guide(x)
    assert guide.net[0].in_features == 6
    with torch.no_grad():
        loc0, _ = guide.loc_and_scale(zero_filled, mask)
    assert (loc0 - truth)[~mask].pow(2).mean().sqrt() > 0.3

    train(model, guide, x, steps=150, lr=1e-2)
    with torch.no_grad():
        loc, scale = guide.loc_and_scale(zero_filled, mask)
    assert (loc - truth)[~mask].pow(2).mean().sqrt() < 0.15
    torch.testing.assert_close(scale[0], 1 / P3.diagonal().sqrt(), rtol=0.05, atol=0.0)


# -- subsampling ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make_guide",
    [
        lambda model: AmortizedNormal(model, hidden_dims=(16,)),
        lambda model: AmortizedFlow(model, hidden_dims=(8, 8)),
    ],
    ids=["normal", "flow"],
)
def test_subsampled_plate_replays_the_guides_indices(monkeypatch, make_guide):
    from pyro_msm.infer import score_matching

    n, b = 50, 10
    x = mcar(GaussianEnergy(MU3, P3).sample((n,)), 0.3)
    record: list = []
    completed: list = []
    complete = score_matching._complete_from_guide

    def spy(model_trace, site, guide_trace):
        complete(model_trace, site, guide_trace)
        completed.append((guide_trace.nodes["rows"]["value"].clone(), site.value.detach()))

    monkeypatch.setattr(score_matching, "_complete_from_guide", spy)
    model = gaussian_model(MU3, P3, subsample_size=b, record=record)
    guide = make_guide(model)
    loss = MissingScoreMatching("variational", num_particles=3, guide_steps=1, max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), loss)
    seen = set()
    for _ in range(6):
        record.clear()
        completed.clear()
        value = svi.step(x)
        assert math.isfinite(value)
        # one run of the model (missing entries zero), whose trace the guide reads; the loss
        # completes that run's rows with the guide's draws, inside the same subsample
        ((idx_model, inner),) = record
        ((idx_guide, rows),) = completed
        assert idx_guide.shape == (b,) and torch.equal(idx_guide, idx_model)
        seen.add(tuple(idx_model.tolist()))
        obs = ~torch.isnan(x[idx_model])
        assert torch.equal(inner[~obs], torch.zeros(int((~obs).sum())))
        assert rows.shape[-2:] == (b, 3)
        assert torch.equal(rows[..., obs], x[idx_model][obs].expand_as(rows[..., obs]))
        assert (rows[..., ~obs] != 0).all()  # guide draws, not zeros
    assert len(seen) >= 2  # so the index equality is not trivially true
    # the plate's scale n / b reaches the loss through the replayed model
    with pyro.plate("_pyro_msm_particles", 2, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    assert torch.equal(model_trace.nodes["rows"]["value"], guide_trace.nodes["rows"]["value"])
    sites = find_data_sites(model_trace)
    assert sites[0].scale.tolist() == [n / b] * b
    assert guide_log_prob(guide_trace, sites)["x"].shape == (2, b)


def test_subsample_indices_vary_between_steps():
    n, b = 50, 10
    x = mcar(GaussianEnergy(MU3, P3).sample((n,)), 0.3)
    record: list = []
    model = gaussian_model(MU3, P3, subsample_size=b, record=record)
    guide = AmortizedNormal(model, hidden_dims=(16,))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), MissingScoreMatching("variational"))
    for _ in range(3):
        svi.step(x)
    # so the index equality checked above is not trivially true
    assert len({tuple(idx.tolist()) for idx, _ in record}) >= 2


# -- Pyro's AutoNormal under the variational loss -------------------------------------------------
def test_autonormal_observed_entries_do_not_drift():
    """AutoNormal samples an auxiliary ``x_unobserved_unconstrained`` Normal and puts a Delta at
    ``x_unobserved`` (PYRO_NOTES item 13); the loss restricts the auxiliary site's density to the
    missing coordinates, so the loc and scale entries of observed coordinates get exactly zero
    gradient and Adam never moves them, while the missing ones are trained."""
    x = mcar(GaussianEnergy(MU3, P3).sample((20,)), 0.35)
    missing = torch.isnan(x)
    model = gaussian_model(MU3, P3)
    guide = AutoNormal(model)
    guide(x)  # create the parameters
    loc0 = pyro.param("AutoNormal.locs.x_unobserved").detach().clone()
    scale0 = pyro.param("AutoNormal.scales.x_unobserved").detach().clone()
    assert loc0.shape == scale0.shape == x.shape
    loss = MissingScoreMatching("variational", num_particles=4, guide_steps=0)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss)
    for _ in range(60):
        svi.step(x)
    loc = pyro.param("AutoNormal.locs.x_unobserved").detach()
    scale = pyro.param("AutoNormal.scales.x_unobserved").detach()
    assert torch.equal(loc[~missing], loc0[~missing])
    assert torch.equal(scale[~missing], scale0[~missing])
    assert (loc[missing] != loc0[missing]).all()
    assert (scale[missing] != scale0[missing]).all()
    # the missing entries head for the mean-field optimum: the conditional mean, and sd
    # 1 / sqrt(P_jj) at coordinate j (the reverse-KL optimum of a diagonal Gaussian)
    truth, _ = conditional_gaussian(torch.nan_to_num(x, nan=0.0), ~missing, MU3, P3)
    sd = (1 / P3.diagonal().sqrt()).expand_as(x)
    assert (loc - truth)[missing].abs().mean() < 0.15
    assert (loc - truth)[missing].abs().max() < 0.4
    ratio = (scale / sd)[missing]
    assert ((ratio > 0.7) & (ratio < 1.3)).all()  # from 0.1 / sd < 0.15 at initialisation


# -- errors and no_guide --------------------------------------------------------------------------
def test_model_without_observe_site_raises():
    def model(x):
        with pyro.plate("rows", x.shape[0]):
            pyro.sample("x", GaussianEnergy(MU3, P3), obs=x)

    with pytest.raises(ValueError, match="no masked data site"):
        AmortizedNormal(model)(torch.zeros(4, 3))


def test_site_selection():
    def model(x, y):
        with pyro.plate("rows_x", x.shape[0]):
            pyro_msm.observe("x", GaussianEnergy(MU3, P3), obs=x)
        with pyro.plate("rows_y", y.shape[0]):
            pyro_msm.observe("y", GaussianEnergy(MU2, P2), obs=y)

    x = mcar(torch.randn(4, 3), 0.3)
    y = mcar(torch.randn(5, 2), 0.3)
    with pytest.raises(ValueError, match="no_such_site"):
        AmortizedNormal(model, site="no_such_site")(x, y)
    with pytest.raises(ValueError, match="several masked data sites"):
        AmortizedNormal(model)(x, y)
    guide_x, guide_y = AmortizedNormal(model, site="x"), AmortizedNormal(model, site="y")

    def guide(x, y):
        guide_x(x, y)
        guide_y(x, y)

    trace = poutine.trace(guide).get_trace(x, y)
    assert trace.nodes["x_unobserved"]["value"].shape == (4, 3)
    assert trace.nodes["y_unobserved"]["value"].shape == (5, 2)
    # separate parameters per site
    assert pyro.param("AmortizedNormal.x.scale").shape == (3,)
    assert pyro.param("AmortizedNormal.y.scale").shape == (2,)
    loss = MissingScoreMatching("variational", num_particles=2)
    assert math.isfinite(loss.loss(model, guide, x, y))


def test_constructor_validation():
    model = gaussian_model(MU3, P3)
    with pytest.raises(ValueError, match="init_scale"):
        AmortizedNormal(model, init_scale=0.0)
    with pytest.raises(ValueError, match="hidden_dims"):
        AmortizedNormal(model, hidden_dims=(10, 0))
    with pytest.raises(TypeError, match="callable"):
        AmortizedNormal("model")


def test_no_guide_with_importance_weighting():
    assert no_guide(1, a=2) is None
    x = mcar(GaussianEnergy(MU3, P3).sample((30,)), 0.3)
    trace = poutine.trace(no_guide).get_trace(x)
    assert not [s for s in trace.nodes.values() if s["type"] in ("sample", "param")]
    loc = torch.zeros(3)

    def model(x):
        m = pyro.param("loc", loc.clone())
        with pyro.plate("rows", x.shape[0]):
            pyro_msm.observe("x", GaussianEnergy(m, P3), obs=x)

    svi = SVI(model, no_guide, pyro.optim.Adam({"lr": 0.05}), MissingScoreMatching("iw"))
    for _ in range(3):
        assert math.isfinite(svi.step(x))
    assert not torch.equal(pyro.param("loc").detach(), loc)


@pytest.mark.parametrize(
    "autoguide, error",
    [
        ("AutoMultivariateNormal", ValueError),
        ("AutoLowRankMultivariateNormal", ValueError),
        ("AutoIAFNormal", ValueError),
        ("AutoNormalMessenger", TypeError),
    ],
)
def test_joint_autoguides_are_refused_with_a_working_alternative(autoguide, error):
    """Guides whose density does not factorise over coordinates cannot be restricted to the
    missing ones; the error names the guides that can."""
    import pyro.infer.autoguide as autoguides

    x = mcar(torch.randn(20, 3), 0.3)
    model = gaussian_model(torch.zeros(3), torch.eye(3))
    guide = getattr(autoguides, autoguide)(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), MissingScoreMatching("variational"))
    with pytest.raises(error, match="AmortizedNormal"):
        svi.step(x)


def test_guide_reads_the_provided_model_trace_instead_of_running_the_model():
    from pyro_msm.infer.sites import FillUnobserved, ProvideModelTrace, provided_model_trace

    x = mcar(GaussianEnergy(MU3, P3).sample((20,)), 0.3)
    record: list = []
    model = gaussian_model(MU3, P3, record=record)
    guide = AmortizedNormal(model, hidden_dims=(8,))
    assert provided_model_trace() is None
    guide(x)  # creates the parameters
    record.clear()
    torch.manual_seed(0)
    alone = guide(x)["x_unobserved"]
    assert len(record) == 1  # its own hidden run of the model
    model_trace = poutine.trace(FillUnobserved()(model)).get_trace(x)
    record.clear()
    torch.manual_seed(0)
    provided = ProvideModelTrace(model_trace)(guide)(x)["x_unobserved"]
    assert record == []  # read from the trace; the same draw
    assert torch.equal(provided, alone)


def test_missing_normal_density_ignores_non_finite_entries_outside_the_missing_ones():
    """The Normal guide's summed density over missing coordinates equals the coordinate-wise
    density summed over them, and a non-finite draw or mean at an observed coordinate (or one
    the guide masks out) does not reach it."""
    from pyro.distributions import Independent, Normal

    from pyro_msm.infer.sites import _missing_normal_log_prob

    torch.manual_seed(0)
    missing = torch.rand(7, 3) < 0.5
    loc = torch.randn(7, 3, dtype=torch.float64)
    scale = torch.rand(3, dtype=torch.float64) + 0.5
    value = torch.randn(4, 7, 3, dtype=torch.float64)
    fn = Independent(Normal(loc, scale.expand(7, 3)).expand((4, 7, 3)), 1)
    got = _missing_normal_log_prob(fn, value, missing)
    want = (Normal(loc, scale).log_prob(value) * missing).sum(-1)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    value[:, ~missing] = float("nan")
    loc2 = loc.clone()
    loc2[~missing] = float("inf")
    guide_mask = torch.ones(7, 3, dtype=torch.bool)
    guide_mask[0] = False
    value[:, 0] = float("nan")
    masked = Normal(loc2, scale.expand(7, 3)).mask(guide_mask).to_event(1)
    got = _missing_normal_log_prob(masked, value, missing)
    assert torch.isfinite(got).all()
    keep = missing & guide_mask
    want = (torch.where(keep, Normal(loc, scale).log_prob(value.nan_to_num()), 0.0)).sum(-1)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)

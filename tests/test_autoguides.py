"""Pyro's autoguides as the variational conditional q_phi of MissingScoreMatching("variational").

A guide for the variational estimator must give the density of the *missing* coordinates of
``{name}_unobserved`` only (PYRO_NOTES items 4 and 13): the loss restricts a guide's density
coordinate by coordinate (``pyro_msm.infer.sites.guide_log_prob``), which needs a density that
factorises over the coordinates of the site. Outcomes (pyro-ppl 1.9.2):

=============================  ===========  ==================================================
autoguide                      outcome      why / what to use instead
=============================  ===========  ==================================================
AutoNormal                     runs         mean field on the auxiliary
                                            ``x_unobserved_unconstrained`` site, masked to the
                                            missing entries; observed-entry parameters get
                                            exactly zero gradient. Not amortised (parameters
                                            per row, no subsampling).
AutoDelta                      runs         a point mass (log density 0): the missing entries
                                            climb to the model's conditional mode; no spread,
                                            so Var' is zero (a biased plug-in).
AutoMultivariateNormal         ValueError   samples one flattened latent
                                            ``_AutoMultivariateNormal_latent`` over all n*d
                                            entries, whose joint density cannot be restricted
                                            to the missing ones. Use
                                            ``pyro_msm.guides.AmortizedNormal`` (the message
                                            names it) or ``AmortizedFlow`` for dependence.
AutoLowRankMultivariateNormal  ValueError   as AutoMultivariateNormal.
AutoIAFNormal                  ValueError   as AutoMultivariateNormal (a flow over the
                                            flattened latent); ``AmortizedFlow`` is the
                                            conditional-flow alternative.
AutoNormalMessenger            TypeError    its ``x_unobserved`` distribution is a
                                            TransformedDistribution with a per-row density
                                            only; the message names AmortizedNormal/AutoNormal.
AutoDiagonalNormal (extra)     ValueError   flattened latent, as AutoMultivariateNormal; use
                                            AutoNormal.
AutoStructured (extra)         TypeError    its Delta at ``x_unobserved`` carries a
                                            log_density summing log-scales over *all* entries
                                            (the observed ones' would drift without bound,
                                            0.1 -> 2.2 in 100 steps), so it is refused.
=============================  ===========  ==================================================
"""

from __future__ import annotations

import math

import pyro
import pyro.infer.autoguide as autoguides
import pytest
import torch
from pyro.infer import SVI

import pyro_msm
from pyro_msm.distributions import GaussianEnergy
from pyro_msm.infer import MissingScoreMatching
from pyro_msm.infer.gaussian import conditional_gaussian

NAN = float("nan")
MU3 = torch.tensor([1.0, -0.5, 0.0])
P3 = torch.tensor([[2.0, 0.6, -0.4], [0.6, 1.5, 0.5], [-0.4, 0.5, 1.0]])


def model(x):
    with pyro.plate("rows", x.shape[0]):
        return pyro_msm.observe("x", GaussianEnergy(MU3, P3), obs=x)


def data(n=20, rate=0.35):
    """Gaussian rows with MCAR NaNs; every row keeps an observed coordinate."""
    full = GaussianEnergy(MU3, P3).sample((n,))
    mask = torch.rand(n, 3) > rate
    mask[torch.arange(n), torch.randint(3, (n,))] = True
    return torch.where(mask, full, torch.tensor(NAN))


def fit(guide, x, steps, lr=0.05):
    svi = SVI(
        model,
        guide,
        pyro.optim.Adam({"lr": lr}),
        MissingScoreMatching("variational", num_particles=4, guide_steps=0),
    )
    return [svi.step(x) for _ in range(steps)]


# -- the autoguides that run ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "autoguide, names",
    [
        ("AutoNormal", ["AutoNormal.locs.x_unobserved", "AutoNormal.scales.x_unobserved"]),
        ("AutoDelta", ["AutoDelta.x_unobserved"]),
    ],
)
def test_factorised_autoguides_train_on_missing_entries_only(autoguide, names):
    """Finite losses; every parameter entry at an observed coordinate is exactly unchanged;
    every entry at a missing coordinate has moved."""
    x = data()
    missing = torch.isnan(x)
    assert missing.any() and (~missing).any()
    guide = getattr(autoguides, autoguide)(model)
    guide(x)  # create the parameters
    before = {name: pyro.param(name).detach().clone() for name in names}
    assert all(value.shape == x.shape for value in before.values())
    losses = fit(guide, x, steps=40)
    assert all(math.isfinite(v) for v in losses)
    for name in names:
        after = pyro.param(name).detach()
        assert torch.equal(after[~missing], before[name][~missing]), name
        assert (after[missing] != before[name][missing]).all(), name


def test_autodelta_climbs_to_the_conditional_mode():
    """AutoDelta's KL is -log q_theta(x_o, x_u): gradient ascent to the conditional mode,
    which for a Gaussian is the conditional mean. Tolerance: mean absolute error below 0.05
    after 150 steps (it starts near 1: AutoDelta initialises at the model's draws)."""
    x = data()
    missing = torch.isnan(x)
    guide = autoguides.AutoDelta(model)
    guide(x)
    truth, _ = conditional_gaussian(torch.nan_to_num(x, nan=0.0), ~missing, MU3, P3)
    start = pyro.param("AutoDelta.x_unobserved").detach().clone()
    fit(guide, x, steps=150)
    loc = pyro.param("AutoDelta.x_unobserved").detach()
    assert (loc - truth)[missing].abs().mean() < 0.05
    assert (loc - truth)[missing].abs().mean() < 0.2 * (start - truth)[missing].abs().mean()


# -- the autoguides that are refused --------------------------------------------------------------
@pytest.mark.parametrize(
    "autoguide, error",
    [
        ("AutoMultivariateNormal", ValueError),
        ("AutoLowRankMultivariateNormal", ValueError),
        ("AutoIAFNormal", ValueError),
        ("AutoNormalMessenger", TypeError),
        ("AutoDiagonalNormal", ValueError),
    ],
)
def test_non_factorised_autoguides_are_refused_naming_an_alternative(autoguide, error):
    x = data()
    guide = getattr(autoguides, autoguide)(model)
    with pytest.raises(error, match="AmortizedNormal"):
        fit(guide, x, steps=1)


def test_autostructured_is_refused_or_keeps_observed_entries_fixed():
    x = data()
    observed = ~torch.isnan(x)
    guide = autoguides.AutoStructured(model, conditionals="normal")
    guide(x)
    name = "AutoStructured.scales.x_unobserved"
    before = pyro.param(name).detach().clone().reshape(x.shape)
    try:
        fit(guide, x, steps=20)
    except (TypeError, ValueError) as error:  # a refusal must name a working guide
        assert "AmortizedNormal" in str(error)
        return
    after = pyro.param(name).detach().reshape(x.shape)
    assert torch.equal(after[observed], before[observed])

"""
Inspecting imputations with ArviZ
=================================

A fitted model defines a conditional distribution of every missing entry given the observed
entries of its row. :func:`pyro_msm.to_inference_data` draws imputations from it and returns
an ArviZ object, so the usual tools apply: ``az.summary`` for a table of the imputed entries,
``az.hdi`` for intervals, ``az.plot_forest`` / ``az.plot_posterior`` for pictures. With
held-out truths, :func:`pyro_msm.imputation_coverage` checks whether the intervals are
calibrated.

With ``PYRO_MSM_SMOKE=1`` this runs at tiny sizes in seconds; at the sizes below it takes
about 20 s of CPU time (measured: 19 s on the project's 2-core machine, one thread).
"""

# %%
# Setup
# -----
import os

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyro
import torch
from pyro.distributions import constraints
from pyro.infer import SVI
from pyro.optim import Adam

import pyro_msm
from pyro_msm.datasets import simulate_gaussian
from pyro_msm.distributions import GaussianEnergy
from pyro_msm.guides import no_guide
from pyro_msm.infer.gaussian import pairwise_moments

SMOKE = os.environ.get("PYRO_MSM_SMOKE", "0") == "1"
N = 150 if SMOKE else 800
STEPS = 15 if SMOKE else 300
DRAWS = 100 if SMOKE else 500
torch.set_num_threads(1)

# %%
# Data in a DataFrame
# -------------------
# Four correlated measurements per unit, 30% of the entries hidden completely at random. We
# keep the complete table (``truth``) aside to check the imputations at the end.
columns = ["temperature", "pressure", "humidity", "wind"]
problem = simulate_gaussian(d=4, n=N, missing_rate=0.3, seed=3, condition_number=30.0)
frame = pd.DataFrame(
    problem.observed.numpy(), columns=columns, index=[f"unit {i}" for i in range(N)]
)
truth = problem.x
print(frame.head())

# %%
# The model and the fit
# ---------------------
# A Gaussian energy with a learnable mean and Cholesky factor of the precision, started from
# the Gaussian moment-matched to the observed entries. ``fit`` runs SVI with importance
# weighting (or another estimator) and records the loss per row and the effective sample
# size of every step, which ``to_inference_data`` stores below.
table = torch.tensor(frame.to_numpy(), dtype=torch.float32)  # NaN = missing
loc0, cov0 = pairwise_moments(torch.nan_to_num(table), ~torch.isnan(table))
tril0 = torch.linalg.cholesky(torch.linalg.inv(cov0))


def model(data):
    loc = pyro.param("loc", loc0.clone())
    tril = pyro.param("precision_tril", tril0.clone(), constraint=constraints.lower_cholesky)
    with pyro.plate("rows", data.shape[0]):
        pyro_msm.observe("x", GaussianEnergy(loc, precision_tril=tril), obs=data)


def fit(estimator):
    """Fit from scratch; the fitted parameters stay in Pyro's parameter store."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    loss = pyro_msm.MissingScoreMatching(estimator)
    svi = SVI(model, no_guide, Adam({"lr": 0.02}), loss)
    record = {"loss": [], "ess": []}
    for _ in range(STEPS):
        record["loss"].append(svi.step(table) / N)
        record["ess"].append(loss.diagnostics.get("ess", float("nan")))
    return record


training = fit("iw")
print(f"last loss {training['loss'][-1]:.3f}, last ESS {training['ess'][-1]:.2f} of 10")

# %%
# To ArviZ
# --------
# With no guide, imputations are drawn by importance resampling from the model's conditional
# (1,000 proposal draws per row, resampled by weight). ``columns`` and ``rows`` name the
# coordinates; ``training`` stores the loss and ESS traces.
idata = pyro_msm.to_inference_data(
    model,
    args=(table,),
    columns=frame.columns,
    rows=frame.index,
    training=training,
    num_draws=DRAWS,
    num_chains=2,
    seed=0,
)
print(idata)

# %%
# The ``posterior`` group holds the completed table ``x`` with dims
# ``(chain, draw, row, feature)`` (observed entries are constant and equal to the data) and
# ``x_missing``, the missing entries alone, labelled ``"row, feature"``:
summary = az.summary(idata, var_names=["x_missing"], hdi_prob=0.9)
print(summary.head(8))

# %%
# Named coordinates select what you want to look at, e.g. every imputed entry of one unit:
print(idata.posterior["x"].sel(row="unit 1").mean(("chain", "draw")).to_series())
print("observed:", frame.loc["unit 1"].to_dict())

# %%
# Intervals and pictures
# ----------------------
# ``az.hdi`` gives highest-density intervals; ``az.plot_forest`` draws them.
entries = idata.posterior["entry"].values[:8]
hdi = az.hdi(idata, var_names=["x_missing"], hdi_prob=0.9)["x_missing"]
print(hdi.sel(entry=entries[:4]).to_pandas())
az.plot_forest(
    idata,
    var_names=["x_missing"],
    coords={"entry": entries},
    hdi_prob=0.9,
    combined=True,
    figsize=(6, 4),
)
plt.tight_layout()

# %%
# ``az.plot_posterior`` shows single entries; we mark the hidden true value in red.
axes = az.plot_posterior(
    idata, var_names=["x_missing"], coords={"entry": entries[:3]}, hdi_prob=0.9, figsize=(10, 3.2)
)
for ax, entry in zip(np.ravel(axes), entries[:3], strict=True):
    row, feature = entry.split(", ")
    ax.axvline(float(truth[int(row.split()[1]), columns.index(feature)]), color="tab:red")
plt.gcf().tight_layout()

# %%
# Calibration: do the intervals cover the hidden truths?
# ------------------------------------------------------
# If the imputations are the right conditional, a ``p`` interval contains the hidden value of
# a fraction ``p`` of the missing entries. We compare with a model fitted by zero filling, a
# biased baseline: its conditionals are too wide (at the full sizes its 90% intervals are about
# 20% wider and cover about 94% of the hidden values). Coverage below the diagonal means
# overconfident imputations, above it intervals wider than they need to be.
fit("zeroed")
zeroed = pyro_msm.to_inference_data(model, args=(table,), num_draws=DRAWS, seed=0)

probs = [0.5, 0.7, 0.8, 0.9, 0.95]
fig, ax = plt.subplots(figsize=(4.5, 4))
for label, data in [("IW fit", idata), ("zero-filling fit", zeroed)]:
    rates = [pyro_msm.imputation_coverage(data, truth, prob=p).rate for p in probs]
    ax.plot(probs, rates, "o-", label=label)
coverage = pyro_msm.imputation_coverage(idata, truth, prob=0.9)
print("IW fit:", coverage)
print("zero-filling fit:", pyro_msm.imputation_coverage(zeroed, truth, prob=0.9))
print("per feature:", dict(zip(columns, coverage.per_feature.tolist(), strict=True)))
band = [2 * (p * (1 - p) / coverage.count) ** 0.5 for p in probs]
ax.fill_between(
    probs, np.subtract(probs, band), np.add(probs, band), color="0.85", label="nominal +- 2 s.e."
)
ax.plot([0.45, 1], [0.45, 1], "k:", lw=1)
ax.set(xlabel="nominal probability", ylabel="coverage of hidden truths")
ax.legend()
fig.tight_layout()

# %%
# Training diagnostics
# --------------------
# The ``training`` group keeps the loss and the effective sample size of each step, and the
# ``imputation_stats`` group the ESS of each row's 1,000 importance draws used for imputation.
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
idata.training["loss"].plot(ax=axes[0])
idata.training["ess"].plot(ax=axes[1])
axes[2].hist(idata.imputation_stats["ess"].values.ravel(), bins=30)
axes[0].set_title("loss per row")
axes[1].set_title("ESS during training (of 10)")
axes[2].set_title("ESS of the imputation draws (of 1000)")
fig.tight_layout()
plt.show()

# %%
# With ArviZ 1.x (Python 3.12 or later) the same call returns an :class:`xarray.DataTree` with
# the same groups; ``az.summary`` and the plots work on it the same way.

"""
Quickstart: a Gaussian with missing values
==========================================

We simulate a Gaussian table, hide 30% of its entries completely at random, and fit the
Gaussian back by score matching on what is left, with

- importance weighting (IW, the default: no guide needed),
- the variational estimator (an amortised guide for the missing entries),
- the baselines people reach for first: zero filling, mean imputation, complete cases,

and compare all of them with the truth. Along the way we read the two numbers the loss
reports: the loss value and the effective sample size (ESS) of the importance weights.

Run this file top to bottom (``python t01_quickstart.py``, or open it as a notebook with
jupytext). With ``PYRO_MSM_SMOKE=1`` it runs at tiny sizes in seconds (this is what CI and
the documentation build do); at the sizes below it takes about 90 s of CPU time (measured:
87 s on the project's 2-core machine, one thread; longer in wall-clock time on a busy machine).
"""

# %%
# Setup
# -----
import os

import matplotlib.pyplot as plt
import pyro
import torch
from pyro.distributions import constraints
from pyro.infer import SVI
from pyro.optim import Adam

import pyro_msm
from pyro_msm.datasets import simulate_gaussian
from pyro_msm.distributions import GaussianEnergy
from pyro_msm.guides import AmortizedNormal, no_guide
from pyro_msm.infer.gaussian import gaussian_fisher_divergence, pairwise_moments

SMOKE = os.environ.get("PYRO_MSM_SMOKE", "0") == "1"
D, N = (3, 200) if SMOKE else (6, 1000)  # dimension, rows
STEPS = 15 if SMOKE else 400  # model updates per fit
GUIDE_STEPS = 2 if SMOKE else 5  # guide updates per model update (variational)
torch.set_num_threads(1)  # these problems are small: one thread is the fastest

# %%
# The data
# --------
# :func:`~pyro_msm.datasets.simulate_gaussian` draws a Gaussian with a known precision
# matrix (condition number 10, a random mean), ``N`` complete rows, and an MCAR mask. The fits
# below only ever see ``x``, the table with NaN where an entry is missing; the truth
# (``problem.loc``, ``problem.precision``) and the complete table (``problem.x``) are kept
# aside to score them.
problem = simulate_gaussian(d=D, n=N, missing_rate=0.3, seed=0)
x = problem.observed
print(problem.describe())
print(x[:5])
print(f"complete rows: {int(problem.mask.all(-1).sum())} of {N}")

# %%
# The model
# ---------
# An unnormalised Gaussian energy with a learnable mean and a Cholesky factor of the
# precision. :func:`pyro_msm.observe` declares the data site; NaN entries become the missing
# coordinates. We start every fit from the Gaussian moment-matched to the observed entries.
loc0, cov0 = pairwise_moments(torch.nan_to_num(x), ~torch.isnan(x))
tril0 = torch.linalg.cholesky(torch.linalg.inv(cov0))


def model(data):
    loc = pyro.param("loc", loc0.clone())
    tril = pyro.param("tril", tril0.clone(), constraint=constraints.lower_cholesky)
    with pyro.plate("rows", data.shape[0]):
        pyro_msm.observe("x", GaussianEnergy(loc, precision_tril=tril), obs=data)


def fitted():
    """The current mean and precision."""
    tril = pyro.param("tril").detach()
    return pyro.param("loc").detach(), tril @ tril.T


def fit(loss, guide=no_guide, steps=STEPS, lr=0.02):
    """Run SVI; return the loss per row and the ESS after each *model* update."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVI(model, guide, Adam({"lr": lr}), loss)
    cycle = getattr(loss, "guide_steps", 0) + 1 if loss.estimator == "variational" else 1
    losses, ess = [], []
    for _ in range(steps * cycle):
        value = svi.step(x)
        if loss.diagnostics.get("step", "model") == "model":
            losses.append(value / N)
            ess.append(loss.diagnostics.get("ess", float("nan")))
    return losses, ess


# %%
# Importance weighting
# --------------------
# The default loss: for each row, ``r = 10`` draws of the missing entries from a proposal,
# weighted by the model. The default proposal is the conditional of a Gaussian moment-matched
# to the data; the paper's is a fixed wide :math:`N(0, 4^2 I)` (``proposal="wide"``).
results = {}
for label, proposal in [("iw", "moment_matched"), ("iw_wide", "wide")]:
    loss = pyro_msm.MissingScoreMatching("iw", num_particles=10, proposal=proposal)
    losses, ess = fit(loss)
    results[label] = dict(losses=losses, ess=ess, estimate=fitted())
    print(f"{label:8s} final loss {losses[-1]:8.3f}   mean ESS {sum(ess) / len(ess):5.2f} / 10")

# %%
# Variational
# -----------
# A guide :math:`q_\phi(x_u \mid x_o)` replaces the model's conditional: here the paper's
# amortised Gaussian (an MLP of the zero-filled row, given the mask too). SVI alternates one
# model update with ``GUIDE_STEPS`` guide updates; only model updates are recorded.
guide = AmortizedNormal(
    model, hidden_dims=(32, 32) if SMOKE else (200, 200), condition_on_mask=True
)
loss = pyro_msm.MissingScoreMatching("variational", guide_steps=GUIDE_STEPS)
losses, _ = fit(loss, guide)
results["variational"] = dict(losses=losses, ess=[], estimate=fitted())

# %%
# Baselines and the exact answer
# ------------------------------
# ``closed_form`` is the exact marginal loss of a Gaussian model (what IW and variational
# approximate); the others are the usual shortcuts. ``complete_case`` needs more than ``D``
# complete rows.
for label in ["closed_form", "zeroed", "mean_impute", "complete_case"]:
    if label == "complete_case" and int(problem.mask.all(-1).sum()) <= D:
        continue
    losses, _ = fit(pyro_msm.MissingScoreMatching(label))
    results[label] = dict(losses=losses, ess=[], estimate=fitted())

# %%
# How close is each fit to the truth?
# -----------------------------------
# The *score MSE* :math:`E\lVert s_{\hat\theta}(x) - s(x)\rVert^2` over fresh complete draws
# of the truth. For Gaussians it is known in closed form: twice the Fisher divergence
# :func:`~pyro_msm.infer.gaussian.gaussian_fisher_divergence`. The complete-data oracle is
# what classical score matching gets from the table *before* masking; for a Gaussian its
# minimiser is the sample mean and the inverse of the (``1/n``) sample covariance.


def score_mse(loc_hat, precision_hat):
    """E|s_hat(x) - s(x)|^2 over draws of the true Gaussian, in closed form."""
    fitted = (loc_hat.double(), precision_hat.double())
    return 2 * float(gaussian_fisher_divergence(*fitted, problem.loc, problem.precision))


complete = problem.x.double()
oracle_cov = torch.cov(complete.T, correction=0)
mse = {k: score_mse(*r["estimate"]) for k, r in results.items()}
mse["complete data (oracle)"] = score_mse(complete.mean(0), torch.linalg.inv(oracle_cov))
for label, value in sorted(mse.items(), key=lambda kv: kv[1]):
    print(f"{label:24s} score MSE {value:8.4f}")

fig, ax = plt.subplots(figsize=(6, 3))
labels = sorted(mse, key=mse.get)
ax.barh(labels, [mse[k] for k in labels])
ax.set_xscale("log")
ax.set_xlabel("score MSE against the truth (lower is better)")
fig.tight_layout()

# %%
# The IW fit next to the truth: the mean, and the precision's diagonal and first row (the
# score MSE above sums up all of these errors).
loc_hat, precision_hat = results["iw"]["estimate"]
print(f"{'':14s}" + "".join(f"{j:>8d}" for j in range(D)))
for label, values in [
    ("mean: fitted", loc_hat),
    ("mean: truth", problem.loc),
    ("P_jj: fitted", precision_hat.diagonal()),
    ("P_jj: truth", problem.precision.diagonal()),
    ("P_0j: fitted", precision_hat[0]),
    ("P_0j: truth", problem.precision[0]),
]:
    print(f"{label:14s}" + "".join(f"{float(v):8.3f}" for v in values))

# %%
# What the loss and the ESS say
# -----------------------------
# The loss value is an estimate of the marginal score-matching objective per row. It is *not*
# a likelihood: it can be negative, its level differs between estimators (the biased
# baselines minimise other functions altogether), so compare fits by their accuracy, and use
# the curve only to see convergence. IW's estimate is biased by :math:`O(1/r)`, so a curve
# with more particles sits lower.
#
# The ESS, :math:`1/\sum_k w_k^2` averaged over rows with a missing entry, says how many of
# the ``r`` particles effectively count. Near ``r`` the proposal matches the model's
# conditional (good); below about ``r / 2`` the loss is noisy and biased: raise
# ``num_particles``, use the moment-matched proposal, or train a guide and use
# ``estimator="hybrid"``. Here the moment-matched proposal keeps the ESS near 10 and the
# paper's wide proposal, which puts most draws where the model has little mass, far lower.
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for label in ["iw", "iw_wide", "variational"]:
    axes[0].plot(results[label]["losses"], label=label)
    if results[label]["ess"]:
        axes[1].plot(results[label]["ess"], label=label)
axes[0].set(xlabel="model update", ylabel="loss per row", title="loss")
axes[1].set(
    xlabel="model update", ylabel="ESS (of 10)", title="effective sample size", ylim=(0, 10.5)
)
for ax in axes:
    ax.legend()
fig.tight_layout()
plt.show()

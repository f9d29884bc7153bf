"""
Your own energy model: a neural energy with an amortised flow guide
===================================================================

Score matching fits models known only up to their normalising constant. Here the model is a
neural network energy :math:`E_\\theta(x)`, the data come from a curved, non-Gaussian
distribution with entries missing at random, and the model's conditional of the missing
entries is represented by an amortised normalising flow :math:`q_\\phi(x_u \\mid x_o)` (the
variational estimator). Instead of the exact Hyvarinen loss, which needs the diagonal of the
energy's Hessian, we train with its two cheaper relatives:

- **sliced** score matching: random projections, one Hessian-vector product each;
- **denoising** score matching: noise on the observed coordinates, first derivatives only.

In two dimensions we can look at everything: the learned densities, and the flow's
imputations of a missing coordinate whose true conditional has two modes.

With ``PYRO_MSM_SMOKE=1`` this runs at tiny sizes in seconds; at the sizes below it takes
about 70 s of CPU time (measured: 72 s on the project's 2-core machine, one thread; longer in
wall-clock time on a busy machine).
"""

# %%
# Setup
# -----
import math
import os

import matplotlib.pyplot as plt
import pyro
import torch
from pyro.infer import SVI
from pyro.optim import Adam

import pyro_msm
from pyro_msm.distributions import EnergyMLP, FunctionEnergy, MLPEnergy
from pyro_msm.guides import AmortizedFlow
from pyro_msm.infer.derivatives import score
from pyro_msm.infer.objectives import DenoisingObjective, SlicedObjective
from pyro_msm.missingness import apply_mask, mcar_mask

SMOKE = os.environ.get("PYRO_MSM_SMOKE", "0") == "1"
N = 200 if SMOKE else 1000  # rows
STEPS = 10 if SMOKE else 150  # model updates
EVERY = 5 if SMOKE else 25  # model updates between checks of the fitted score
GUIDE_STEPS = 2  # guide updates per model update
HIDDEN = (16, 16) if SMOKE else (64, 64)
torch.set_num_threads(1)
torch.manual_seed(0)

# %%
# A banana-shaped truth
# ---------------------
# :math:`x_1 \sim N(0, 1)` and :math:`x_2 \mid x_1 \sim N(0.8 (x_1^2 - 1), 0.5^2)`. Given
# :math:`x_2 > -0.8`, the conditional of :math:`x_1` has two modes, near
# :math:`\pm\sqrt{1 + x_2 / 0.8}`: a Gaussian guide cannot represent it, a flow can. 30% of
# the entries are hidden (MCAR).


def true_energy(x):
    return 0.5 * x[..., 0] ** 2 + 0.5 * ((x[..., 1] - 0.8 * (x[..., 0] ** 2 - 1)) / 0.5) ** 2


def sample_truth(n):
    x1 = torch.randn(n)
    return torch.stack([x1, 0.8 * (x1**2 - 1) + 0.5 * torch.randn(n)], -1)


full = sample_truth(N)
x = apply_mask(full, mcar_mask(full.shape, 0.3, seed=0))  # NaN = missing
print(f"{int(torch.isnan(x).any(-1).sum())} of {N} rows miss an entry")

# %%
# A yardstick
# -----------
# Score matching fits the score :math:`\nabla_x \log p`. Here we know the true score, so we
# can measure the fitted one on fresh complete draws of the truth: the score MSE
# :math:`E\lVert s_\theta(x) - s(x)\rVert^2`. (With real data, hold out rows and watch the
# loss on them instead.)
test = sample_truth(5000)
true_score = score(FunctionEnergy(true_energy, 2), test).detach()


def score_mse(net):
    fitted = score(MLPEnergy(net), test).detach()
    return float(((fitted - true_score) ** 2).sum(-1).mean())


torch.manual_seed(1)
print(f"untrained network: score MSE {score_mse(EnergyMLP(2, HIDDEN)):.3f}")

# %%
# Model, guide and loss
# ---------------------
# :class:`~pyro_msm.distributions.MLPEnergy` wraps an :class:`~pyro_msm.distributions.EnergyMLP`
# (smooth activations, since score matching differentiates twice, plus a small quadratic
# confinement so that :math:`e^{-E}` is integrable). :class:`~pyro_msm.guides.AmortizedFlow` is
# a conditional spline flow on the missing coordinates, conditioned on the observed ones and
# the mask. The objective is the only thing that changes between the two fits.


def train(objective):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    net = EnergyMLP(2, HIDDEN)

    def model(data):
        pyro.module("energy", net)
        with pyro.plate("rows", data.shape[0]):
            pyro_msm.observe("x", MLPEnergy(net), obs=data)

    guide = AmortizedFlow(model, transform="spline", num_transforms=2, hidden_dims=(32, 32))
    loss = pyro_msm.MissingScoreMatching(
        "variational", num_particles=4, objective=objective, guide_steps=GUIDE_STEPS
    )
    svi = SVI(model, guide, Adam({"lr": 0.005}), loss)
    losses, checks = [], []
    for _ in range(STEPS * (GUIDE_STEPS + 1)):
        value = svi.step(x)
        if loss.diagnostics["step"] == "model":
            losses.append(value / N)
            if len(losses) % EVERY == 0:
                checks.append((len(losses), score_mse(net)))
    return dict(model=model, guide=guide, net=net, losses=losses, checks=checks)


fits = {
    "sliced": train(SlicedObjective(num_projections=2)),
    "denoising": train(DenoisingObjective(noise_scale=0.1)),
}

for label, f in fits.items():
    print(f"{label:10s} score MSE {f['checks'][-1][1]:.3f} after {STEPS} model updates")

# %%
# A flexible energy can overfit score matching: the loss is unbounded below for ever sharper
# energies, so on a finite sample a long run eventually makes the score worse (here the sliced
# fit degrades after a few hundred updates; with 2,000 rows and 600 updates it diverged). Watch a
# held-out quantity and stop when it stops improving.
fig, ax = plt.subplots(figsize=(6, 3))
for label, f in fits.items():
    steps, values = zip(*f["checks"], strict=True)
    ax.plot(steps, values, "o-", label=label)
ax.set(xlabel="model update", ylabel="score MSE", yscale="log")
ax.legend()
fig.tight_layout()

# %%
# The learned densities
# ---------------------
# :math:`e^{-E_\theta}` on a grid, normalised numerically for the picture, next to the truth.
grid = torch.linspace(-3.5, 3.5, 121)
gx, gy = torch.meshgrid(grid, torch.linspace(-3, 7, 121), indexing="xy")
points = torch.stack([gx, gy], -1)


def density(energy):
    with torch.no_grad():
        log_q = -energy(points)
    return torch.exp(log_q - log_q.max())


fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharey=True)
panels = [("truth", true_energy)] + [(k, f["net"]) for k, f in fits.items()]
for ax, (label, energy) in zip(axes, panels, strict=True):
    ax.contourf(gx, gy, density(energy), levels=12, cmap="Blues")
    ax.scatter(*x[~torch.isnan(x).any(-1)][:300].T, s=2, c="k", alpha=0.4)
    ax.set(title=label, xlabel="$x_1$", xlim=(-3.5, 3.5), ylim=(-3, 7))
axes[0].set_ylabel("$x_2$")
fig.tight_layout()

# %%
# Imputations from the flow
# -------------------------
# The guide is amortised: it imputes any row, including new ones. For rows that observe only
# :math:`x_2`, the model's conditional of :math:`x_1` is bimodal. :func:`pyro_msm.impute`
# runs the trained guide and merges its draws with the observed entries. The flow finds both
# modes; trained on the reverse KL, which prefers to miss mass rather than put it where the
# model has none, it need not weigh them as the model does.
queries = torch.tensor([[math.nan, 1.5], [math.nan, -0.5]])
fit = fits["sliced"]
imputations = pyro_msm.impute(
    fit["model"], fit["guide"], args=(queries,), num_draws=2000, num_chains=1, seed=0
)

fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for row, ax in enumerate(axes):
    draws = imputations.draws[0, :, row, 0]
    ax.hist(draws, bins=60, density=True, alpha=0.6, label="flow imputations")
    x2 = float(queries[row, 1])
    line = torch.stack([grid, torch.full_like(grid, x2)], -1)
    with torch.no_grad():
        for label, energy in [("truth", true_energy), ("fitted model", fit["net"])]:
            p = torch.exp(-energy(line))
            ax.plot(grid, p / (p.sum() * (grid[1] - grid[0])), label=label)
    ax.set(title=f"$x_1$ given $x_2 = {x2}$", xlabel="$x_1$")
axes[0].legend()
fig.tight_layout()

# %%
# Training curves
# ---------------
# The sliced loss is an unbiased estimate of the exact one; the denoising loss measures
# something else (the score of the noise-smoothed data) and sits at a different level. Both
# are for convergence checks only: judge fits by held-out quantities like the score MSE above.
fig, ax = plt.subplots(figsize=(6, 3))
for label, f in fits.items():
    ax.plot(f["losses"], label=label)
ax.set(xlabel="model update", ylabel="loss per row")
ax.legend()
fig.tight_layout()
plt.show()

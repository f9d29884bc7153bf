"""
Sparse graphs from incomplete data
==================================

Which proteins act on which? A sparse Gaussian graphical model answers with the zeros of the
precision matrix: proteins ``i`` and ``j`` share an edge when :math:`P_{ij} \\ne 0`. Here we
estimate that graph on the Sachs flow-cytometry data (7466 single cells, 11 proteins and
phospholipids) after hiding 30% of the entries completely at random, by

- L1-penalised *marginal* score matching (:class:`~pyro_msm.graphical.GraphicalScoreMatching`)
  with the variational estimator (the paper's Marg-Var) and with importance weighting
  (Marg-IW),
- the usual shortcut: impute every missing entry by its column mean, then the graphical
  lasso,

and score each penalty path by its ROC AUC against two references: the graph that
score matching finds on the *complete* table, and the 18-edge consensus network of Sachs et
al. (2005). This is one mask of the real-data protocol that ``pyro-msm reproduce sachs``
repeats over missing rates and masks.

With ``PYRO_MSM_SMOKE=1`` this runs at tiny sizes in seconds; at the sizes below it takes
about 75 s of CPU time (measured: 75 s on the project's 2-core machine, one thread; longer in
wall-clock time on a busy machine).
"""

# %%
# Setup
# -----
import os
import time

import matplotlib.pyplot as plt
import torch

from pyro_msm.datasets import load_sachs
from pyro_msm.graphical import (
    GraphicalScoreMatching,
    edge_metrics,
    edges_from_precision,
    impute_glasso_path,
    path_auc,
    path_roc,
    select_ebic,
)
from pyro_msm.missingness import mcar_mask

SMOKE = os.environ.get("PYRO_MSM_SMOKE", "0") == "1"
N = 300 if SMOKE else None  # rows used (None: all 7466)
# the penalty paths: 30 penalties from the empty graph down to 1/100 of that penalty, 30
# proximal Adam steps per penalty after 200 warm-up steps, Adam 0.01, minibatches of 100 rows,
# 2 guide steps per model step; tiny in smoke mode
PATH = dict(
    num_penalties=4 if SMOKE else 30,
    penalty_ratio=0.01,
    steps_per_penalty=3 if SMOKE else 30,
    warmup_steps=5 if SMOKE else 200,
    guide_steps=1 if SMOKE else 2,
    num_particles=4 if SMOKE else 10,
    lr=0.01,
    batch_size=100,
)
BASELINE_PENALTIES = 4 if SMOKE else 30
MISSING_RATE = 0.3
torch.set_num_threads(1)  # d = 11: one thread is the fastest

# %%
# The data
# --------
# :func:`~pyro_msm.datasets.load_sachs` returns the bundled table and the consensus network.
# Intensities are heavily right-skewed, so we take logarithms (``log=True``) and then
# standardise every column (mean 0, standard deviation 1): the L1 penalty treats every entry
# of the precision alike, so the columns should share a scale.
data = load_sachs(log=True)
names = data.columns
raw = data.x if N is None else data.x[:N]
z = (raw - raw.mean(0)) / raw.std(0)
n, d = z.shape
print(f"{n} cells x {d} proteins: {', '.join(names)}")
print(f"consensus network: {len(data.edges)} edges, e.g. {data.edges[:3]}")

# %%
# Reference graphs from the complete table
# ----------------------------------------
# On a complete table the penalised score-matching loss of a Gaussian is quadratic in the
# precision, and :class:`~pyro_msm.graphical.GraphicalScoreMatching` solves it exactly along
# a penalty path (``solver="auto"`` picks this fast path, ``"quadratic"``, when nothing is
# missing), then selects one penalty by eBIC. We run it on a fine grid (200 penalties, down
# to 1/1000 of the empty-graph penalty) and read the path at the penalties whose edge density
# is closest to 0.05, 0.10, ..., 0.25 (of the 55 possible edges). These reference graphs are
# what the incomplete-data methods should recover: the best that the same model could do
# without missing values. The consensus network is a second, external reference (a
# biological one; a Gaussian model of pooled conditions need not find it).
complete_fit = GraphicalScoreMatching(num_penalties=200, penalty_ratio=1e-3).fit(z)
path_graphs = edges_from_precision(complete_fit.precisions_)  # (penalties, d, d) booleans
density = path_graphs.triu(1).sum((-2, -1)) / (d * (d - 1) / 2)
references = {}
for target in [0.05, 0.10, 0.15, 0.20, 0.25]:
    closest = int((density - target).abs().argmin())
    references[f"density {target:g}"] = path_graphs[closest]
references["consensus"] = data.adjacency
for name, adjacency in references.items():
    print(f"{name:14s} {int(adjacency.triu(1).sum()):3d} edges")

complete_auc = path_auc(data.adjacency, complete_fit.precisions_)
print(
    f"complete data: solver {complete_fit.solver_!r}, {len(complete_fit.edges_)} edges "
    f"selected by eBIC, AUC of the path against the consensus {complete_auc:.3f}"
)

# %%
# Hide 30% of the entries
# -----------------------
# :func:`~pyro_msm.missingness.mcar_mask` hides each entry independently (True = observed).
# Only about :math:`0.7^{11} \approx 2\%` of the cells keep all 11 measurements, so dropping
# incomplete rows is not an option.
mask = mcar_mask(z.shape, MISSING_RATE, seed=0)
x = z.masked_fill(~mask, float("nan"))  # what the methods see
print(
    f"missing entries: {float((~mask).double().mean()):.3f}; "
    f"complete rows: {int(mask.all(-1).sum())} of {n}"
)

# %%
# Marginal score matching along a penalty path
# --------------------------------------------
# ``fit`` runs proximal Adam along a decreasing penalty grid on the *marginal* score-matching
# loss (the missing entries integrated out), warm-starting each penalty from the previous
# one, then selects a penalty by eBIC on the observed entries. The variational estimator
# trains an amortised Gaussian guide for the missing entries (``guide_steps`` guide updates
# per model update); importance weighting needs no guide.
fits = {}
for estimator in ["variational", "iw"]:
    fits[estimator] = GraphicalScoreMatching(estimator, **PATH, seed=0).fit(x)
    print(
        f"{estimator:12s} {fits[estimator].path_.seconds:6.1f} s, "
        f"{len(fits[estimator].edges_)} edges selected by eBIC"
    )

# %%
# Impute, then the graphical lasso
# --------------------------------
# :func:`~pyro_msm.graphical.impute_glasso_path` fills every missing entry with its column
# mean and runs scikit-learn's graphical lasso along its own penalty grid. Mean imputation
# shrinks every covariance by the fraction of pairs observed together, so the baseline sees a
# distorted covariance; the question is whether that distortion changes the *ranking* of
# edges, which is what the AUC measures. We select its penalty by the same eBIC.
start = time.perf_counter()
glasso = impute_glasso_path(x, imputer="mean", num_penalties=BASELINE_PENALTIES, penalty_ratio=0.01)
glasso_index, _ = select_ebic(z, mask, glasso.locs, glasso.precisions)
print(f"mean_glasso  {time.perf_counter() - start:6.1f} s")

paths = {
    "Marg-Var": fits["variational"].precisions_,
    "Marg-IW": fits["iw"].precisions_,
    "mean + glasso": glasso.precisions,
}

# %%
# ROC AUC against the references
# ------------------------------
# Each penalty of a path gives a graph; sweeping the penalty traces a ROC curve (true against
# false positive rate of the edges) and :func:`~pyro_msm.graphical.path_auc` is the area
# under it. The AUC does not depend on how a penalty is selected.
auc = {
    method: {ref: path_auc(adjacency, path) for ref, adjacency in references.items()}
    for method, path in paths.items()
}
print(f"{'reference':14s}" + "".join(f"{m:>15s}" for m in paths))
for ref in references:
    print(f"{ref:14s}" + "".join(f"{auc[m][ref]:15.3f}" for m in paths))

fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
for ax, ref in zip(axes, ["density 0.15", "consensus"], strict=True):
    for method, path in paths.items():
        fpr, tpr = path_roc(references[ref], path)
        ax.step(fpr, tpr, where="post", label=f"{method} (AUC {auc[method][ref]:.2f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", title=f"reference: {ref}", aspect="equal")
    ax.legend(fontsize=8, loc="lower right")
axes[0].set_ylabel("true positive rate")
fig.tight_layout()

# %%
# The selected graphs
# -------------------
# The heatmaps show the absolute partial correlations
# :math:`|P_{ij}| / \sqrt{P_{ii} P_{jj}}` (comparable between methods, unlike the raw
# precisions) of the graph eBIC selects for Marg-Var and for mean imputation + glasso,
# beside the complete-data estimate; white dots mark the consensus edges.
selected = {
    "complete data (eBIC)": complete_fit.precision_,
    "Marg-Var (eBIC)": fits["variational"].precision_,
    "mean + glasso (eBIC)": glasso.precisions[glasso_index],
}


def partial_correlations(precision):
    """Absolute partial correlations, NaN on the diagonal."""
    scale = precision.diagonal().sqrt()
    out = (precision / scale[:, None] / scale[None, :]).abs()
    return out.fill_diagonal_(float("nan"))


strengths = {title: partial_correlations(p) for title, p in selected.items()}
top = max(float(s.nan_to_num().max()) for s in strengths.values())
fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), layout="constrained")
rows, cols = torch.nonzero(data.adjacency, as_tuple=True)
for ax, (title, strength) in zip(axes, strengths.items(), strict=True):
    image = ax.imshow(strength.numpy(), cmap="viridis", vmin=0.0, vmax=top)
    ax.scatter(cols, rows, marker="o", s=12, color="white")
    ax.set_xticks(range(d), names, rotation=90, fontsize=8)
    ax.set_yticks(range(d), names, fontsize=8)
    ax.set_title(title, fontsize=10)
fig.colorbar(image, ax=axes, shrink=0.7, label="|partial correlation|")

# %%
# The 12 strongest edges Marg-Var selects, with the consensus edges marked, and the size of
# each selected graph:
strength = strengths["Marg-Var (eBIC)"]
edges = sorted(fits["variational"].edges_, key=lambda e: -float(strength[e]))
for i, j in edges[:12]:
    mark = "consensus" if bool(data.adjacency[i, j]) else ""
    print(f"{names[i]:>9s} - {names[j]:<9s} {float(strength[i, j]):.3f}  {mark}")
for title, estimate in selected.items():
    metrics = edge_metrics(data.adjacency, estimate)
    f1 = metrics["f1"]
    print(f"{title:22s} {metrics['num_edges']:3d} edges, F1 against the consensus {f1:.2f}")

# %%
# What the numbers say
# --------------------
# In the run we measured (all 7466 cells, seed 0, 30% MCAR: 169 complete rows; 75 s of CPU
# time in all, most of it the variational path), all three methods recover the
# complete-data reference graphs almost perfectly: over the five densities, AUC 0.983 to 0.997
# for Marg-Var, 0.986 to 1.000 for Marg-IW and 0.985 to 1.000 for mean imputation + glasso. So
# on this table, with thousands of rows and a few strong partial correlations, mean imputation
# distorts the covariance but not the *order* in which edges enter, and marginal score
# matching shows no advantage over the shortcut at 30% MCAR (whether it does at higher rates
# is what ``pyro-msm reproduce sachs`` measures, over rates and masks). Against
# the consensus network every path scores an AUC of 0.58, and the complete-data path itself
# only 0.67: a Gaussian model of measurements pooled over perturbation experiments finds a
# different graph from the literature's causal one (with or without missing values, one of its
# two strongest edges is p44/42 - pakts473, not a consensus edge), and no treatment of the
# missing values changes that. eBIC on 7466 rows keeps dense graphs (39 to 53 of the 55
# possible edges here); for a readable network pick a larger penalty from ``penalties_`` and
# ``precisions_``. One mask and one seed are an illustration, not a benchmark.
plt.show()

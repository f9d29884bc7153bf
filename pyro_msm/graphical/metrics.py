r"""Edge-recovery and parameter-error metrics for estimated precision matrices.

Edges are the pairs :math:`i < j` (the strict upper triangle); an estimated edge is a pair with
:math:`|\hat P_{ij}| > \tau` (``threshold``). Along a penalty path, each penalty gives one
point (false-positive rate, true-positive rate); :func:`path_roc` adds the corners
:math:`(0, 0)` and :math:`(1, 1)`, sorts the points and :func:`path_auc` integrates by the
trapezoidal rule, the paper's "ROC AUC along the path". For a nested path (edges only enter
as the penalty falls) this equals the AUC of ranking pairs by the largest penalty at which they
are selected. :func:`roc_auc` is the AUC of an arbitrary score ranking (the Mann-Whitney
statistic, ties counted one half).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..infer.gaussian import gaussian_fisher_divergence

__all__ = [
    "DEFAULT_EDGE_THRESHOLD",
    "upper_pairs",
    "edges_from_precision",
    "degree_ratio",
    "confusion",
    "f1_score",
    "matthews_corrcoef",
    "roc_auc",
    "path_roc",
    "path_auc",
    "frobenius_error",
    "fisher_divergence",
    "stein_loss",
    "gaussian_kl",
    "edge_metrics",
    "parameter_errors",
]

#: Default :math:`\tau`: an edge is a pair with :math:`|\hat P_{ij}| > 10^{-4}` (the
#: proximal solvers produce exact zeros; the threshold only absorbs rounding).
DEFAULT_EDGE_THRESHOLD = 1e-4


def _square(matrix: Tensor, name: str) -> Tensor:
    if not isinstance(matrix, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(matrix).__name__}")
    if matrix.dim() < 2 or matrix.shape[-1] != matrix.shape[-2]:
        raise ValueError(f"{name} must be (..., d, d), got shape {tuple(matrix.shape)}")
    if matrix.shape[-1] < 2:
        raise ValueError(f"{name} needs d >= 2 to have any pair, got d={matrix.shape[-1]}")
    return matrix


def upper_pairs(matrix: Tensor) -> Tensor:
    """Entries of the strict upper triangle, ``(..., d(d-1)/2)``, row-major."""
    matrix = _square(matrix, "matrix")
    d = matrix.shape[-1]
    rows, cols = torch.triu_indices(d, d, offset=1, device=matrix.device)
    return matrix[..., rows, cols]


def edges_from_precision(precision: Tensor, threshold: float = DEFAULT_EDGE_THRESHOLD) -> Tensor:
    r"""Boolean adjacency :math:`|\hat P_{ij}| > \tau` off the diagonal (batched over leading
    dimensions, e.g. a path ``(k, d, d)``)."""
    precision = _square(precision, "precision")
    if not threshold >= 0:
        raise ValueError(f"threshold must be non-negative, got {threshold}")
    edges = precision.abs() > threshold
    eye = torch.eye(precision.shape[-1], dtype=torch.bool, device=precision.device)
    edges = edges & ~eye
    return edges | edges.mT  # symmetric even if the estimate is slightly asymmetric


def degree_ratio(precision: Tensor, threshold: float = DEFAULT_EDGE_THRESHOLD) -> float:
    """Largest node degree over the mean degree of the graph of ``precision`` (``(d, d)``):
    about 1 for chains and Erdos-Renyi graphs, ``d / 2`` for a star; 1 for the empty graph.
    :func:`~pyro_msm.graphical.imputed_path` reads it off its imputation fit to choose the
    path's loss (``loss="auto"``)."""
    precision = _square(precision, "precision")
    if precision.dim() != 2:
        raise ValueError(f"precision must be (d, d), got shape {tuple(precision.shape)}")
    degrees = edges_from_precision(precision, threshold).sum(0).to(torch.float64)
    mean = float(degrees.mean())
    return float(degrees.max()) / mean if mean > 0 else 1.0


def _truth_and_pred(truth: Tensor, predicted: Tensor) -> tuple[Tensor, Tensor]:
    truth = _square(truth, "truth")
    predicted = _square(predicted, "predicted")
    if truth.shape[-1] != predicted.shape[-1]:
        raise ValueError(
            f"truth is {tuple(truth.shape)} but predicted is {tuple(predicted.shape)}"
        )
    return upper_pairs(truth != 0), upper_pairs(predicted != 0)


def confusion(truth: Tensor, predicted: Tensor) -> dict[str, Tensor]:
    """True/false positives and negatives over pairs ``i < j`` (batched over ``predicted``'s
    leading dimensions).

    :param truth: ``(d, d)`` adjacency (nonzero = edge). :param predicted: ``(..., d, d)``.
    :returns: dict with ``tp``, ``fp``, ``tn``, ``fn`` (float64 tensors).
    """
    t, p = _truth_and_pred(truth, predicted)
    t = t.expand_as(p)
    count = lambda m: m.to(torch.float64).sum(-1)  # noqa: E731
    return {"tp": count(t & p), "fp": count(~t & p), "tn": count(~t & ~p), "fn": count(t & ~p)}


def f1_score(truth: Tensor, predicted: Tensor) -> float:
    """F1 of the estimated edge set: :math:`2TP / (2TP + FP + FN)` (0 when there is nothing to
    find and nothing found would be 0/0: returned as 1.0 then, both sets being empty)."""
    c = confusion(truth, predicted)
    denominator = float(2 * c["tp"] + c["fp"] + c["fn"])
    return 1.0 if denominator == 0 else float(2 * c["tp"]) / denominator


def matthews_corrcoef(truth: Tensor, predicted: Tensor) -> float:
    r"""Matthews correlation coefficient of the estimated edge set,
    :math:`(TP\,TN - FP\,FN)/\sqrt{(TP+FP)(TP+FN)(TN+FP)(TN+FN)}`; 0 when a factor of the
    denominator is zero (a constant prediction or truth)."""
    c = {k: float(v) for k, v in confusion(truth, predicted).items()}
    numerator = c["tp"] * c["tn"] - c["fp"] * c["fn"]
    denominator = (
        (c["tp"] + c["fp"]) * (c["tp"] + c["fn"]) * (c["tn"] + c["fp"]) * (c["tn"] + c["fn"])
    )
    return 0.0 if denominator == 0 else numerator / math.sqrt(denominator)


def roc_auc(truth: Tensor, scores: Tensor) -> float:
    """AUC of ranking pairs by ``scores`` (higher = more likely an edge): the probability that
    an edge outranks a non-edge, ties counted one half (Mann-Whitney).

    :param truth: ``(d, d)`` adjacency. :param scores: ``(d, d)`` (e.g. :math:`|\\hat P|`).
    :raises ValueError: if the truth has no edge or no non-edge (AUC undefined).
    """
    t = upper_pairs(_square(truth, "truth") != 0)
    s = upper_pairs(_square(scores, "scores")).to(torch.float64)
    positives, negatives = s[t], s[~t]
    if positives.numel() == 0 or negatives.numel() == 0:
        raise ValueError("roc_auc needs at least one edge and one non-edge in the truth")
    greater = (positives[:, None] > negatives[None, :]).to(torch.float64).mean()
    ties = (positives[:, None] == negatives[None, :]).to(torch.float64).mean()
    return float(greater + 0.5 * ties)


def path_roc(
    truth: Tensor, path: Tensor, threshold: float = DEFAULT_EDGE_THRESHOLD
) -> tuple[Tensor, Tensor]:
    """ROC points of a penalty path, with the corners, sorted by (FPR, TPR).

    :param truth: ``(d, d)`` adjacency with at least one edge and one non-edge.
    :param path: ``(k, d, d)`` precision estimates (or adjacencies).
    :param threshold: edge threshold :math:`\\tau`.
    :returns: ``(fpr, tpr)``, each ``(k + 2,)`` float64.
    """
    path = _square(path, "path")
    if path.dim() == 2:
        path = path.unsqueeze(0)
    c = confusion(truth, edges_from_precision(path, threshold))
    positives = c["tp"] + c["fn"]
    negatives = c["fp"] + c["tn"]
    if float(positives[0]) == 0 or float(negatives[0]) == 0:
        raise ValueError("path_roc needs at least one edge and one non-edge in the truth")
    tpr = c["tp"] / positives
    fpr = c["fp"] / negatives
    zero = torch.zeros(1, dtype=torch.float64)
    fpr = torch.cat([zero, fpr.cpu(), zero + 1])
    tpr = torch.cat([zero, tpr.cpu(), zero + 1])
    by_tpr = torch.sort(tpr, stable=True).indices
    order = by_tpr[torch.sort(fpr[by_tpr], stable=True).indices]  # by fpr, ties by tpr
    return fpr[order], tpr[order]


def path_auc(truth: Tensor, path: Tensor, threshold: float = DEFAULT_EDGE_THRESHOLD) -> float:
    """Area under :func:`path_roc` by the trapezoidal rule."""
    fpr, tpr = path_roc(truth, path, threshold)
    return float(torch.trapezoid(tpr, fpr))


def frobenius_error(estimate: Tensor, truth: Tensor, relative: bool = False) -> float:
    """:math:`\\lVert\\hat P - P\\rVert_F` (divided by :math:`\\lVert P\\rVert_F` if
    ``relative``)."""
    a = _square(estimate, "estimate").detach().to(torch.float64)
    b = _square(truth, "truth").detach().to(torch.float64)
    error = float(torch.linalg.norm(a - b))
    return error / float(torch.linalg.norm(b)) if relative else error


def fisher_divergence(estimate: Tensor, truth: Tensor) -> float:
    r"""Fisher divergence :math:`\tfrac12\mathrm{tr}((\hat P - P)\Sigma(\hat P - P))` between
    centred Gaussians :math:`N(0,\hat P^{-1})` and the truth :math:`N(0, P^{-1})`
    (:func:`~pyro_msm.infer.gaussian.gaussian_fisher_divergence` with zero means)."""
    a = _square(estimate, "estimate").detach().to(torch.float64)
    b = _square(truth, "truth").detach().to(torch.float64)
    zero = torch.zeros(b.shape[-1], dtype=torch.float64)
    return float(gaussian_fisher_divergence(zero, a, zero, b))


def stein_loss(estimate: Tensor, truth: Tensor) -> float:
    r"""Stein's loss of a precision estimate,
    :math:`\mathrm{tr}(\Sigma\hat P) - \log\det(\Sigma\hat P) - d` with :math:`\Sigma = P^{-1}`
    (twice :func:`gaussian_kl`); ``inf`` if :math:`\hat P` is not positive definite."""
    return 2.0 * gaussian_kl(estimate, truth)


def gaussian_kl(estimate: Tensor, truth: Tensor) -> float:
    r""":math:`\mathrm{KL}(N(0, P^{-1}) \,\|\, N(0, \hat P^{-1}))
    = \tfrac12[\mathrm{tr}(\Sigma\hat P) - \log\det(\Sigma\hat P) - d]`, the truth first;
    ``inf`` if :math:`\hat P` is not positive definite."""
    a = _square(estimate, "estimate").detach().to(torch.float64)
    b = _square(truth, "truth").detach().to(torch.float64)
    chol_hat, info = torch.linalg.cholesky_ex(0.5 * (a + a.mT))
    if int(info) != 0:
        return math.inf
    chol = torch.linalg.cholesky(b)
    covariance = torch.cholesky_inverse(chol)
    trace = float((covariance * a).sum())
    log_det = 2.0 * float(torch.log(chol_hat.diagonal()).sum() - torch.log(chol.diagonal()).sum())
    return 0.5 * (trace - log_det - b.shape[-1])


def edge_metrics(
    truth: Tensor, estimate: Tensor, threshold: float = DEFAULT_EDGE_THRESHOLD
) -> dict:
    """F1, MCC, TPR, FPR and edge count of one estimate thresholded at ``threshold``."""
    predicted = edges_from_precision(estimate, threshold)
    c = {k: float(v) for k, v in confusion(truth, predicted).items()}
    return {
        "f1": f1_score(truth, predicted),
        "mcc": matthews_corrcoef(truth, predicted),
        "tpr": c["tp"] / max(c["tp"] + c["fn"], 1.0),
        "fpr": c["fp"] / max(c["fp"] + c["tn"], 1.0),
        "num_edges": int(c["tp"] + c["fp"]),
    }


def parameter_errors(estimate: Tensor, truth: Tensor) -> dict:
    """Relative Frobenius error, Fisher divergence and Stein loss of a precision estimate."""
    return {
        "frobenius": frobenius_error(estimate, truth, relative=True),
        "fisher": fisher_divergence(estimate, truth),
        "stein": stein_loss(estimate, truth),
    }


r"""Choosing one penalty on a path: the extended BIC (of the score-matching loss, or of the
observed-data Gaussian likelihood) and K-fold cross-validation of the held-out marginal loss.

**eBIC of the score-matching loss** (:func:`ebic_score_matching`, the default of
:class:`~pyro_msm.graphical.GraphicalScoreMatching`). As in the R package genscore
(Yu, Drton & Shojaie 2019; its ``eBIC``), the loss takes the place of the negative
log-likelihood: genscore scores :math:`2n\,\hat L_{\rm gs} + |E|\log n +
2\beta\log\binom{d(d-1)/2}{|E|}`, with :math:`\hat L_{\rm gs} = \tfrac12\mathrm{tr}(KSK) -
\mathrm{tr}K` its (half-scale) mean loss, by default evaluated after refitting the estimated
support without penalty (``BIC_refit``). Our per-row loss is twice genscore's, so the same
criterion is

.. math:: \mathrm{eBIC}_\beta = n\,\bar L(\tilde\mu, \tilde P) + |E|\log n
    + 2\beta\log\binom{d(d-1)/2}{|E|},

with :math:`\bar L` the mean exact marginal loss of the observed entries
(:func:`~pyro_msm.infer.gaussian.grouped_marginal_loss`; on complete data the classical
score-matching loss) and :math:`(\tilde\mu, \tilde P)` the refit (:func:`support_refits`:
the expected Gram matrix of the fit's E-step held fixed, the quadratic problem solved on the
support without penalty), or the penalised estimate with ``refit=False``. Unlike a
log-likelihood, the score-matching loss is not invariant to the units of the data
(:math:`x \to cx` scales it by :math:`1/c^2`), so it is evaluated on the table standardised by
the observed standard deviations (with :math:`\tilde P` transformed accordingly), as genscore's
default scaling of the data does. The
binomial term is the exact form of Foygel & Drton's :math:`4\beta|E|\log d`.

**Cross-validation** (:func:`cross_validate`): fit the path on K-1 folds, score the held-out
fold by its mean marginal loss, pick the penalty with the smallest average.

**eBIC of the likelihood** (:func:`ebic`, :func:`select_ebic`): the Gaussian log-likelihood of
the observed entries in place of the loss.

We select by eBIC (Foygel & Drton 2010) rather than stability selection. Along a path, eBIC
needs one pass over the estimates and no refit, while stability selection refits the whole path
on many subsamples: for the marginal score-matching estimators, whose path costs minutes, that is
one to two orders of magnitude more computation. eBIC is consistent for sparse Gaussian
graphs when :math:`d` grows with :math:`n` (Foygel & Drton 2010), the regime of the paper.

With missing entries the likelihood is that of what was observed: row :math:`i` contributes
:math:`\log N(x_{i,o}; \mu_o, \Sigma_{oo})` with :math:`\Sigma = \hat P^{-1}`, computed for all
rows with one factorisation per missingness pattern of the smaller of :math:`P_{uu}` and
:math:`\Sigma_{oo}` (:func:`observed_log_likelihood`). Then

.. math:: \mathrm{eBIC}_\beta = -2\,\ell + |E|\log n + 4\beta\,|E|\log d,

with :math:`|E|` the number of edges (pairs :math:`i<j` with :math:`|\hat P_{ij}| > \tau`)
and :math:`\beta \in [0, 1]` (0 gives BIC; 0.5 the usual default). Score-matching estimates do
not maximise this likelihood; eBIC is used here as a criterion to compare points of a path, as
for any penalised estimator. Estimates that are not positive definite get
:math:`+\infty`.

**With missing entries** (what :class:`~pyro_msm.graphical.GraphicalScoreMatching` does by
default, measured in docs/benchmarks.md, issue 9). Two things made the plain criterion pick the
empty graph at 50% MCAR for :math:`d \ge 50`. (i) The estimates are shrunk, and a one-step
refit keeps them shrunk (the E-step at a shrunk estimate imputes towards it), so the
likelihood gain of every graph over the empty one is under-rated; :func:`support_refits` runs
EM on each support (up to thirty maps, stopping at a relative change of 1e-3; at 50% MCAR ten
maps reached the constrained fixed point to within one unit of :math:`-2\ell`). (ii) An edge's
parameter is informed by the rows that observe both of its entries,
:math:`n_{jk} \approx (1-r)^2 n` under MCAR rate :math:`r`, so the Laplace (BIC) term of the
edge is :math:`\log n_{jk}` (``sample_size="pairs"``; the same as :math:`\log n` on complete
data), while the model-size prior :math:`4\beta|E|\log d` does not change with missingness:
with a quarter of the information per edge and the same prior, :math:`\beta = 0.5` selected too
sparse a graph there. The estimator's likelihood eBIC uses :math:`\beta = 0.05` (inside
Foygel & Drton's range :math:`[0, 1]`): on the graph engine's full grid of Gaussian networks
(stars, hubs, Erdos-Renyi graphs and chains, d = 20-100, n = 500 and 2000, 20-80% MCAR, 15
penalties) it gave the highest mean F1 of the selected graph among :math:`\beta = 0, 0.05,
0.1, 0.15, 0.25`, on held-out seeds as well, and on complete tables among 0, 0.05, 0.25, 0.5
(docs/benchmarks.md, issue 9). Along a path of 15-20 penalties the Laplace term already
separates the points; the prior mostly moved the choice one or two penalties too far towards
the empty graph.

References

[1] Foygel & Drton, "Extended Bayesian information criteria for Gaussian graphical models",
    NeurIPS 2010.
[2] Chen & Chen, "Extended Bayesian information criteria for model selection with large model
    spaces", Biometrika 95, 2008.
[3] Yu, Drton & Shojaie, "Generalized score matching for non-negative data", JMLR 20, 2019;
    the R package genscore (functions ``eBIC`` and ``refit``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..infer.gaussian import (
    EStepPlan,
    estep_plan,
    grouped_marginal_loss,
    pattern_statistics,
)
from .metrics import DEFAULT_EDGE_THRESHOLD, edges_from_precision, upper_pairs

__all__ = [
    "observed_log_likelihood",
    "ebic",
    "select_ebic",
    "support_refits",
    "ebic_score_matching",
    "ebic_from_losses",
    "cross_validate",
]


def observed_log_likelihood(
    x: Tensor, mask: Tensor, loc: Tensor, precision: Tensor, *, plan: EStepPlan | None = None
) -> Tensor:
    r"""Per-row log density of the observed entries under :math:`N(\mu, P^{-1})`,
    :math:`\log N(x_o; \mu_o, \Sigma_{oo})`, with one factorisation per missingness pattern
    of the smaller block (the grouping of
    :func:`~pyro_msm.infer.gaussian.expected_statistics`): with :math:`r = x - \mu` zero on the
    missing block :math:`u`,

    .. math::
        r_o^\top\Sigma_{oo}^{-1}r_o = r^\top P r - (P_{u\cdot}r)^\top P_{uu}^{-1}(P_{u\cdot}r),
        \qquad \log\det\Sigma_{oo} = \log\det P_{uu} - \log\det P

    (the Schur complement) when :math:`P_{uu}` is the smaller block, and the Cholesky factor
    of :math:`\Sigma_{oo}` otherwise.

    :param x: ``(n, d)`` (missing entries arbitrary but finite).
    :param mask: boolean ``(n, d)``, True where observed.
    :param loc: ``(d,)``. :param precision: ``(d, d)`` positive definite.
    :param plan: ``estep_plan(mask)`` if already computed (e.g. once for a whole path).
    :returns: ``(n,)`` log densities (a row with nothing observed contributes 0).
    :raises ValueError: if ``precision`` is not positive definite.
    """
    p = 0.5 * (precision + precision.mT)
    chol_p, info = torch.linalg.cholesky_ex(p)
    if int(info) != 0:
        raise ValueError("observed_log_likelihood: precision is not positive definite")
    n, d = x.shape
    if plan is None:
        plan = estep_plan(mask)
    elif plan.shape != (n, d):
        raise ValueError(f"plan is for a {plan.shape} table, got {(n, d)}; rebuild it")
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    diff = torch.where(mask, x - loc, zero)
    rhs = diff @ p  # P r (P symmetric)
    quad = (diff * rhs).sum(-1)  # r^T P r, the complete rows' form
    log_det = (-2.0 * torch.log(chol_p.diagonal())).sum().expand(n).clone()  # log det Sigma
    flat_p = p.reshape(-1)
    flat_rhs = rhs.reshape(-1)
    covariance = None
    for g in plan.groups:
        rows = torch.div(g.row_u[:, 0], d, rounding_mode="floor")
        if g.precision_form:
            chol = torch.linalg.cholesky(flat_p[g.uu])  # (k, a, a)
            white = torch.linalg.solve_triangular(
                chol[g.local], flat_rhs[g.row_u].unsqueeze(-1), upper=False
            ).squeeze(-1)
            quad[rows] -= (white * white).sum(-1)
            log_det[rows] += 2.0 * torch.log(chol.diagonal(dim1=-2, dim2=-1)).sum(-1)[g.local]
        else:
            if covariance is None:
                covariance = torch.cholesky_inverse(chol_p).reshape(-1)
            chol = torch.linalg.cholesky(covariance[g.oo])  # (k, b, b)
            white = torch.linalg.solve_triangular(
                chol[g.local], diff.reshape(-1)[g.row_o].unsqueeze(-1), upper=False
            ).squeeze(-1)
            quad[rows] = (white * white).sum(-1)
            log_det[rows] = 2.0 * torch.log(chol.diagonal(dim1=-2, dim2=-1)).sum(-1)[g.local]
    k = mask.to(x.dtype).sum(-1)
    return -0.5 * (quad + log_det + k * math.log(2 * math.pi))


def ebic(
    x: Tensor,
    mask: Tensor,
    locs: Tensor,
    precisions: Tensor,
    *,
    beta: float = 0.5,
    threshold: float = DEFAULT_EDGE_THRESHOLD,
    sample_size: str = "rows",
) -> Tensor:
    r"""eBIC of each estimate of a path (module doc).

    :param x: ``(n, d)``; :param mask: boolean ``(n, d)``.
    :param locs: ``(k, d)``; :param precisions: ``(k, d, d)``.
    :param beta: the eBIC parameter in ``[0, 1]``.
    :param threshold: edge threshold.
    :param sample_size: the BIC term of an edge :math:`(j, k)`: ``"rows"``, :math:`\log n`;
        ``"pairs"``, :math:`\log n_{jk}` with :math:`n_{jk}` the rows that observe both
        entries (the sample size of the Laplace approximation for that parameter; the same on
        complete data; module doc).
    :returns: ``(k,)`` float64 scores (``inf`` where an estimate is not positive definite).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if sample_size not in ("rows", "pairs"):
        raise ValueError(f"sample_size must be 'rows' or 'pairs', got {sample_size!r}")
    n, d = x.shape
    x64 = x.detach().to(torch.float64)
    if sample_size == "pairs":
        m = mask.to(torch.float64)
        log_n = torch.log((m.T @ m).clamp(min=1.0))
    else:
        log_n = torch.full((d, d), math.log(n), dtype=torch.float64, device=x.device)
    scores = []
    plan = estep_plan(mask)
    for loc, precision in zip(locs, precisions, strict=True):
        p = precision.detach().to(torch.float64)
        try:
            ll = observed_log_likelihood(x64, mask, loc.to(torch.float64), p, plan=plan)
            ll = float(ll.sum())
        except ValueError:
            scores.append(math.inf)
            continue
        upper = upper_pairs(edges_from_precision(p, threshold))
        edges = float(upper.sum())
        bic = float(upper_pairs(log_n.to(p.device))[upper].sum())
        scores.append(-2.0 * ll + bic + 4.0 * beta * edges * math.log(d))
    return torch.tensor(scores, dtype=torch.float64, device="cpu")


def select_ebic(
    x: Tensor,
    mask: Tensor,
    locs: Tensor,
    precisions: Tensor,
    *,
    beta: float = 0.5,
    threshold: float = DEFAULT_EDGE_THRESHOLD,
    sample_size: str = "rows",
) -> tuple[int, Tensor]:
    """Index of the estimate with the smallest :func:`ebic`, and all scores.

    :raises ValueError: if no estimate is positive definite.
    """
    scores = ebic(
        x, mask, locs, precisions, beta=beta, threshold=threshold, sample_size=sample_size
    )
    if not bool(torch.isfinite(scores).any()):
        raise ValueError("select_ebic: no estimate on the path is positive definite")
    return int(torch.argmin(scores)), scores


def _log_binomial(total: int, k: int) -> float:
    return math.lgamma(total + 1) - math.lgamma(k + 1) - math.lgamma(total - k + 1)


def support_refits(
    x: Tensor,
    mask: Tensor,
    locs: Tensor,
    precisions: Tensor,
    *,
    threshold: float = DEFAULT_EDGE_THRESHOLD,
    max_iter: int = 30,
    tol: float = 1e-3,
    covariance: Tensor | None = None,
    loss: str = "score_matching",
) -> Tensor:
    """Refit each estimate of a path on its own support without penalty: EM score matching
    on the support (:func:`~pyro_msm.graphical.em_iterations` with ``penalty=0`` and
    ``support``, SQUAREM), from the estimate, for at most ``max_iter`` EM maps. The first map
    is genscore's refit (the E-step's Gram matrix at the estimate held fixed, the quadratic
    problem solved on the support); on complete data it is the exact constrained refit. With
    missing entries one map is not enough: the E-step at a shrunk estimate imputes with its
    shrunk conditional means, so the Gram matrix, and the refit, stay shrunk towards the
    penalised fit, and a likelihood criterion then under-rates every graph against the empty
    one (docs/benchmarks.md, issue 9: at 50% MCAR, d = 50-100, -2 log-likelihood gains grew by
    26-112% from one map to ten, and ten maps were within 1 of thirty; at 80% MCAR the refits
    need up to thirty maps; they stop earlier once converged).

    With ``covariance`` (the Gram matrix :math:`S` of a path solved on fixed statistics,
    :func:`~pyro_msm.graphical.imputed_path`'s ``info["covariance"]``) each support is refitted
    on those statistics instead: the constrained quadratic problem
    (:func:`~pyro_msm.graphical.quadratic_score_matching` with ``support``, no penalty), the
    same criterion the path minimised, at the cost of a few FISTA iterations; with
    ``loss="likelihood"`` (a graphical lasso path on those statistics,
    :func:`~pyro_msm.graphical.imputed_path` with ``loss="likelihood"``) the constrained
    maximum-likelihood problem (:func:`~pyro_msm.graphical.graphical_lasso` with ``support``).

    :param max_iter: EM maps per estimate (1: genscore's one-step refit).
    :param tol: relative tolerance of the refit's EM.
    :param covariance: ``(d, d)`` fixed statistics to refit on, or None (EM).
    :param loss: with ``covariance``: ``"score_matching"`` or ``"likelihood"``, the loss of
        the path.
    :returns: ``(k, d, d)`` refitted precisions; an estimate that is not positive definite is
        returned unchanged.
    """
    from .exact import _floor_to_positive_definite, _in_memory_estep, _support_mask, em_iterations
    from .likelihood import graphical_lasso
    from .quadratic import quadratic_score_matching

    if loss not in ("score_matching", "likelihood"):
        raise ValueError(f"unknown loss {loss!r}; choose 'score_matching' or 'likelihood'")
    if loss == "likelihood" and covariance is None:
        raise ValueError("loss='likelihood' refits on fixed statistics: pass covariance")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    x64 = x.detach().to(torch.float64)
    d = x.shape[-1]
    if covariance is not None and tuple(covariance.shape) != (d, d):
        raise ValueError(f"covariance must be ({d}, {d}), got {tuple(covariance.shape)}")
    complete = bool(mask.all())
    estep = _in_memory_estep(x64, mask) if covariance is None else None
    out = []
    for loc, precision in zip(locs, precisions, strict=True):
        p = precision.detach().to(torch.float64)
        if int(torch.linalg.cholesky_ex(p)[1]) != 0:
            out.append(p)
            continue
        keep = _support_mask(edges_from_precision(p, threshold), p.shape[0], p.device)
        start, _ = _floor_to_positive_definite(p * keep)
        if covariance is not None:
            solve = graphical_lasso if loss == "likelihood" else quadratic_score_matching
            fixed = solve(covariance.detach().to(p), 0.0, init=start, support=keep, tol=1e-8)
            out.append(fixed.precision)
            continue
        sol = em_iterations(
            estep, loc.detach().to(torch.float64), start, 0.0, complete=complete, tol=tol,
            max_iter=max_iter, support=keep,
        )  # fmt: skip
        out.append(sol.precision)
    return torch.stack(out)


def ebic_score_matching(
    x: Tensor,
    mask: Tensor,
    locs: Tensor,
    precisions: Tensor,
    *,
    beta: float = 0.5,
    threshold: float = DEFAULT_EDGE_THRESHOLD,
    refit: bool = True,
) -> Tensor:
    """eBIC of each estimate of a path with the score-matching loss in place of the
    log-likelihood, genscore's calibration (module doc).

    :param x: ``(n, d)``; :param mask: boolean ``(n, d)``, True where observed.
    :param locs: ``(k, d)``; :param precisions: ``(k, d, d)``.
    :param beta: the eBIC parameter in ``[0, 1]``.
    :param threshold: edge threshold.
    :param refit: score the loss after :func:`support_refits` (genscore's default).
    :returns: ``(k,)`` float64 scores (``inf`` where an estimate is not positive definite).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    n, d = x.shape
    x64 = x.detach().to(torch.float64)
    scored = support_refits(x64, mask, locs, precisions, threshold=threshold) if refit else None
    # the loss is not scale-free (x -> cx scales it by 1/c^2): score the standardised table
    m = mask.to(torch.float64)
    count = m.sum(0).clamp(min=1)
    centre = (x64 * m).sum(0) / count
    sd = ((((x64 - centre) * m) ** 2).sum(0) / count).sqrt().clamp(min=1e-300)
    stats = pattern_statistics(torch.where(mask, x64 / sd, torch.zeros_like(x64)), mask)
    pairs = d * (d - 1) // 2
    scores = []
    for k, (loc, precision) in enumerate(zip(locs, precisions, strict=True)):
        p = precision.detach().to(torch.float64)
        edges = int(upper_pairs(edges_from_precision(p, threshold)).sum())
        q = p if scored is None else scored[k]
        if int(torch.linalg.cholesky_ex(0.5 * (q + q.T))[1]) != 0:
            scores.append(math.inf)
            continue
        q = q * sd[:, None] * sd[None, :]
        loss = float(grouped_marginal_loss(stats, loc.to(torch.float64) / sd, q))
        scores.append(_score_matching_criterion(n, loss, edges, pairs, beta))
    return torch.tensor(scores, dtype=torch.float64, device="cpu")


def _score_matching_criterion(n: int, loss: float, edges: int, pairs: int, beta: float) -> float:
    """genscore's eBIC: ``n`` times the (full-scale) score-matching loss plus the edge terms."""
    return n * loss + edges * math.log(n) + 2.0 * beta * _log_binomial(pairs, edges)


def ebic_from_losses(
    losses: Sequence[float] | Tensor,
    precisions: Tensor,
    num_rows: int,
    *,
    beta: float = 0.5,
    threshold: float = DEFAULT_EDGE_THRESHOLD,
) -> Tensor:
    """genscore's eBIC (as :func:`ebic_score_matching`) from the mean score-matching losses a
    path already recorded, for models without a Gaussian marginal: e.g. the generalised loss
    of :func:`~pyro_msm.graphical.nonnegative_path` (``path.losses``).

    :param losses: ``(k,)`` mean per-row losses (full scale). :param precisions: ``(k, d, d)``.
    :param num_rows: ``n``. :param beta: eBIC parameter in ``[0, 1]``.
    :returns: ``(k,)`` float64 scores (``inf`` for a non-finite loss).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    d = int(precisions.shape[-1])
    pairs = d * (d - 1) // 2
    scores = []
    values = torch.as_tensor(losses, dtype=torch.float64, device="cpu").tolist()
    for loss, p in zip(values, precisions, strict=True):
        edges = int(upper_pairs(edges_from_precision(p.to(torch.float64), threshold)).sum())
        finite = math.isfinite(loss)
        scores.append(
            _score_matching_criterion(num_rows, loss, edges, pairs, beta) if finite else math.inf
        )
    return torch.tensor(scores, dtype=torch.float64, device="cpu")


def cross_validate(
    x: Tensor,
    mask: Tensor,
    fit: Callable[[Tensor, Tensor], object],
    *,
    folds: int = 5,
    seed: int = 0,
) -> Tensor:
    """K-fold cross-validation of the held-out mean marginal score-matching loss along a path.

    :param x: ``(n, d)`` (missing entries arbitrary but finite);
    :param mask: boolean ``(n, d)``, True where observed.
    :param fit: ``fit(x_train, mask_train)`` returning a
        :class:`~pyro_msm.graphical.PenaltyPath` on a fixed penalty grid (the same for every
        fold).
    :param folds: number of folds (at least 2).
    :param seed: seed of the random split of the rows.
    :returns: ``(folds, k)`` held-out losses (``inf`` where an estimate is not positive
        definite); average over folds and take the argmin to select.
    """
    n = x.shape[0]
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= n:
        raise ValueError(f"folds must be an integer in [2, n], got {folds!r}")
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=generator).to(x.device)
    x64 = x.detach().to(torch.float64)
    rows = []
    for chunk in torch.chunk(order, folds):
        test = torch.zeros(n, dtype=torch.bool, device=x.device)
        test[chunk] = True
        train_mask = mask[~test]
        if not bool(train_mask.any(0).all()):
            raise ValueError("a training fold has a column with no observed entry; use fewer folds")
        path = fit(x[~test], train_mask)
        stats = pattern_statistics(x64[test], mask[test])
        losses = []
        for loc, precision in zip(path.locs, path.precisions, strict=True):
            p = precision.detach().to(torch.float64)
            if int(torch.linalg.cholesky_ex(p)[1]) != 0:
                losses.append(math.inf)
                continue
            losses.append(float(grouped_marginal_loss(stats, loc.to(torch.float64), p)))
        rows.append(losses)
    return torch.tensor(rows, dtype=torch.float64, device="cpu")

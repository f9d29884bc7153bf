r"""Gaussian linear algebra on rows with different observed sets, vectorised over rows.

A row's observed set ``o`` selects a block of a ``d x d`` matrix. Rather than gathering blocks of
varying size, :func:`restrict` keeps the block and puts the identity elsewhere; the result is,
up to a permutation, ``blockdiag(M_oo, I)``, so its Cholesky factor, inverse and log-determinant
are those of ``M_oo`` padded with the identity. Every closed form below is built on that.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from .sites import memo

__all__ = [
    "missingness_patterns",
    "PatternStatistics",
    "pattern_statistics",
    "pattern_blocks",
    "grouped_marginal_loss",
    "grouped_marginal_gradient",
    "grouped_marginal_hvp",
    "EStepPlan",
    "EStepGroup",
    "estep_plan",
    "expected_statistics",
    "restrict",
    "marginal_score",
    "marginal_score_matching_loss",
    "conditional_gaussian",
    "conditional_gaussian_terms",
    "pairwise_moments",
    "nearest_positive_definite",
    "gaussian_fisher_divergence",
]


def missingness_patterns(mask: Tensor) -> tuple[Tensor, Tensor]:
    """The distinct rows of a coordinate mask, so that work per observed set is done once.

    :param mask: boolean ``(n, d)``.
    :returns: ``patterns`` ``(k, d)`` (sorted, distinct) and ``inverse`` ``(n,)`` with
        ``patterns[inverse] == mask``.
    """
    patterns, inverse = torch.unique(mask, dim=0, return_inverse=True)
    return patterns, inverse


@dataclass
class PatternStatistics:
    r"""Sufficient statistics of a table for the Gaussian marginal loss, one block per
    missingness pattern (:func:`pattern_statistics`).

    :ivar patterns: ``(k, d)`` boolean observed sets.
    :ivar counts: ``(k,)`` rows per pattern.
    :ivar sums: ``(k, d)`` sums of the rows of each pattern (zero at missing entries).
    :ivar scatter: ``(k, d, d)`` sums of :math:`x_i x_i^\top` (zero outside the observed block).
    :ivar num_rows: ``n``.
    """

    patterns: Tensor
    counts: Tensor
    sums: Tensor
    scatter: Tensor
    num_rows: int


def pattern_statistics(x: Tensor, mask: Tensor, *, chunk: int = 256) -> PatternStatistics:
    """Group the rows of a table by missingness pattern (:func:`missingness_patterns`) and sum
    their first and second moments per pattern, so that the exact marginal loss of a Gaussian
    model costs one factorisation per pattern (:func:`grouped_marginal_loss`), whatever ``n``.

    :param x: ``(n, d)`` with finite values (missing entries are ignored).
    :param mask: boolean ``(n, d)``, True where observed.
    :param chunk: rows per outer-product block (bounds memory at ``chunk * d * d``).
    :returns: a :class:`PatternStatistics`.
    """
    patterns, inverse = missingness_patterns(mask)
    xz = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    k, d = patterns.shape
    counts = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(
        0, inverse, torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    )
    sums = torch.zeros(k, d, dtype=x.dtype, device=x.device).index_add_(0, inverse, xz)
    scatter = torch.zeros(k, d, d, dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], chunk):
        rows = xz[start : start + chunk]
        scatter.index_add_(0, inverse[start : start + chunk], rows[:, :, None] * rows[:, None, :])
    return PatternStatistics(patterns, counts, sums, scatter, int(x.shape[0]))


def pattern_blocks(keep: Tensor) -> list[tuple[Tensor, Tensor]]:
    r"""Group boolean rows by how many entries they keep, with the kept indices of each.

    Batched linear algebra on the kept blocks (sizes ``a < d``) then costs
    :math:`\sum a^3` rather than padding every block to ``d`` (:func:`restrict`).

    The grouping reads the device (the distinct sizes), so it is computed once per ``keep``
    tensor (:func:`~pyro_msm.infer.sites.memo`): an optimiser that evaluates the loss of one
    :class:`PatternStatistics` many times groups its patterns once.

    :param keep: boolean ``(k, d)``.
    :returns: a list of ``(rows, index)``: the row numbers ``(k_a,)`` of ``keep`` with ``a``
        kept entries (``a >= 1``) and their kept columns ``(k_a, a)`` in increasing order.
    """
    return memo(keep, "pattern_blocks", lambda: _pattern_blocks(keep))


def _pattern_blocks(keep: Tensor) -> list[tuple[Tensor, Tensor]]:
    sizes = keep.sum(-1)
    out = []
    for a in torch.unique(sizes).tolist():
        if a == 0:
            continue
        rows = torch.nonzero(sizes == a).flatten()
        # a stable sort puts the kept columns first, in increasing order
        order = torch.sort((~keep[rows]).to(torch.int8), dim=-1, stable=True).indices
        out.append((rows, order[:, :a]))
    return out


def _block(matrix: Tensor, index: Tensor, other: Tensor | None = None) -> Tensor:
    """``matrix[index_i, other_j]`` for each row of ``index`` (and ``other``, default
    ``index``): ``(k, a, b)``."""
    other = index if other is None else other
    return matrix[index.unsqueeze(-1), other.unsqueeze(-2)]


def _marginal_groups(stats: PatternStatistics) -> list[tuple[Tensor, ...]]:
    """The parameter-free part of :func:`grouped_marginal_loss`, per group of patterns with the
    same number ``a`` of observed entries: counts ``(k,)``, observed columns ``(k, a)``, their
    flat indices in a ``d x d`` matrix ``(k, a, a)``, sums ``(k, a)`` and scatter blocks
    ``(k, a, a)``; computed once per :class:`PatternStatistics` (:func:`~.sites.memo`)."""

    def compute() -> list[tuple[Tensor, ...]]:
        d = stats.patterns.shape[1]
        out = []
        for rows, index in pattern_blocks(stats.patterns):
            flat = index.unsqueeze(-1) * d + index.unsqueeze(-2)
            scatter = stats.scatter.reshape(stats.scatter.shape[0], -1)[rows.unsqueeze(-1),
                                                                        flat.flatten(1)]
            out.append((stats.counts[rows], index, flat,
                        torch.gather(stats.sums[rows], 1, index),
                        scatter.reshape(flat.shape)))  # fmt: skip
        return out

    return memo(stats.scatter, "marginal_groups", compute)


def _centred_scatter(n_k: Tensor, s_k: Tensor, scatter: Tensor, mu: Tensor) -> Tensor:
    r""":math:`R = \sum_i (x_i-\mu)(x_i-\mu)^\top` from the sums and scatter of a pattern."""
    outer = s_k.unsqueeze(-1) * mu.unsqueeze(-2)
    mu_mu = mu.unsqueeze(-1) * mu.unsqueeze(-2)
    return scatter - outer - outer.mT + n_k[:, None, None] * mu_mu


def _check_gaussian(stats: PatternStatistics, loc: Tensor, precision: Tensor, caller: str) -> None:
    d = stats.patterns.shape[-1]
    if loc.shape != (d,) or precision.shape != (d, d):
        raise ValueError(
            f"{caller}: loc must be ({d},) and precision ({d}, {d}) for statistics of {d} "
            f"columns, got {tuple(loc.shape)} and {tuple(precision.shape)}"
        )


def grouped_marginal_loss(stats: PatternStatistics, loc: Tensor, precision: Tensor) -> Tensor:
    r"""Mean over rows of the exact marginal Hyvarinen loss of :math:`N(\mu, P^{-1})`
    (:func:`marginal_score_matching_loss`), from per-pattern statistics.

    For the rows of pattern :math:`o` (count :math:`n_o`), with
    :math:`Q = (\Sigma_{oo})^{-1}` and :math:`R_o = \sum_i (x_{i,o}-\mu_o)(x_{i,o}-\mu_o)^\top`,
    the summed loss is :math:`-2 n_o \mathrm{tr}\,Q + \mathrm{tr}(Q Q R_o)`, so one Cholesky
    factorisation of the observed block per pattern suffices (batched over the patterns with
    the same number of observed entries, :func:`pattern_blocks`). Differentiable in ``loc`` and
    ``precision`` (autograd through the batched factors); :func:`grouped_marginal_gradient`
    gives the same value with its gradient in closed form, at a fraction of the cost.

    :param stats: from :func:`pattern_statistics`.
    :param loc: ``(d,)``. :param precision: ``(d, d)`` positive definite.
    :returns: a scalar tensor.
    :raises ValueError: if ``loc`` or ``precision`` does not match the statistics' columns.
    :raises torch.linalg.LinAlgError: if ``precision`` is not positive definite.
    """
    _check_gaussian(stats, loc, precision, "grouped_marginal_loss")
    p = 0.5 * (precision + precision.mT)
    covariance = torch.cholesky_inverse(torch.linalg.cholesky(p)).reshape(-1)
    total = torch.zeros((), dtype=p.dtype, device=p.device)
    for n_k, index, flat, s_k, scatter in _marginal_groups(stats):
        centred = _centred_scatter(n_k, s_k, scatter, loc[index])
        q = torch.cholesky_inverse(torch.linalg.cholesky(covariance[flat]))
        trace = torch.diagonal(q, dim1=-2, dim2=-1).sum(-1)
        quad = ((q @ q) * centred).sum((-2, -1))
        total = total + (-2 * n_k * trace + quad).sum()
    return total / stats.num_rows


def _gradient_terms(stats: PatternStatistics, loc: Tensor, flat_cov: Tensor) -> Iterator[tuple]:
    r"""Per group of patterns, the pieces of :func:`grouped_marginal_gradient` that its
    Hessian-vector products (:func:`grouped_marginal_hvp`) reuse: ``(n_k, index, flat, q,
    qq, centred, resid, block)`` with :math:`Q = (\Sigma_{oo})^{-1}`, ``qq`` :math:`= Q^2`,
    ``centred`` :math:`= R_o`, ``resid`` :math:`= s_o - n_o\mu_o` (``(k, |o|, 1)``) and
    ``block`` :math:`= \partial L_o/\partial\Sigma_{oo} = 2 n_o Q^2 - Q^2 R_o Q - Q R_o Q^2`."""
    for n_k, index, flat, s_k, scatter in _marginal_groups(stats):
        mu = loc[index]
        centred = _centred_scatter(n_k, s_k, scatter, mu)
        q = torch.cholesky_inverse(torch.linalg.cholesky(flat_cov[flat]))
        qq = q @ q
        b = qq @ (centred @ q)
        block = 2 * n_k[:, None, None] * qq - b - b.mT
        resid = (s_k - n_k[:, None] * mu).unsqueeze(-1)
        yield n_k, index, flat, q, qq, centred, resid, block


def grouped_marginal_gradient(
    stats: PatternStatistics, loc: Tensor, precision: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    r""":func:`grouped_marginal_loss` and its gradient in ``loc`` and ``precision``, in closed
    form (no autograd graph).

    Per pattern, with :math:`Q = (\Sigma_{oo})^{-1}` and :math:`R_o` as in
    :func:`grouped_marginal_loss`, :math:`dQ = -Q\,d\Sigma_{oo}\,Q` gives

    .. math::
        \frac{\partial L_o}{\partial \Sigma_{oo}} = 2 n_o Q^2 - Q^2 R_o Q - Q R_o Q^2,
        \qquad
        \frac{\partial L_o}{\partial \mu_o} = -2 Q^2 (s_o - n_o \mu_o),

    with :math:`s_o` the pattern's row sum. The blocks are summed into a ``d x d`` matrix
    :math:`G_\Sigma` (by flat indices, once per group) and, on symmetric matrices,
    :math:`\partial L/\partial P = -\Sigma G_\Sigma \Sigma` from :math:`d\Sigma =
    -\Sigma\,dP\,\Sigma`. One factorisation per pattern, as the loss; the same numbers as
    autograd through :func:`grouped_marginal_loss` (to rounding; tested).

    :param stats: from :func:`pattern_statistics`.
    :param loc: ``(d,)``. :param precision: ``(d, d)`` symmetric positive definite.
    :returns: ``(value, grad_loc, grad_precision)``; the value is a scalar tensor, the
        precision gradient symmetric.
    :raises ValueError: if ``loc`` or ``precision`` does not match the statistics' columns.
    :raises torch.linalg.LinAlgError: if ``precision`` is not positive definite.
    """
    _check_gaussian(stats, loc, precision, "grouped_marginal_gradient")
    p = 0.5 * (precision + precision.mT)
    d = p.shape[-1]
    covariance = torch.cholesky_inverse(torch.linalg.cholesky(p))
    flat_cov = covariance.reshape(-1)
    g_sigma = torch.zeros(d * d, dtype=p.dtype, device=p.device)
    g_loc = torch.zeros(d, dtype=p.dtype, device=p.device)
    total = torch.zeros((), dtype=p.dtype, device=p.device)
    for n_k, index, flat, q, qq, centred, resid, block in _gradient_terms(stats, loc, flat_cov):
        trace = torch.diagonal(q, dim1=-2, dim2=-1).sum(-1)
        total = total + (-2 * n_k * trace + (qq * centred).sum((-2, -1))).sum()
        g_sigma.index_add_(0, flat.reshape(-1), block.reshape(-1))
        g_loc.index_add_(0, index.reshape(-1), (-2 * (qq @ resid)).reshape(-1))
    scale = 1.0 / stats.num_rows
    g_p = -(covariance @ g_sigma.view(d, d) @ covariance) * scale
    return total * scale, g_loc * scale, 0.5 * (g_p + g_p.mT)


def grouped_marginal_hvp(
    stats: PatternStatistics,
    loc: Tensor,
    precision: Tensor,
    d_loc: Tensor,
    d_precision: Tensor,
) -> tuple[Tensor, Tensor]:
    r"""Hessian-vector products of :func:`grouped_marginal_loss`, in closed form and batched
    over directions: the directional derivatives of :func:`grouped_marginal_gradient`'s
    ``(grad_loc, grad_precision)`` along ``(d_loc, d_precision)``.

    With :math:`d\Sigma = -\Sigma\,dP\,\Sigma`, per pattern :math:`dA = d\Sigma_{oo}`,
    :math:`dQ = -Q\,dA\,Q`, :math:`r = s_o - n_o\mu_o`, :math:`dR_o = -(r\,d\mu_o^\top +
    d\mu_o r^\top)`, :math:`B = Q^2 R_o Q` and :math:`d(Q^2) = dQ\,Q + Q\,dQ`:

    .. math::
        d\,\frac{\partial L_o}{\partial \Sigma_{oo}} = 2n_o\,d(Q^2) - dB - dB^\top,\quad
        dB = d(Q^2) R_o Q + Q^2 dR_o Q + Q^2 R_o\,dQ,\quad
        d\,\frac{\partial L_o}{\partial \mu_o} = -2\,(d(Q^2)\,r - n_o Q^2 d\mu_o),

    and :math:`d\,\partial L/\partial P = -(d\Sigma\,G_\Sigma\Sigma + \Sigma G_\Sigma\,d\Sigma
    + \Sigma\,dG_\Sigma\,\Sigma)`. The factorisations are those of one gradient; each
    direction costs batched products only. Tested against autograd's double backward.

    :param stats: from :func:`pattern_statistics`.
    :param loc: ``(d,)``. :param precision: ``(d, d)`` symmetric positive definite.
    :param d_loc: ``(m, d)`` directions in the mean.
    :param d_precision: ``(m, d, d)`` symmetric directions in the precision.
    :returns: ``(m, d)`` and ``(m, d, d)`` (symmetric).
    """
    _check_gaussian(stats, loc, precision, "grouped_marginal_hvp")
    p = 0.5 * (precision + precision.mT)
    d = p.shape[-1]
    m = d_loc.shape[0] if d_loc.dim() == 2 else -1
    if d_loc.shape != (m, d) or d_precision.shape != (m, d, d):
        raise ValueError(
            f"grouped_marginal_hvp: d_loc must be (m, {d}) and d_precision (m, {d}, {d}), got "
            f"{tuple(d_loc.shape)} and {tuple(d_precision.shape)}"
        )
    covariance = torch.cholesky_inverse(torch.linalg.cholesky(p))
    flat_cov = covariance.reshape(-1)
    d_cov = -(covariance @ d_precision @ covariance)
    flat_dcov = d_cov.reshape(m, d * d)
    g_sigma = torch.zeros(d * d, dtype=p.dtype, device=p.device)
    dg_sigma = torch.zeros(m, d * d, dtype=p.dtype, device=p.device)
    dg_loc = torch.zeros(m, d, dtype=p.dtype, device=p.device)
    for n_k, index, flat, q, qq, centred, resid, block in _gradient_terms(stats, loc, flat_cov):
        g_sigma.index_add_(0, flat.reshape(-1), block.reshape(-1))
        dq = -(q @ flat_dcov[:, flat] @ q)
        dqq = dq @ q + q @ dq
        dmu = d_loc[:, index].unsqueeze(-1)
        d_centred = -(resid @ dmu.mT + dmu @ resid.mT)
        db = dqq @ (centred @ q) + qq @ (d_centred @ q) + (qq @ centred) @ dq
        block = 2 * n_k[:, None, None] * dqq - db - db.mT
        dg_sigma.index_add_(1, flat.reshape(-1), block.reshape(m, -1))
        step = -2 * (dqq @ resid - n_k[:, None, None] * (qq @ dmu))
        dg_loc.index_add_(1, index.reshape(-1), step.reshape(m, -1))
    g = g_sigma.view(d, d)
    dg = dg_sigma.view(m, d, d)
    d_grad = -(d_cov @ g @ covariance + covariance @ g @ d_cov + covariance @ dg @ covariance)
    scale = 1.0 / stats.num_rows
    return dg_loc * scale, 0.5 * (d_grad + d_grad.mT) * scale


@dataclass
class EStepPlan:
    r"""The index bookkeeping of :func:`expected_statistics` for one mask, computed once
    (:func:`estep_plan`) and reused by every E-step of an EM run: the missingness patterns,
    grouped by the size of their missing block, with flat indices of each pattern's blocks of a
    ``d x d`` matrix and of each row's missing and observed entries of the ``(n, d)`` table.

    :ivar shape: ``(n, d)`` of the table.
    :ivar groups: one :class:`EStepGroup` per missing-block size ``a >= 1``.
    """

    shape: tuple[int, int]
    groups: list[EStepGroup]


@dataclass
class EStepGroup:
    r"""The patterns of an :class:`EStepPlan` whose missing block has ``a`` entries (``k``
    patterns, ``m`` rows, ``b = d - a``).

    :ivar precision_form: factorise :math:`P_{uu}` (``2a <= d``) rather than
        :math:`\Sigma_{oo}`.
    :ivar counts: ``(k,)`` rows per pattern.
    :ivar local: ``(m,)`` each row's pattern within the group.
    :ivar uu: ``(k, a, a)`` flat indices of the :math:`uu` blocks of a ``d x d`` matrix.
    :ivar uo: ``(k, a, b)`` flat indices of the :math:`uo` blocks (covariance form only).
    :ivar oo: ``(k, b, b)`` flat indices of the :math:`oo` blocks (covariance form only).
    :ivar row_u: ``(m, a)`` flat indices of the rows' missing entries in the ``(n, d)`` table.
    :ivar row_o: ``(m, b)`` flat indices of their observed entries (covariance form only).
    :ivar u_index: ``(k, a)`` the missing columns.
    """

    precision_form: bool
    counts: Tensor
    local: Tensor
    uu: Tensor
    uo: Tensor | None
    oo: Tensor | None
    row_u: Tensor
    row_o: Tensor | None
    u_index: Tensor


def estep_plan(
    mask: Tensor, *, patterns: tuple[Tensor, Tensor] | None = None
) -> EStepPlan:
    """The :class:`EStepPlan` of a mask (for :func:`expected_statistics`'s ``plan``).

    :param mask: boolean ``(n, d)``, True where observed.
    :param patterns: ``missingness_patterns(mask)`` if already computed.
    :returns: an :class:`EStepPlan`.
    """
    pats, inverse = missingness_patterns(mask) if patterns is None else patterns
    n, d = mask.shape
    device = mask.device
    missing = ~pats
    counts = torch.bincount(inverse, minlength=pats.shape[0])
    position = torch.empty(pats.shape[0], dtype=torch.long, device=device)
    row_size = missing.sum(-1)[inverse]
    groups = []
    for group, u_index in pattern_blocks(missing):
        a = u_index.shape[1]
        position[group] = torch.arange(group.shape[0], device=device)
        rows = torch.nonzero(row_size == a).flatten()
        local = position[inverse[rows]]
        precision_form = 2 * a <= d
        u_rows = u_index[local]
        uu = u_index.unsqueeze(-1) * d + u_index.unsqueeze(-2)
        uo = oo = row_o = None
        if not precision_form:
            o_index = torch.sort(missing[group].to(torch.int8), dim=-1, stable=True).indices
            o_index = o_index[:, : d - a]
            uo = u_index.unsqueeze(-1) * d + o_index.unsqueeze(-2)
            oo = o_index.unsqueeze(-1) * d + o_index.unsqueeze(-2)
            row_o = rows.unsqueeze(-1) * d + o_index[local]
        groups.append(
            EStepGroup(
                precision_form=precision_form, counts=counts[group], local=local, uu=uu,
                uo=uo, oo=oo, row_u=rows.unsqueeze(-1) * d + u_rows, row_o=row_o,
                u_index=u_index,
            )  # fmt: skip
        )
    return EStepPlan(shape=(int(n), int(d)), groups=groups)


def expected_statistics(
    x: Tensor,
    mask: Tensor,
    loc: Tensor,
    precision: Tensor,
    *,
    patterns: tuple[Tensor, Tensor] | None = None,
    plan: EStepPlan | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""E-step of EM for :math:`N(\mu, P^{-1})`: the completed rows' expected first and second
    moments, with one factorisation per missingness pattern.

    For a row with missing block :math:`u`,
    :math:`E[x_u|x_o] = \mu_u - P_{uu}^{-1}P_{uo}(x_o-\mu_o)
    = \mu_u + \Sigma_{uo}\Sigma_{oo}^{-1}(x_o-\mu_o)` and
    :math:`\mathrm{Cov}[x_u|x_o] = P_{uu}^{-1}
    = \Sigma_{uu}-\Sigma_{uo}\Sigma_{oo}^{-1}\Sigma_{ou}`,
    shared by the rows of a pattern. Patterns are batched by the size of their missing block;
    the precision form factorises :math:`P_{uu}` when :math:`|u| \le |o|`, the covariance form
    :math:`\Sigma_{oo}` otherwise (the smaller block). The blocks are read and the conditional
    covariances summed through the flat indices of an :class:`EStepPlan`
    (:func:`estep_plan`, built once per mask; pass it to every E-step of a run). Returns
    :math:`\bar\mu = \frac1n\sum_i E[x_i]` and
    :math:`S = \frac1n\sum_i [(E x_i-\bar\mu)(E x_i-\bar\mu)^\top + C_i]`.

    :param x: ``(n, d)`` (missing entries arbitrary but finite).
    :param mask: boolean ``(n, d)``, True where observed.
    :param loc: ``(d,)``. :param precision: ``(d, d)`` positive definite.
    :param patterns: ``missingness_patterns(mask)`` if already computed.
    :param plan: ``estep_plan(mask)`` if already computed (then ``patterns`` is not used).
    :returns: ``(completed, mean, covariance)``: the conditional means ``(n, d)`` (equal to
        ``x`` where observed), :math:`\bar\mu` ``(d,)`` and :math:`S` ``(d, d)``.
    """
    if plan is None:
        plan = estep_plan(mask, patterns=patterns)
    n, d = x.shape
    if plan.shape != (n, d):
        raise ValueError(f"plan is for a {plan.shape} table, got {(n, d)}; rebuild it")
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    diff = torch.where(mask, x - loc, zero)  # x_o - mu_o, zero on u
    completed = torch.where(mask, x, loc.expand_as(x)).contiguous()
    flat_completed = completed.view(-1)  # row-major, as the plan's flat indices
    flat_p = precision.reshape(-1)
    conditional = torch.zeros(d * d, dtype=x.dtype, device=x.device)
    covariance = None
    rhs = None
    for g in plan.groups:
        if g.precision_form:  # on the missing block
            cond = torch.cholesky_inverse(torch.linalg.cholesky(flat_p[g.uu]))  # (k, a, a)
            if rhs is None:
                rhs = (diff @ precision.mT).reshape(-1)  # P_{., o} (x_o - mu_o)
            shift = -(cond[g.local] @ rhs[g.row_u].unsqueeze(-1)).squeeze(-1)
        else:  # covariance form on the (smaller) observed block
            if covariance is None:
                covariance = torch.cholesky_inverse(torch.linalg.cholesky(precision)).reshape(-1)
            s_uo = covariance[g.uo]
            chol = torch.linalg.cholesky(covariance[g.oo])
            gain = torch.cholesky_solve(s_uo.mT, chol)  # Sigma_oo^-1 Sigma_ou: (k, b, a)
            cond = covariance[g.uu] - s_uo @ gain
            r_o = diff.reshape(-1)[g.row_o]
            shift = (gain[g.local].mT @ r_o.unsqueeze(-1)).squeeze(-1)
        flat_completed[g.row_u] = loc[g.u_index[g.local]] + shift
        weighted = g.counts.to(x.dtype)[:, None, None] * 0.5 * (cond + cond.mT)
        conditional.index_add_(0, g.uu.reshape(-1), weighted.reshape(-1))
    mean = completed.mean(0)
    centred = completed - mean
    s = (centred.T @ centred + conditional.view(d, d)) / n
    return completed, mean, 0.5 * (s + s.T)


def restrict(matrix: Tensor, keep: Tensor) -> Tensor:
    """``matrix`` on the rows and columns where ``keep`` is True, the identity elsewhere.

    :param matrix: ``(..., d, d)``.
    :param keep: boolean ``(..., d)``.
    :returns: ``(..., d, d)``, one matrix per row of ``keep``.
    """
    k = keep.to(matrix.dtype)
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    return matrix * k.unsqueeze(-1) * k.unsqueeze(-2) + torch.diag_embed(1 - k) * eye


def marginal_score(
    x: Tensor, mask: Tensor, loc: Tensor, covariance: Tensor
) -> tuple[Tensor, Tensor]:
    r"""Score of the Gaussian marginal of the observed coordinates and its divergence terms.

    For :math:`N(\mu, \Sigma)` the marginal of :math:`x_o` has score
    :math:`s_o = -Q (x_o - \mu_o)` with :math:`Q = (\Sigma_{oo})^{-1}`, and
    :math:`\partial_j s_{o,j} = -Q_{jj}`.

    :param x: rows ``(..., n, d)`` (missing entries arbitrary but finite).
    :param mask: boolean ``(n, d)``, True where observed.
    :param loc: ``(d,)`` mean.
    :param covariance: ``(d, d)``.
    :returns: ``s`` of shape ``(..., n, d)`` (zero on missing coordinates) and
        ``diag`` ``(n, d)`` with :math:`-Q_{jj}` on observed coordinates, zero elsewhere.
    """
    m = mask.to(x.dtype)
    chol = torch.linalg.cholesky(restrict(covariance, mask))  # (n, d, d)
    q = torch.cholesky_inverse(chol)
    diff = (x - loc) * m
    s = -(q @ diff.unsqueeze(-1)).squeeze(-1) * m
    return s, -torch.diagonal(q, dim1=-2, dim2=-1) * m


def marginal_score_matching_loss(x: Tensor, mask: Tensor, loc: Tensor, precision: Tensor) -> Tensor:
    r"""The exact marginal Hyvarinen loss per row for a Gaussian model (METHOD.md's oracle).

    :math:`L(x_o) = -2\,\mathrm{tr}(Q) + \lVert Q (x_o - \mu_o) \rVert^2`, with
    :math:`Q = ((P^{-1})_{oo})^{-1}`. With every coordinate observed it is classical score
    matching, :math:`-2\,\mathrm{tr} P + \lVert P (x-\mu) \rVert^2`.

    :param x: ``(n, d)``; :param mask: boolean ``(n, d)``; :param loc: ``(d,)``;
    :param precision: ``(d, d)``.
    :returns: ``(n,)`` per-row losses.
    """
    covariance = torch.cholesky_inverse(torch.linalg.cholesky(precision))
    s, diag = marginal_score(x, mask, loc, covariance)
    return 2 * diag.sum(-1) + (s * s).sum(-1)


def conditional_gaussian(
    x: Tensor, mask: Tensor, loc: Tensor, precision: Tensor
) -> tuple[Tensor, Tensor]:
    r"""The conditional of the missing coordinates given the observed ones under
    :math:`N(\mu, \Lambda^{-1})`: mean :math:`\mu_u - \Lambda_{uu}^{-1}\Lambda_{uo}(x_o-\mu_o)`
    and precision :math:`\Lambda_{uu}`.

    :param x: ``(n, d)``; :param mask: boolean ``(n, d)``, True where observed;
    :param loc: ``(d,)``; :param precision: ``(d, d)``.
    :returns: the conditional mean ``(n, d)`` (equal to ``x`` on observed coordinates) and the
        lower Cholesky factor ``(n, d, d)`` of ``restrict(precision, ~mask)``.
    """
    missing = ~mask
    m = mask.to(x.dtype)
    chol = torch.linalg.cholesky(restrict(precision, missing))
    rhs = ((x - loc) * m) @ precision.mT * (1 - m)  # Lambda_uo (x_o - mu_o) on u
    shift = torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)
    mean = torch.where(mask, x, loc - shift)
    return mean, chol


def conditional_gaussian_terms(value: Tensor, mean: Tensor, chol: Tensor, mask: Tensor) -> Tensor:
    r"""Per-coordinate terms of the conditional density of :func:`conditional_gaussian`.

    With :math:`L L^\top = \Lambda_{uu}` (padded) and :math:`\varepsilon = L^\top (x - \bar x)`
    restricted to the missing block, the terms are
    :math:`t_j = -\tfrac12 \varepsilon_j^2 - \tfrac12 \log 2\pi + \log L_{jj}` on missing
    coordinates and zero on observed ones; their sum over a row is
    :math:`\log N(x_u;\ \bar x_u, \Lambda_{uu}^{-1})` (the Cholesky factorisation is a chain
    rule, and the padded factor has no entry linking observed and missing coordinates).

    :param value: ``(..., n, d)``; its observed entries are ignored.
    :param mean: ``(n, d)`` and :param chol: ``(n, d, d)`` from :func:`conditional_gaussian`.
    :param mask: boolean ``(n, d)``, True where observed.
    :returns: terms of ``value``'s shape.
    """
    zero = torch.zeros((), dtype=value.dtype, device=value.device)
    diff = torch.where(mask, zero, value - mean)
    eps = (chol.mT @ diff.unsqueeze(-1)).squeeze(-1)
    log_diag = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1))
    terms = -0.5 * eps * eps - 0.5 * math.log(2 * math.pi) + log_diag
    return torch.where(mask, zero, terms)


def sample_conditional_gaussian(
    mean: Tensor,
    chol: Tensor,
    mask: Tensor,
    num_samples: int,
    *,
    defensive: float = 0.0,
    defensive_scale: float = 2.0,
    noise: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Draw from the conditionals of :func:`conditional_gaussian` and score the draws.

    With :math:`L L^\top = \Lambda_{uu}` (padded),
    :math:`x_u = \bar x_u + c\,L^{-\top}\varepsilon_u`.
    With ``defensive = e > 0`` the draw comes from the mixture
    :math:`(1-e)\,N(\bar x_u, \Lambda_{uu}^{-1}) + e\,N(\bar x_u, c^2\Lambda_{uu}^{-1})`,
    ``c = defensive_scale``, whose heavier component bounds importance weights when the Gaussian
    is narrower than the target (defensive importance sampling, Hesterberg 1995).

    :param noise: the scaled standard draws ``(num_samples, n, d)`` of
        :func:`conditional_gaussian_noise` (default: drawn here), e.g. some rows of the draws
        made for a larger table, so that a subset of rows gets the numbers it gets in the whole.
    :returns: samples ``(num_samples, n, d)`` (observed coordinates equal ``mean``) and the log
        density of their missing block under the (mixture) proposal ``(num_samples, n)``.
    """
    missing = (~mask).to(mean.dtype)
    if noise is None:
        noise = conditional_gaussian_noise(
            mask, num_samples, mean.dtype, defensive=defensive, defensive_scale=defensive_scale
        )
    eps = noise
    # one triangular solve per row with the draws as right-hand sides (not one per draw and row,
    # which broadcasts chol to (num_samples, n, d, d): 20x slower at r=10, n=1000, d=50)
    y = torch.linalg.solve_triangular(chol.mT, eps.movedim(0, -1), upper=True).movedim(-1, 0)
    k = missing.sum(-1)
    log_det = (torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)) * missing).sum(-1)
    sq = (eps * eps).sum(-1)
    log_prob = -0.5 * sq - 0.5 * math.log(2 * math.pi) * k + log_det
    if defensive > 0:
        c = defensive_scale
        log_wide = -0.5 * sq / c**2 - 0.5 * math.log(2 * math.pi) * k + log_det - k * math.log(c)
        log_prob = torch.logaddexp(
            log_prob + math.log1p(-defensive), log_wide + math.log(defensive)
        )
    return mean + y, log_prob


def conditional_gaussian_noise(
    mask: Tensor,
    num_samples: int,
    dtype: torch.dtype,
    *,
    defensive: float = 0.0,
    defensive_scale: float = 2.0,
) -> Tensor:
    """The random numbers of :func:`sample_conditional_gaussian`: standard normal draws
    ``(num_samples, n, d)`` on the missing coordinates (zero on observed ones), each draw's row
    scaled by ``defensive_scale`` with probability ``defensive``.

    :param mask: boolean ``(n, d)``, True where observed (its device is used).
    """
    missing = (~mask).to(dtype)
    shape = (num_samples,) + mask.shape
    eps = torch.randn(shape, dtype=dtype, device=mask.device) * missing
    if defensive > 0:
        wide = torch.rand(shape[:-1], device=mask.device) < defensive
        eps = torch.where(wide.unsqueeze(-1), eps * defensive_scale, eps)
    return eps


def pairwise_moments(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and covariance from pairwise-available entries (each pair uses the rows where both
    are observed), projected to the nearest positive-definite matrix.

    :param x: ``(n, d)``; :param mask: boolean ``(n, d)``.
    :returns: ``(d,)`` mean and ``(d, d)`` covariance. A column or pair with no observation falls
        back to mean 0, variance 1, covariance 0.
    """
    m = mask.to(x.dtype)
    xf = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    count = m.sum(0)
    mean = torch.where(count > 0, xf.sum(0) / count.clamp(min=1), torch.zeros_like(count))
    centred = (xf - mean) * m
    pair_count = m.T @ m
    cov = (centred.T @ centred) / (pair_count - 1).clamp(min=1)
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    cov = torch.where(pair_count > 1, cov, eye)
    return mean, nearest_positive_definite(cov)


def nearest_positive_definite(matrix: Tensor, min_eigenvalue: float = 1e-3) -> Tensor:
    """Symmetrise and clip eigenvalues below ``min_eigenvalue`` times the largest one."""
    sym = 0.5 * (matrix + matrix.mT)
    evals, evecs = torch.linalg.eigh(sym)
    floor = min_eigenvalue * evals.abs().amax(-1, keepdim=True).clamp(min=1e-12)
    evals = torch.maximum(evals, floor)
    return (evecs * evals.unsqueeze(-2)) @ evecs.mT


def gaussian_fisher_divergence(
    loc_hat: Tensor, precision_hat: Tensor, loc: Tensor, precision: Tensor
) -> Tensor:
    r"""Fisher divergence :math:`\tfrac12 E_{x\sim p}\lVert s_{\hat\theta}(x)-s(x)\rVert^2`
    between a Gaussian model and a Gaussian truth :math:`p = N(\mu, P^{-1})`.

    Equal to
    :math:`\tfrac12[\mathrm{tr}(\Delta \Sigma \Delta) + \lVert \hat P(\mu-\hat\mu)\rVert^2]`
    with :math:`\Delta = \hat P - P`; the score MSE is twice this.
    """
    covariance = torch.cholesky_inverse(torch.linalg.cholesky(precision))
    delta = precision_hat - precision
    shift = precision_hat @ (loc - loc_hat)
    return 0.5 * (torch.diagonal(delta @ covariance @ delta).sum() + (shift * shift).sum())

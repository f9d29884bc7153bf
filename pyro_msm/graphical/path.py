r"""L1-penalised marginal score matching along a penalty path, with any estimator of
:class:`~pyro_msm.infer.MissingScoreMatching`.

The model is :math:`N(\mu, P^{-1})` as a :class:`~pyro_msm.distributions.GaussianEnergy` (or a
:class:`~pyro_msm.distributions.paper.TruncatedGaussianEnergy` when a ``support`` is given)
with the data declared by :func:`pyro_msm.observe`. The precision is a free symmetric matrix
(not a Cholesky factor), so that its off-diagonal entries can be exactly zero. The objective at
penalty :math:`\gamma` is

.. math:: \frac1n \sum_i L(x_{i,o}) + \gamma \sum_{i\ne j} |P_{ij}|,

with :math:`L` the per-row marginal loss of METHOD.md, the same scaling as the complete-data
fast path :mod:`pyro_msm.graphical.quadratic` (whose minimiser this path reaches on complete
data; the tests check it).

**Protocol** (METHOD.md, the paper's): start from :math:`P = I` and :math:`\mu` at the observed
column means; ``warmup_steps`` (200) iterations at the largest penalty, then ``steps_per_penalty``
(10) iterations at each of the decreasing penalties (100 by default), warm-started; Adam with
learning rate 0.01 on minibatches of 100 rows; record the precision at the end of each penalty.

**The proximal step.** After each Adam step the off-diagonal entries are soft-thresholded.
``prox="adam"`` (default) thresholds entry :math:`(i, j)` by
:math:`\mathrm{lr}\,\gamma / (\sqrt{\hat v_{ij}} + \epsilon)`, Adam's own per-entry step
scale: the proximal operator of the penalty in the metric Adam preconditions with. Its fixed
points satisfy the lasso optimality conditions (an entry at zero stays there exactly when its
average gradient is at most :math:`\gamma` in size), so the path converges to the penalised
minimiser. ``prox="plain"`` thresholds by :math:`\mathrm{lr}\,\gamma`, the paper's literal
rule; with Adam's normalised steps (each about ``lr`` in size) it keeps an entry at zero only
when :math:`\gamma \gtrsim 1` whatever the gradient, so its edges depend on the scale of the
data rather than on the optimality conditions; it is offered for comparison.

**Positive definiteness.** The marginal-score estimators need the model's conditionals to
exist, i.e. :math:`P \succ 0`. After each proximal step, if the smallest eigenvalue of
:math:`P` is below ``min_eigenvalue`` times its mean diagonal, the diagonal is raised by the
difference. This touches only the diagonal (which is not penalised), so sparsity is kept; on
complete data the penalised minimiser is positive definite in every case we ran and the guard
never fires.

**Guides.** ``guide`` is a factory ``guide(model) -> guide`` for the guided estimators
(``"variational"``, ``"hybrid"``); the default is :class:`~pyro_msm.guides.AmortizedNormal`,
the paper's family; :class:`~pyro_msm.guides.GaussianConditionalGuide` holds the model's
exact conditionals for this Gaussian model. :class:`~pyro_msm.infer.MissingScoreMatching`'s
cycle is followed: one model step (the guide also moves, on the reverse KL of the same draws),
then ``guide_steps`` guide-only steps on ``guide_particles`` completions per row; the guide's
Adam has learning rate ``guide_lr``.
The fit runs inside a private Pyro parameter-store scope, so it neither reads nor changes the
user's parameters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor

from ..distributions import GaussianEnergy
from ..distributions.paper import TruncatedGaussianEnergy
from ..guides import AmortizedNormal, no_guide
from ..infer import ESTIMATORS, GaussianConditionalProposal, MissingScoreMatching
from ..infer.gaussian import pairwise_moments
from ..primitives import observe
from .quadratic import max_penalty, penalty_grid, soft_threshold_offdiagonal

__all__ = [
    "PenaltyPath",
    "as_data_and_mask",
    "default_penalties",
    "score_matching_path",
    "PROX_RULES",
]

#: Proximal rules of :func:`score_matching_path`.
PROX_RULES = ("adam", "plain")
_GUIDED = ("variational", "hybrid")


@dataclass
class PenaltyPath:
    """Estimates along a penalty path.

    :ivar method: label of the method that produced it.
    :ivar penalties: ``(k,)`` penalties in the order fitted (float64).
    :ivar precisions: ``(k, d, d)`` precision estimates (float64).
    :ivar locs: ``(k, d)`` mean estimates (float64), or None if the method has no mean.
    :ivar losses: mean per-row loss (without the penalty) after each model step.
    :ivar seconds: wall-clock time.
    :ivar info: method-specific extras (e.g. failures of a baseline solver).
    """

    method: str
    penalties: Tensor
    precisions: Tensor
    locs: Tensor | None = None
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.penalties.shape[0])


def as_data_and_mask(
    x: Tensor | np.ndarray, mask: Tensor | np.ndarray | None = None, *, name: str = "X"
) -> tuple[Tensor, Tensor]:
    """Validate a table with NaN for missing entries (or an explicit mask) and return it as a
    tensor with missing entries set to zero, and a boolean mask (True = observed).

    Floating input keeps its dtype (NumPy arrays become tensors); integer input becomes torch's
    default dtype.

    :raises TypeError: for non-numeric input. :raises ValueError: for a wrong shape, infinite
        values, NaN at an entry the mask says is observed, a mask of another shape, a column
        with no observed entry, or a table with fewer than two rows or columns.
    """
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.number):
            raise TypeError(f"{name} must be numeric, got dtype {x.dtype}")
        floating = np.issubdtype(x.dtype, np.floating)
        x = torch.as_tensor(x, dtype=None if floating else torch.get_default_dtype())
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {tuple(x.shape)}")
    if x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"{name} needs at least 2 rows and 2 columns, got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    nan = torch.isnan(x)
    if bool(torch.isinf(x).any()):
        raise ValueError(f"{name} has infinite entries")
    if mask is None:
        observed = ~nan
    else:
        observed = torch.as_tensor(mask, device=x.device)
        if observed.shape != x.shape:
            raise ValueError(
                f"mask has shape {tuple(observed.shape)} but {name} has {tuple(x.shape)}"
            )
        if observed.dtype != torch.bool:
            if not bool(((observed == 0) | (observed == 1)).all()):
                raise ValueError("mask must be boolean or 0/1 (True = observed)")
            observed = observed != 0
        if bool((nan & observed).any()):
            raise ValueError(f"{name} has NaN at {int((nan & observed).sum())} observed entries")
    empty = ~observed.any(0)
    if bool(empty.any()):
        cols = torch.nonzero(empty).flatten().tolist()
        raise ValueError(f"{name}: columns {cols} have no observed entry")
    return torch.where(observed, x, torch.zeros((), dtype=x.dtype, device=x.device)), observed


def default_penalties(
    x: Tensor, mask: Tensor, num: int = 100, ratio: float = 0.01
) -> tuple[Tensor, Tensor]:
    """A decreasing log-spaced penalty grid from :func:`~pyro_msm.graphical.max_penalty` of the
    pairwise-available covariance (the exact empty-graph penalty on complete data) down to
    ``ratio`` times it; also returns that covariance."""
    _, covariance = pairwise_moments(x.to(torch.float64), mask)
    return penalty_grid(max_penalty(covariance), num, ratio), covariance


def _model_factory(
    loc: Tensor, precision: Tensor, support: Any | None
) -> Callable[[Tensor, Tensor], Tensor]:
    def model(data: Tensor, mask: Tensor) -> Tensor:
        p = 0.5 * (precision + precision.T)
        if support is None:
            fn = GaussianEnergy(loc, p)
        else:
            fn = TruncatedGaussianEnergy(loc, p, support)
        with pyro.plate("rows", data.shape[0]):
            return observe("x", fn, obs=data, obs_mask=mask)

    return model


def scaled(model: Callable, batch: Tensor) -> Callable:
    """The model with every site scaled by one over the batch's rows: the loss becomes the mean
    per-row loss, the scale the penalty refers to."""
    return poutine.scale(model, scale=1.0 / batch.shape[0])


def _trace_params(fn: Callable, *args: Any) -> list[Tensor]:
    trace = poutine.trace(fn).get_trace(*args)
    params = {
        id(s["value"].unconstrained()): s["value"].unconstrained()
        for s in trace.nodes.values()
        if s["type"] == "param"
    }
    return [p for p in params.values() if p.requires_grad]


def score_matching_path(
    x: Tensor | np.ndarray,
    mask: Tensor | np.ndarray | None = None,
    penalties: Sequence[float] | Tensor | None = None,
    *,
    estimator: str = "variational",
    guide: Callable[[Callable], Callable] | None = None,
    num_particles: int = 10,
    guide_steps: int = 10,
    guide_particles: int = 1,
    guide_lr: float = 0.01,
    proposal: Any = None,
    objective: Any = None,
    support: Any | None = None,
    lr: float = 0.01,
    batch_size: int | None = 100,
    warmup_steps: int = 200,
    steps_per_penalty: int = 10,
    num_penalties: int = 100,
    penalty_ratio: float = 0.01,
    prox: str = "adam",
    min_eigenvalue: float = 1e-2,
    init_precision: Tensor | None = None,
    seed: int = 0,
    progress: bool = False,
    label: str | None = None,
    tol: float | None = None,
    max_steps_per_penalty: int | None = None,
) -> PenaltyPath:
    r"""Fit the L1-penalised Gaussian model along a decreasing penalty path (module doc).

    :param x: ``(n, d)`` table, NaN where missing (unless ``mask`` is given).
    :param mask: boolean ``(n, d)``, True where observed, or None.
    :param penalties: decreasing penalties; default :func:`default_penalties` with
        ``num_penalties`` and ``penalty_ratio``. The warm-up runs at the first one.
    :param estimator: one of :data:`pyro_msm.infer.ESTIMATORS` (``"closed_form"``, the exact
        marginal loss of the Gaussian model, is the oracle the others approximate).
    :param guide: factory ``guide(model)`` for ``"variational"``/``"hybrid"`` (default
        :class:`~pyro_msm.guides.AmortizedNormal`).
    :param num_particles: particles per row on model steps.
    :param guide_steps: guide updates per model step (guided estimators).
    :param guide_particles: completions per row on guide updates.
    :param guide_lr: the guide's Adam learning rate.
    :param proposal: IW proposal; default: the moment-matched Gaussian conditional fitted once
        to the whole table (:meth:`GaussianConditionalProposal.fit`) rather than per minibatch.
    :param objective: the score-matching objective (default ``"exact"``, or ``"truncated"``
        when ``support`` is given).
    :param support: a domain (e.g. the :class:`~pyro_msm.distributions.domains.HalfSpace` of
        :func:`~pyro_msm.graphical.simulate_graph` with ``truncated=True``); the model is then a
        :class:`~pyro_msm.distributions.paper.TruncatedGaussianEnergy`.
    :param lr: the model's Adam learning rate.
    :param batch_size: rows per step (None: the whole table).
    :param warmup_steps: model steps at the first penalty.
    :param steps_per_penalty: model steps at every penalty.
    :param prox: ``"adam"`` (preconditioned threshold) or ``"plain"`` (``lr * penalty``).
    :param min_eigenvalue: positive-definiteness floor, relative to the mean diagonal.
    :param init_precision: starting precision (default the identity).
    :param seed: seeds minibatches, particles and the guide.
    :param progress: show a tqdm bar over model steps.
    :param label: method label of the result (default ``estimator``).
    :param tol: convergence check: at each penalty, blocks of ``steps_per_penalty`` steps are
        repeated until no entry of the precision moved by more than
        ``tol * max(1, max |P|)`` over the last block (the minibatch noise sets a floor: use
        ``1e-3`` or so, or ``batch_size=None``), or ``max_steps_per_penalty`` is reached. None
        (default) runs exactly ``steps_per_penalty`` steps (the paper's protocol).
    :param max_steps_per_penalty: cap with ``tol`` (default ``10 * steps_per_penalty``).
    :returns: a :class:`PenaltyPath` with one estimate per penalty; ``info["steps"]`` and
        ``info["converged"]`` per penalty.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    if prox not in PROX_RULES:
        raise ValueError(f"unknown prox {prox!r}; choose one of {PROX_RULES}")
    for name, value in (("steps_per_penalty", steps_per_penalty), ("warmup_steps", warmup_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if steps_per_penalty < 1:
        raise ValueError("steps_per_penalty must be at least 1")
    if not lr > 0 or not guide_lr > 0:
        raise ValueError(f"learning rates must be positive, got lr={lr}, guide_lr={guide_lr}")
    if not min_eigenvalue > 0:
        raise ValueError(f"min_eigenvalue must be positive, got {min_eigenvalue}")
    if tol is not None and not tol > 0:
        raise ValueError(f"tol must be positive or None, got {tol}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    from tqdm.auto import tqdm

    data, observed = as_data_and_mask(x, mask)
    n, d = data.shape
    dtype, device = data.dtype, data.device
    if penalties is None:
        grid, _ = default_penalties(data, observed, num_penalties, penalty_ratio)
    else:
        grid = torch.as_tensor(penalties, dtype=torch.float64, device="cpu").flatten()
        if grid.numel() == 0 or not bool((grid >= 0).all()):
            raise ValueError("penalties must be a non-empty sequence of non-negative numbers")
    label = estimator if label is None else label
    if objective is None:
        objective = "exact" if support is None else "truncated"
    if proposal is None:
        proposal = GaussianConditionalProposal.fit(data, observed)
    guided = estimator in _GUIDED

    m = observed.to(dtype)
    loc = ((data * m).sum(0) / m.sum(0)).detach().clone().requires_grad_(True)
    p0 = torch.eye(d, dtype=dtype, device=device) if init_precision is None else init_precision
    precision = p0.detach().to(dtype=dtype, device=device).clone()
    precision = (0.5 * (precision + precision.T)).requires_grad_(True)
    model = _model_factory(loc, precision, support)
    eye = torch.eye(d, dtype=torch.bool, device=device)

    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    batch = n if batch_size is None else min(int(batch_size), n)

    def minibatch() -> tuple[Tensor, Tensor]:
        if batch == n:
            return data, observed
        idx = torch.randperm(n, generator=generator)[:batch].to(device)
        return data[idx], observed[idx]

    precisions = torch.empty(len(grid), d, d, dtype=torch.float64, device=device)
    locs = torch.empty(len(grid), d, dtype=torch.float64, device=device)
    losses: list[float] = []
    steps_used: list[int] = []
    converged: list[bool] = []
    cap = 10 * steps_per_penalty if max_steps_per_penalty is None else int(max_steps_per_penalty)

    store = pyro.get_param_store()
    start = time.perf_counter()
    with store.scope(), torch.random.fork_rng(devices=[]):
        pyro.set_rng_seed(int(seed))
        loss_kwargs = dict(
            num_particles=num_particles, proposal=proposal, objective=objective,
            guide_steps=guide_steps, max_plate_nesting=1,
        )  # fmt: skip
        loss_fn = MissingScoreMatching(estimator, **loss_kwargs)
        model_opt = torch.optim.Adam([loc, precision], lr=lr)
        guide_fn: Callable = no_guide
        guide_opt = None
        if guided:
            guide_fn = (AmortizedNormal if guide is None else guide)(model)
            guide_params = _trace_params(guide_fn, *minibatch())
            if not guide_params:
                raise ValueError("the guide has no trainable parameters")
            guide_opt = torch.optim.Adam(guide_params, lr=guide_lr)
        optimisers = [model_opt] if guide_opt is None else [model_opt, guide_opt]
        total = warmup_steps + len(grid) * steps_per_penalty
        bar = tqdm(total=total, desc=f"{label:>14}", disable=not progress, leave=False)

        def step(gamma: float) -> None:
            # one model step (the guide also moves, on the KL of the same draws) ...
            for opt in optimisers:
                opt.zero_grad(set_to_none=True)
            xb, mb = minibatch()
            value = loss_fn.loss_and_grads(scaled(model, xb), guide_fn, xb, mb)
            for opt in optimisers:
                opt.step()
            losses.append(float(value))
            with torch.no_grad():
                _proximal_step(model_opt, precision, gamma, lr, prox)
                _floor_eigenvalues(precision, min_eigenvalue, eye)
            # ... then guide_steps guide steps (MissingScoreMatching's cycle)
            for _ in range(guide_steps if guided else 0):
                guide_opt.zero_grad(set_to_none=True)
                xb, mb = minibatch()
                loss_fn.loss_and_grads(scaled(model, xb), guide_fn, xb, mb)
                guide_opt.step()
            bar.update(1)
            if bar.n % 50 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.4g}", penalty=f"{gamma:.3g}")
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(
                    f"{label}: the loss became {losses[-1]} at step {len(losses) - 1} (penalty "
                    f"{gamma:.4g}); lower lr or raise min_eigenvalue"
                )

        try:
            for _ in range(warmup_steps):
                step(float(grid[0]))
            for k in range(len(grid)):
                gamma = float(grid[k])
                used, done = 0, tol is None
                reference = precision.detach().clone()
                while True:
                    for _ in range(steps_per_penalty):
                        step(gamma)
                    used += steps_per_penalty
                    if tol is None:
                        break
                    current = precision.detach()
                    change = float((current - reference).abs().max())
                    if change <= tol * max(1.0, float(current.abs().max())):
                        done = True
                        break
                    if used >= cap:
                        break
                    reference = current.clone()
                steps_used.append(used)
                converged.append(done)
                precisions[k] = precision.detach().to(torch.float64)
                locs[k] = loc.detach().to(torch.float64)
        finally:
            bar.close()
    return PenaltyPath(
        method=label,
        penalties=grid.clone(),
        precisions=precisions,
        locs=locs,
        losses=losses,
        seconds=time.perf_counter() - start,
        info={"estimator": estimator, "prox": prox, "steps": steps_used, "converged": converged},
    )


def _proximal_step(
    optimizer: torch.optim.Adam, precision: Tensor, gamma: float, lr: float, prox: str
) -> None:
    """Soft-threshold the off-diagonal entries of ``precision`` in place (module doc)."""
    if gamma == 0:
        return
    if prox == "plain":
        threshold: Tensor | float = lr * gamma
    else:
        state = optimizer.state[precision]
        beta2 = optimizer.param_groups[0]["betas"][1]
        eps = optimizer.param_groups[0]["eps"]
        step = float(state["step"])
        scale = (state["exp_avg_sq"] / (1.0 - beta2**step)).sqrt() + eps
        threshold = lr * gamma / scale
    precision.copy_(soft_threshold_offdiagonal(precision, threshold))
    # keep exact symmetry against rounding (the thresholds are symmetric up to rounding)
    upper = torch.triu(precision, diagonal=1)
    precision.copy_(upper + upper.T + torch.diag(precision.diagonal()))


def _floor_eigenvalues(precision: Tensor, min_eigenvalue: float, eye: Tensor) -> None:
    """Raise the diagonal so that the smallest eigenvalue is at least ``min_eigenvalue`` times
    the mean diagonal (in place; module doc)."""
    smallest = torch.linalg.eigvalsh(precision.to(torch.float64))[0]
    floor = min_eigenvalue * float(precision.diagonal().mean().clamp(min=1e-12))
    if float(smallest) < floor:
        precision.add_((floor - float(smallest)) * eye.to(precision.dtype))

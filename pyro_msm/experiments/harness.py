r"""The fitting loop every experiment shares.

:func:`run_svi` is the training loop of :func:`~pyro_msm.experiments.gaussian.fit_gaussian`,
:func:`~pyro_msm.experiments.truncated.truncated` and
:func:`~pyro_msm.experiments.interaction.interaction`: full-batch :class:`pyro.infer.SVI` with
Adam, *model updates* counted the same way for every estimator (for the guided estimators
``"variational"`` and ``"hybrid"`` each model update is followed by ``guide_steps`` guide
updates), Polyak-Ruppert averaging of the last iterates, and a fit that blows up (a non-finite
loss or parameter, or an exception such as a failed Cholesky factorisation) recorded as
*diverged* instead of ending the experiment.

Summaries of the resulting tidy rows are in :mod:`pyro_msm.experiments.reporting`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro import poutine
from torch import Tensor

from ..guides import AmortizedNormal, no_guide
from ..infer import MissingScoreMatching
from ..infer.objectives import Objective
from ..infer.score_matching import GUIDED

__all__ = ["Fit", "SVIAdam", "fit_model", "run_svi", "fit_fields", "complete_case_note"]


@dataclass
class Fit:
    """The outcome of :func:`run_svi`.

    :ivar label: name of the method.
    :ivar estimator: the :class:`~pyro_msm.infer.MissingScoreMatching` estimator.
    :ivar estimate: name -> averaged parameter value (float64, detached), from ``snapshot``;
        NaN-filled when the fit diverged before any iterate was averaged.
    :ivar losses: loss per row after each model update.
    :ivar ess: mean effective sample size after each model update (IW, EM, hybrid).
    :ivar seconds: wall-clock time.
    :ivar svi_steps: SVI steps taken (model and guide steps).
    :ivar error: why the fit stopped early ("" when it ran to the end).
    """

    label: str
    estimator: str
    estimate: dict[str, Tensor]
    losses: list[float] = field(default_factory=list)
    ess: list[float] = field(default_factory=list)
    seconds: float = 0.0
    svi_steps: int = 0
    error: str = ""

    @property
    def diverged(self) -> bool:
        """True when the fit stopped on a non-finite value or an exception."""
        return bool(self.error)

    @property
    def mean_ess(self) -> float:
        """Mean of :attr:`ess` over the run (NaN when the estimator has no weights)."""
        return float(sum(self.ess) / len(self.ess)) if self.ess else math.nan


def fit_fields(fit: Any, note: str = "") -> dict[str, Any]:
    """The columns every experiment's row takes from a fit (a :class:`Fit` or a
    :class:`~pyro_msm.experiments.gaussian.FitResult`; None for a method that was not fitted):
    ``ess``, ``seconds``, ``steps``, ``svi_steps``, ``diverged`` and ``note`` (``note``, else
    the fit's error)."""
    if fit is None:
        return {"ess": math.nan, "seconds": 0.0, "steps": 0, "svi_steps": 0, "diverged": False,
                "note": note}  # fmt: skip
    return {
        "ess": fit.mean_ess,
        "seconds": fit.seconds,
        "steps": len(fit.losses),
        "svi_steps": fit.svi_steps,
        "diverged": bool(fit.error),
        "note": note or fit.error,
    }


def complete_case_note(mask: Tensor) -> str:
    """Why complete case cannot be fitted to a table with this mask, or "" when it can.

    With fewer than ``d + 1`` complete rows the complete cases' sample covariance is singular and
    complete-case score matching has no minimiser (with none at all its loss is identically zero
    and a fit would just return its starting point).
    """
    complete, d = int(mask.all(-1).sum()), mask.shape[-1]
    if complete > d:
        return ""
    return f"not estimable: {complete} complete rows < d + 1 = {d + 1}"


def _finite(values: dict[str, Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in values.values())


class SVIAdam:
    """SVI steps of :class:`pyro.infer.SVI` with :class:`pyro.optim.Adam`, with one
    :class:`torch.optim.Adam` over all parameters instead of Pyro's one per parameter tensor.

    A step is Pyro's: the loss's ``loss_and_grads`` under a parameter trace, an Adam step of the
    parameters it touched that have a gradient, then their gradients zeroed. Adam's update of a
    tensor depends on that tensor's own state only, so the iterates are those of
    ``SVI(model, guide, pyro.optim.Adam(...), loss)`` (on the CPU, where both take PyTorch's
    per-tensor update, bit for bit; a test checks this), at a fraction of the optimiser's
    Python cost: 9 parameter tensors (the demo's variational fit) cost 0.79 ms a step through
    Pyro's optimiser and 0.20 ms through one (issue 10, sixth pass).

    :param model: the Pyro model. :param guide: its guide.
    :param loss_fn: the loss (its ``loss_and_grads``).
    :param lr: Adam learning rate.
    :param lr_of: optional ``parameter name -> learning rate`` (e.g. the guide's own rate).
    """

    def __init__(
        self,
        model: Callable[..., Any],
        guide: Callable[..., Any],
        loss_fn: Any,
        lr: float,
        lr_of: Callable[[str], float] | None = None,
    ) -> None:
        self.model, self.guide, self.loss_fn = model, guide, loss_fn
        self.lr, self.lr_of = float(lr), lr_of
        self.optim: torch.optim.Adam | None = None
        self._known: list[Tensor] = []
        self._ids: set[int] = set()

    def _add(self, params: list[Tensor]) -> None:
        store = pyro.get_param_store()
        for p in params:
            lr = self.lr if self.lr_of is None else self.lr_of(store.param_name(p))
            if self.optim is None:
                self.optim = torch.optim.Adam([p], lr=lr)
            else:
                self.optim.add_param_group({"params": [p], "lr": lr})
            self._known.append(p)
            self._ids.add(id(p))

    def step(self, *args: Any, **kwargs: Any) -> float:
        """One SVI step; returns the loss's value.

        :param args: passed to the model and the guide. :param kwargs: likewise.
        """
        with poutine.trace(param_only=True) as capture:
            loss = self.loss_fn.loss_and_grads(self.model, self.guide, *args, **kwargs)
        params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        self._add([p for p in params if id(p) not in self._ids])
        if self.optim is not None:
            for p in self._known:
                if p not in params:
                    p.grad = None  # Pyro steps only the parameters of this step's trace
            self.optim.step()
        for p in params:
            if p.grad is not None:
                p.grad = torch.zeros_like(p.grad)
        return float(loss)


def run_svi(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    loss_fn: MissingScoreMatching,
    data: Tensor,
    mask: Tensor | None,
    snapshot: Callable[[], dict[str, Tensor]],
    *,
    steps: int = 400,
    lr: float = 0.02,
    guide_lr: float | None = None,
    average: float = 0.5,
    seed: int = 0,
    label: str | None = None,
    progress: bool = False,
) -> Fit:
    """Fit ``model`` by SVI on ``loss_fn`` for ``steps`` model updates.

    The global Pyro parameter store is *not* cleared (the caller builds the model, possibly
    from initial values, after clearing it); the RNG is seeded with ``seed``. For the guided
    estimators (``"variational"``, ``"hybrid"``) the loop takes ``loss_fn.svi_steps(steps)`` SVI
    steps (``steps * (guide_steps + 1)`` when guide steps follow every model step) and keeps the
    losses of model steps only.

    :param model: the Pyro model, called as ``model(data, mask)``.
    :param guide: its guide (:func:`~pyro_msm.guides.no_guide` for unguided estimators).
    :param loss_fn: the loss.
    :param data: ``(n, d)`` table; NaN may mark missing entries when ``mask`` is None.
    :param mask: boolean ``(n, d)``, True where observed, or None.
    :param snapshot: returns the current parameters of interest (float64, detached), e.g.
        ``{"precision": ...}``; called after each of the averaged model updates.
    :param steps: model updates.
    :param lr: Adam learning rate.
    :param guide_lr: Adam learning rate of the guide's parameters (those of a
        :class:`~pyro.nn.PyroModule` guide, by its name), default ``lr``.
    :param average: fraction of the run, at its end, whose iterates are averaged into
        :attr:`Fit.estimate` (Polyak-Ruppert; with a constant learning rate the last iterate of
        a stochastic estimator jitters around its optimum). ``0`` keeps the last iterate.
    :param seed: RNG seed.
    :param label: name of the method (default: the estimator).
    :param progress: show a tqdm progress bar.
    :returns: a :class:`Fit`. A non-finite loss or snapshot, or an exception raised by a step
        (``ValueError``, ``RuntimeError``), stops the fit with :attr:`Fit.error` set; the
        estimate is then the average of the iterates seen so far, or NaN if there were none.
    :raises ValueError: for non-positive ``steps`` or ``average`` outside ``[0, 1]``.
    """
    from tqdm import tqdm

    if int(steps) < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not 0.0 <= average <= 1.0:
        raise ValueError(f"average must be in [0, 1], got {average}")
    estimator = loss_fn.estimator
    label = estimator if label is None else label
    n = data.shape[0]
    pyro.set_rng_seed(int(seed))
    guided = estimator in GUIDED
    lr_of: Callable[[str], float] | None = None
    prefix = getattr(guide, "_pyro_name", None)
    if guide_lr is not None and guided and prefix:
        if not float(guide_lr) > 0:
            raise ValueError(f"guide_lr must be positive, got {guide_lr}")

        def lr_of(name: str) -> float:
            return float(guide_lr) if name.startswith(f"{prefix}.") else lr

    svi = SVIAdam(model, guide, loss_fn, lr, lr_of)
    first_averaged = int(steps) - max(1, math.ceil(average * int(steps)))
    sums: dict[str, Tensor] = {}
    count = 0
    fit = Fit(label=label, estimator=estimator, estimate={})
    bar = tqdm(total=int(steps), desc=f"{label:>15}", disable=not progress, leave=True)
    start = time.perf_counter()
    try:
        for _ in range(loss_fn.svi_steps(int(steps))):
            value = svi.step(data, mask)
            fit.svi_steps += 1
            if guided and loss_fn.diagnostics.get("step") != "model":
                continue
            if not math.isfinite(value):
                fit.error = f"non-finite loss at model update {len(fit.losses) + 1}"
                break
            fit.losses.append(value / n)
            if "ess" in loss_fn.diagnostics:
                fit.ess.append(loss_fn.diagnostics["ess"])
            if len(fit.losses) > first_averaged:
                current = snapshot()
                if not _finite(current):
                    fit.error = f"non-finite parameters at model update {len(fit.losses)}"
                    break
                for key, val in current.items():
                    sums[key] = sums[key] + val if key in sums else val.clone()
                count += 1
            bar.update(1)
            if bar.n % 10 == 0 or bar.n == steps:
                postfix = {"loss": f"{value / n:.4g}"}
                if fit.ess:
                    postfix["ess"] = f"{fit.ess[-1]:.2f}/{loss_fn.num_particles}"
                bar.set_postfix(postfix, refresh=False)
    except (ValueError, RuntimeError) as err:  # e.g. a Cholesky of a non-PD matrix after a blow-up
        fit.error = f"{type(err).__name__} at model update {len(fit.losses) + 1}: {err}"[:200]
    finally:
        bar.close()
    fit.seconds = time.perf_counter() - start
    if count:
        fit.estimate = {key: val / count for key, val in sums.items()}
    else:
        fit.estimate = {key: torch.full_like(val, math.nan) for key, val in snapshot().items()}
    return fit


def fit_model(
    model: Callable[..., Any],
    data: Tensor,
    mask: Tensor | None,
    estimator: str,
    snapshot: Callable[[], dict[str, Tensor]],
    *,
    num_particles: int = 10,
    proposal: str = "moment_matched",
    objective: str | Objective = "exact",
    guide_steps: int = 10,
    guide_particles: int = 1,
    guide_every: int = 1,
    make_guide: Callable[[Callable[..., Any]], Callable[..., Any]] = AmortizedNormal,
    **kwargs: Any,
) -> Fit:
    """Build the loss (and, for ``"variational"``/``"hybrid"``, the guide) of one estimator and
    fit ``model`` with :func:`run_svi`.

    :param model: the Pyro model ``model(data, mask)`` with one plate ``"rows"`` around its
        :func:`~pyro_msm.observe` site; its parameters must already be initialised as wanted.
    :param estimator: one of :data:`pyro_msm.infer.ESTIMATORS`.
    :param snapshot: current parameters of interest (see :func:`run_svi`).
    :param num_particles: particles per row (IW, EM, and model steps of the guided estimators).
    :param proposal: IW/EM proposal.
    :param objective: ``"exact"``, ``"sliced"``, ``"denoising"``, ``"truncated"`` or an
        :class:`~pyro_msm.infer.objectives.Objective`.
    :param guide_steps: guide steps per model step of the guided estimators.
    :param guide_particles: completions per row on guide steps.
    :param guide_every: model steps per round of guide steps (see
        :class:`~pyro_msm.infer.MissingScoreMatching`).
    :param make_guide: ``model -> guide`` for the guided estimators (default: the paper's
        :class:`~pyro_msm.guides.AmortizedNormal`).
    :param kwargs: passed to :func:`run_svi` (``steps``, ``lr``, ``guide_lr``, ``average``,
        ``seed``, ``label``, ``progress``).
    :returns: the :class:`Fit`.
    """
    guide = make_guide(model) if estimator in GUIDED else no_guide
    loss_fn = MissingScoreMatching(
        estimator,
        num_particles=num_particles,
        proposal=proposal,
        objective=objective,
        guide_steps=guide_steps,
        guide_particles=guide_particles,
        guide_every=guide_every,
        max_plate_nesting=1,  # the plate "rows"
    )
    return run_svi(model, guide, loss_fn, data, mask, snapshot, **kwargs)

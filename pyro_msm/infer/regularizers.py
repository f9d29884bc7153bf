r"""Guards against estimator exploitation by flexible energies.

A flexible energy (an MLP) fitted by importance weighting or the variational estimator can
lower its *training* loss by exploiting the estimator rather than by fitting the data: it
makes its conditional of the missing coordinates so peaked that the few importance draws (or
the guide's draws) see a sharp, steep energy whose marginal-score estimate is wildly biased. The
training loss keeps falling while the model's complete-data score-matching loss on fresh rows
climbs by orders of magnitude (measured in ``benchmarks/long_runs.py``; see the *Long runs*
section of the benchmarks page). Two guards:

- :class:`CurvaturePenalty`: the curvature penalty of Kingma & LeCun (2010),
  :math:`\lambda \sum_{j\in o} \bar E[b_j^2]` added to each row's loss, with :math:`b_j` the
  diagonal of the score's Jacobian. It prices exactly the sharp curvature the exploitation
  needs, at no extra derivative cost with the exact objective.
- :class:`HeldOutMonitor`: the marginal loss of held-out incomplete rows (importance weighting
  with many particles and fixed draws), evaluated every few steps; it keeps the best parameters
  and says when to stop (early stopping), and :meth:`HeldOutMonitor.restore` puts the best
  parameters back.

References

[1] Kingma & LeCun, "Regularized estimation of image statistics by Score Matching",
NeurIPS 2010.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro
import torch
from torch import Tensor
from torch.distributions import Distribution

from .derivatives import score_and_diag_jacobian
from .objectives import ExactObjective, Objective, Particles, make_objective, moment_loss
from .objectives import weighted_mean as _weighted_mean

__all__ = ["CurvaturePenalty", "HeldOutMonitor"]


class CurvaturePenalty(Objective):
    r"""An objective plus the curvature penalty of Kingma & LeCun (2010):

    .. math:: L_\lambda(x_o) = L(x_o) + \lambda \sum_{j\in o} \bar E[b_j^2],

    where :math:`b_j = \partial a_j/\partial x_j` at the completed points and :math:`\bar E` is
    the estimator's weighted mean. With the exact objective the penalty reuses the derivatives
    the loss computes anyway; with another objective it costs one extra diagonal Jacobian.
    Pass it as ``MissingScoreMatching(objective=CurvaturePenalty(0.01))``.

    :param weight: :math:`\lambda \ge 0` (the benchmarks use 0.01 on standardised data).
    :param objective: the objective to penalise (name or instance), default ``"exact"``.

    References

    [1] Kingma & LeCun, "Regularized estimation of image statistics by Score Matching",
    NeurIPS 2010.
    """

    def __init__(self, weight: float = 0.01, objective: str | Objective = "exact") -> None:
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"CurvaturePenalty: weight must be a finite number >= 0, got {weight}")
        self.weight = float(weight)
        self.objective = make_objective(objective)
        self.perturbs = self.objective.perturbs

    def perturb(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.objective.perturb(x, mask)

    def __call__(self, fn: Distribution, particles: Particles) -> Tensor:
        a, b = score_and_diag_jacobian(fn, particles.z)
        scored = particles.scored.to(b.dtype)
        penalty = self.weight * (_weighted_mean(particles.weights, b * b) * scored).sum(-1)
        if type(self.objective) is ExactObjective:  # the same derivatives: no second pass
            rows = (moment_loss(particles.weights, a, b) * scored).sum(-1)
        else:
            rows = self.objective(fn, particles)
        return rows + penalty


class HeldOutMonitor:
    """Early stopping on the marginal loss of held-out rows.

    Every ``every`` steps, :meth:`__call__` evaluates ``loss`` (default: importance weighting
    with 100 particles, health checks off) on the held-out rows with the same random draws each
    time, remembers the parameters of the best evaluation, and returns True once ``patience``
    evaluations in a row have not improved on the best by ``min_delta`` (relative). Call
    :meth:`restore` at the end to put the best parameters back into Pyro's param store::

        monitor = HeldOutMonitor(model, held_out_rows)
        for step in range(3000):
            svi.step(train_rows)
            if monitor(step):
                break
        monitor.restore()

    :param model: the Pyro model (its data argument first).
    :param args: the model's arguments for the held-out rows (e.g. the held-out table).
    :param guide: the guide for a guided ``loss`` (default: none).
    :param loss: the evaluation loss (default ``MissingScoreMatching("iw", 100, health=False)``).
    :param every: steps between evaluations.
    :param patience: evaluations without improvement before stopping.
    :param min_delta: relative improvement that counts.
    :param seed: seed of the evaluation's draws (the training RNG is left untouched).
    """

    def __init__(
        self,
        model: Callable[..., Any],
        *args: Any,
        guide: Callable[..., Any] | None = None,
        loss: Any = None,
        every: int = 25,
        patience: int = 4,
        min_delta: float = 0.0,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        from ..guides import no_guide
        from .score_matching import MissingScoreMatching
        from .validation import positive_int

        self.model = model
        self.args, self.kwargs = args, kwargs
        self.guide = no_guide if guide is None else guide
        self.loss = MissingScoreMatching("iw", 100, health=False) if loss is None else loss
        self.every = positive_int("every", every)
        self.patience = positive_int("patience", patience)
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self.min_delta = float(min_delta)
        self.seed = int(seed)
        self.history: list[tuple[int, float]] = []
        self.best_loss = math.inf
        self.best_step = -1
        self._best_state: dict[str, Tensor] = {}
        self._stale = 0

    def evaluate(self) -> float:
        """The held-out loss now (fixed draws), per held-out call of the model."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return float(self.loss.loss(self.model, self.guide, *self.args, **self.kwargs))

    def __call__(self, step: int) -> bool:
        """Evaluate at steps that are multiples of ``every``; True when training should stop."""
        if step % self.every:
            return False
        value = self.evaluate()
        self.history.append((int(step), value))
        threshold = self.best_loss - self.min_delta * abs(self.best_loss)
        if math.isfinite(value) and (value < threshold or not math.isfinite(self.best_loss)):
            self.best_loss, self.best_step, self._stale = value, int(step), 0
            self._best_state = {
                name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()
            }
        else:
            self._stale += 1
        return self._stale >= self.patience

    def restore(self) -> None:
        """Copy the parameters of the best evaluation back into Pyro's param store (in place,
        so optimisers and ``nn.Module`` s keep pointing at them)."""
        store = dict(pyro.get_param_store().named_parameters())
        with torch.no_grad():
            for name, value in self._best_state.items():
                if name in store:
                    store[name].copy_(value)

r"""The M-step of EM score matching for every objective.

The EM algorithm of Uehara, Matsuda & Kim (2020) draws completions of each row, weights them
with the model frozen (the E-step), and minimises a *complete-data* score-matching loss of the
completed rows, averaged with those weights (the M-step). Any complete-data objective can play
that part: :class:`CompletedRowsObjective` treats every completed particle :math:`z_k` as a
fully observed row, applies the chosen objective to it, and averages over particles,

.. math:: L_{\mathrm{EM}}(x_o) = \sum_k \mathrm{sg}(w_k)\, \ell(z_k),

with :math:`\ell` the classical (``"exact"``), sliced, denoising (noise on every coordinate of
the completed row) or truncated loss of a complete row. With the exact objective this is
:class:`~pyro_msm.infer.objectives.ExpectedCompleteDataObjective`; the sliced loss has the same
expectation over its random directions.

References

[1] Uehara, Matsuda & Kim, "Imputation estimators for unnormalized models with missing data",
AISTATS 2020.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution

from .._memo import memo
from .objectives import ExactObjective, ExpectedCompleteDataObjective, Objective, Particles

__all__ = ["CompletedRowsObjective", "completed_rows_objective"]


class CompletedRowsObjective(Objective):
    """EM's M-step: ``objective`` on every completed particle as a complete row, averaged with
    the particles' (frozen) weights.

    The particles are drawn for the *clean* rows; a perturbing objective (denoising) perturbs
    every coordinate of each completed row instead.

    :param objective: the complete-data objective (exact, sliced, denoising, truncated, ...).
    """

    def __init__(self, objective: Objective) -> None:
        if not isinstance(objective, Objective):
            raise TypeError(
                f"CompletedRowsObjective needs an Objective, got {type(objective).__name__}"
            )
        self.objective = objective
        self.diagonal = objective.diagonal

    def __call__(self, fn: Distribution, particles: Particles) -> Tensor:
        z = particles.z.detach()  # (r, n, d): every particle a complete row
        everything = torch.ones(z.shape, dtype=torch.bool, device=z.device)
        memo(everything, "all_observed", lambda: True)  # known: no read of the device
        clean, noise_scale = None, None
        if self.objective.perturbs:
            clean = z
            z, noise_scale = self.objective.perturb(z, everything)
        rows = Particles(
            z.unsqueeze(0),  # one particle of weight one per completed row
            torch.ones((1,) + z.shape[:-1], dtype=z.dtype, device=z.device),
            everything,
            particles.row_weight,
            clean=clean,
            noise_scale=noise_scale,
            unit_weight=True,
            all_scored=True,
        )
        per_particle = self.objective(fn, rows)  # (r, n)
        return (particles.weights.detach() * per_particle).sum(0)


def completed_rows_objective(objective: Objective) -> Objective:
    """The EM objective for ``objective``: :class:`ExpectedCompleteDataObjective` for the exact
    one (the same loss, computed without the extra particle dimension), else a
    :class:`CompletedRowsObjective`."""
    if type(objective) is ExactObjective:
        return ExpectedCompleteDataObjective()
    return CompletedRowsObjective(objective)

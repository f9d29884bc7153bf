r"""The squared-interaction experiment of Givens, Liu & Reeve (2025): every estimator on
:math:`q(x) \propto \exp(\sum_{i\le j}\theta_{ij} x_i^2 x_j^2)` as the dimension grows.

Simulation (:func:`simulate_interaction`): :math:`\theta` from
:meth:`~pyro_msm.distributions.SquaredInteractionEnergy.random_theta` (an Erdos-Renyi graph
with edge probability 0.1, interactions :math:`-U(0.1, 0.5)`, quartic terms
:math:`-U(0.5, 1)`; the paper prints no generator), ``n`` draws by the exact-conditional
Gibbs sampler (200 sweeps, one chain per draw) and an MCAR mask.

Model: :meth:`SquaredInteractionEnergy.from_unconstrained` of a free matrix ``raw`` (so every
iterate is integrable), started for every method from the same data-driven point: the quartic
terms :math:`\theta_{jj} = -1/(4\,\overline{x_j^4})` (exact for independent coordinates, where
:math:`E[x^4] = 1/(4|\theta_{jj}|)` by integration by parts) and weak interactions
:math:`\theta_{ij} = -0.01`. The reference ``complete_oracle`` is classical score matching on
the table before masking.

Metrics.

- ``theta_error``: relative Frobenius error of the upper triangle of :math:`\theta`.
- ``fisher``: the Fisher divergence :math:`\tfrac12 E_{x\sim p}\lVert s_{\hat\theta}(x) -
  s_\theta(x)\rVert^2` to the truth, by Monte Carlo over ``n_eval`` held-out Gibbs draws of the
  truth (the same draws for every method of a seed, so differences between methods are paired);
  ``score_mse`` is twice it. No closed form exists: the model's moments are not known.

References
----------
- J. Givens, S. Liu, H. W. J. Reeve. Score Matching with Missing Data. ICML 2025
  (arXiv:2506.00557), experiments.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from torch import Tensor

from ..distributions import SquaredInteractionEnergy
from ..missingness import MaskedTable, mcar_mask
from ..primitives import observe
from .harness import Fit, complete_case_note, fit_fields, fit_model

__all__ = [
    "INTERACTION_METHODS",
    "InteractionProblem",
    "simulate_interaction",
    "make_interaction_model",
    "fit_interaction",
    "interaction_fisher",
    "interaction",
    "plot_interaction",
]

#: The estimators compared.
INTERACTION_METHODS = (
    "iw",
    "em",
    "variational",
    "hybrid",
    "zeroed",
    "mean_impute",
    "complete_case",
)
#: Label of the complete-data reference row.
ORACLE_LABEL = "complete_oracle"


@dataclass(frozen=True)
class InteractionProblem(MaskedTable):
    """A squared-interaction truth, draws from it, held-out draws and an MCAR mask.

    :ivar x: data ``(n, d)``. :ivar mask: boolean ``(n, d)``, True where observed.
    :ivar theta: true :math:`\\theta` (symmetric, float64).
    :ivar x_eval: held-out draws of the truth for the Fisher divergence.
    :ivar missing_rate: MCAR rate. :ivar seed: the seed.
    """

    x: Tensor
    mask: Tensor
    theta: Tensor
    x_eval: Tensor
    missing_rate: float
    seed: int


def simulate_interaction(
    d: int = 10,
    n: int = 1000,
    missing_rate: float = 0.5,
    *,
    seed: int = 0,
    n_eval: int = 5000,
    num_sweeps: int = 200,
    dtype: torch.dtype | None = None,
) -> InteractionProblem:
    """Simulate the squared-interaction problem (recipe in the module docstring).

    :param d: dimension. :param n: rows. :param missing_rate: MCAR rate in ``[0, 1)``.
    :param seed: seeds :math:`\\theta`, the data, the held-out draws and the mask.
    :param n_eval: held-out draws for the Fisher divergence.
    :param num_sweeps: Gibbs sweeps per draw.
    :param dtype: dtype of the data (default: torch's default dtype).
    :returns: an :class:`InteractionProblem`.
    :raises ValueError: for ``n < 1``, ``n_eval < 1`` or a rate outside ``[0, 1)``.
    """
    if int(n) < 1 or int(n_eval) < 1:
        raise ValueError(f"n and n_eval must be at least 1, got {n} and {n_eval}")
    if not 0.0 <= float(missing_rate) < 1.0:
        raise ValueError(f"missing_rate must be in [0, 1), got {missing_rate}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    theta = SquaredInteractionEnergy.random_theta(int(d), seed=int(seed), dtype=torch.float64)
    truth = SquaredInteractionEnergy(theta)
    both = truth.simulate(int(n) + int(n_eval), seed=int(seed), num_sweeps=num_sweeps)
    x, x_eval = both[: int(n)].to(dtype), both[int(n) :]
    gen = torch.Generator().manual_seed(int(seed))
    mask = mcar_mask(x.shape, missing_rate, generator=gen)
    return InteractionProblem(x, mask, theta, x_eval, float(missing_rate), int(seed))


def initial_theta(data: Tensor, mask: Tensor, interaction: float = 0.01) -> Tensor:
    r"""The common starting point: :math:`\theta_{jj} = -1/(4\,\overline{x_j^4})` over observed
    entries, :math:`\theta_{ij} = -` ``interaction`` off the diagonal (float64, symmetric)."""
    m = mask.to(torch.float64)
    x4 = torch.where(mask, data, torch.zeros_like(data)).double() ** 4
    fourth = (x4 * m).sum(0) / m.sum(0).clamp(min=1)
    diag = -1.0 / (4.0 * fourth.clamp(min=1e-3))
    d = data.shape[1]
    off = torch.full((d, d), -float(interaction), dtype=torch.float64)
    return torch.where(torch.eye(d, dtype=torch.bool), torch.diag(diag), off)


def make_interaction_model(init_theta: Tensor):
    """A Pyro model of rows ``x ~ SquaredInteractionEnergy.from_unconstrained(raw)`` with
    ``pyro.param("raw")`` initialised so that the model starts at ``init_theta``; data site
    :func:`~pyro_msm.observe` ``"x"`` in a plate ``"rows"``.

    :returns: ``model(data, mask=None)``.
    """
    raw0 = SquaredInteractionEnergy.unconstrain(init_theta.detach().double())

    def model(data: Tensor, mask: Tensor | None = None) -> Tensor:
        raw = pyro.param("raw", lambda: raw0.to(data).clone())
        fn = SquaredInteractionEnergy.from_unconstrained(raw, validate=False)
        with pyro.plate("rows", data.shape[0]):
            return observe("x", fn, obs=data, obs_mask=mask)

    return model


def fit_interaction(
    data: Tensor,
    mask: Tensor,
    estimator: str = "iw",
    **kwargs: Any,
) -> Fit:
    """Fit the squared-interaction model with one estimator from :func:`initial_theta`.

    Clears the Pyro parameter store; ``kwargs`` go to
    :func:`~pyro_msm.experiments.harness.fit_model` (``steps``, ``lr``, ``num_particles``,
    ``guide_steps``, ``seed``, ``progress``, ...).

    :returns: a :class:`~pyro_msm.experiments.harness.Fit` whose estimate holds ``"theta"``
        (upper triangular, float64).
    """
    pyro.clear_param_store()
    model = make_interaction_model(initial_theta(data, mask))

    def snapshot() -> dict[str, Tensor]:
        raw = pyro.param("raw").detach().double()
        return {"theta": SquaredInteractionEnergy.constrain(raw)}

    return fit_model(model, data, mask, estimator, snapshot, **kwargs)


def interaction_fisher(theta_hat: Tensor, theta: Tensor, x_eval: Tensor) -> float:
    r"""Monte Carlo Fisher divergence :math:`\tfrac12\,\overline{\lVert s_{\hat\theta}(x) -
    s_\theta(x)\rVert^2}` over draws ``x_eval`` of the truth (float64)."""
    x = x_eval.double()
    s_hat = SquaredInteractionEnergy(theta_hat.double(), validate=False).score(x)
    s = SquaredInteractionEnergy(theta.double(), validate=False).score(x)
    return 0.5 * float(((s_hat - s) ** 2).sum(-1).mean())


def _theta_error(theta_hat: Tensor, theta: Tensor) -> float:
    a, b = theta_hat.double().triu(), theta.double().triu()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _row(problem: InteractionProblem, method: str, fit: Fit | None, note: str = "") -> dict:
    theta_hat = fit.estimate["theta"] if fit is not None else None
    fitted = theta_hat is not None and bool(torch.isfinite(theta_hat).all())
    fisher = interaction_fisher(theta_hat, problem.theta, problem.x_eval) if fitted else math.nan
    return {
        "experiment": "interaction",
        "d": problem.d,
        "n": problem.n,
        "missing_rate": problem.missing_rate,
        "seed": problem.seed,
        "method": method,
        "theta_error": _theta_error(theta_hat, problem.theta) if fitted else math.nan,
        "score_mse": 2 * fisher,
        "fisher": fisher,
        **fit_fields(fit, note),
    }


def interaction(
    full: bool = False,
    seed: int = 0,
    seeds: int | None = None,
    progress: bool = True,
    *,
    dims: Sequence[int] | None = None,
    n: int = 1000,
    missing_rate: float = 0.5,
    methods: Sequence[str] = INTERACTION_METHODS,
    steps: int | None = None,
    lr: float = 0.02,
    num_particles: int = 10,
    guide_steps: int = 10,
    n_eval: int = 5000,
    oracle: bool = True,
) -> list[dict[str, Any]]:
    """Run the squared-interaction experiment: every method on the same masked table, for each
    dimension and seed.

    Defaults (a few minutes on a laptop): ``d`` in (10, 20, 30), 2 seeds, 200 model updates.
    ``full=True``: ``d`` = 10, 20, 30, 40, 50, 5 seeds, 400 model updates. ``n`` = 1000 and
    50% MCAR as in the paper. Explicit arguments override either.

    :param full: the paper's sizes.
    :param seed: first seed. :param seeds: number of seeds.
    :param progress: progress bars.
    :param dims: dimensions. :param n: rows. :param missing_rate: MCAR rate.
    :param methods: estimators (from :data:`INTERACTION_METHODS`).
    :param steps: model updates per fit. :param lr: Adam learning rate.
    :param num_particles: particles per row. :param guide_steps: guide steps per model step.
    :param n_eval: held-out draws for the Fisher divergence.
    :param oracle: add the ``complete_oracle`` row.
    :returns: tidy rows: ``experiment, d, n, missing_rate, seed, method, theta_error,
        score_mse, fisher, ess, seconds, diverged, note``.
    :raises ValueError: for an unknown method.
    """
    unknown = sorted(set(methods) - set(INTERACTION_METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {INTERACTION_METHODS}")
    dims = tuple(dims) if dims is not None else ((10, 20, 30, 40, 50) if full else (10, 20, 30))
    seeds = seeds if seeds is not None else (5 if full else 2)
    steps = steps if steps is not None else (400 if full else 200)
    common = {"steps": steps, "lr": lr, "num_particles": num_particles, "guide_steps": guide_steps}
    rows: list[dict[str, Any]] = []
    for s in range(int(seed), int(seed) + int(seeds)):
        for d in dims:
            problem = simulate_interaction(d, n, missing_rate, seed=s, n_eval=n_eval)
            if progress:
                print(f"squared interaction: d={d}, n={n}, MCAR {missing_rate:.0%}, seed {s}")
            if oracle:
                every = torch.ones_like(problem.mask)
                fit = fit_interaction(
                    problem.x,
                    every,
                    "zeroed",
                    label=ORACLE_LABEL,
                    seed=s,
                    progress=progress,
                    **common,
                )
                rows.append(_row(problem, ORACLE_LABEL, fit))
            complete_case = complete_case_note(problem.mask)
            for method in methods:
                if method == "complete_case" and complete_case:
                    note = complete_case
                    rows.append(_row(problem, method, None, note))
                    continue
                fit = fit_interaction(
                    problem.observed, problem.mask, method, seed=s, progress=progress, **common
                )
                rows.append(_row(problem, method, fit))
    return rows


def plot_interaction(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> str:
    """Plot :func:`interaction`'s rows: theta error and Fisher divergence against ``d``, one
    line per method (mean over seeds, band: mean ± sd; log scale).

    :returns: the path written.
    """
    from ..plots import plot_metric_curves

    return plot_metric_curves(
        rows,
        "d",
        {"theta_error": "rel. theta error", "fisher": "Fisher divergence"},
        path,
        title="Squared interaction (n={n}, MCAR {missing_rate:.0%})".format(**rows[0]),
    )

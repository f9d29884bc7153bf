"""Score matching with missing data as Pyro loss classes."""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO
from torch import Tensor
from torch.distributions import Distribution

from .. import distributed
from ..distributions.energy import Energy
from ..distributions.gaussian import GaussianEnergy
from .derivatives import _unwrap, has_closed_form, log_prob
from .em import completed_rows_objective
from .estimators import (
    _has_observed,
    complete_case_particles,
    mean_impute_particles,
    single_particle,
    variational_particles,
    weighted_particles,
    zeroed_particles,
)
from .gaussian import marginal_score_matching_loss
from .health import FitHealth, make_health
from .mechanisms import MechanismTilted
from .objectives import (
    ExactObjective,
    Objective,
    Particles,
    SlicedObjective,
    make_objective,
)
from .proposals import PreparedProposal, Proposal, make_proposal
from .sites import (
    DataSite,
    FillRejectLatent,
    PerturbObserved,
    ProvideModelTrace,
    RejectLatent,
    find_data_sites,
    guide_log_prob,
    memo,
)
from .validation import check_site_shape, positive_int, require_guide_sites, translate_errors

__all__ = [
    "MissingScoreMatching",
    "IWScoreMatching",
    "VariationalScoreMatching",
    "ESTIMATORS",
    "AUTO_CHUNK_ENTRIES",
    "AUTO_CHUNK_ENTRIES_CPU",
]

#: Estimators accepted by :class:`MissingScoreMatching`.
ESTIMATORS = (
    "iw",
    "variational",
    "hybrid",
    "em",
    "zeroed",
    "mean_impute",
    "complete_case",
    "closed_form",
)
#: Estimators that draw the missing coordinates from the guide.
GUIDED = ("variational", "hybrid")
#: Entries (points x d) per chunk with ``chunk_size="auto"`` on an accelerator: at d = 50 and
#: r = 10 that is 2,000 incomplete rows per chunk.
AUTO_CHUNK_ENTRIES = 2**20
#: The same on the CPU for objectives that take the diagonal of the score's Jacobian
#: (:attr:`~pyro_msm.infer.objectives.Objective.diagonal`) of energies differentiated by autodiff
#: or Taylor mode, whose ``(points, d, width)`` intermediates then stay in cache: measured (MLP
#: energy 2 x 64, n = 1000, one thread) against 2**20, a step took 0.45x at d=50, r=10; 0.55x at
#: d=10, r=10; 0.60x at d=100, r=1; and 0.9-1.07x with one particle at d <= 50. The others keep
#: :data:`AUTO_CHUNK_ENTRIES`, where smaller chunks only add per-chunk work: closed-form
#: energies (:func:`~pyro_msm.infer.derivatives.has_closed_form`; the demo's IW fit, a Gaussian
#: at d=10, r=10, took 1.7x as long), and the sliced and denoising objectives (1.3-1.9x).
AUTO_CHUNK_ENTRIES_CPU = 2**14


class _Group:
    """Rows of a data site that get the same number of particles, and how to draw them.

    :ivar rows: index tensor into the site's rows.
    :ivar points: completed points per row (particles, or 1).
    :ivar draw: ``rows -> Particles`` for a chunk of ``rows`` (row-local, so chunks can be
        recomputed under checkpointing).
    :ivar observed_rows: every row of the group has an observed entry, so the estimators give
        each a row weight of one unless all its draws fell outside the support
        (``Particles.outside``): the loss then skips the product with the row weights (a
        product with ones: the same numbers and gradients).
    """

    def __init__(
        self,
        rows: Tensor,
        points: int,
        draw: Callable[[Tensor], Particles],
        draw_kept: Callable[[Tensor, Tensor], Particles] | None = None,
        *,
        observed_rows: bool = False,
    ) -> None:
        self.rows, self.points, self.draw, self.draw_kept = rows, points, draw, draw_kept
        self.observed_rows = observed_rows

    def particles(self, rows: Tensor, keep: Tensor | None) -> Particles:
        """The particles of ``rows[keep]`` (all of ``rows`` without ``keep``), drawn with the
        random numbers that drawing all of ``rows`` consumes (``draw_kept`` computes only the
        kept rows; otherwise all are drawn and sliced)."""
        if keep is None:
            return self.draw(rows)
        if self.draw_kept is not None:
            return self.draw_kept(rows, keep)
        return _slice_particles(self.draw(rows), keep, False)


class _RowCounts:
    """A mask's numbers of rows with nothing observed and of rows with a missing entry: the
    ``(2,)`` tensor, and the two integers once read off the device (then not read again)."""

    def __init__(self, counts: Tensor) -> None:
        self.counts = counts
        self.read: tuple[int, int] | None = None


def _plus(total: Tensor | None, part: Tensor) -> Tensor:
    """``total + part``, or ``part`` for the first term (no addition to a zero)."""
    return part if total is None else total + part


def _observed_row_weights(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """``(n,)`` one for the rows of ``mask`` with an observed entry, zero for the others, in
    ``dtype`` (computed once per mask and dtype)."""
    return memo(mask, f"observed_rows_{dtype}", lambda: _has_observed(mask).to(dtype))


def _ones_per_row(x: Tensor) -> Tensor:
    """Row weights one (complete rows: every coordinate observed)."""
    return torch.ones(x.shape[:1], dtype=x.dtype, device=x.device)


def _log_prob_through_draws(
    fn: Distribution, x: Tensor, mask: Tensor, draws: Tensor, value: Tensor | None = None
) -> Tensor:
    r"""The model's log density at the completed draws, ``(r, n)``, whose gradient flows to the
    draws only (to the guide that drew them), not to the model's parameters.

    Its value is :math:`\log q_\theta(z)`; its gradient is that of
    :math:`a(z)_u \cdot x'_u` with the score :math:`a` held fixed, which is the chain rule
    through the draws. The score comes from the energy's closed form where it has one, else
    from one reverse pass to the points (no parameter gradients, no graph kept), so a model
    step does not evaluate the model's density twice (live and detached) and carry both
    graphs into its backward.

    :param draws: ``(r, n, d)`` completed rows (a data site's ``value``: observed entries are
        ``x``'s, so they are not completed again here, and the gradient reaches the guide's
        draws through that completion's select, which keeps only the missing coordinates).
    :param value: the model's log density at ``draws``, ``(r, n)``, if already computed (the
        model step's objective computes it with its graph to the parameters; detached here).
    """
    z = draws.detach()
    if value is not None:
        value = value.detach()
    if not draws.requires_grad:
        return log_prob(fn, z).detach() if value is None else value
    base = _unwrap(fn)
    closed = base.score(z) if isinstance(base, Energy) else None
    with torch.enable_grad():
        if closed is not None:
            value = log_prob(fn, z).detach() if value is None else value
            a = closed.detach().expand(z.shape)
        else:
            point = z.requires_grad_(True)
            lp = log_prob(fn, point)
            (a,) = torch.autograd.grad(lp.sum(), point)
            value = lp.detach()
    return _ThroughDraws.apply(value, draws, a)


class _ThroughDraws(torch.autograd.Function):
    r"""``value`` ``(r, n)`` with the gradient ``grad * a`` ``(r, n, d)`` to ``draws``: the
    gradient of :math:`a \cdot x'` summed over coordinates, without its three operations on
    every drawn entry in the forward pass. The gradient at observed coordinates is not masked
    here: the draws are completed rows (``torch.where`` of the data and the guide's draw), whose
    backward selects it away, non-finite or not."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, draws: Tensor, a: Tensor) -> Tensor:
        ctx.save_for_backward(a)
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        (a,) = ctx.saved_tensors
        return None, grad.unsqueeze(-1) * a, None


def _complete_from_guide(model_trace, site: DataSite, guide_trace) -> None:
    """Set ``site.value`` to the rows completed by the guide's draw of ``{name}_unobserved``
    (observed entries from the data), ``(r, n, d)``, as :func:`~pyro_msm.observe` computes them
    when the model is replayed against the guide's trace."""
    name = f"{site.name}_unobserved"
    draw = guide_trace.nodes[name]["value"] if name in guide_trace.nodes else None
    if draw is None:  # no guide site: the zero-filled rows, as a replay would leave them
        return
    fn = model_trace.nodes[name]["fn"]  # MissingCoordinates: the data and mask as observed
    n, d = site.data.shape
    site.value = torch.where(fn.observed_mask, fn.data, draw).reshape(-1, n, d)


def _classical_group(
    x: Tensor, mask: Tensor, rows: Tensor, finish: Callable[[Particles, Tensor], Particles]
) -> _Group:
    """The complete rows ``rows`` of ``x``: one particle of constant weight one each, every
    coordinate scored (their loss is the classical one; ``finish`` adds the denoising fields)."""

    def classical(chunk: Tensor) -> Particles:
        xr = _take(x, chunk)
        particles = single_particle(xr, _take(mask, chunk), _ones_per_row(xr), all_scored=True)
        return finish(particles, chunk)

    return _Group(rows, 1, classical, observed_rows=True)


def _take(t: Tensor, rows: Tensor, dim: int = 0) -> Tensor:
    """``t``'s entries ``rows`` along ``dim``. The loss's row indices are sorted and distinct
    (they come from ``arange`` and ``nonzero``), so as many of them as ``t`` has entries are all
    of them in order: ``t`` itself is returned (no copy, no scatter in the backward)."""
    return t if rows.shape[0] == t.shape[dim] else t.index_select(dim, rows)


def _slice_particles(particles: Particles, rows: Tensor, first: bool) -> Particles:
    """The particles of some rows (only the first particle, with constant weight one, if
    ``first``)."""

    def take(t: Tensor | None, dim: int) -> Tensor | None:
        return None if t is None else _take(t, rows, dim)

    z, weights = _take(particles.z, rows, 1), _take(particles.weights, rows, 1)
    if first:
        z, weights = z[:1], torch.ones_like(weights[:1]).detach()
    return Particles(
        z,
        weights,
        _take(particles.scored, rows),
        _take(particles.row_weight, rows),
        clean=take(particles.clean, 0),
        outside=take(particles.outside, 0),
        noise_scale=take(particles.noise_scale, 0),
        directions=take(particles.directions, 1),
        unit_weight=first or particles.unit_weight,
        all_scored=particles.all_scored,
    )


def _data_parallel_mode(value: bool | str) -> str | bool:
    """``False``, ``"replicated"`` (also ``True``) or ``"sharded"``."""
    if value is True or value == "replicated":
        return "replicated"
    if value is False or value is None:
        return False
    if value == "sharded":
        return "sharded"
    raise ValueError(
        f"data_parallel must be False, True/'replicated' (same batch on every rank) or "
        f"'sharded' (each rank its own rows), got {value!r}"
    )


def _particle_plate(fn, num_particles: int, dim: int):
    def wrapped(*args, **kwargs):
        with pyro.plate("_pyro_msm_particles", num_particles, dim=dim):
            return fn(*args, **kwargs)

    return wrapped


def _leaf_params(trace) -> list[Tensor]:
    params = {
        id(s["value"].unconstrained()): s["value"].unconstrained()
        for s in trace.nodes.values()
        if s["type"] == "param"
    }
    return [p for p in params.values() if p.requires_grad]


class MissingScoreMatching(ELBO):
    r"""Marginal score matching for unnormalised models of data with missing coordinates.

    The model declares its data with :func:`pyro_msm.observe`; parameters are ``pyro.param``
    (or ``pyro.module``) values. The loss is the marginal Hyvarinen objective of the observed
    coordinates, summed over rows (weighted by plate subsampling scales) and over data sites,

    .. math:: L(x_o) = \sum_{j\in o} \big[2\,E'[b_j] + 2\,\mathrm{Var}'[a_j] + E'[a_j]^2\big],

    where :math:`a` is the model's score, :math:`b` its diagonal Jacobian and :math:`E'`,
    :math:`\mathrm{Var}'` are under the model's conditional of the missing coordinates given the
    observed ones, which is estimated by ``estimator``:

    - ``"iw"`` (default): self-normalised importance weighting with ``num_particles`` draws from
      ``proposal`` per row, redrawn every step. The default proposal, ``"moment_matched"``, is the
      conditional :math:`N(x_u \mid x_o)` of a Gaussian moment-matched to the batch from
      pairwise-available entries; ``"wide"`` is the paper's fixed :math:`N(0, 4^2 I)`. On Gaussian
      data (d=5, 25% MCAR, r=10) the moment-matched proposal keeps the effective sample size near
      r where the paper's falls to under half, and its fits are closer to the exact marginal
      answer (see the benchmark in the documentation). The guide is not used.
      After each call, :attr:`diagnostics` holds ``"ess"``, the mean effective sample size
      :math:`1/\sum_k w_k^2` over rows with a missing coordinate.
    - ``"variational"``: the guide is :math:`q_\phi(x_u \mid x_o)`. SVI steps come in cycles of one
      *model step* followed by ``guide_steps`` *guide steps*. A guide step draws
      ``guide_particles`` completions per row and updates only the guide, on the reverse KL to the
      model's conditional restricted to the missing coordinates,
      :math:`E_{q_\phi}[\log q_\phi(x_u\mid x_o) - \log q_\theta(x_o, x_u)]`. A model step draws
      ``num_particles`` completions and updates the model with the covariance-identity surrogate
      of METHOD.md (and the guide with the KL of the same draws). The value returned by a model
      step is the plug-in marginal loss, not the surrogate; a guide step returns the value of the
      latest model step (``diagnostics["kl"]`` holds its own objective and
      ``diagnostics["step"]`` which kind of step it was).
    - ``"zeroed"``: missing inputs set to zero, observed outputs of the full score scored (biased).
    - ``"mean_impute"``: missing entries replaced by observed column means, then classical score
      matching on every coordinate (biased).
    - ``"complete_case"``: classical score matching on the rows with nothing missing; the others
      are dropped, with a warning that counts them.
    - ``"hybrid"`` (not in the paper): the guide, trained as for ``"variational"``, is the IW
      proposal; importance weights remove the bias of an imperfect guide.
    - ``"em"``: the EM algorithm of Uehara, Matsuda & Kim (2020): importance weights computed
      with the model frozen, then the chosen objective's complete-data loss of the completed
      rows, averaged with those weights (:class:`~pyro_msm.infer.em.CompletedRowsObjective`).
    - ``"closed_form"``: the exact marginal loss of a
      :class:`~pyro_msm.distributions.GaussianEnergy` model (the oracle the others
      approximate; other models raise ``TypeError``).

    With no missing value every estimator returns the classical score-matching loss
    :math:`\sum_j 2 b_j + a_j^2`. Rows with no observed coordinate carry no information and are
    skipped with a warning. Like any :class:`~pyro.infer.ELBO`, the loss works with
    :class:`~pyro.infer.SVI` (``step``, ``evaluate_loss``) and as
    ``MissingScoreMatching()(model, guide)``, a module whose ``forward()`` gives a differentiable
    loss for plain PyTorch loops (for ``"variational"`` every call is a model step).

    :param estimator: one of ``ESTIMATORS``.
    :param num_particles: particles per row ``r`` for ``"iw"`` and the model steps of
        ``"variational"``.
    :param proposal: the IW proposal: ``"moment_matched"``, ``"wide"``, a
        :class:`~pyro_msm.infer.proposals.Proposal`, or a Pyro distribution over rows.
    :param objective: ``"exact"`` (Hyvarinen), ``"sliced"`` (random projections, one
        Hessian-vector product per direction), ``"denoising"`` (noise on observed coordinates),
        ``"truncated"`` (bounded or non-negative domains, from the model's ``support``), or an
        :class:`~pyro_msm.infer.objectives.Objective` instance with options.
    :param missingness: a known missingness mechanism for ``"iw"``/``"em"``: a callable
        ``(z, mask) -> log P(mask | z)`` per completed row (see
        :mod:`pyro_msm.infer.mechanisms`); it tilts the model's conditional and marginal score.
    :param guide_steps: guide steps per model step for ``"variational"`` and ``"hybrid"``.
    :param guide_particles: completions per row on guide steps.
    :param guide_every: model steps per round of guide steps for ``"variational"`` and
        ``"hybrid"``: the ``guide_steps`` guide steps follow every ``guide_every``-th model step
        (1, the default: every model step). Model steps update the guide too (the KL of their
        draws), so larger values train the guide less often at a lower cost per model step.
    :param chunk_size: the most completed points (particles x rows) whose objective is
        evaluated at once. Larger tables are cut into row chunks; in an SVI step
        (:meth:`loss_and_grads`) each chunk is differentiated as soon as it is evaluated and its
        graph freed, so a full-batch step's memory is bounded by one chunk while the value and
        the gradients are those of one pass. ``"auto"`` (default) allows
        :data:`AUTO_CHUNK_ENTRIES_CPU` entries (points x d) on the CPU for the objectives that
        take the Jacobian's diagonal of energies without closed-form derivatives (cache-sized
        chunks are faster there) and :data:`AUTO_CHUNK_ENTRIES` otherwise; ``None`` never
        cuts.
        (:meth:`differentiable_loss` must return one graph, so there chunks bound only the
        transient memory of the derivatives.)
    :param compile: run the objective under :func:`torch.compile` (True, or a dict of its
        options; see :meth:`~pyro_msm.infer.objectives.Objective.compiled`): the first step
        compiles, a failure warns once and falls back to eager evaluation. Values equal the
        eager ones up to floating-point order.
    :param max_plate_nesting: as in :class:`~pyro.infer.ELBO` (guessed when not given).
    :param health: the fit-health monitor (:class:`~pyro_msm.infer.health.FitHealth`): warns
        once about degenerate importance weights or a diverging loss, raises
        :class:`~pyro_msm.infer.health.FitHealthError` at the first non-finite loss or gradient.
        True (default) for the documented thresholds, False to switch it off, or a
        ``FitHealth`` with other thresholds.
    :param data_parallel: for :mod:`torch.distributed` data parallelism with the loss's module
        form wrapped in ``DistributedDataParallel`` (:mod:`pyro_msm.distributed`). ``True``
        (or ``"replicated"``): every rank is given the same global batch and the same seed,
        and factors, draws and evaluates the objective (the expensive derivatives) for its own
        contiguous shard of the rows only, with the random numbers a single process gives
        those rows, scaled by the number of ranks, so DDP's gradient average is the gradient
        of the whole batch and the fit does not depend on the number of ranks beyond
        floating-point order. ``"sharded"``: every rank is given its own rows (e.g. its shard
        of the global batch) and draws its own particles; what is fitted once per data set
        (the moment-matched IW proposal, the column means of ``"mean_impute"``) is fitted on
        the union of the ranks' rows (statistics all-reduced), so it does not depend on the
        number of ranks. In both, reported values and ``diagnostics["ess"]`` are the whole
        batch's and the variational schedule is rank 0's. A no-op in one process.

    Rows with nothing missing get one particle and no proposal (their loss is the classical
    one, exactly what ``r`` identical particles give), and the default proposal is fitted once
    per data set (see :class:`~pyro_msm.infer.proposals.MomentMatchedProposal`;
    :meth:`refresh_proposal` refits it).

    References

    [1] Givens, Liu & Reeve, "Score Matching with Missing Data", ICML 2025, arXiv:2506.00557.

    [2] Hyvarinen, "Estimation of Non-Normalized Statistical Models by Score Matching",
    JMLR 6, 2005.

    [3] Uehara, Matsuda & Kim, "Imputation estimators for unnormalized models with missing
    data", AISTATS 2020.
    """

    def __init__(
        self,
        estimator: str = "iw",
        num_particles: int = 10,
        *,
        proposal: str | Proposal | Distribution = "moment_matched",
        objective: str | Objective = "exact",
        missingness: Callable[[Tensor, Tensor], Tensor] | None = None,
        guide_steps: int = 10,
        guide_particles: int = 1,
        guide_every: int = 1,
        chunk_size: int | str | None = "auto",
        compile: bool | dict = False,
        max_plate_nesting: float = float("inf"),
        health: bool | FitHealth = True,
        data_parallel: bool | str = False,
    ) -> None:
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
        objective = make_objective(objective)
        if compile is not False:
            objective = objective.compiled(compile)
        if estimator == "closed_form" and not isinstance(objective, ExactObjective):
            raise ValueError(f"estimator {estimator!r} supports only objective='exact'")
        if missingness is not None and estimator not in ("iw", "em"):
            raise ValueError(
                "a known missingness mechanism enters the importance weights: use "
                "estimator='iw' (or 'em')"
            )
        if missingness is not None and not callable(missingness):
            raise TypeError("missingness must be a callable (z, mask) -> log probability")
        num_particles = positive_int("num_particles", num_particles)
        guide_particles = positive_int("guide_particles", guide_particles)
        guide_steps = positive_int("guide_steps", guide_steps, minimum=0)
        guide_every = positive_int("guide_every", guide_every)
        if not (chunk_size is None or chunk_size == "auto"):
            if isinstance(chunk_size, str) or int(chunk_size) < 1:
                raise ValueError(
                    f"chunk_size must be a positive number of points, 'auto' or None, "
                    f"got {chunk_size!r}"
                )
            chunk_size = int(chunk_size)
        super().__init__(num_particles=int(num_particles), max_plate_nesting=max_plate_nesting)
        self.estimator = estimator
        self.proposal = make_proposal(proposal)
        self.objective = objective
        self._em_objective = completed_rows_objective(objective)
        if estimator == "em":  # draws for the clean rows; the M-step perturbs completed ones
            self.objective = self._em_objective
        self.health = make_health(health)
        self.data_parallel = _data_parallel_mode(data_parallel)
        self._schedule_synced = False
        self._pending_ess: Tensor | None = None
        self._pending_counts: list[tuple[str, int, _RowCounts]] = []
        self._site_losses: dict[str, Tensor] = {}
        self.missingness = missingness
        self.guide_steps = int(guide_steps)
        self.guide_particles = int(guide_particles)
        self.guide_every = int(guide_every)
        self.chunk_size = chunk_size
        self.diagnostics: dict[str, Any] = {}
        self._step = 0
        self._last_model_loss = math.nan
        #: whether the model has one data site (then a guided step runs the model once); None
        #: until the first guided step
        self._single_site: bool | None = None
        self._warned: set[tuple[str, str]] = set()

    @property
    def cycle(self) -> int:
        """SVI steps in one round of the variational schedule: ``guide_every`` model steps, then
        ``guide_steps`` guide steps (1 for the estimators without a guide)."""
        return self.guide_every + self.guide_steps if self.estimator in GUIDED else 1

    def svi_steps(self, model_steps: int) -> int:
        """SVI steps from the start of the schedule up to and including the guide steps that
        follow the ``model_steps``-th model step (if it is followed by any).

        :param model_steps: model steps wanted.
        """
        rounds, rest = divmod(int(model_steps), self.guide_every if self.estimator in GUIDED else 1)
        return rounds * self.cycle + rest

    # -- helpers ------------------------------------------------------------------------------
    def _warn_once(self, site: str, kind: str, message: str) -> None:
        if (site, kind) not in self._warned:
            self._warned.add((site, kind))
            warnings.warn(message, UserWarning, stacklevel=4)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed fit needs to continue exactly as an uninterrupted one: the
        variational schedule's position, the last model-step value, the plate nesting, the
        diagnostics, the warnings already given, the health monitor's history and the fitted
        IW proposal (see :func:`pyro_msm.persistence.save_checkpoint`)."""
        return copy.deepcopy(
            {
                "step": self._step,
                "last_model_loss": self._last_model_loss,
                "max_plate_nesting": self.max_plate_nesting,
                "diagnostics": self.diagnostics,
                "warned": self._warned,
                "health": self.health,
                "proposal": self.proposal,
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state.

        :raises KeyError: for a state missing an entry.
        """
        state = copy.deepcopy(state)
        self._step = int(state["step"])
        self._last_model_loss = float(state["last_model_loss"])
        self.max_plate_nesting = state["max_plate_nesting"]
        self.diagnostics = dict(state["diagnostics"])
        self._warned = set(state["warned"])
        self.health = state["health"]
        self.proposal = state["proposal"]

    def refresh_proposal(self) -> None:
        """Refit the IW proposal at the next step (it is otherwise fitted once per data set)."""
        self.proposal.refresh()

    def _warn_dropped_rows(self, site: DataSite) -> None:
        """Warn once about rows with nothing observed, and rows complete-case analysis drops.
        The counts are read off the device with the step's value (:meth:`_read`), once per
        mask, and not computed once both warnings were given."""
        kinds = ["empty"] + (["complete_case"] if self.estimator == "complete_case" else [])
        if all((site.name, kind) in self._warned for kind in kinds):
            return
        mask = site.mask

        def counts() -> _RowCounts:
            return _RowCounts(
                torch.stack([(~mask.any(-1)).sum(), (~mask.all(-1) & mask.any(-1)).sum()])
            )

        known = memo(mask, "dropped_rows", counts)
        if known.read is not None:  # read at an earlier step with this mask
            self._warn_counts(site.name, int(mask.shape[0]), *known.read)
            return
        self._pending_counts.append((site.name, int(mask.shape[0]), known))

    def _warn_counts(self, name: str, rows: int, empty: int, dropped: int) -> None:
        """The warnings of :meth:`_warn_dropped_rows`, once the counts are read."""
        if empty:
            self._warn_once(
                name,
                "empty",
                f"site '{name}': {empty} of {rows} rows in this batch have no "
                "observed coordinate and are skipped (they carry no information)",
            )
        if self.estimator == "complete_case":
            if dropped:
                self._warn_once(
                    name,
                    "complete_case",
                    f"site '{name}': complete-case analysis drops {dropped} of "
                    f"{rows} rows in this batch (rows with a missing coordinate)",
                )

    def _row_weights(self, site: DataSite, particles: Particles) -> Tensor:
        """Row multipliers: subsampling scale times the estimator's row weight; warns once."""
        self._warn_dropped_rows(site)
        return site.scale * particles.row_weight

    def _model_trace(self, model, guide_trace, args, kwargs):
        if guide_trace is None:  # FillUnobserved and RejectLatent in one handler
            model = FillRejectLatent()(model)
        else:
            model = RejectLatent()(poutine.replay(model, trace=guide_trace))
        trace = poutine.trace(model).get_trace(*args, **kwargs)
        for site in trace.nodes.values():
            info = site["infer"].get("pyro_msm") if site["type"] == "sample" else None
            if isinstance(info, dict):
                check_site_shape(info["name"], site["cond_indep_stack"], info["clean"])
        return trace

    def _site_fn(self, site: DataSite) -> Distribution:
        """The data distribution, tilted by the known missingness mechanism if one is given."""
        if self.missingness is None:
            return site.fn
        return MechanismTilted(site.fn, self.missingness, site.mask)

    def _row_fn(self, fn: Distribution) -> Distribution | None:
        """A distribution that scores any subset of rows (the site's, without Pyro's plate
        expansion), or None when its parameters differ by row (then rows are not split)."""
        base = _unwrap(fn)
        if isinstance(base, Energy):
            return base.row_distribution()
        return base if base.batch_shape == torch.Size() else None

    def _shard(self, num_rows: int) -> tuple[int, int] | None:
        """This rank's rows ``[start, stop)`` of a site under replicated ``data_parallel`` with
        several ranks, else None."""
        if self.data_parallel != "replicated" or not distributed.is_distributed():
            return None
        return distributed.shard_bounds(num_rows)

    def _over_ranks(self) -> bool:
        """Whether each rank holds its own rows (``data_parallel="sharded"``, several ranks)."""
        return self.data_parallel == "sharded" and distributed.is_distributed()

    def _sync_schedule(self) -> None:
        """Under ``data_parallel``, take rank 0's variational schedule position (once)."""
        if self._schedule_synced or not (self.data_parallel and distributed.is_distributed()):
            return
        self._step = int(distributed.broadcast_object(self._step))
        self._schedule_synced = True

    def _read(self, *values: Tensor) -> list[float]:
        """``values`` as floats, read off the device in one transfer together with the step's
        mean ESS (stored in ``diagnostics["ess"]``) and the row counts its warnings need: one
        synchronisation per step, not one per number."""
        pending, self._pending_ess = self._pending_ess, None
        counts, self._pending_counts = self._pending_counts, []
        if pending is None and not counts and len(values) == 1:  # nothing to stack
            return [values[0].detach().item()]
        parts = [v.detach().reshape(()) for v in values]
        if pending is not None:
            parts.append(pending.to(parts[0].dtype))
        parts += [c.to(parts[0].dtype) for _, _, known in counts for c in known.counts]
        read = torch.stack(parts).tolist()
        for name, rows, known in reversed(counts):
            dropped, empty = read.pop(), read.pop()
            known.read = (round(empty), round(dropped))
            self._warn_counts(name, rows, *known.read)
        if pending is not None:
            self.diagnostics["ess"] = read.pop()
        return read

    def _global_ess(self, site_ess: Tensor | None, like: Tensor) -> Tensor | None:
        """The mean ESS over every rank's importance-weighted rows (None when there are none);
        a collective call under ``data_parallel`` with several ranks."""
        if not (self.data_parallel and distributed.is_distributed()):
            return None if site_ess is None or site_ess.numel() == 0 else site_ess.mean()
        total = like.new_zeros(2, dtype=torch.float64)
        if site_ess is not None:
            total = torch.stack([site_ess.sum(), like.new_tensor(site_ess.numel())]).to(total)
        total = distributed.all_reduce_sum(total)
        return None if bool(total[1] == 0) else total[0] / total[1]

    def _global_value(self, value: float, device: torch.device | None = None) -> float:
        """Under ``data_parallel`` each rank's objective is ``world x`` its rows' share: the
        mean over ranks is the loss of the whole batch."""
        if not (self.data_parallel and distributed.is_distributed()):
            return value
        total = torch.tensor([value], dtype=torch.float64, device=device)
        return float(distributed.all_reduce_sum(total).item()) / distributed.world().size

    # -- the per-site objective, over groups of rows and chunks of them ---------------------------
    def _points_per_chunk(self, fn: Distribution, x: Tensor) -> int | None:
        if self.chunk_size is None:
            return None
        if self.chunk_size == "auto":
            objective = self._em_objective if self.estimator == "em" else self.objective
            small = x.device.type == "cpu" and objective.diagonal and not has_closed_form(fn)
            entries = AUTO_CHUNK_ENTRIES_CPU if small else AUTO_CHUNK_ENTRIES
            return max(1, entries // x.shape[-1])
        return int(self.chunk_size)

    def _one_chunk(self, site: DataSite) -> bool:
        """Whether a ``"variational"`` model step of a model with a closed-form score scores
        all of the site's rows with missing entries in one chunk, on one rank (the objective's
        particles and the KL may then share one log density)."""
        if (
            self.estimator != "variational"
            or not has_closed_form(site.fn)  # else the KL's reverse pass gives the density
            or self._shard(site.data.shape[0]) is not None
        ):
            return False
        row_fn = self._row_fn(site.fn)
        if row_fn is None:
            return True  # every row in one pass
        per_chunk = self._points_per_chunk(row_fn, site.data)
        if per_chunk is None:
            return True
        partial = self._split_rows(site.mask)[1]
        return max(1, per_chunk // self.num_particles) >= len(partial)

    @staticmethod
    def _stepwise(chunks: list[tuple[_Group, Tensor]], per_chunk: int | None) -> bool:
        """Whether chunks are differentiated one by one: more than one, and more points in all
        than ``per_chunk`` (with no chunk size, or all in one chunk's memory, one pass)."""
        if len(chunks) < 2 or per_chunk is None:
            return False
        return sum(len(rows) * group.points for group, rows in chunks) > per_chunk

    def _objective_total(
        self,
        site: DataSite,
        fn: Distribution,
        groups: list[_Group],
        ess: list[Tensor],
        backward: bool = False,
    ) -> Tensor:
        """The weighted sum over rows of the objective, group by group and chunk by chunk.

        With ``backward`` and chunks holding more points than one chunk's size, each chunk's
        value is differentiated at once and its graph freed (the returned total is then
        detached), so memory is bounded by one chunk while gradients equal one pass. Records
        the mean ESS of importance-weighted rows in ``ess``.
        """
        objective = self._em_objective if self.estimator == "em" else self.objective
        splittable = fn.batch_shape == torch.Size()  # scores any subset of rows
        per_chunk = (
            self._points_per_chunk(fn, site.data) if splittable else None
        )
        chunks = []
        for group in groups:
            if len(group.rows) == 0:
                continue
            rows = len(group.rows) if per_chunk is None else max(1, per_chunk // group.points)
            chunks += [(group, part) for part in group.rows.split(rows)]

        # chunk by chunk only when all chunks together exceed one chunk's points (else one
        # backward pass, with the caller's, saves a backward pass per chunk)
        stepwise = backward and self._stepwise(chunks, per_chunk)
        # products with multipliers known to be one are skipped (exact: the same numbers and
        # gradients): the rows' scale without subsampling, the row weights of rows that have
        # an observed entry, the number of ranks in one process
        unit_scale = site.constant_scale == 1.0
        total: Tensor | None = None
        dropped_rows: Tensor | float = 0.0
        row_losses: list[Tensor] = []  # for the health monitor's diagnosis of a bad step
        row_ess: list[Tensor] = []
        num_particles = 1
        shard = self._shard(site.data.shape[0])
        world = 1 if shard is None else distributed.world().size
        for group, rows in chunks:
            keep = None
            if shard is not None:  # every rank consumes every row's random numbers ...
                keep = ((rows >= shard[0]) & (rows < shard[1])).nonzero().squeeze(-1)
            particles = group.particles(rows, keep)  # ... and draws and scores its own rows
            if keep is not None:
                if isinstance(objective, SlicedObjective):  # the chunk's directions, mine kept
                    scored = particles.scored.new_zeros((len(rows),) + particles.scored.shape[1:])
                    scored[keep] = particles.scored
                    particles.directions = objective.directions(scored, particles.z.dtype)[:, keep]
                if keep.numel() == 0:
                    continue
                rows = rows[keep]
            losses = objective(fn, particles)
            row_losses.append(losses.detach())
            value = losses if unit_scale else losses * _take(site.scale, rows)
            if not (group.observed_rows and particles.outside is None):
                value = value * particles.row_weight
            value = value.sum() if world == 1 else value.sum() * world
            if stepwise and value.requires_grad:
                value.backward(retain_graph=True)  # the parameters' upstream graph is shared
                value = value.detach()
            total = value if total is None else total + value
            if group.points > 1 and self.estimator != "variational":
                has_missing = ~particles.scored.all(-1)
                row_ess.append(particles.effective_sample_size[has_missing].detach())
                num_particles = group.points
            if particles.outside is not None:
                dropped_rows = dropped_rows + particles.outside.sum()
        if row_losses:
            self._site_losses[site.name] = (
                row_losses[0] if len(row_losses) == 1 else torch.cat(row_losses)
            )
        site_ess = torch.cat(row_ess) if row_ess else None
        mean_ess = self._global_ess(site_ess, site.data)  # all ranks' rows under data_parallel
        if mean_ess is not None:
            ess.append(mean_ess)
        if self.data_parallel and distributed.is_distributed():  # judged on all ranks' rows
            self.health.check_ess(
                site.data.new_zeros(0) if site_ess is None else site_ess,
                self.num_particles,
                site=site.name,
                reduce=distributed.all_reduce_sum,
            )
        elif site_ess is not None and site_ess.numel():
            self.health.check_ess(site_ess, num_particles, site=site.name)
        if float(dropped_rows) > 0:
            self._warn_once(
                site.name,
                "outside",
                f"site '{site.name}': for {int(dropped_rows)} rows every importance "
                "draw fell outside the model's support; they are skipped this step (raise "
                "num_particles or use a proposal that respects the domain)",
            )
        if total is None:
            return site.data.new_zeros(())
        return total

    def _split_rows(self, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Indices of the complete rows and of the rows with a missing and an observed entry."""

        def split() -> tuple[Tensor, Tensor]:
            complete = mask.all(-1)
            partial = ~complete & mask.any(-1)
            return complete.nonzero().squeeze(-1), partial.nonzero().squeeze(-1)

        return memo(mask, "split_rows", split)

    def _direct_groups(
        self, site: DataSite, fn: Distribution, x: Tensor, noise_scale: Tensor | None
    ) -> tuple[Distribution, list[_Group]]:
        """The estimators without a guide: the distribution rows are scored with and the groups
        of rows with their particles."""
        mask, clean = site.mask, site.data
        def all_rows() -> Tensor:
            return torch.arange(x.shape[0], device=x.device)
        row_fn = self._row_fn(fn)

        def finish(particles: Particles, rows: Tensor) -> Particles:
            particles.clean = _take(clean, rows)
            particles.noise_scale = None if noise_scale is None else _take(noise_scale, rows)
            return particles

        def single(particles: Particles) -> _Group:
            """One particle per row: the estimators' baselines."""
            return _Group(
                all_rows(), 1, lambda c: finish(_slice_particles(particles, c, True), c)
            )

        baselines = {
            "zeroed": zeroed_particles,
            "mean_impute": mean_impute_particles,
            "complete_case": complete_case_particles,
        }
        if self.estimator in baselines:
            if self.estimator == "mean_impute":  # column means of all ranks' rows if sharded
                particles = mean_impute_particles(x, mask, over_ranks=self._over_ranks())
            else:
                particles = baselines[self.estimator](x, mask)
            return fn if row_fn is None else row_fn, [single(particles)]
        # importance weighting (and EM's E-step)
        r, frozen = self.num_particles, self.estimator == "em"
        subsampled = site.subsampled or self.objective.perturbs
        prepared: PreparedProposal | None = None
        complete, partial = self._split_rows(mask)
        # under data parallelism: fit over ranks (sharded) or factor only my rows (replicated);
        # the options go only to a prepare() that takes them (a Proposal written before them
        # then fits on its own rows, or draws all rows)
        options: dict[str, Any] = {"over_ranks": True} if self._over_ranks() else {}
        shard = self._shard(x.shape[0])
        if shard is not None and row_fn is not None:
            options["rows"] = partial[(partial >= shard[0]) & (partial < shard[1])]
        if options:
            accepted = inspect.signature(self.proposal.prepare).parameters
            options = {k: v for k, v in options.items() if k in accepted}

        def importance(rows: Tensor, keep: Tensor | None = None) -> Particles:
            nonlocal prepared
            if prepared is None:
                prepared = self.proposal.prepare(
                    x, mask, site=site.name, subsampled=subsampled, **options
                )
            if keep is None:
                draws, log_p = prepared.sample(rows, r)
            else:  # replicated data parallelism: my rows of this chunk
                if "keep" in inspect.signature(prepared.sample).parameters:
                    draws, log_p = prepared.sample(rows, r, keep)
                else:  # a PreparedProposal written before `keep`: draw all, keep mine
                    draws, log_p = prepared.sample(rows, r)
                    draws, log_p = draws[:, keep], log_p[:, keep]
                rows = rows[keep]
            particles = weighted_particles(
                row_fn if row_fn is not None else fn,
                x[rows],
                mask[rows],
                draws,
                log_p,
                frozen=frozen,
            )
            return finish(particles, rows)

        if row_fn is None:  # per-row parameters: every row in one pass, draws for partial rows

            def importance_all(rows: Tensor) -> Particles:
                nonlocal prepared
                if prepared is None:
                    prepared = self.proposal.prepare(
                        x, mask, site=site.name, subsampled=subsampled, **options
                    )
                draws, log_p = prepared.sample(partial, r)
                full = x.new_zeros((r,) + x.shape).index_copy(1, partial, draws)
                log_full = x.new_zeros((r, x.shape[0])).index_copy(1, partial, log_p)
                particles = weighted_particles(fn, x, mask, full, log_full, frozen=frozen)
                return finish(particles, rows)

            return fn, [_Group(all_rows(), r, importance_all)]
        return row_fn, [
            _classical_group(x, mask, complete, finish),
            _Group(partial, r, importance, importance, observed_rows=True),
        ]

    # -- estimators without a guide -------------------------------------------------------------
    def _direct_loss(
        self, model, args, kwargs, backward: bool = False
    ) -> tuple[Tensor, list[Tensor]]:
        trace = self._model_trace(model, None, args, kwargs)
        total: Tensor | None = None
        ess: list[Tensor] = []
        for site in find_data_sites(trace):
            mask = site.mask
            self.health.check_data(site.name, site.data, mask)
            x, noise_scale = self.objective.perturb(site.data, mask)
            fn = self._site_fn(site)
            self._warn_dropped_rows(site)
            if self.estimator == "closed_form":
                base = _unwrap(site.fn)
                if not isinstance(base, GaussianEnergy):
                    raise TypeError(
                        f"site '{site.name}': estimator 'closed_form' needs a GaussianEnergy, "
                        f"got {type(base).__name__}"
                    )
                rows = marginal_score_matching_loss(x, mask, base.loc, base.precision)
                total = _plus(total, (rows * site.scale * _has_observed(mask).to(x)).sum())
                continue
            row_fn, groups = self._direct_groups(site, fn, x, noise_scale)
            total = _plus(total, self._objective_total(site, row_fn, groups, ess, backward))
        if ess:
            self._pending_ess = torch.stack(ess).mean().detach()  # read with the loss
        assert total is not None  # find_data_sites found a site
        return total, _leaf_params(trace)

    # -- estimators with a guide: variational and hybrid --------------------------------------
    def _guided_groups(
        self,
        site: DataSite,
        draws: Tensor,
        log_q: Tensor,
        noise_scale: Tensor | None,
        log_p: Tensor | None = None,
    ) -> tuple[Distribution, list[_Group]]:
        """Groups of rows for particles drawn from the guide. Each chunk's particles are built
        from that chunk's draws only (the model's log density at them, and for ``"hybrid"`` the
        importance weights, row by row), so a chunk's graph is its own: differentiating chunk
        after chunk does not run the backward of the whole table's log density once per chunk.
        Complete rows keep one particle (the others are identical) and need no log density.

        :param draws: ``(r, n, d)`` guide draws (detached here).
        :param log_q: ``(r, n)`` the guide's log density of the missing block (for ``"hybrid"``).
        :param log_p: ``(r, n)`` the model's log density at the draws, with its graph to the
            parameters, if computed for all rows at once (``"variational"``, one chunk).
        """
        x, mask, draws = site.data, site.mask, draws.detach()
        hybrid = self.estimator == "hybrid"

        def finish(particles: Particles, rows: Tensor) -> Particles:
            particles.clean = _take(site.clean, rows)
            particles.noise_scale = None if noise_scale is None else _take(noise_scale, rows)
            return particles

        def draw(fn: Distribution) -> Callable[[Tensor], Particles]:
            def particles_of(rows: Tensor) -> Particles:
                xr, mr, dr = _take(x, rows), _take(mask, rows), _take(draws, rows, 1)
                if hybrid:
                    particles = weighted_particles(fn, xr, mr, dr, _take(log_q, rows, 1))
                else:
                    lp = None if log_p is None else _take(log_p, rows, 1)
                    particles = variational_particles(fn, xr, mr, dr, lp, completed=True)
                return finish(particles, rows)

            return particles_of

        row_fn = self._row_fn(site.fn)
        if row_fn is None:
            rows = torch.arange(mask.shape[0], device=mask.device)
            return site.fn, [_Group(rows, draws.shape[0], draw(site.fn))]
        complete, partial = self._split_rows(mask)

        return row_fn, [
            _classical_group(x, mask, complete, finish),
            _Group(partial, draws.shape[0], draw(row_fn), observed_rows=True),
        ]

    def _variational_terms(self, model, guide, args, kwargs, model_step: bool, backward=False):
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        r = self.num_particles if model_step else self.guide_particles
        dim = -int(self.max_plate_nesting) - 1
        perturbation = PerturbObserved(self.objective.perturb) if self.objective.perturbs else None
        if perturbation is not None:  # the guide and the model see the same noisy rows
            guide, model = perturbation(guide), perturbation(model)
        model_trace, sites = None, None
        if self._single_site is not False:
            # one run of the model, outside the particle plate: its trace gives the loss the data
            # site and the guide (through ProvideModelTrace) the site's data, mask and plates,
            # where the guide's hidden run of the model and the loss's replay took two
            model_trace = self._model_trace(model, None, args, kwargs)
            sites = find_data_sites(model_trace)
            self._single_site = len(sites) == 1
        guided = _particle_plate(guide, r, dim)
        if self._single_site:
            guided = ProvideModelTrace(model_trace)(guided)
        guide_trace = poutine.trace(guided).get_trace(*args, **kwargs)
        if self._single_site:
            # with one data site nothing in the model depends on the completed rows, so
            # completing them here equals replaying the model against the guide's draws
            _complete_from_guide(model_trace, sites[0], guide_trace)
        else:  # a later site may depend on an earlier site's completed rows: replay
            replayed = _particle_plate(model, r, dim)
            model_trace = self._model_trace(replayed, guide_trace, args, kwargs)
            sites = find_data_sites(model_trace)
        guide_lp = guide_log_prob(guide_trace, sites)
        require_guide_sites(self.estimator, sites, guide_lp)
        objective: Tensor | None = None
        kl: Tensor | None = None
        ess: list[Tensor] = []
        for site in sites:
            x, mask = site.data, site.mask
            self.health.check_data(site.name, x, mask)
            draws = site.value
            log_q = guide_lp.get(site.name)
            if log_q is None:
                log_q = torch.zeros(draws.shape[:-1], dtype=x.dtype, device=x.device)
            weights = _observed_row_weights(mask, x.dtype)
            if site.constant_scale != 1.0:  # a product with ones is skipped (the same numbers)
                weights = site.scale * weights
            if model_step:
                noise = None if perturbation is None else perturbation.cache[site.name][1]
                self._warn_dropped_rows(site)
                # in one chunk, the objective's log density (graph to the parameters) is the
                # KL's too: computed once for all rows
                log_p = log_prob(site.fn, draws.detach()) if self._one_chunk(site) else None
                row_fn, groups = self._guided_groups(site, draws, log_q, noise, log_p)
                objective = _plus(
                    objective, self._objective_total(site, row_fn, groups, ess, backward)
                )
                # the KL's model term, with its gradient to the guide only (through the draws)
                kl_rows = log_q - _log_prob_through_draws(site.fn, x, mask, draws, log_p)
            else:
                live = log_prob(site.fn, draws)  # gradient to the guide through the draws
                kl_rows = log_q - live
            kl = _plus(kl, (kl_rows.mean(0) * weights).sum())
        if ess:
            self._pending_ess = torch.stack(ess).mean().detach()  # read with the loss
        assert kl is not None  # find_data_sites found a site
        return (
            0.0 if objective is None else objective,  # a guide step has no objective
            kl,
            _leaf_params(model_trace),
            _leaf_params(guide_trace),
        )

    # -- the ELBO interface ---------------------------------------------------------------------
    def _get_trace(self, model, guide, args, kwargs):
        """Pyro's particle machinery is not used: estimators draw their own particles."""
        raise NotImplementedError("MissingScoreMatching draws its own particles")

    @translate_errors
    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """A differentiable scalar: its value is the loss, its gradient the estimator's (for
        ``"variational"``, model parameters get the surrogate's and guide parameters the KL's)."""
        if self.estimator in GUIDED:
            objective, kl, _, _ = self._variational_terms(model, guide, args, kwargs, True)
            local, kl_value = self._read(objective, kl)
            self.diagnostics.update(
                step="model",
                kl=kl_value,
                loss=self._global_value(local, objective.device),
            )
            self.health.check_step(local, site_losses=self._site_losses)
            return objective + (kl - kl.detach())
        loss, params = self._direct_loss(model, args, kwargs)
        self.diagnostics["loss"] = self._global_value(self._read(loss)[0], loss.device)
        self.health.check_step(self.diagnostics["loss"], params, site_losses=self._site_losses)
        return loss

    @translate_errors
    def loss(self, model, guide, *args, **kwargs) -> float:
        """The loss value (for ``"variational"``, the plug-in marginal loss with
        ``num_particles`` guide draws per row)."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    @translate_errors
    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Compute gradients for one SVI step and return the loss value."""
        if self.estimator not in GUIDED:
            loss, params = self._direct_loss(model, args, kwargs, backward=True)
            value = self._global_value(self._read(loss)[0], loss.device)
            self.health.check_step(value, params, site_losses=self._site_losses)
            if loss.requires_grad:
                loss.backward()
            self.health.check_step(value, params, gradients=True, divergence=False)
            self.diagnostics["loss"] = value
            return value
        self._sync_schedule()
        model_step = self._step % self.cycle < self.guide_every
        self._step += 1
        objective, kl, model_params, guide_params = self._variational_terms(
            model, guide, args, kwargs, model_step, backward=True
        )
        if model_step:
            total = objective + (kl - kl.detach())
            local, kl_value = self._read(objective, kl)
            value = self._global_value(local, objective.device)
            params = model_params + guide_params
            self.health.check_step(value, params, site_losses=self._site_losses)
            if total.requires_grad:
                total.backward()
            self.health.check_step(value, params, gradients=True, divergence=False)
            self._last_model_loss = value
        else:
            (kl_value,) = self._read(kl)
            if guide_params and kl.requires_grad:
                kl.backward(inputs=guide_params)
            guide_ids = {id(p) for p in guide_params}
            for p in model_params:
                if id(p) not in guide_ids:
                    p.grad = None  # keep Adam from moving model parameters by momentum
        self.diagnostics.update(
            step="model" if model_step else "guide",
            kl=kl_value,
            loss=self._last_model_loss,
        )
        return self._last_model_loss


class IWScoreMatching(MissingScoreMatching):
    r"""Marginal score matching estimated by importance weighting (Marg-IW).

    For each row, :math:`r` draws :math:`x'_k` of the missing coordinates from a proposal
    :math:`p'`, completed points :math:`z_k = (x_o, x'_{k,u})`, log weights
    :math:`\log q_\theta(z_k) - \log p'(x'_{k,u})` normalised by a softmax, and

    .. math::
        \hat s_j = \sum_k w_k a_j(z_k),\qquad
        \partial_j \hat s_j = \sum_k w_k b_j(z_k) + \sum_k w_k a_j(z_k)^2 - \hat s_j^2,\qquad
        L = \sum_{j\in o} 2\,\partial_j \hat s_j + \hat s_j^2 .

    Gradients flow through both the scores and the weights. Biased at :math:`O(1/r)`, consistent
    as :math:`r` grows. Other arguments as in :class:`MissingScoreMatching`.

    References

    [1] Givens, Liu & Reeve, "Score Matching with Missing Data", ICML 2025, arXiv:2506.00557.
    """

    def __init__(self, num_particles: int = 10, **kwargs) -> None:
        super().__init__("iw", num_particles, **kwargs)


class VariationalScoreMatching(MissingScoreMatching):
    r"""Marginal score matching with a variational conditional (Marg-Var).

    The guide :math:`q_\phi(x_u \mid x_o)` is trained on the reverse KL to the model's conditional
    (missing coordinates only); the model on the surrogate

    .. math::
        J = \sum_{j\in o} 2(\bar E b_j + C(l, b_j)) + 2(\bar E a_j^2 + C(l, a_j^2))
            - 2\,\mathrm{sg}(\bar E a_j)(\bar E a_j + C(l, a_j)),

    whose gradient is the covariance identity
    :math:`\nabla E'[h] = E'[\nabla h] + \mathrm{Cov}'(\nabla \log q_\theta, h)` with guide draws
    in place of the model's conditional. Schedule, particles and the reported value as in
    :class:`MissingScoreMatching`.

    References

    [1] Givens, Liu & Reeve, "Score Matching with Missing Data", ICML 2025, arXiv:2506.00557.
    """

    def __init__(self, num_particles: int = 10, **kwargs) -> None:
        super().__init__("variational", num_particles, **kwargs)

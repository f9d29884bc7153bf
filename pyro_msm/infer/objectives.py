r"""Score-matching objectives over weighted particles.

An estimator (:mod:`pyro_msm.infer.estimators`) hands over :class:`Particles`: completed points
:math:`z_k` (observed coordinates from the data, missing ones drawn), weights :math:`w_k` over
the particles of each row, and the coordinates to score. An objective turns the model's
derivatives at those points into a per-row loss, never knowing which estimator drew them.

The weights carry the whole difference between estimators' *gradients*: self-normalised
importance weights (whose gradient is the IW estimator's), uniform weights whose gradient is the
covariance identity (the variational surrogate), or constants (baselines).

Every marginal objective is built from one identity. For a scalar statistic :math:`A` of the
score along a direction and :math:`B` its derivative along the same direction,

.. math:: 2\,\partial \hat s + \hat s^2 = 2\,\bar E[B] + 2\,\bar E[A^2] - \bar E[A]^2,

(:func:`moment_loss`): the exact objective takes the coordinate axes of the observed set
(:math:`A = a_j`, :math:`B = b_j`), the sliced one random directions supported on it
(:math:`A = v^\top a`, :math:`B = v^\top H v`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Distribution

from .._memo import all_observed
from .derivatives import diag_jacobian, directional_derivatives, score, score_and_diag_jacobian

__all__ = [
    "Particles",
    "Objective",
    "ExactObjective",
    "SlicedObjective",
    "DenoisingObjective",
    "TruncatedObjective",
    "ExpectedCompleteDataObjective",
    "make_objective",
    "weighted_mean",
    "on_scored",
    "moment_loss",
    "exact_objective",
    "OBJECTIVES",
]


@dataclass
class Particles:
    """Weighted completions of a batch of rows.

    :ivar z: completed points ``(r, n, d)``.
    :ivar weights: ``(r, n)``, summing to one over particles; may carry a gradient.
    :ivar scored: boolean ``(n, d)``: the coordinates the loss sums over (the observed ones).
    :ivar row_weight: ``(n,)`` multiplier of each row's loss (0 drops a row).
    :ivar clean: for the denoising objective, the observed rows before noise ``(n, d)``.
    :ivar noise_scale: for the denoising objective, ``(n, 1)`` noise scales.
    :ivar outside: boolean ``(n,)``: rows all of whose draws fell outside the support (dropped).
    :ivar directions: for the sliced objective, directions ``(m, n, d)`` drawn beforehand (so
        that a subset of rows gets the directions it gets in the whole chunk), or None.
    :ivar unit_weight: each row has one particle whose weight is the constant one (no gradient:
        not the variational surrogate's weights, whose value is one but whose gradient is not
        zero): :attr:`mean_weights` is then None and the objectives use the particle's values
        as they are, without the products and sums over particles.
    :ivar all_scored: every coordinate of every row is scored (``scored`` is all True): the
        objectives skip the mask (:func:`on_scored`).
    """

    z: Tensor
    weights: Tensor
    scored: Tensor
    row_weight: Tensor
    clean: Tensor | None = None
    outside: Tensor | None = None
    noise_scale: Tensor | None = None
    directions: Tensor | None = None
    unit_weight: bool = False
    all_scored: bool = False

    @property
    def mean_weights(self) -> Tensor | None:
        """The weights for :func:`weighted_mean` and :func:`moment_loss`: None for one particle
        of constant weight one (:attr:`unit_weight`), else :attr:`weights`."""
        return None if self.unit_weight else self.weights

    @property
    def effective_sample_size(self) -> Tensor:
        """:math:`1 / \\sum_k w_k^2` for each row, ``(n,)``."""
        w = self.weights.detach()
        return 1.0 / (w * w).sum(0)


def weighted_mean(weights: Tensor | None, values: Tensor) -> Tensor:
    """:math:`\\sum_k w_k h_k` for ``weights (r, n)`` and ``values (r, n, ...)``.

    ``weights=None`` stands for one particle of constant weight one
    (:attr:`Particles.mean_weights`): the values are returned as they are (a view), the numbers
    the product with one and the sum over one particle give, without those two operations and
    their backward.
    """
    if weights is None:
        if values.shape[0] != 1:
            raise ValueError(
                f"weights=None means one particle of weight one, got {values.shape[0]} particles"
            )
        return values.squeeze(0)
    w = weights.reshape(weights.shape + (1,) * (values.dim() - weights.dim()))
    return (w * values).sum(0)


def on_scored(values: Tensor, particles: Particles) -> Tensor:
    """``values`` ``(n, d)`` times the mask of scored coordinates (unscored entries zeroed); the
    values themselves when every coordinate is scored (:attr:`Particles.all_scored`), which is
    the same numbers without the mask's cast, product and backward."""
    if particles.all_scored:
        return values
    return values * particles.scored.to(values.dtype)


def moment_loss(weights: Tensor | None, a: Tensor, b: Tensor) -> Tensor:
    r""":math:`2\,\bar E[B] + 2\,\bar E[A^2] - \bar E[A]^2` per row and direction.

    :param weights: ``(r, n)``, or None for one particle of weight one (see
        :func:`weighted_mean`); :param a: ``(r, n, k)``; :param b: ``(r, n, k)``.
    :returns: ``(n, k)``.
    """
    mean_a = weighted_mean(weights, a)
    return 2 * weighted_mean(weights, b) + 2 * weighted_mean(weights, a * a) - mean_a * mean_a


class Objective:
    """A per-row score-matching loss over weighted particles.

    ``perturb`` may change the observed rows before particles are drawn (denoising); ``domain``
    is the support that importance draws must fall in (truncated).
    """

    #: whether the objective needs the rows noised before completion (denoising)
    perturbs: bool = False
    #: whether it evaluates the diagonal of the score's Jacobian (``d`` derivative directions
    #: per point, so its intermediates grow with ``d``; the loss then cuts cache-sized chunks on
    #: the CPU, see :data:`~pyro_msm.infer.score_matching.AUTO_CHUNK_ENTRIES_CPU`)
    diagonal: bool = False

    def perturb(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """The observed rows the particles are drawn for (the data, unless denoising) and the
        noise scale per row (None without noise)."""
        return x, None

    #: ``torch.compile`` :meth:`loss`: False (default), True, or a dict of
    #: :func:`torch.compile` options (see :meth:`compiled`)
    compile: bool | dict = False
    _compiled: Callable | None = None
    _compile_failed: bool = False

    def loss(self, fn: Distribution, particles: Particles) -> Tensor:
        """Per-row losses ``(n,)`` (before ``row_weight``); subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss(fn, particles)")

    def __call__(self, fn: Distribution, particles: Particles) -> Tensor:
        """Per-row losses ``(n,)`` (before ``row_weight``): :meth:`loss`, compiled when
        :attr:`compile` is set."""
        if not self.compile or self._compile_failed:
            return self.loss(fn, particles)
        if self._compiled is None:
            options = self.compile if isinstance(self.compile, dict) else {}
            self._compiled = torch.compile(self.loss, **options)
        try:
            return self._compiled(fn, particles)
        except Exception as err:  # noqa: BLE001 (any compiler failure: fall back to eager)
            self._compile_failed = True
            warnings.warn(
                f"{type(self).__name__}: torch.compile failed ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); running eagerly from now on",
                UserWarning,
                stacklevel=2,
            )
            return self.loss(fn, particles)

    def compiled(self, options: bool | dict = True) -> Objective:
        """A copy of this objective whose :meth:`loss` runs under :func:`torch.compile`.

        The first call compiles (tens of seconds on a CPU), later calls with the same shapes
        reuse the code. If compilation or the compiled call fails, a ``UserWarning`` says so
        once and the objective runs eagerly from then on. Measured on CPU
        (``benchmarks/speed.py --compile``): see ``docs/benchmarks.md``.

        :param options: True for :func:`torch.compile`'s defaults, or a dict of its keyword
            arguments (e.g. ``{"backend": "eager"}``, ``{"mode": "max-autotune"}``); False
            returns an eager copy.
        """
        if not isinstance(options, (bool, dict)):
            raise TypeError(f"compile must be a bool or a dict of torch.compile options, "
                            f"got {type(options).__name__}")
        clone = copy.copy(self)
        clone.compile, clone._compiled, clone._compile_failed = options, None, False
        return clone


class ExactObjective(Objective):
    r"""The marginal Hyvarinen loss:
    :math:`L = \sum_{j \in o} 2\,\bar E[b_j] + 2\,\bar E[a_j^2] - \bar E[a_j]^2`. With one
    particle of weight one it is classical score matching on the scored coordinates,
    :math:`\sum_j 2 b_j + a_j^2`. Costs ``d`` Hessian-vector products per point unless the
    model has a closed form."""

    diagonal = True

    def loss(self, fn: Distribution, particles: Particles) -> Tensor:
        a, b = score_and_diag_jacobian(fn, particles.z)
        per_coordinate = moment_loss(particles.mean_weights, a, b)
        return on_scored(per_coordinate, particles).sum(-1)


def exact_objective(fn: Distribution, particles: Particles) -> Tensor:
    """:class:`ExactObjective` as a function."""
    return ExactObjective().loss(fn, particles)


PROJECTIONS = ("rademacher", "gaussian", "sphere")


class SlicedObjective(Objective):
    r"""Sliced marginal score matching: random directions :math:`v` supported on the observed
    coordinates, with :math:`E[v v^\top] = I_o`, replace the trace,

    .. math:: L = 2\,\bar E[v^\top H v] + 2\,\bar E[(v^\top a)^2] - \bar E[v^\top a]^2,

    averaged over ``num_projections`` directions per row (fresh at every call). Its expectation
    over :math:`v` is the exact objective's value for the same particles. It needs one
    Hessian-vector product per direction, whatever the dimension (Song et al., 2019), or, for
    the sequential networks of :func:`~pyro_msm.infer.derivatives.taylor_network`, one forward
    Taylor pass per direction (:func:`~pyro_msm.infer.derivatives.directional_derivatives`).

    :param num_projections: directions per row.
    :param projection: ``"rademacher"`` (entries :math:`\pm 1`), ``"gaussian"`` or
        ``"sphere"`` (uniform on the sphere of radius :math:`\sqrt{|o|}` in the observed
        coordinates).
    """

    def __init__(self, num_projections: int = 1, projection: str = "rademacher") -> None:
        if int(num_projections) < 1:
            raise ValueError(f"num_projections must be at least 1, got {num_projections}")
        if projection not in PROJECTIONS:
            raise ValueError(f"unknown projection {projection!r}; choose one of {PROJECTIONS}")
        self.num_projections = int(num_projections)
        self.projection = projection

    def directions(self, scored: Tensor, dtype: torch.dtype) -> Tensor:
        """Random directions ``(m, n, d)`` supported on ``scored`` with identity second
        moment there."""
        shape = (self.num_projections,) + scored.shape
        m = scored.to(dtype)
        if self.projection == "rademacher":
            v = torch.randint(0, 2, shape, device=scored.device).to(dtype) * 2 - 1
        else:
            v = torch.randn(shape, dtype=dtype, device=scored.device)
        v = v * m
        if self.projection == "sphere":
            norm = v.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(dtype).tiny)
            v = v / norm * m.sum(-1, keepdim=True).sqrt()
        return v

    def loss(self, fn: Distribution, particles: Particles) -> Tensor:
        v = particles.directions
        if v is None:
            v = self.directions(particles.scored, particles.z.dtype)  # (m, n, d)
        # (r, n, m): the score and its derivative along each row's m directions
        proj_a, proj_b = directional_derivatives(fn, particles.z, v.movedim(0, -2))
        return moment_loss(particles.mean_weights, proj_a, proj_b).mean(-1)


class DenoisingObjective(Objective):
    r"""Denoising marginal score matching: Gaussian noise of scale :math:`\sigma` is added to the
    observed coordinates only, :math:`\tilde x_o = x_o + \sigma\varepsilon`, and the model's
    marginal score at the noised point is matched to the kernel's score,

    .. math:: L = \lVert \bar E[a_o(\tilde x_o, x'_u)] + (\tilde x_o - x_o)/\sigma^2 \rVert^2,

    where the particles are completions of the *noised* rows (Vincent, 2011). No second
    derivative is needed. ``noise_scale`` may be a list: each call then draws one scale per row
    uniformly from it (a mixture of noise levels).

    :param noise_scale: :math:`\sigma > 0`, or a sequence of them.
    """

    perturbs = True

    def __init__(self, noise_scale: float | list[float] | tuple[float, ...] = 0.1) -> None:
        scales = [noise_scale] if isinstance(noise_scale, (int, float)) else list(noise_scale)
        if not scales or any(not float(s) > 0 for s in scales):
            raise ValueError(f"noise_scale must be positive, got {noise_scale}")
        self.noise_scales = [float(s) for s in scales]
        self._scales: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def perturb(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        key = (x.dtype, x.device)
        if key not in self._scales:  # made once per dtype and device, not every step
            self._scales[key] = torch.tensor(self.noise_scales, dtype=x.dtype, device=x.device)
        scales = self._scales[key]
        pick = torch.randint(len(self.noise_scales), x.shape[:-1], device=x.device)
        if len(self.noise_scales) == 1:  # the index drawn (for the same random numbers) is 0
            sigma = scales.expand(x.shape[:-1]).unsqueeze(-1)
        else:
            sigma = scales[pick].unsqueeze(-1)
        noisy = torch.addcmul(x, torch.randn_like(x), sigma)  # x + noise * sigma, fused
        if all_observed(mask):  # nothing to keep clean
            return noisy, sigma
        return torch.where(mask, noisy, x), sigma

    def loss(self, fn: Distribution, particles: Particles) -> Tensor:
        if particles.clean is None or particles.noise_scale is None:
            raise RuntimeError("DenoisingObjective needs particles of perturbed rows")
        sigma = particles.noise_scale
        mean_a = weighted_mean(particles.mean_weights, score(fn, particles.z))
        variance = sigma**2
        # minus the kernel's score, (x~ - x) / sigma^2, is data (no gradient; the particles'
        # observed coordinates are the noisy ones, the missing ones are masked below): the
        # residual mean_a + (x~ - x) / sigma^2 in one fused operation
        residual = on_scored(
            torch.addcdiv(mean_a, particles.z[0] - particles.clean, variance), particles
        )
        # sigma^2 keeps the scale comparable across noise levels (Song & Ermon, 2019)
        return variance.squeeze(-1) * (residual * residual).sum(-1)


def boundary_distance_weight(support, cap: float = 1.0) -> Callable[[Tensor, Tensor], Tensor]:
    """The default weight of :class:`TruncatedObjective`: distance to the boundary of the
    observed coordinates' domain, capped at ``cap``, for the supports of
    :mod:`pyro_msm.distributions.domains`."""
    from ..distributions.domains import boundary_distance

    def weight(x: Tensor, mask: Tensor) -> Tensor:
        return boundary_distance(support, x, mask).clamp(max=cap)

    return weight


class TruncatedObjective(Objective):
    r"""Generalised (truncated-domain) marginal score matching with a weight :math:`g \ge 0` that
    vanishes on the boundary of the observed coordinates' domain:

    .. math::
        L = \sum_{j\in o} g_j\,\big(2\,\bar E[b_j] + 2\,\bar E[a_j^2] - \bar E[a_j]^2\big)
            + 2\,(\partial_j g_j)\,\bar E[a_j]

    (Hyvarinen, 2007; Yu, Drton & Shojaie, 2019). By default :math:`g_j` is the distance from
    :math:`x_o` to the boundary of the marginal domain along coordinate ``j``, capped at 1
    (:func:`~pyro_msm.distributions.domains.boundary_distance`; the domain is the model's
    ``support``). Importance draws outside the domain get weight zero.

    On a :class:`~pyro_msm.distributions.domains.HalfSpace` whose constraint involves both
    missing and observed coordinates of a row, the marginal score has a boundary term that this
    objective (like the paper's) omits, so the fit is biased; a ``UserWarning`` says so
    (:func:`~pyro_msm.distributions.domains.moving_section`; measured in
    ``docs/benchmarks.md``). Product domains are exact.

    :param weight: optional ``g(x, mask) -> (..., n, d)`` (or ``(..., n, 1)``), differentiable in
        ``x``, vanishing on the boundary; defaults to the capped boundary distance.
    :param cap: the cap of the default weight.
    """

    diagonal = True

    def __init__(
        self, weight: Callable[[Tensor, Tensor], Tensor] | None = None, cap: float = 1.0
    ) -> None:
        if not cap > 0:
            raise ValueError(f"cap must be positive, got {cap}")
        self.weight = weight
        self.cap = float(cap)

    def loss(self, fn: Distribution, particles: Particles) -> Tensor:
        from ..distributions.domains import moving_section

        a, b = score_and_diag_jacobian(fn, particles.z)
        weight = self.weight or boundary_distance_weight(fn.support, self.cap)
        x = particles.z[0].detach()  # observed coordinates are the same in every particle
        mask = particles.scored
        if bool(moving_section(fn.support, mask).any()):
            warnings.warn(
                "truncated objective on a half-space that links missing and observed "
                "coordinates: the marginal score of such rows has a boundary term that the "
                "estimators omit, so the fit is biased (product domains such as orthants and "
                "boxes are exact); see pyro_msm.distributions.domains.moving_section",
                UserWarning,
                stacklevel=2,
            )
        g, dg = diag_jacobian(lambda y: weight(y, mask).expand(y.shape), x)
        w = particles.mean_weights
        per_coordinate = g * moment_loss(w, a, b) + 2 * dg * weighted_mean(w, a)
        return on_scored(per_coordinate, particles).sum(-1)


class ExpectedCompleteDataObjective(Objective):
    r"""The expected classical loss of the completed rows,
    :math:`\sum_j \bar E[2 b_j + a_j^2]` over every coordinate: the M-step of the EM algorithm
    of Uehara, Matsuda & Kim (2020), used with weights computed with the model frozen."""

    diagonal = True

    def loss(self, fn: Distribution, particles: Particles) -> Tensor:
        a, b = score_and_diag_jacobian(fn, particles.z)
        return weighted_mean(particles.mean_weights, 2 * b + a * a).sum(-1)


#: Objectives accepted by name by :class:`~pyro_msm.infer.MissingScoreMatching`.
OBJECTIVES = ("exact", "sliced", "denoising", "truncated")


def make_objective(objective: str | Objective) -> Objective:
    """Resolve the ``objective`` option of the loss."""
    if isinstance(objective, Objective):
        return objective
    factories = {
        "exact": ExactObjective,
        "sliced": SlicedObjective,
        "denoising": DenoisingObjective,
        "truncated": TruncatedObjective,
    }
    if objective not in factories:
        raise ValueError(
            f"unknown objective {objective!r}; choose one of {OBJECTIVES} or pass an Objective"
        )
    return factories[objective]()

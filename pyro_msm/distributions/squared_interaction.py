r"""The squared-interaction model of the experiments of Givens, Liu & Reeve (2025):
:math:`q(x) \propto \exp(\sum_{i \le j} \theta_{ij} x_i^2 x_j^2)` on :math:`\mathbb{R}^d`,
with closed-form scores and diagonal Jacobians and an exact-conditional Gibbs sampler.

References
----------
- J. Givens, S. Liu, H. W. J. Reeve. Score Matching with Missing Data. ICML 2025
  (arXiv:2506.00557).
- A. Hyvarinen. Some extensions of score matching. Computational Statistics & Data Analysis
  51(5), 2007.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .energy import Energy, unexpand, vecmat
from .gibbs import colour_classes
from .gibbs import seeded_generator as _generator

__all__ = ["SquaredInteractionEnergy"]


def _quartic_conditional(
    gamma: Tensor,
    num_proposals: int,
    max_rounds: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    r"""Exact draws from :math:`f(t) \propto \exp(-t^4 + \gamma t^2)`, one per entry of ``gamma``.

    Rejection from :math:`N(0, 1/(2\lambda))` with :math:`\lambda = (\sqrt{\gamma^2+4}-\gamma)/2`
    (the :math:`\lambda` maximising the acceptance rate): the log ratio
    :math:`-t^4 + (\gamma+\lambda) t^2` is at most :math:`c^2/4` with :math:`c = \gamma+\lambda
    = 1/\lambda > 0`, so a proposal is accepted with probability :math:`\exp(-(t^2 - c/2)^2)`.
    The acceptance rate is at least 0.79 for :math:`\gamma \le 0` (the only case under
    :class:`SquaredInteractionEnergy`'s sign constraints) and tends to one as
    :math:`\gamma \to -\infty`. ``num_proposals`` proposals are tried per entry and round.

    :returns: ``(t, done)``; entries with ``done`` False (no acceptance in ``max_rounds`` rounds,
        which has probability below ``0.21 ** (num_proposals * max_rounds)`` for
        :math:`\gamma \le 0`) are zero and must be left unchanged by the caller.
    """
    flat = gamma.reshape(-1)
    out = torch.zeros_like(flat)
    done = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    todo = torch.arange(flat.numel(), device=flat.device)
    for _ in range(max_rounds):
        gm = flat[todo]
        root = torch.sqrt(gm * gm + 4.0)
        # two algebraically equal forms; each is free of cancellation on its side of zero
        lam = torch.where(gm < 0, 0.5 * (root - gm), 2.0 / (gm + root))
        shape = (num_proposals, gm.numel())
        t = torch.rsqrt(2.0 * lam) * torch.randn(
            shape, dtype=gm.dtype, device=gm.device, generator=generator
        )
        u = torch.rand(shape, dtype=gm.dtype, device=gm.device, generator=generator)
        ok = torch.log(u) < -((t * t - 0.5 / lam) ** 2)  # c = 1 / lambda
        # an accepted proposal (any rule depending only on which were accepted is exact;
        # max(0) is much faster than argmax(0) on CPU)
        first = ok.to(torch.int8).max(0, keepdim=True).indices
        pick = t.gather(0, first).squeeze(0)
        hit = ok.any(0)
        out[todo[hit]] = pick[hit]
        done[todo[hit]] = True
        todo = todo[~hit]  # only entries still without an acceptance go to the next round
        if todo.numel() == 0:
            break
    out, done = out.reshape(gamma.shape), done.reshape(gamma.shape)
    return out, done


class SquaredInteractionEnergy(Energy):
    r"""The squared-interaction model of Givens, Liu & Reeve (2025),

    .. math:: \log q(x) = \sum_{i \le j} \theta_{ij}\, x_i^2 x_j^2, \qquad x \in \mathbb{R}^d,

    i.e. :math:`E(x) = -y^\top T y` with :math:`y = x \odot x` and :math:`T` the upper triangle
    (diagonal included) of :math:`\theta`. Each unordered pair appears once: a *symmetric*
    :math:`\theta` is read through its upper triangle, so :math:`\theta_{ij}` (not
    :math:`2\theta_{ij}`) multiplies :math:`x_i^2 x_j^2`; an upper-triangular :math:`\theta`
    means the same. Other (non-symmetric, non-triangular) matrices are rejected as ambiguous.

    **Integrability.** :math:`q` is integrable iff :math:`y^\top T y < 0` for every nonzero
    :math:`y \ge 0` (strict copositivity of :math:`-T`), which cannot be checked efficiently in
    general. The constructor requires the sufficient condition

    - :math:`\theta_{jj} < 0` for every ``j`` (the quartic terms), and
    - :math:`\theta_{ij} \le 0` for :math:`i < j` (the interactions),

    under which every term is non-positive and :math:`\log q(x) \le \max_j \theta_{jj}
    \sum_j x_j^4`; violations raise :class:`ValueError`. To train :math:`\theta` by SVI use
    :meth:`from_unconstrained`, which maps any real matrix to a valid :math:`\theta`.

    **Derivatives.** With :math:`M = T + T^\top` (off-diagonal :math:`\theta_{ij}`, diagonal
    :math:`2\theta_{jj}`), :math:`\log q = \tfrac12 y^\top M y`, so

    .. math::
        a_k = 2 x_k (M y)_k = 2 x_k \sum_j M_{kj} x_j^2, \qquad
        b_k = \partial a_k / \partial x_k = 2 (M y)_k + 4 M_{kk} x_k^2
            = 2 (M y)_k + 8\theta_{kk} x_k^2

    (for ``d = 1``: :math:`a = 4\theta x^3`, :math:`b = 12\theta x^2`).

    **Sampling.** :meth:`sample` runs independent systematic-scan Gibbs chains, one per draw,
    vectorised over chains. The conditional of :math:`x_k` given the rest is
    :math:`\propto \exp(\theta_{kk} x_k^4 + \beta_k x_k^2)` with
    :math:`\beta_k = \sum_{j \ne k} M_{kj} x_j^2 \le 0`; it is sampled exactly by rejection
    (acceptance rate at least 0.79, see :func:`_quartic_conditional`). Coordinates that do not
    interact (:math:`\theta_{ij} = 0`) are conditionally independent, so each colour class of
    the interaction graph (:func:`~pyro_msm.distributions.gibbs.colour_classes`) is drawn in one
    vectorised block update; a sparse graph needs a few blocks per sweep instead of ``d``.
    Chains start from the model without interactions, :math:`\prod_j \exp(\theta_{jj} x_j^4)`,
    which is overdispersed relative to the target (interactions only shrink), and run
    ``num_sweeps`` sweeps; the last state is returned, so draws are independent across chains
    and approximate only through the finite burn-in.

    :param theta: :math:`\theta`, shape ``batch + (d, d)``, symmetric or upper triangular.
    :param validate: check the integrability conditions (set False only for parameters valid by
        construction; an invalid :math:`\theta` then silently defines no distribution).
    :param num_sweeps: Gibbs sweeps per call of :meth:`sample`.
    :param num_proposals: rejection proposals per coordinate update and round.

    References: Givens, Liu & Reeve, Score Matching with Missing Data, ICML 2025, experiments;
    Hyvarinen, Estimation of non-normalized statistical models by score matching, JMLR 2005.
    """

    arg_constraints: dict = {}

    def __init__(
        self,
        theta: Tensor,
        *,
        validate: bool = True,
        num_sweeps: int = 100,
        num_proposals: int = 2,
    ) -> None:
        if not isinstance(theta, Tensor) or theta.dim() < 2 or theta.shape[-1] != theta.shape[-2]:
            shape = tuple(theta.shape) if isinstance(theta, Tensor) else type(theta).__name__
            raise ValueError(
                f"SquaredInteractionEnergy: theta must be a tensor of shape batch + (d, d), "
                f"got {shape}"
            )
        if not theta.is_floating_point():
            raise ValueError("SquaredInteractionEnergy: theta must be a floating-point tensor")
        if int(num_sweeps) < 0 or int(num_proposals) < 1:
            raise ValueError("num_sweeps must be >= 0 and num_proposals >= 1")
        if validate:
            self.check_theta(theta)
        d = theta.shape[-1]
        self.theta = unexpand(theta).triu().expand(theta.shape)  # keeps a plate's view cheap
        self.validate = bool(validate)
        self.num_sweeps = int(num_sweeps)
        self.num_proposals = int(num_proposals)
        super().__init__((d,), theta.shape[:-2])

    # -- parameters ----------------------------------------------------------------------------
    @staticmethod
    def check_theta(theta: Tensor) -> None:
        r"""Raise :class:`ValueError` unless :math:`\theta` is symmetric or upper triangular,
        finite, with a strictly negative diagonal and non-positive interactions."""
        t = theta.detach()
        if not bool(torch.isfinite(t).all()):
            raise ValueError("SquaredInteractionEnergy: theta has non-finite entries")
        lower = t.tril(-1)
        scale = t.abs().amax(dim=(-2, -1), keepdim=True).clamp(min=1.0)
        tol = 64 * torch.finfo(t.dtype).eps * scale
        symmetric = bool(((t - t.mT).abs() <= tol).all())
        if not symmetric and bool((lower != 0).any()):
            raise ValueError(
                "SquaredInteractionEnergy: theta must be symmetric or upper triangular (each "
                "pair i<j enters once, through the upper triangle)"
            )
        diag = torch.diagonal(t, dim1=-2, dim2=-1)
        if not bool((diag < 0).all()):
            raise ValueError(
                "SquaredInteractionEnergy: the diagonal of theta must be strictly negative "
                f"(the quartic terms theta_jj x_j^4 make q integrable); got max "
                f"{float(diag.max()):.4g}. Use SquaredInteractionEnergy.from_unconstrained to "
                "train theta without constraints."
            )
        upper = t.triu(1)
        if not bool((upper <= 0).all()):
            raise ValueError(
                "SquaredInteractionEnergy: interactions theta_ij (i<j) must be <= 0, a sufficient "
                f"condition for integrability; got max {float(upper.max()):.4g}"
            )

    @classmethod
    def from_unconstrained(
        cls,
        raw: Tensor,
        *,
        edges: Tensor | None = None,
        min_diagonal: float = 1e-6,
        **kwargs,
    ) -> SquaredInteractionEnergy:
        r"""A valid model from an unconstrained matrix, for SVI
        (``SquaredInteractionEnergy.from_unconstrained(pyro.param("raw", ...))``).

        :math:`\theta_{jj} = -(\mathrm{softplus}(r_{jj}) + \epsilon)` and
        :math:`\theta_{ij} = -\mathrm{softplus}(r_{ij})` for :math:`i < j` (lower triangle of
        ``raw`` unused), so every real ``raw`` gives an integrable model; :math:`\epsilon`
        keeps the diagonal strictly negative when the softplus underflows.

        :param raw: unconstrained ``batch + (d, d)``.
        :param edges: optional boolean ``(d, d)`` (read on the upper triangle): interactions
            outside it are fixed at zero (a known graph).
        :param min_diagonal: :math:`\epsilon > 0`.
        :param kwargs: passed to the constructor.
        """
        if not min_diagonal > 0:
            raise ValueError(f"min_diagonal must be positive, got {min_diagonal}")
        return cls(cls.constrain(raw, edges=edges, min_diagonal=min_diagonal), **kwargs)

    @staticmethod
    def constrain(
        raw: Tensor, *, edges: Tensor | None = None, min_diagonal: float = 1e-6
    ) -> Tensor:
        """The upper-triangular :math:`\\theta` of :meth:`from_unconstrained`."""
        off = -F.softplus(raw).triu(1)
        if edges is not None:
            off = off * edges.to(device=raw.device).triu(1).to(raw.dtype)
        diag = -(F.softplus(torch.diagonal(raw, dim1=-2, dim2=-1)) + min_diagonal)
        return off + torch.diag_embed(diag)

    @staticmethod
    def unconstrain(theta: Tensor, *, min_diagonal: float = 1e-6) -> Tensor:
        """An inverse of :meth:`constrain` (for initialising ``raw`` from a valid
        :math:`\\theta`); zero interactions map to a large negative number."""
        tiny = torch.finfo(theta.dtype).tiny

        def inv_softplus(v: Tensor) -> Tensor:
            v = v.clamp(min=tiny)
            return torch.where(v > 20, v, torch.log(torch.expm1(v)))

        t = theta.triu()
        off = inv_softplus(-t).triu(1)
        diag = inv_softplus(-torch.diagonal(t, dim1=-2, dim2=-1) - min_diagonal)
        return off + torch.diag_embed(diag)

    @staticmethod
    def random_theta(
        d: int,
        *,
        edge_prob: float = 0.1,
        diagonal: tuple[float, float] = (0.5, 1.0),
        interaction: tuple[float, float] = (0.1, 0.5),
        seed: int | None = 0,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        r"""A random valid :math:`\theta` for the paper's experiment (``d`` from 10 to 50).

        An Erdos-Renyi interaction graph: each pair :math:`i<j` is an edge with probability
        ``edge_prob``, with :math:`\theta_{ij} = -U(\text{interaction})`; non-edges are zero and
        :math:`\theta_{jj} = -U(\text{diagonal})`. The paper does not print its generator; these
        defaults are ours (a sparse graph, interactions weaker than the quartic terms).

        :returns: a symmetric ``(d, d)`` tensor (read through its upper triangle).
        """
        if int(d) < 1 or not 0 <= edge_prob <= 1:
            raise ValueError("random_theta needs d >= 1 and edge_prob in [0, 1]")
        lo, hi = diagonal
        if not 0 < lo <= hi:
            raise ValueError(f"diagonal range must satisfy 0 < low <= high, got {diagonal}")
        wlo, whi = interaction
        if not 0 <= wlo <= whi:
            raise ValueError(f"interaction range must satisfy 0 <= low <= high, got {interaction}")
        g = _generator(seed)
        d = int(d)
        d64 = torch.float64
        edge = (torch.rand(d, d, generator=g, dtype=d64) < edge_prob).triu(1)
        weight = wlo + (whi - wlo) * torch.rand(d, d, generator=g, dtype=d64)
        off = -(weight * edge).triu(1)
        diag = -(lo + (hi - lo) * torch.rand(d, generator=g, dtype=d64))
        theta = off + off.T + torch.diag(diag)
        return theta.to(dtype or torch.get_default_dtype())

    @classmethod
    def random(cls, d: int, *, seed: int | None = 0, **kwargs) -> SquaredInteractionEnergy:
        """A model with :meth:`random_theta` (``kwargs`` go to :meth:`random_theta` if they are
        its options, otherwise to the constructor)."""
        names = ("edge_prob", "diagonal", "interaction", "dtype")
        theta_kwargs = {k: kwargs.pop(k) for k in names if k in kwargs}
        return cls(cls.random_theta(d, seed=seed, **theta_kwargs), **kwargs)

    @property
    def coupling(self) -> Tensor:
        r""":math:`M = T + T^\top`: :math:`\log q(x) = \tfrac12 y^\top M y`, :math:`y = x^2`."""
        base = unexpand(self.theta)
        return (base + base.mT).expand(self.theta.shape)

    # -- the model -----------------------------------------------------------------------------
    def energy(self, x: Tensor) -> Tensor:
        y = x * x
        return -(y * vecmat(y, self.theta)).sum(-1)

    def _my(self, y: Tensor) -> Tensor:
        return vecmat(y, self.coupling)  # M symmetric: (M y)_k

    def score(self, x: Tensor) -> Tensor:
        return 2 * x * self._my(x * x)

    def score_and_diag_jacobian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = x * x
        my = self._my(y)
        diag = torch.diagonal(self.theta, dim1=-2, dim2=-1)
        return 2 * x * my, 2 * my + 8 * diag * y

    # -- sampling ------------------------------------------------------------------------------
    def _gibbs(
        self,
        sample_shape: torch.Size,
        num_sweeps: int,
        generator: torch.Generator | None,
    ) -> Tensor:
        theta = self.theta.detach()
        m = theta + theta.mT
        d = self.event_shape[0]
        shape = self._extended_shape(sample_shape)
        alpha = -torch.diagonal(theta, dim1=-2, dim2=-1)  # batch + (d,), > 0
        scale = alpha.rsqrt().sqrt()  # alpha^(-1/4)
        max_rounds = 50
        # start: independent coordinates, x_j ~ exp(theta_jj x_j^4) exactly
        t0, _ = _quartic_conditional(
            torch.zeros(shape, dtype=theta.dtype, device=theta.device),
            self.num_proposals,
            max_rounds,
            generator,
        )
        x = (t0 * scale).contiguous()
        if num_sweeps == 0:
            return x
        y = x * x
        interacts = (m != 0).reshape((-1, d, d)).any(0)
        blocks = [idx.to(x.device) for idx in colour_classes(interacts)]
        mdiag = torch.diagonal(m, dim1=-2, dim2=-1)
        root_alpha = alpha.rsqrt()
        for _ in range(num_sweeps):
            for idx in blocks:  # systematic scan over blocks of non-interacting coordinates
                my = (y.unsqueeze(-2) @ m).squeeze(-2)
                beta = my[..., idx] - mdiag[..., idx] * y[..., idx]
                gamma = beta * root_alpha[..., idx]
                t, done = _quartic_conditional(gamma, self.num_proposals, max_rounds, generator)
                # a failed update keeps x_k: the failure probability depends on the other
                # coordinates only, so the kernel still leaves the conditional invariant
                xk = torch.where(done, t * scale[..., idx], x[..., idx])
                x[..., idx] = xk
                y[..., idx] = xk * xk
        return x

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Approximate draws by exact-conditional Gibbs sampling (``num_sweeps`` sweeps, one
        independent chain per draw); no gradient flows to :math:`\\theta`."""
        with torch.no_grad():
            return self._gibbs(torch.Size(sample_shape), self.num_sweeps, None)

    def simulate(self, n: int, seed: int | None = 0, *, num_sweeps: int | None = None) -> Tensor:
        """``n`` reproducible draws, shape ``(n,) + batch + (d,)``, from a seeded generator.

        :param n: number of draws (independent chains).
        :param seed: seed of a private :class:`torch.Generator` (global RNG untouched).
        :param num_sweeps: Gibbs sweeps (default ``self.num_sweeps``).
        """
        sweeps = self.num_sweeps if num_sweeps is None else int(num_sweeps)
        with torch.no_grad():
            return self._gibbs(torch.Size((int(n),)), sweeps, _generator(seed))

    def expand(self, batch_shape, _instance=None) -> SquaredInteractionEnergy:
        batch_shape = torch.Size(batch_shape)
        d = self.event_shape[0]
        return SquaredInteractionEnergy(
            self.theta.expand(batch_shape + (d, d)),
            validate=False,  # already validated (or deliberately not) at construction
            num_sweeps=self.num_sweeps,
            num_proposals=self.num_proposals,
        )

"""The Gaussian energy: the family with closed-form scores, samples and marginals."""

from __future__ import annotations

import torch
from pyro.distributions import MultivariateNormal, constraints
from torch import Tensor

from .energy import Energy, unexpand, vecmat

__all__ = ["GaussianEnergy"]


def _cholesky(precision: Tensor, name: str = "precision") -> Tensor:
    """The Cholesky factor of a precision (broadcast batch views factorised once), or a
    ``ValueError`` saying what is wrong and what to do."""
    base = unexpand(precision)
    if not bool(base.isfinite().all()):
        raise ValueError(f"GaussianEnergy: {name} has NaN or infinite entries")
    chol, info = torch.linalg.cholesky_ex(base)
    if bool((info > 0).any()):
        raise ValueError(
            f"GaussianEnergy: the precision (from {name}) is not positive definite, so the "
            "energy is not a density (its losses would be meaningless and sampling fails). "
            "Pass a symmetric positive-definite matrix; to train one, use "
            "precision_tril=pyro.param(..., constraint=constraints.lower_cholesky) or "
            "pyro.param(..., constraint=constraints.positive_definite)"
        )
    return chol.expand(precision.shape)


def _shared(t: Tensor, event_dims: int) -> Tensor | None:
    """``t`` without batch dimensions if every batch entry is the same view (size 1 or stride
    0), else None."""
    while t.dim() > event_dims and (t.shape[0] == 1 or t.stride(0) == 0):
        t = t[0]
    return t if t.dim() == event_dims else None


class GaussianEnergy(Energy):
    r"""Gaussian energy :math:`E(x) = \tfrac12 (x-\mu)^\top P (x-\mu)` with precision :math:`P`.

    Give exactly one of ``precision`` (used through its symmetric part, which is all the energy
    depends on) or ``precision_tril``, a lower-triangular :math:`L` with :math:`P = L L^\top`;
    with a positive diagonal (e.g. ``pyro.param(..., constraint=constraints.lower_cholesky)``)
    the latter keeps :math:`P` positive definite during training. Scores, the diagonal of their
    Jacobian and samples are exact.

    A precision that is not positive definite (e.g. ``-I``) is not a density: the losses would
    return finite numbers for it and sampling would fail deep inside torch. A constant
    precision is therefore checked at construction (one Cholesky factorisation) and refused
    with a ``ValueError``. A *trained* precision (one that requires a gradient) is not checked,
    so a fit pays nothing per step: keep it positive definite by its parametrisation, either
    ``precision_tril`` from ``pyro.param(..., constraint=constraints.lower_cholesky)`` or
    ``pyro.param(..., constraint=constraints.positive_definite)``. :meth:`sample` and
    :attr:`covariance_matrix` refuse an indefinite precision with the same clear error.

    :param loc: mean :math:`\mu`, shape ``batch + (d,)``.
    :param precision: precision matrix, shape ``batch + (d, d)``.
    :param precision_tril: Cholesky factor of the precision, shape ``batch + (d, d)``.
    :param validate_args: check that the precision is positive definite; default: when it
        does not require a gradient.
    :raises ValueError: for a precision that is not finite, symmetric-positive-definite, or
        of the wrong shape.
    """

    arg_constraints = {
        "loc": constraints.real_vector,
        "precision": constraints.positive_definite,
    }

    def __init__(
        self,
        loc: Tensor,
        precision: Tensor | None = None,
        *,
        precision_tril: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if (precision is None) == (precision_tril is None):
            raise ValueError("GaussianEnergy needs exactly one of precision or precision_tril")
        if not isinstance(loc, Tensor) or loc.dim() < 1:
            raise ValueError("GaussianEnergy: loc must be a tensor of shape batch + (d,)")
        if precision_tril is not None:
            precision_tril = precision_tril.tril()
            precision = precision_tril @ precision_tril.mT
        assert precision is not None
        d = loc.shape[-1]
        if precision.shape[-2:] != (d, d):
            raise ValueError(
                f"GaussianEnergy: precision has shape {tuple(precision.shape)}, "
                f"expected (..., {d}, {d})"
            )
        # symmetrise the distinct matrices only: Pyro's plates expand the precision to
        # (particles, rows, d, d) views that must stay views (measured: 8 constructions per SVI
        # step of the demo's variational fit took 1.8 ms each when they materialised)
        distinct = unexpand(precision)
        precision = (0.5 * (distinct + distinct.mT)).expand(precision.shape)
        if validate_args is None:
            validate_args = not precision.requires_grad
        if validate_args:
            _cholesky(precision, "precision_tril" if precision_tril is not None else "precision")
        batch_shape = torch.broadcast_shapes(loc.shape[:-1], precision.shape[:-2])
        self.loc = loc.expand(batch_shape + (d,))
        self.precision = precision.expand(batch_shape + (d, d))
        super().__init__((d,), batch_shape)

    @property
    def covariance_matrix(self) -> Tensor:
        """:math:`P^{-1}`."""
        return torch.cholesky_inverse(_cholesky(self.precision))

    @property
    def mean(self) -> Tensor:
        return self.loc

    def energy(self, x: Tensor) -> Tensor:
        diff = x - self.loc
        return 0.5 * (diff * vecmat(diff, self.precision)).sum(-1)

    def score(self, x: Tensor) -> Tensor:
        return -vecmat(x - self.loc, self.precision)

    def score_and_diag_jacobian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a = self.score(x)
        b = -torch.diagonal(self.precision, dim1=-2, dim2=-1)
        return a, b.expand(a.shape)

    def hessian_vector_product(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """The score and :math:`-P v` (the Hessian of ``log q`` is :math:`-P` everywhere)."""
        return self.score(x), -vecmat(v, self.precision)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Exact samples from :math:`N(\\mu, P^{-1})`."""
        with torch.no_grad():
            _cholesky(self.precision)
            mvn = MultivariateNormal(self.loc, precision_matrix=self.precision, validate_args=False)
            return mvn.sample(torch.Size(sample_shape))

    def row_distribution(self) -> GaussianEnergy | None:
        """The unexpanded Gaussian when the mean and precision are shared by all rows."""
        if not self.batch_shape:
            return self
        loc, precision = _shared(self.loc, 1), _shared(self.precision, 2)
        if loc is None or precision is None:
            return None
        return GaussianEnergy(loc, precision)

    def expand(self, batch_shape, _instance=None) -> GaussianEnergy:
        batch_shape = torch.Size(batch_shape)
        d = self.event_shape[0]
        return GaussianEnergy(
            self.loc.expand(batch_shape + (d,)),
            self.precision.expand(batch_shape + (d, d)),
            validate_args=False,
        )

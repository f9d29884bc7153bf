r"""Simulated tables with a known truth: a Gaussian :math:`N(\mu, P^{-1})` with a chosen
condition number, complete draws from it and a missingness mask.

Recipe (:func:`random_precision`, :func:`simulate_gaussian`), all from one seeded
:class:`torch.Generator`:

1. a Haar-random rotation :math:`U` (QR of a standard normal matrix, signs fixed by the
   diagonal of ``R``);
2. eigenvalues spaced geometrically between :math:`\kappa^{-1/2}` and :math:`\kappa^{1/2}`, so
   the condition number of :math:`P = U \operatorname{diag}(\lambda) U^\top` is exactly
   :math:`\kappa` (``condition_number``) and its log-eigenvalues are centred on 0 (neither
   :math:`P` nor :math:`\Sigma = P^{-1}` dominates in scale);
3. a mean :math:`\mu \sim N(0, \sigma_\mu^2 I)` (``loc_scale``);
4. ``n`` rows :math:`x = \mu + L^{-\top} z` with :math:`L L^\top = P`, :math:`z \sim N(0, I)`;
5. a mask from :mod:`pyro_msm.missingness` (``"mcar"``, ``"mar"`` or ``"mnar"``).

The result keeps the complete table beside the masked one, so a fit can be scored against the
truth and imputations against the hidden values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..missingness import MaskedTable, mar_mask, mcar_mask, mnar_mask

__all__ = ["MECHANISMS", "GaussianProblem", "random_precision", "simulate_gaussian"]

#: Missingness mechanisms understood by :func:`simulate_gaussian`.
MECHANISMS = ("mcar", "mar", "mnar")


@dataclass(frozen=True)
class GaussianProblem(MaskedTable):
    """A Gaussian truth, complete draws from it and a missingness mask.

    :ivar x: complete data ``(n, d)`` (before masking).
    :ivar mask: boolean ``(n, d)``, True where observed.
    :ivar loc: true mean ``(d,)``.
    :ivar precision: true precision ``(d, d)``.
    :ivar mechanism: ``"mcar"``, ``"mar"`` or ``"mnar"``.
    :ivar missing_rate: the requested missing rate.
    :ivar seed: the seed everything was drawn from.
    :ivar condition_number: condition number of ``precision``.
    """

    x: Tensor
    mask: Tensor
    loc: Tensor
    precision: Tensor
    mechanism: str
    missing_rate: float
    seed: int
    condition_number: float

    @property
    def covariance(self) -> Tensor:
        """The true covariance :math:`P^{-1}`."""
        return torch.cholesky_inverse(torch.linalg.cholesky(self.precision))

    def describe(self) -> str:
        """One line naming the setting."""
        return (
            f"d={self.d}, n={self.n}, {self.mechanism.upper()} {self.missing_rate:.0%} missing "
            f"(realised {self.realised_missing_rate:.1%}), condition number "
            f"{self.condition_number:g}, seed {self.seed}"
        )


def _haar_rotation(d: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    a = torch.randn(d, d, generator=generator, dtype=dtype)
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(-2)


def random_precision(
    d: int,
    *,
    condition_number: float = 10.0,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    r"""A random positive-definite precision matrix with an exact condition number.

    :math:`P = U \operatorname{diag}(\lambda) U^\top` with :math:`U` Haar-random and
    :math:`\lambda` geometric from :math:`\kappa^{-1/2}` to :math:`\kappa^{1/2}`.

    :param d: dimension (at least 1).
    :param condition_number: :math:`\kappa \ge 1`.
    :param seed: seed of a fresh generator (ignored when ``generator`` is given).
    :param generator: random generator to draw from.
    :param dtype: floating dtype of the result.
    :returns: ``(d, d)`` symmetric positive-definite matrix.
    :raises ValueError: for ``d < 1`` or ``condition_number < 1``.
    """
    if int(d) < 1:
        raise ValueError(f"d must be at least 1, got {d}")
    if not condition_number >= 1.0:
        raise ValueError(f"condition_number must be at least 1, got {condition_number}")
    if generator is None:
        generator = torch.Generator().manual_seed(int(seed or 0))
    half = 0.5 * math.log(condition_number)
    eigenvalues = torch.exp(torch.linspace(-half, half, int(d), dtype=dtype))
    u = _haar_rotation(int(d), generator, dtype)
    precision = (u * eigenvalues) @ u.T
    return 0.5 * (precision + precision.T)


def simulate_gaussian(
    d: int = 10,
    n: int = 1000,
    missing_rate: float = 0.3,
    mechanism: str = "mcar",
    *,
    seed: int = 0,
    condition_number: float = 10.0,
    loc_scale: float = 1.0,
    dtype: torch.dtype | None = None,
) -> GaussianProblem:
    """Simulate a masked Gaussian data set with a known precision (recipe in the module doc).

    :param d: dimension (at least 1; ``"mar"`` needs at least 2 when ``missing_rate > 0``).
    :param n: number of rows (at least 1).
    :param missing_rate: expected fraction of missing entries, in ``[0, 1)``.
    :param mechanism: ``"mcar"`` (:func:`~pyro_msm.missingness.mcar_mask`), ``"mar"``
        (:func:`~pyro_msm.missingness.mar_mask`, the first ``max(1, d // 4)`` columns always
        observed) or ``"mnar"`` (:func:`~pyro_msm.missingness.mnar_mask`, self-masking).
    :param seed: seeds the precision, the mean, the data and the mask.
    :param condition_number: condition number of the true precision.
    :param loc_scale: standard deviation of the true mean's entries (0 for a centred truth).
    :param dtype: dtype of the data (default: torch's default dtype); the truth is float64.
    :returns: the :class:`GaussianProblem`.
    :raises ValueError: for invalid sizes, rates or mechanisms.
    """
    if int(n) < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if mechanism not in MECHANISMS:
        raise ValueError(f"unknown mechanism {mechanism!r}; choose one of {MECHANISMS}")
    if not 0.0 <= float(missing_rate) < 1.0:
        raise ValueError(f"missing_rate must be in [0, 1), got {missing_rate}")
    if loc_scale < 0:
        raise ValueError(f"loc_scale must be non-negative, got {loc_scale}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    gen = torch.Generator().manual_seed(int(seed))
    precision = random_precision(int(d), condition_number=condition_number, generator=gen)
    loc = loc_scale * torch.randn(int(d), generator=gen, dtype=torch.float64)
    z = torch.randn(int(n), int(d), generator=gen, dtype=torch.float64)
    chol = torch.linalg.cholesky(precision)
    # each row is L^{-T} z: its covariance is L^{-T} L^{-1} = (L L^T)^{-1} = P^{-1}
    x64 = loc + torch.linalg.solve_triangular(chol.T, z.T, upper=True).T
    x = x64.to(dtype)
    if mechanism == "mcar":
        mask = mcar_mask(x.shape, missing_rate, generator=gen)
    elif mechanism == "mar":
        mask = mar_mask(x, missing_rate, generator=gen)
    else:
        mask = mnar_mask(x, missing_rate, generator=gen)
    return GaussianProblem(
        x=x,
        mask=mask,
        loc=loc,
        precision=precision,
        mechanism=mechanism,
        missing_rate=float(missing_rate),
        seed=int(seed),
        condition_number=float(condition_number),
    )

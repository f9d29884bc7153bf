r"""A guide made of the conditionals of one learned joint Gaussian."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam
from torch import Tensor

from ..infer.gaussian import (
    conditional_gaussian,
    conditional_gaussian_terms,
    pairwise_moments,
)
from ..infer.health import FitHealth
from .base import MaskedSiteGuide, MissingBlockDistribution

__all__ = ["GaussianConditionalGuide", "MissingBlockGaussian"]


class MissingBlockGaussian(MissingBlockDistribution):
    r"""The Gaussian conditional :math:`N(x_u;\ \bar x_u, \Lambda_{uu}^{-1})` of each row's missing
    block, presented coordinate by coordinate so that its density can be restricted to the
    missing coordinates (the same convention as :class:`~pyro_msm.guides.MissingBlockFlow`).

    Batch shape ``batch + (d,)``, event shape ``()``. A draw has the rows' shape and equals the
    data on observed coordinates. ``log_prob`` returns the per-coordinate terms of
    :func:`~pyro_msm.infer.gaussian.conditional_gaussian_terms` (zero on observed coordinates),
    whose sum over a row is the log density of its missing block. ``rsample`` is
    reparameterised: :math:`x_u = \bar x_u + L^{-\top}\varepsilon_u` with
    :math:`L L^\top = \Lambda_{uu}`.

    :param mean: ``batch + (d,)`` conditional means (the data on observed coordinates).
    :param chol: ``batch + (d, d)`` lower Cholesky factors of the restricted precisions.
    :param observed_mask: boolean ``batch + (d,)``, True where observed.
    """

    def __init__(
        self,
        mean: Tensor,
        chol: Tensor,
        observed_mask: Tensor,
        validate_args: bool | None = None,
    ) -> None:
        batch_shape = torch.broadcast_shapes(mean.shape, observed_mask.shape, chol.shape[:-1])
        self.loc = mean.expand(batch_shape)
        self.chol = chol.expand(batch_shape + batch_shape[-1:])
        self.observed_mask = observed_mask.expand(batch_shape)
        super().__init__(batch_shape, torch.Size(), validate_args=False)

    def _expand_to(self, batch_shape: torch.Size) -> MissingBlockGaussian:
        return MissingBlockGaussian(
            self.loc.expand(batch_shape),
            self.chol.expand(batch_shape + batch_shape[-1:]),
            self.observed_mask.expand(batch_shape),
        )

    @property
    def mean(self) -> Tensor:
        """The conditional means (the data on observed coordinates)."""
        return self.loc

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        missing = (~self.observed_mask).to(self.loc.dtype)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device) * missing
        chol = self.chol.expand(shape + shape[-1:])
        y = torch.linalg.solve_triangular(chol.mT, eps.unsqueeze(-1), upper=True).squeeze(-1)
        return self.loc + y

    def log_prob(self, value: Tensor) -> Tensor:
        """Per-coordinate terms (zero at observed coordinates) whose sum over a row is the log
        density of its missing block; shape of ``value`` broadcast with the batch shape."""
        return conditional_gaussian_terms(value, self.loc, self.chol, self.observed_mask)


class GaussianConditionalGuide(MaskedSiteGuide):
    r"""Guide :math:`q_\phi(x_u \mid x_o)`: the exact conditionals of one learned joint Gaussian
    :math:`N(\mu_\phi, \Lambda_\phi^{-1})`.

    For a row with observed set :math:`o` and missing set :math:`u`,

    .. math::
        q_\phi(x_u \mid x_o) = N\big(x_u;\ \mu_u - \Lambda_{uu}^{-1}\Lambda_{uo}(x_o - \mu_o),\
        \Lambda_{uu}^{-1}\big),

    with full covariance over the missing block, every missing pattern served by the same
    :math:`d + d(d+1)/2` parameters (:math:`\mu` and the Cholesky factor
    :math:`\Lambda = L L^\top`, kept positive definite by Pyro's ``lower_cholesky``
    constraint). Its density is that of the missing coordinates only (observed entries of a draw
    are the data), so :class:`~pyro_msm.infer.MissingScoreMatching`'s reverse KL involves no
    observed coordinate.

    When to use it: for a Gaussian energy the model's own conditionals are in this family, so
    the reverse KL is minimised at the model and the variational estimator becomes exact up to
    optimisation lag; for other energies it is a cheap, stable approximation (conditionals that
    are linear in :math:`x_o`). The paper's :class:`~pyro_msm.guides.AmortizedNormal` must
    *learn* the linear map :math:`x_o \mapsto \bar x_u` for every missing pattern with an MLP;
    where that map is inaccurate the variational loss can run away (the model explains observed
    coordinates by the guide's imputations; ``docs/benchmarks.md``, d=20 at 40% MCAR).

    On its first call the guide initialises :math:`(\mu, \Lambda)` by moment matching the
    batch's observed entries (pairwise-available covariance projected to positive definite), or
    from ``init_loc`` / ``init_precision`` when given. Parameters live in Pyro's store as
    ``GaussianConditionalGuide.loc`` and ``GaussianConditionalGuide.precision_tril``.

    :param model: the model the guide is for; it is called with the guide's arguments.
    :param site: name of the :func:`~pyro_msm.observe` site (default: the model's only one).
    :param init_loc: ``(d,)`` initial mean (default: moment matched on the first batch).
    :param init_precision: ``(d, d)`` initial precision, positive definite (default: moment
        matched on the first batch).
    :raises ValueError: if ``init_precision`` is not a positive-definite square matrix, or (on a
        call) if the initial values do not match the rows' dimension.
    """

    def __init__(
        self,
        model: Callable,
        *,
        site: str | None = None,
        init_loc: Tensor | None = None,
        init_precision: Tensor | None = None,
    ) -> None:
        super().__init__(model, site)
        if init_precision is not None:
            init_precision = torch.as_tensor(init_precision)
            if init_precision.dim() != 2 or init_precision.shape[0] != init_precision.shape[1]:
                raise ValueError(
                    "GaussianConditionalGuide: init_precision must be a square (d, d) matrix, "
                    f"got shape {tuple(init_precision.shape)}"
                )
            if torch.linalg.cholesky_ex(init_precision)[1] != 0:
                raise ValueError(
                    "GaussianConditionalGuide: init_precision is not positive definite"
                )
        if init_loc is not None:
            init_loc = torch.as_tensor(init_loc)
            if init_loc.dim() != 1:
                raise ValueError(
                    f"GaussianConditionalGuide: init_loc must be (d,), got {tuple(init_loc.shape)}"
                )
        self._init = (init_loc, init_precision)

    def _setup(self, data: Tensor, observed_mask: Tensor) -> None:
        """Create ``loc`` and ``precision_tril`` on the first call, on the data's device/dtype."""
        d = data.shape[-1]
        if "loc" in self._pyro_params:
            built = self.loc.shape[-1]
            if built != d:
                raise ValueError(
                    f"GaussianConditionalGuide: built for rows of {built} coordinates, got {d}"
                )
            return
        rows = data.reshape(-1, d)
        mask = observed_mask.expand(data.shape).reshape(-1, d)
        FitHealth().check_data("GaussianConditionalGuide data", rows.detach(), mask)
        loc, covariance = pairwise_moments(rows.detach(), mask)
        init_loc, init_precision = self._init
        if init_loc is not None:
            loc = init_loc
        if init_precision is not None:
            precision = init_precision
        else:
            precision = torch.cholesky_inverse(torch.linalg.cholesky(covariance))
        for label, value in (("init_loc", loc), ("init_precision", precision)):
            if value.shape[-1] != d:
                raise ValueError(
                    f"GaussianConditionalGuide: {label} has {value.shape[-1]} coordinates, "
                    f"the rows have {d}"
                )
        kw = {"dtype": data.dtype, "device": data.device}
        self.loc = PyroParam(loc.detach().to(**kw).clone())
        tril = torch.linalg.cholesky(0.5 * (precision + precision.mT)).detach().to(**kw)
        self.precision_tril = PyroParam(tril, constraint=constraints.lower_cholesky)

    def distribution(self, data: Tensor, observed_mask: Tensor) -> MissingBlockGaussian:
        r"""The conditionals :math:`q_\phi(x_u \mid x_o)` of given rows (batch shape of
        ``data``).

        :param data: rows ``(..., d)``; entries at missing coordinates are ignored.
        :param observed_mask: boolean, shape of ``data``, True where observed.
        :raises RuntimeError: before the guide's first call (parameters are created lazily).
        """
        if "loc" not in self._pyro_params:
            raise RuntimeError(
                "GaussianConditionalGuide: call the guide once to create its parameters"
            )
        tril = self.precision_tril
        mean, chol = conditional_gaussian(
            torch.nan_to_num(data), observed_mask, self.loc, tril @ tril.mT
        )
        return MissingBlockGaussian(mean, chol, observed_mask)

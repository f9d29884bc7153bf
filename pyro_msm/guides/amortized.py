"""The amortised Gaussian conditional :math:`q_\\phi(x_u \\mid x_o)` of Givens, Liu & Reeve."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam
from torch import Tensor, nn

from .base import MaskedSiteGuide

__all__ = ["AmortizedNormal", "no_guide"]


def no_guide(*args: Any, **kwargs: Any) -> None:
    """An empty guide: samples nothing and has no parameters.

    For estimators of :class:`~pyro_msm.infer.MissingScoreMatching` that do not use a guide
    (``"iw"``, ``"zeroed"``, ``"mean_impute"``, ``"complete_case"``, ``"closed_form"``), where
    :class:`~pyro.infer.SVI` still asks for one::

        SVI(model, no_guide, pyro.optim.Adam({"lr": 0.01}), MissingScoreMatching("iw"))

    Any arguments are accepted and ignored.
    """
    return None


class AmortizedNormal(MaskedSiteGuide):
    r"""Amortised Gaussian guide :math:`q_\phi(x_u \mid x_o)` for the missing coordinates of a
    :func:`~pyro_msm.observe` site (the variational family of Marg-Var).

    For a row with zero-filled values :math:`\tilde x = x \odot m` and mask :math:`m`
    (1 = observed), the guide is

    .. math::
        q_\phi(x_u \mid x_o) = \prod_{j \in u} \mathcal N\big(x_j;\ \mu_\phi(\tilde x)_j,\
        \sigma_j^2\big),

    a diagonal Gaussian over the **missing coordinates only**, with mean
    :math:`\mu_\phi = \mathrm{MLP}(\tilde x)` (``d -> 200 -> 200 -> d`` by default, the
    paper's architecture, with ReLU activations; ``[x * m, m] -> ... -> d`` with
    ``condition_on_mask=True``) and a learnable constant per-coordinate standard deviation
    :math:`\sigma` (the paper found an input-dependent variance unstable).

    The guide samples ``{site}_unobserved`` from
    ``Normal(mean, scale).mask(missing).to_event(1)``: a draw has the row's full shape, but its
    log density counts only missing coordinates. Outputs at observed coordinates are ignored:
    :func:`~pyro_msm.observe` replaces them by the data, and
    :class:`~pyro_msm.infer.MissingScoreMatching` restricts the guide's density to the missing
    coordinates, so they receive no gradient. Without that restriction the entropy of the
    observed entries, which the model's density does not see, would grow without bound under
    a KL objective (PYRO_NOTES item 4).

    On each call the guide reads the current batch's data, mask and plates (with the subsample
    indices of subsampled plates) from the model's trace that
    :class:`~pyro_msm.infer.MissingScoreMatching` provides for the step
    (:func:`~pyro_msm.infer.sites.provided_model_trace`), or, called on its own, from a run of
    the model with every Pyro effect hidden (nothing is sampled, and the model's parameters
    stay out of the guide's trace); it then
    re-enters the same plates with the same indices, so the model replays consistently against
    the guide's trace. This also works inside the vectorised particle plate of
    :class:`~pyro_msm.infer.MissingScoreMatching`, where draws have shape
    ``(r,) + data.shape``.

    Parameters are created on the first call, on the data's device and with its dtype, and live
    in Pyro's parameter store as ``AmortizedNormal.net$$$...`` and ``AmortizedNormal.scale``
    (``AmortizedNormal.{site}.net$$$...`` and so on when ``site`` is given). Guides for several
    data sites of one model can be called in turn from one guide function only if the sites
    share no plate: each guide re-enters its site's plates, and Pyro's trace refuses a plate
    entered twice.

    Example::

        def model(x):
            loc = pyro.param("loc", torch.zeros(d))
            with pyro.plate("rows", x.shape[0], subsample_size=100) as idx:
                pyro_msm.observe("x", GaussianEnergy(loc, torch.eye(d)), obs=x[idx])

        guide = AmortizedNormal(model)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}),
                  MissingScoreMatching("variational"))

    :param model: the model the guide is for; it is called with the guide's arguments.
    :param site: name of the :func:`~pyro_msm.observe` site (without the ``_unobserved``
        suffix). Default: the model's only one.
    :param hidden_dims: widths of the MLP's hidden layers.
    :param init_scale: initial standard deviation of every coordinate (positive).
    :param condition_on_mask: feed ``[x * m, m]`` to the MLP instead of ``x * m``, so that a
        missing entry can be told apart from an observed zero.
    :raises ValueError: (on a call) if the model has no :func:`~pyro_msm.observe` site, or
        ``site`` is None and it has several, or ``site`` names none of them.

    References

    [1] Givens, Liu & Reeve, "Score Matching with Missing Data", ICML 2025, arXiv:2506.00557.
    """

    def __init__(
        self,
        model: Callable,
        *,
        site: str | None = None,
        hidden_dims: Sequence[int] = (200, 200),
        init_scale: float = 1.0,
        condition_on_mask: bool = False,
    ) -> None:
        if not callable(model):
            raise TypeError(f"AmortizedNormal: model must be callable, got {type(model).__name__}")
        hidden_dims = tuple(int(h) for h in hidden_dims)
        if any(h < 1 for h in hidden_dims):
            raise ValueError(f"AmortizedNormal: hidden_dims must be positive, got {hidden_dims}")
        if not float(init_scale) > 0:
            raise ValueError(f"AmortizedNormal: init_scale must be positive, got {init_scale}")
        super().__init__(model, site)
        self.hidden_dims = hidden_dims
        self.init_scale = float(init_scale)
        self.condition_on_mask = bool(condition_on_mask)

    # -- parameters -------------------------------------------------------------------------------
    def _setup(self, data: Tensor, observed_mask: Tensor) -> None:
        """Create the network and the scale on the first call, on the data's device/dtype."""
        d = data.shape[-1]
        if "net" in self._modules:
            first, last = self._modules["net"][0], self._modules["net"][-1]
            if last.out_features != d:
                raise ValueError(
                    f"AmortizedNormal: built for rows of {last.out_features} coordinates, got {d}"
                )
            if first.weight.dtype != data.dtype or first.weight.device != data.device:
                raise ValueError(
                    f"AmortizedNormal: parameters are {first.weight.dtype} on "
                    f"{first.weight.device} but the data is {data.dtype} on {data.device}"
                )
            return
        widths = (2 * d if self.condition_on_mask else d,) + self.hidden_dims
        layers: list[nn.Module] = []
        kw = {"device": data.device, "dtype": data.dtype}  # built there, not moved there
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(w_in, w_out, **kw), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], d, **kw))
        self.net = nn.Sequential(*layers)
        self.scale = PyroParam(
            torch.full((d,), self.init_scale, dtype=data.dtype, device=data.device),
            constraint=constraints.positive,
        )

    def loc_and_scale(self, data: Tensor, observed_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The guide's mean and standard deviation for given rows.

        :param data: rows ``(..., d)`` with missing entries filled by zeros (as in
            ``MissingCoordinates.data``).
        :param observed_mask: boolean, shape of ``data``, True where observed.
        :returns: ``(loc, scale)``, each of ``data``'s shape; only their missing coordinates
            mean anything.
        :raises RuntimeError: before the guide's first call (parameters are created lazily).
        """
        if "net" not in self._modules:
            raise RuntimeError("AmortizedNormal: call the guide once to create its parameters")
        data = torch.where(
            observed_mask, data, torch.zeros((), dtype=data.dtype, device=data.device)
        )
        inputs = data
        if self.condition_on_mask:
            inputs = torch.cat([data, observed_mask.to(data.dtype)], dim=-1)
        loc = self.net(inputs)
        return loc, self.scale.expand(loc.shape)

    def distribution(self, data: Tensor, observed_mask: Tensor) -> dist.Normal:
        """The guide's coordinate-wise Normal for given rows (batch shape of ``data``); only its
        missing coordinates are used.

        :raises RuntimeError: before the guide's first call (parameters are created lazily).
        """
        loc, scale = self.loc_and_scale(data, observed_mask)
        return dist.Normal(loc, scale)

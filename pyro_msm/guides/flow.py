r"""An amortised conditional normalizing flow :math:`q_\phi(x_u \mid x_o)` for the missing
coordinates of :func:`~pyro_msm.observe` sites."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from pyro.distributions.transforms import (
    AffineAutoregressive,
    ConditionalAffineAutoregressive,
    ConditionalSplineAutoregressive,
    SplineAutoregressive,
)
from pyro.distributions.transforms.utils import clamp_preserve_gradients
from pyro.nn import ConditionalAutoRegressiveNN
from torch import Tensor, nn

from .base import MaskedSiteGuide, MissingBlockDistribution

__all__ = ["AmortizedFlow", "MissingBlockFlow", "FLOW_TRANSFORMS"]


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

#: Conditional autoregressive transforms :class:`AmortizedFlow` can stack.
FLOW_TRANSFORMS = ("affine", "spline")


# -- one layer, restricted to the missing coordinates ---------------------------------------------
def _layer_forward(layer, x: Tensor) -> tuple[Tensor, Tensor]:
    """Apply a conditioned autoregressive transform to all ``d`` coordinates of ``x`` and return
    its output and the per-coordinate log derivative ``log |dy_j / dx_j|`` (shape of ``x``)."""
    y = layer(x)
    if isinstance(layer, AffineAutoregressive):
        return y, layer._cached_log_scale
    if isinstance(layer, SplineAutoregressive):
        return y, layer._cache_log_detJ
    raise TypeError(f"MissingBlockFlow: unsupported transform {type(layer).__name__}")


def _layer_inverse_step(layer, x: Tensor, y: Tensor) -> Tensor:
    """One sweep of the autoregressive inversion: the elementwise inverse of ``y`` with the
    conditioner evaluated at the current guess ``x``."""
    if isinstance(layer, AffineAutoregressive):
        if layer.stable:
            mean, logit_scale = layer.arn(x)
            scale = torch.sigmoid(logit_scale + layer.sigmoid_bias)
            return (y - (1 - scale) * mean) / scale
        mean, log_scale = layer.arn(x)
        log_scale = clamp_preserve_gradients(
            log_scale, layer.log_scale_min_clip, layer.log_scale_max_clip
        )
        return (y - mean) * torch.exp(-log_scale)
    if isinstance(layer, SplineAutoregressive):
        return layer.spline.condition(x)._inverse(y)
    raise TypeError(f"MissingBlockFlow: unsupported transform {type(layer).__name__}")


class MissingBlockFlow(MissingBlockDistribution):
    r"""A conditional autoregressive flow over the *missing* coordinates of rows, presented
    coordinate by coordinate so that the density can be restricted to the missing block.

    Batch shape ``batch + (d,)``, event shape ``()``: one "coordinate" per batch element. A draw
    has the rows' shape; its observed coordinates are the data, exactly. ``log_prob(value)``
    returns per-coordinate terms :math:`t_j` that are zero on observed coordinates and whose sum
    over the missing coordinates of a row is the flow's log density of the missing block
    (see :class:`AmortizedFlow` for the construction and the proof). The terms are **not**
    marginal densities of single coordinates: only their sum over all missing coordinates of a
    row is meaningful, which is exactly how
    ``dist.mask(missing).to_event(1)`` (and :func:`~pyro_msm.infer.sites.guide_log_prob`)
    uses them. :meth:`missing_log_prob` gives the per-row sum directly.

    ``rsample`` is reparameterised. The terms of the latest draw are cached and returned for
    that very tensor; for any other value the flow is inverted exactly (one autoregressive sweep
    per missing coordinate and layer).

    :param layers: Pyro conditional autoregressive transforms
        (:class:`~pyro.distributions.transforms.ConditionalAffineAutoregressive` or
        :class:`~pyro.distributions.transforms.ConditionalSplineAutoregressive`) of input
        dimension ``d``, applied in order to standard normal noise.
    :param context: ``batch + (c,)`` context of the transforms (``[x * m, m]`` in
        :class:`AmortizedFlow`).
    :param data: ``batch + (d,)`` rows with missing entries zero-filled.
    :param observed_mask: boolean, shape of ``data``, True where observed.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        context: Tensor,
        data: Tensor,
        observed_mask: Tensor,
        validate_args: bool | None = None,
    ) -> None:
        for layer in layers:
            if not isinstance(
                layer, (ConditionalAffineAutoregressive, ConditionalSplineAutoregressive)
            ):
                raise TypeError(
                    "MissingBlockFlow: layers must be Pyro conditional autoregressive transforms "
                    "(ConditionalAffineAutoregressive or ConditionalSplineAutoregressive), got "
                    f"{type(layer).__name__}: only a triangular transform keeps the density of "
                    "the missing coordinates a sum of per-coordinate terms"
                )
        batch_shape = torch.broadcast_shapes(data.shape, observed_mask.shape)
        self.layers = tuple(layers)
        self.data = data.expand(batch_shape)
        self.observed_mask = observed_mask.expand(batch_shape)
        self.context = context.expand(batch_shape[:-1] + context.shape[-1:])
        self._cache: tuple[Tensor, Tensor] | None = None
        super().__init__(batch_shape, torch.Size(), validate_args=False)

    def _expand_to(self, batch_shape: torch.Size) -> MissingBlockFlow:
        return MissingBlockFlow(
            self.layers,
            self.context.expand(batch_shape[:-1] + self.context.shape[-1:]),
            self.data.expand(batch_shape),
            self.observed_mask.expand(batch_shape),
        )

    # -- the flow ---------------------------------------------------------------------------------
    def _broadcast(self, shape: torch.Size) -> tuple[Tensor, Tensor, Tensor]:
        return (
            self.data.expand(shape),
            self.observed_mask.expand(shape),
            self.context.expand(shape[:-1] + self.context.shape[-1:]),
        )

    def _terms(self, noise: Tensor, log_derivative: Tensor, observed: Tensor) -> Tensor:
        """Per-coordinate terms: ``log N(noise_j) - sum_l log |d y^l_j / d x^l_j|`` on missing
        coordinates, zero on observed ones."""
        terms = -0.5 * noise.pow(2) - _HALF_LOG_2PI - log_derivative
        return torch.where(observed, torch.zeros((), dtype=terms.dtype, device=terms.device), terms)

    def rsample_with_log_prob(self, sample_shape: tuple[int, ...] = ()) -> tuple[Tensor, Tensor]:
        """A reparameterised draw and its per-coordinate log density terms.

        :returns: ``(value, terms)``, each of shape ``sample_shape + batch_shape``.
        """
        shape = torch.Size(sample_shape) + self.batch_shape
        data, observed, context = self._broadcast(shape)
        noise = torch.randn(shape, dtype=data.dtype, device=data.device)
        # observed coordinates are set to the data before the first layer and kept there: the
        # noise drawn for them never reaches the value, so it carries no density
        x = torch.where(observed, data, noise)
        log_derivative = torch.zeros((), dtype=data.dtype, device=data.device)
        for conditional in self.layers:
            y, log_dy = _layer_forward(conditional.condition(context), x)
            x = torch.where(observed, data, y)
            log_derivative = log_derivative + log_dy
        return x, self._terms(noise, log_derivative, observed)

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        value, terms = self.rsample_with_log_prob(sample_shape)
        self._cache = (value, terms)
        return value

    def _invert(self, value: Tensor) -> Tensor:
        """Per-coordinate terms at an arbitrary ``value`` (its observed entries are ignored)."""
        shape = torch.broadcast_shapes(value.shape, self.batch_shape)
        data, observed, context = self._broadcast(shape)
        y = torch.where(observed, data, value.expand(shape))
        # missing coordinate number k (in a layer's autoregressive order) is exact after k
        # sweeps: the observed ones are known from the start
        sweeps = int((~observed).sum(-1).max()) if observed.numel() else 0
        zero = torch.zeros((), dtype=data.dtype, device=data.device)
        log_derivative = zero
        for conditional in reversed(self.layers):
            layer = conditional.condition(context)
            x = torch.where(observed, y, zero)
            for _ in range(sweeps):
                x = torch.where(observed, y, _layer_inverse_step(layer, x, y))
            _, log_dy = _layer_forward(layer, x)
            log_derivative = log_derivative + log_dy
            y = x
        return self._terms(y, log_derivative, observed)

    def log_prob(self, value: Tensor) -> Tensor:
        """Per-coordinate terms (zero at observed coordinates) whose sum over a row's missing
        coordinates is the log density of its missing block; shape of ``value`` broadcast with
        the batch shape."""
        if self._cache is not None and value is self._cache[0]:
            return self._cache[1]
        return self._invert(value)



class AmortizedFlow(MaskedSiteGuide):
    r"""Amortised conditional normalizing flow :math:`q_\phi(x_u \mid x_o)` for the missing
    coordinates of a :func:`~pyro_msm.observe` site (a richer variational family for Marg-Var
    than :class:`~pyro_msm.guides.AmortizedNormal`: non-Gaussian, with dependence between the
    missing coordinates of a row).

    **Construction.** A flow over all :math:`d` coordinates does not factorise, so its density
    cannot be restricted to the missing coordinates by masking per-coordinate terms of the
    joint density: the marginal of the missing block would need an integral over the observed
    ones. This guide instead transforms *only the missing coordinates, conditionally on the
    observed ones*. For a row with zero-filled values :math:`\tilde x = x \odot m` and mask
    :math:`m` (1 = observed), draw :math:`\varepsilon \sim N(0, I_d)`, set
    :math:`z^0 = m \odot \tilde x + (1 - m) \odot \varepsilon` and, for layers
    :math:`l = 1..L`,

    .. math:: z^l = m \odot \tilde x + (1 - m) \odot T_l(z^{l-1};\ [\tilde x, m]),

    where :math:`T_l` is a Pyro conditional autoregressive transform (affine, i.e. IAF, or
    rational-spline) with context :math:`[x \odot m, m]`. The value is :math:`z^L`: its observed
    coordinates are the data, exactly, at every layer.

    **Why the density is the density of the missing block.** Given the row's observed values
    (constants here, entering both as the observed inputs of :math:`T_l` and through the
    context), layer :math:`l` restricted to the missing coordinates :math:`u` is a map
    :math:`\mathbb R^{|u|} \to \mathbb R^{|u|}` whose output :math:`j` is a strictly increasing
    function of :math:`z_j` (positive scale, monotone spline) with parameters depending only on
    coordinates before :math:`j` in the layer's autoregressive order. It is therefore a
    bijection (invertible coordinate by coordinate in that order), and its Jacobian on
    :math:`u` is triangular after ordering, with determinant
    :math:`\prod_{j \in u} \partial T_{l,j} / \partial z_j`: the observed rows and columns,
    which would make a joint density over all :math:`d` coordinates non-factorising, are
    absent because those coordinates are not variables. The noise :math:`\varepsilon_o` is
    overwritten and never reaches the value, so the change of variables involves
    :math:`\varepsilon_u` only:

    .. math::
        \log q_\phi(x_u \mid x_o) = \sum_{j \in u} \Big[\log N(\varepsilon_j; 0, 1)
        - \sum_l \log \big|\partial T_{l,j} / \partial z^{l-1}_j\big|\Big]
        = \sum_{j \in u} t_j .

    The per-coordinate terms :math:`t_j` (zero on observed coordinates) are what the guide's
    site distribution, ``MissingBlockFlow(...).mask(missing).to_event(1)``, reports as its
    per-coordinate log density, so its ``log_prob`` is exactly the density above, and the
    loss's :func:`~pyro_msm.infer.sites.guide_log_prob`, which masks per-coordinate terms to the
    missing coordinates and sums them, reads the right density without any special case. (A
    single :math:`t_j` is not the marginal density of :math:`x_j`; only the sum over all of
    :math:`u` is, and that is all either of them uses.) An alternative, a per-row permutation
    putting observed coordinates first in an autoregressive order over all :math:`d`, gives the
    same exact conditional; substituting the observed values needs no per-row gather and lets
    every missing coordinate see all observed values.

    **Why the KL objective is a valid bound.** :math:`q_\phi(\cdot \mid x_o)` is a normalised
    density on :math:`\mathbb R^{|u|}` (a pushforward of :math:`N(0, I_{|u|})` by a
    diffeomorphism), so for the unnormalised model :math:`q_\theta`

    .. math::
        E_{q_\phi}\big[\log q_\phi(x_u \mid x_o) - \log q_\theta(x_o, x_u)\big]
        = \mathrm{KL}\big(q_\phi(\cdot \mid x_o)\,\|\,p_\theta(\cdot \mid x_o)\big)
        - \log \textstyle\int q_\theta(x_o, x_u)\,dx_u \;\ge\; -\log Z_\theta(x_o),

    a negative ELBO whose gap is the KL and whose constant does not depend on :math:`\phi`.
    Had the density included the observed coordinates (a flow over all :math:`d`, or unmasked
    terms), it would not be a density of :math:`x_u`, and the objective would reward
    spreading mass over coordinates the model never sees (PYRO_NOTES item 4). Draws are
    reparameterised (:math:`x_u` is a differentiable function of :math:`\varepsilon_u` and
    :math:`\phi`), so the KL's gradient reaches the flow's parameters through the model's
    density as well as through :math:`\log q_\phi`.

    Affine layers start at the identity (their networks' output layers are zero-initialised),
    so an untrained affine flow is :math:`N(0, I)` on the missing coordinates. The flow's draws
    are unconstrained reals. The guide finds the data site, its plates and subsample indices
    as :class:`~pyro_msm.guides.AmortizedNormal` does (running the model with every effect
    hidden, then re-entering the same plates), so it works in subsampled plates and in the
    vectorised particle plate of :class:`~pyro_msm.infer.MissingScoreMatching`, where draws
    have shape ``(r,) + data.shape``. Parameters are created on the first call, on the data's
    device and dtype, and live in Pyro's parameter store as ``AmortizedFlow.flows$$$...``
    (``AmortizedFlow.{site}.flows$$$...`` when ``site`` is given).

    Example::

        guide = AmortizedFlow(model, num_transforms=3, transform="spline")
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}),
                  MissingScoreMatching("variational"))

    :param model: the model the guide is for; it is called with the guide's arguments.
    :param site: name of the :func:`~pyro_msm.observe` site (without ``_unobserved``).
        Default: the model's only one.
    :param num_transforms: number of conditional autoregressive layers.
    :param hidden_dims: hidden widths of each layer's conditional autoregressive network
        (:class:`~pyro.nn.ConditionalAutoRegressiveNN`); each must be at least ``d``.
    :param transform: ``"affine"``
        (:class:`~pyro.distributions.transforms.ConditionalAffineAutoregressive`) or
        ``"spline"`` (:class:`~pyro.distributions.transforms.ConditionalSplineAutoregressive`,
        linear rational splines, identity outside ``[-bound, bound]``).
    :param count_bins: spline segments (``"spline"`` only).
    :param bound: half-width of the spline's box (``"spline"`` only).
    :raises ValueError: (on a call) if the model has no :func:`~pyro_msm.observe` site, ``site``
        is None and it has several, ``site`` names none of them, or a hidden width is below
        ``d``.
    """

    def __init__(
        self,
        model: Callable,
        *,
        site: str | None = None,
        num_transforms: int = 2,
        hidden_dims: Sequence[int] = (64, 64),
        transform: str = "affine",
        count_bins: int = 8,
        bound: float = 3.0,
    ) -> None:
        if not callable(model):
            raise TypeError(f"AmortizedFlow: model must be callable, got {type(model).__name__}")
        if int(num_transforms) < 1:
            raise ValueError(
                f"AmortizedFlow: num_transforms must be at least 1, got {num_transforms}"
            )
        hidden_dims = tuple(int(h) for h in hidden_dims)
        if not hidden_dims or any(h < 1 for h in hidden_dims):
            raise ValueError(
                f"AmortizedFlow: hidden_dims must be non-empty and positive, got {hidden_dims}"
            )
        if transform not in FLOW_TRANSFORMS:
            raise ValueError(
                f"AmortizedFlow: unknown transform {transform!r}; choose one of {FLOW_TRANSFORMS}"
            )
        if int(count_bins) < 2 or not float(bound) > 0:
            raise ValueError("AmortizedFlow: count_bins must be at least 2 and bound positive")
        super().__init__(model, site)
        self.num_transforms = int(num_transforms)
        self.hidden_dims = hidden_dims
        self.transform = transform
        self.count_bins = int(count_bins)
        self.bound = float(bound)

    # -- parameters -------------------------------------------------------------------------------
    def _make_layer(self, d: int, permutation: Tensor) -> nn.Module:
        if self.transform == "affine":
            arn = ConditionalAutoRegressiveNN(
                d, 2 * d, list(self.hidden_dims), permutation=permutation
            )
            # start at the identity: mean 0, log scale 0
            nn.init.zeros_(arn.layers[-1].weight)
            nn.init.zeros_(arn.layers[-1].bias)
            return ConditionalAffineAutoregressive(arn)
        k = self.count_bins
        arn = ConditionalAutoRegressiveNN(
            d, 2 * d, list(self.hidden_dims), param_dims=[k, k, k - 1, k], permutation=permutation
        )
        return ConditionalSplineAutoregressive(
            d, arn, count_bins=k, bound=self.bound, order="linear"
        )

    def _setup(self, data: Tensor, observed_mask: Tensor) -> None:
        """Create the layers on the first call, on the data's device and dtype."""
        d = data.shape[-1]
        if "flows" in self._modules:
            built = self._modules["flows"][0].nn.input_dim
            if built != d:
                raise ValueError(f"AmortizedFlow: built for rows of {built} coordinates, got {d}")
            weight = next(self._modules["flows"].parameters())
            if weight.dtype != data.dtype or weight.device != data.device:
                raise ValueError(
                    f"AmortizedFlow: parameters are {weight.dtype} on {weight.device} but the "
                    f"data is {data.dtype} on {data.device}"
                )
            return
        if min(self.hidden_dims) < d:
            raise ValueError(
                f"AmortizedFlow: every hidden width must be at least the row dimension d = {d} "
                f"(Pyro's autoregressive networks need it), got hidden_dims={self.hidden_dims}"
            )
        # a random order for the first layer, reversed from one layer to the next, so every
        # coordinate comes early in some layer and late in another
        permutation = torch.randperm(d, device=data.device)
        layers = []
        with torch.device(data.device):  # built on the data's device, not moved there
            for _ in range(self.num_transforms):
                layers.append(self._make_layer(d, permutation))
                permutation = permutation.flip(0)
        self.flows = nn.ModuleList(layers).to(dtype=data.dtype)

    def distribution(self, data: Tensor, observed_mask: Tensor) -> MissingBlockFlow:
        r"""The flow :math:`q_\phi(x_u \mid x_o)` for given rows, as a per-coordinate
        :class:`MissingBlockFlow` (batch shape of ``data``).

        :param data: rows ``(..., d)``; entries at missing coordinates are ignored.
        :param observed_mask: boolean, shape of ``data``, True where observed.
        :raises RuntimeError: before the guide's first call (parameters are created lazily).
        """
        if "flows" not in self._modules:
            raise RuntimeError("AmortizedFlow: call the guide once to create its parameters")
        zero = torch.zeros((), dtype=data.dtype, device=data.device)
        data = torch.where(observed_mask, data, zero)
        context = torch.cat([data, observed_mask.to(data.dtype)], dim=-1)
        return MissingBlockFlow(list(self.flows), context, data, observed_mask)

"""Reading masked data sites, their data, masks and scales, out of Pyro traces."""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import torch
from pyro.distributions import Delta, Independent, MaskedDistribution
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import effectful
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace
from torch import Tensor
from torch.distributions import Distribution, Normal

from .._memo import memo
from ..distributions.energy import unexpand
from ..primitives import SITE_KEY, MissingCoordinates

__all__ = [
    "DataSite",
    "FillUnobserved",
    "FillRejectLatent",
    "RejectLatent",
    "PerturbObserved",
    "find_data_sites",
    "guide_log_prob",
    "memo",
    "MODEL_TRACE_TYPE",
    "ProvideModelTrace",
    "provided_model_trace",
]


@dataclass
class DataSite:
    """A masked data site as the loss sees it, rows flattened.

    :ivar name: the name given to :func:`~pyro_msm.observe`.
    :ivar fn: the data distribution at ``{name}_observed``.
    :ivar data: ``(n, d)`` observed table, missing entries zero.
    :ivar mask: boolean ``(n, d)``, True where observed.
    :ivar scale: ``(n,)`` row multipliers from subsampled plates and ``poutine.scale``.
    :ivar value: the completed rows as sampled, ``(r, n, d)`` (``r = 1`` without particles).
    :ivar clean: ``(n, d)`` the data before any perturbation by the loss (denoising).
    :ivar constant_scale: the rows' common multiplier when Pyro recorded one number (no read
        of the device needed to know whether the rows are subsampled), else None.
    """

    name: str
    fn: Distribution
    data: Tensor
    mask: Tensor
    scale: Tensor
    value: Tensor
    clean: Tensor | None = None
    constant_scale: float | None = None

    @property
    def subsampled(self) -> bool:
        """Whether any row carries a multiplier other than 1 (a subsampled plate or a scale)."""
        if self.constant_scale is not None:
            return self.constant_scale != 1.0
        return bool((self.scale != 1).any())


@functools.lru_cache(maxsize=64)
def _constant_scale(value: float, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(n,)`` rows' multiplier ``value``: a broadcast number, made once per value, number of
    rows, dtype and device (an expanded tensor cannot be modified in place)."""
    return torch.tensor(value, dtype=dtype, device=device).expand(n)


def _rows(t: Tensor, n: int, d: int) -> Tensor:
    """``t`` as ``(n, d)``, the same tensor object when it already is (so :func:`memo` holds)."""
    return t if t.shape == (n, d) else t.reshape(n, d)


class FillUnobserved(Messenger):
    """Give every ``{name}_unobserved`` site that no guide provides a zero value instead of a
    draw from the model (the importance-weighting estimator draws its own completions)."""

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and msg["value"] is None:
            fn = msg["fn"]
            if isinstance(fn, MissingCoordinates):
                # a broadcast zero: no memory written (the value is read, never modified)
                zero = torch.zeros((), dtype=fn.data.dtype, device=fn.data.device)
                msg["value"] = zero.expand(fn.batch_shape + fn.event_shape)


class PerturbObserved(Messenger):
    """Replace the observed values of every :func:`~pyro_msm.observe` site by a perturbed copy,
    the same for every run inside this handler's lifetime (so a guide that runs the model and
    the loss's replay of the model see the same noisy rows).

    :param perturb: ``(data, mask) -> (perturbed, noise_scale)``.
    """

    def __init__(self, perturb) -> None:
        super().__init__()
        self.perturb = perturb
        self.cache: dict[str, tuple[Tensor, Tensor]] = {}

    def _pyro_pyro_msm_observed_values(self, msg) -> None:
        name, data, mask = msg["args"]
        if name not in self.cache:
            self.cache[name] = self.perturb(data, mask)
        msg["value"] = self.cache[name][0]
        msg["done"] = True


#: Effect type through which a guide asks for the model's trace of the current step.
MODEL_TRACE_TYPE = "pyro_msm_model_trace"


def _no_model_trace() -> Trace | None:
    return None


_ask_model_trace = effectful(_no_model_trace, type=MODEL_TRACE_TYPE)


def provided_model_trace() -> Trace | None:
    """The model's trace of the current step when the caller provides one
    (:class:`ProvideModelTrace`, installed by :class:`~pyro_msm.infer.MissingScoreMatching`
    around its guide), else None: a guide that needs the model's data site reads it there
    instead of running the model again."""
    return _ask_model_trace()


class ProvideModelTrace(Messenger):
    """Answer :func:`provided_model_trace` with ``trace``: a trace of the model with the same
    arguments, outside any particle plate, its missing coordinates filled
    (:class:`FillUnobserved`), as a guide's own hidden run of the model would record it.

    :param trace: the model's trace.
    """

    def __init__(self, trace: Trace) -> None:
        super().__init__()
        self.trace = trace

    def _pyro_pyro_msm_model_trace(self, msg) -> None:
        msg["value"] = self.trace
        msg["done"] = True


def _is_plate(site: dict) -> bool:
    return isinstance(site.get("fn"), _Subsample)


def _latent_site_error(name: str) -> ValueError:
    return ValueError(
        f"latent site '{name}': MissingScoreMatching fits pyro.param parameters of "
        "unnormalised models; the only latent sites it handles are the missing "
        "coordinates of pyro_msm.observe sites"
    )


class RejectLatent(Messenger):
    """Raise the error of :func:`find_data_sites` for a latent model site as soon as it is
    sampled: a guide's draw of a global latent, vectorised over particles, would otherwise break
    broadcasting in the model before the finished trace could be inspected."""

    def _process_message(self, msg) -> None:
        if (
            msg["type"] == "sample"
            and not msg["is_observed"]
            and not isinstance(msg["fn"], (MissingCoordinates, _Subsample))
        ):
            raise _latent_site_error(msg["name"])


class FillRejectLatent(FillUnobserved):
    """:class:`FillUnobserved` and :class:`RejectLatent` in one handler: the loss's run of the
    model handles each of its messages once instead of twice (Pyro calls every handler on the
    stack for every message: a model step's ~11 messages, Pyro's parameters included)."""

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            fn = msg["fn"]
            if isinstance(fn, MissingCoordinates):
                FillUnobserved._process_message(self, msg)
            elif not isinstance(fn, _Subsample):
                raise _latent_site_error(msg["name"])

    def _postprocess_message(self, msg) -> None:
        """Nothing to do after a message (not even looking up a method for it)."""


def find_data_sites(trace: Trace) -> list[DataSite]:
    """All sites created by :func:`~pyro_msm.observe` in a model trace.

    :raises ValueError: if there is none, or if the model has a latent site that is not the
        missing part of a data site (score matching fits parameters, not latent variables).
    """
    sites: list[DataSite] = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample":
            continue
        info = site["infer"].get(SITE_KEY)
        if isinstance(info, dict):
            data, mask = info["data"], info["mask"]
            d = data.shape[-1]
            value = site["value"]
            n = data.numel() // d
            constant = site["scale"] if isinstance(site["scale"], numbers.Real) else None
            if constant is not None:  # one number: the same expanded tensor at every step
                scale = _constant_scale(float(constant), n, data.dtype, data.device)
            else:
                scale = torch.as_tensor(site["scale"], dtype=data.dtype, device=data.device)
                scale = scale.expand(data.shape[:-1]).reshape(n)
            sites.append(
                DataSite(
                    name=info["name"],
                    fn=site["fn"],
                    data=_rows(data, n, d),
                    mask=_rows(mask, n, d),
                    scale=scale,
                    value=value.reshape(-1, n, d),
                    clean=_rows(info["clean"], n, d),
                    constant_scale=None if constant is None else float(constant),
                )
            )
        elif not (
            site["is_observed"] or isinstance(site["fn"], MissingCoordinates) or _is_plate(site)
        ):
            raise _latent_site_error(name)
    if not sites:
        raise ValueError(
            "the model has no masked data site: declare the data with "
            "pyro_msm.observe(name, distribution, obs=..., obs_mask=...)"
        )
    return sites


def _coordinatewise_log_prob(name: str, fn: Distribution, value: Tensor) -> Tensor:
    """Per-coordinate log densities of a factorised guide distribution, shape of ``value``."""
    while isinstance(fn, Independent):
        fn = fn.base_dist
    if isinstance(fn, MaskedDistribution):
        inner = _coordinatewise_log_prob(name, fn.base_dist, value)
        return torch.where(fn._mask, inner, torch.zeros((), dtype=inner.dtype, device=inner.device))
    if isinstance(fn, Normal) and type(fn).log_prob is Normal.log_prob:
        # a plate's expand() left (particles, rows, d) views of (rows, d) means and (d,) scales:
        # the density of the distinct ones, broadcast, takes the logarithm of d scales, not of
        # every entry (and its backward sums no expanded copies); the values are the same
        fn = Normal(unexpand(fn.loc, 1), unexpand(fn.scale, 1), validate_args=False)
    lp = fn.log_prob(value)
    if lp.shape != value.shape:
        raise TypeError(
            f"guide site '{name}': its distribution ({type(fn).__name__}) does not factorise "
            "over coordinates, so its density cannot be restricted to the missing ones; use "
            "pyro_msm.guides.AmortizedNormal or pyro.infer.autoguide.AutoNormal"
        )
    return lp


def _missing_normal_log_prob(fn: Distribution, value: Tensor, missing: Tensor) -> Tensor | None:
    r"""The summed log density over the ``missing`` coordinates, ``value.shape[:-1]``, of a
    coordinate-wise :class:`~torch.distributions.Normal` guide (possibly ``Independent`` and
    masked) whose scales do not vary over particles; None for any other distribution.

    :math:`\sum_{j \in u} -\tfrac12 t_j^2 - \log\sigma_j - \log\sqrt{2\pi}` with
    :math:`t = (x - \mu)/\sigma`: the squares are the only terms on every drawn entry, the
    others are summed over the distinct scales (the value and gradients of the general
    path's, up to floating-point order; a test checks them). Entries outside ``missing`` (and
    outside a mask of the guide) are selected away, never multiplied by zero, so a non-finite
    guide output there does not reach the loss.

    :param missing: boolean ``(n, d)``, True where the data site is missing.
    """
    while isinstance(fn, Independent):
        fn = fn.base_dist
    if isinstance(fn, MaskedDistribution):
        if not isinstance(fn._mask, Tensor):
            return None
        missing = missing & unexpand(fn._mask, 1)
        fn = fn.base_dist
    if not (isinstance(fn, Normal) and type(fn).log_prob is Normal.log_prob):
        return None
    loc, scale = unexpand(fn.loc, 1), unexpand(fn.scale, 1)
    if scale.dim() > missing.dim() or value.shape[-missing.dim() :] != missing.shape:
        return None
    t = (value - loc) * scale.reciprocal()
    zero = torch.zeros((), dtype=t.dtype, device=t.device)
    squares = torch.where(missing, t, zero).square().sum(-1)
    constant = torch.where(missing, -scale.log() - _LOG_SQRT_2PI, zero).sum(-1)
    return constant - 0.5 * squares


_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def guide_log_prob(trace: Trace, sites: list[DataSite]) -> dict[str, Tensor]:
    r"""The guide's log density of the *missing* coordinates of each data site, ``(r, n)``.

    Guide sites named ``{name}_unobserved`` (or ``{name}_unobserved_*``, such as
    :class:`~pyro.infer.autoguide.AutoNormal`'s ``{name}_unobserved_unconstrained``) are
    restricted coordinate by coordinate to the missing entries, so observed entries of a guide
    get no gradient and cannot drift. A :class:`~pyro.distributions.Delta` (an autoguide's
    deterministic transform) contributes its ``log_density``.

    :raises ValueError: for a guide latent site that belongs to no data site.
    """
    out: dict[str, Tensor] = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or _is_plate(site):
            continue
        owner = next(
            (
                s
                for s in sites
                if name == f"{s.name}_unobserved" or name.startswith(f"{s.name}_unobserved_")
            ),
            None,
        )
        if owner is None:
            raise ValueError(
                f"guide site '{name}' matches no missing-data site: guides for "
                "MissingScoreMatching sample only '<name>_unobserved', with a density that "
                "factorises over coordinates (pyro_msm.guides.AmortizedNormal, AmortizedFlow, "
                "or pyro.infer.autoguide.AutoNormal); joint autoguides such as "
                "AutoMultivariateNormal are not supported"
            )
        n, d = owner.data.shape
        fn, value = site["fn"], site["value"]
        if isinstance(fn, Delta) or (
            isinstance(fn, Independent) and isinstance(fn.base_dist, Delta)
        ):
            delta = fn if isinstance(fn, Delta) else fn.base_dist
            log_density = torch.as_tensor(delta.log_density)
            if log_density.requires_grad:
                raise TypeError(
                    f"guide site '{name}': a Delta whose log_density depends on the guide's "
                    "parameters (e.g. AutoStructured, or an autoguide on a constrained support) "
                    "sums its density over all coordinates, observed ones included, so it cannot "
                    "be restricted to the missing ones; use pyro_msm.guides.AmortizedNormal, "
                    "pyro_msm.guides.AmortizedFlow or pyro.infer.autoguide.AutoNormal"
                )
            lp = log_density.expand(value.shape[:-1]).reshape(-1, n)
        else:
            missing = ~owner.mask
            lp = _missing_normal_log_prob(fn, value, missing)
            if lp is None:
                per_coordinate = _coordinatewise_log_prob(name, fn, value).reshape(-1, n, d)
                lp = (per_coordinate * missing.to(per_coordinate.dtype)).sum(-1)
            else:
                lp = lp.reshape(-1, n)
        out[owner.name] = out.get(owner.name, 0) + lp
    return out

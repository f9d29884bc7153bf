r"""Imputations of the missing entries of a masked data site, and a check of their calibration.

A fitted model (and guide) defines a conditional :math:`p(x_u \mid x_o)` of each row's missing
coordinates given its observed ones. :func:`impute` draws complete tables from it in one of
three ways, each reusing the piece of :mod:`pyro_msm.infer` that the loss uses:

===========  ===========================================================================
``method``   draws of :math:`x_u` for each row
===========  ===========================================================================
``"guide"``  the trained guide :math:`q_\phi(x_u \mid x_o)` (run as the variational loss
             runs it, vectorised over draws), merged with the observed entries
``"iw"``     sampling-importance-resampling: ``num_particles`` proposal draws weighted by
             :func:`~pyro_msm.infer.estimators.importance_particles` (the model's
             conditional, tilted by a known missingness mechanism if one is given),
             resampled ``num_draws`` times per row with replacement
``"exact"``  the exact conditional of a :class:`~pyro_msm.distributions.GaussianEnergy`
             model (:func:`~pyro_msm.infer.gaussian.conditional_gaussian`)
===========  ===========================================================================

:func:`imputation_intervals` turns draws into equal-tailed intervals per entry and
:func:`imputation_coverage` reports how often those intervals contain held-out true values: a
calibrated imputation covers about ``prob`` of them. :func:`pyro_msm.to_inference_data` puts
the draws into an ArviZ object, and :func:`draws_from_inference_data` reads them back (it lives
here, not in :mod:`pyro_msm.arviz_bridge`, so that the bridge depends on this module and not the
other way round).

Tables given as pandas DataFrames (to :func:`~pyro_msm.observe`) keep their column names and
index: :attr:`Imputations.labels` holds them, :meth:`Imputations.frame` returns a labelled
DataFrame, and :func:`~pyro_msm.to_inference_data` uses them as coordinates. A model fitted in
standard units is converted back with :meth:`Imputations.rescale`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro.poutine as poutine
import torch
from torch import Tensor
from torch.distributions import Distribution

from .distributions.gaussian import GaussianEnergy
from .guides import no_guide
from .infer.estimators import importance_particles
from .infer.gaussian import conditional_gaussian, sample_conditional_gaussian
from .infer.mechanisms import MechanismTilted
from .infer.proposals import Proposal, make_proposal
from .infer.score_matching import _particle_plate
from .infer.sites import DataSite, FillUnobserved, find_data_sites
from .primitives import SITE_KEY
from .tables import Standardizer, TableLabels

__all__ = [
    "METHODS",
    "Imputations",
    "Coverage",
    "impute",
    "imputation_intervals",
    "imputation_coverage",
    "draws_from_inference_data",
]

#: Ways of drawing imputations understood by :func:`impute`.
METHODS = ("guide", "iw", "exact")


@dataclass
class Imputations:
    """Draws of complete tables for one masked data site.

    :ivar site: the name given to :func:`~pyro_msm.observe`.
    :ivar draws: ``(chains, draws, n, d)`` completed tables; observed entries equal ``data``.
    :ivar data: ``(n, d)`` the observed table, missing entries zero-filled.
    :ivar mask: boolean ``(n, d)``, True where observed.
    :ivar method: ``"guide"``, ``"iw"`` or ``"exact"``.
    :ivar ess: for ``"iw"``, ``(chains, n)`` effective sample size :math:`1/\\sum_k w_k^2` of
        each row's importance weights (``num_particles`` for a row with nothing missing).
    :ivar num_particles: for ``"iw"``, proposal draws per row and chain.
    :ivar labels: column names and row index of the table (from a DataFrame given to
        :func:`~pyro_msm.observe`), or None.
    """

    site: str
    draws: Tensor
    data: Tensor
    mask: Tensor
    method: str
    ess: Tensor | None = None
    num_particles: int | None = None
    labels: TableLabels | None = None

    @property
    def num_chains(self) -> int:
        """Number of independent chains."""
        return int(self.draws.shape[0])

    @property
    def num_draws(self) -> int:
        """Draws per chain."""
        return int(self.draws.shape[1])

    @property
    def observed(self) -> Tensor:
        """The observed table with NaN at missing entries."""
        nan = torch.full((), math.nan, dtype=self.data.dtype, device=self.data.device)
        return torch.where(self.mask, self.data, nan)

    def mean(self) -> Tensor:
        """The mean completed table ``(n, d)`` over chains and draws (a point imputation);
        observed entries are the data exactly (no round-off from averaging copies)."""
        return torch.where(self.mask, self.data, self.draws.mean((0, 1)))

    def interval(self, prob: float = 0.9) -> tuple[Tensor, Tensor]:
        """Equal-tailed intervals per entry; see :func:`imputation_intervals`."""
        return imputation_intervals(self.draws, prob)

    def frame(self, values: Tensor | None = None):
        """``values`` (default: :meth:`mean`) as a pandas DataFrame with the table's column
        names and index (``x0 .. x{d-1}`` and a range index when the table had none)."""
        labels = self.labels if self.labels is not None else TableLabels()
        return labels.frame(self.mean() if values is None else values)

    def rescale(self, standardizer: Standardizer) -> Imputations:
        """The same imputations in original units, for a model fitted to standardised data.

        Every draw (and the data) becomes ``loc + scale * z`` column by column; intervals and
        means transform the same way because the map is increasing and affine.

        :param standardizer: the :class:`~pyro_msm.tables.Standardizer` used to standardise the
            table before fitting.
        :returns: a new :class:`Imputations`.
        """
        data = torch.where(self.mask, standardizer.inverse(self.data), self.data)
        return Imputations(
            site=self.site,
            draws=standardizer.inverse(self.draws),
            data=data,
            mask=self.mask,
            method=self.method,
            ess=self.ess,
            num_particles=self.num_particles,
            labels=self.labels,
        )


@dataclass
class Coverage:
    """How often imputation intervals contain held-out true values.

    :ivar prob: nominal probability of the intervals.
    :ivar rate: fraction of held-out entries inside their interval.
    :ivar count: number of held-out (missing) entries.
    :ivar per_feature: ``(d,)`` the rate in each column (NaN for a column with nothing missing).
    :ivar per_feature_count: ``(d,)`` held-out entries in each column.
    :ivar mean_width: mean interval width over held-out entries.
    """

    prob: float
    rate: float
    count: int
    per_feature: Tensor
    per_feature_count: Tensor
    mean_width: float

    @property
    def standard_error(self) -> float:
        """Binomial standard error of :attr:`rate` at the nominal probability,
        :math:`\\sqrt{p(1-p)/\\text{count}}` (independent entries assumed)."""
        return math.sqrt(self.prob * (1 - self.prob) / max(self.count, 1))

    def __str__(self) -> str:
        return (
            f"{self.rate:.3f} of {self.count} held-out entries inside their "
            f"{self.prob:.0%} intervals (nominal {self.prob:.3f} +- "
            f"{self.standard_error:.3f}); mean width {self.mean_width:.3g}"
        )


# -- drawing ------------------------------------------------------------------------------------


def _model_trace(model: Callable, args: tuple, kwargs: dict):
    with poutine.block():
        return poutine.trace(FillUnobserved()(model)).get_trace(*args, **kwargs)


def _check_full_batch(trace) -> None:
    for name, node in trace.nodes.items():
        fn = node.get("fn")
        if node["type"] == "sample" and type(fn).__name__ == "_Subsample":
            if fn.subsample_size is not None and fn.subsample_size < fn.size:
                raise ValueError(
                    f"impute: the plate '{name}' subsamples {fn.subsample_size} of {fn.size} "
                    "rows; imputations need every row, so call the model with a full batch "
                    "(e.g. give it subsample_size=None)"
                )


def _pick_site(sites: list[DataSite], site: str | None) -> DataSite:
    names = [s.name for s in sites]
    if site is None:
        if len(sites) > 1:
            raise ValueError(
                f"impute: the model has several masked data sites {names}; pick one with site=..."
            )
        return sites[0]
    for s in sites:
        if s.name == site:
            return s
    raise ValueError(
        f"impute: site={site!r} is not a masked data site of the model; its "
        f"pyro_msm.observe sites are {names}"
    )


def _site_labels(trace, site: str) -> TableLabels | None:
    """Labels recorded by :func:`~pyro_msm.observe` for a DataFrame, else None."""
    node = trace.nodes.get(f"{site}_observed")
    info = (node or {}).get("infer", {}).get(SITE_KEY)
    labels = info.get("labels") if isinstance(info, dict) else None
    if labels is None or (labels.columns is None and labels.index is None):
        return None
    return labels


def _plate_nesting(trace) -> int:
    dims = [
        -frame.dim
        for node in trace.nodes.values()
        if node["type"] == "sample"
        for frame in node["cond_indep_stack"]
        if frame.vectorized and frame.dim is not None
    ]
    return max(dims, default=0)


def _guide_draws(model, guide, args, kwargs, site: DataSite, num_draws: int, dim: int) -> Tensor:
    """One chain of guide draws, completed by the model: ``(num_draws, n, d)``."""
    guide_trace = poutine.trace(_particle_plate(guide, num_draws, dim)).get_trace(*args, **kwargs)
    prefix = f"{site.name}_unobserved"
    if not any(
        n == prefix or n.startswith(prefix + "_")
        for n, node in guide_trace.nodes.items()
        if node["type"] == "sample"
    ):
        raise ValueError(
            f"impute: the guide samples no '{prefix}' site, so it draws nothing for the missing "
            f"entries of '{site.name}'"
        )
    replayed = poutine.replay(_particle_plate(model, num_draws, dim), trace=guide_trace)
    with poutine.block():
        model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
    value = _pick_site(find_data_sites(model_trace), site.name).value
    n, d = site.data.shape
    if value.shape != (num_draws, n, d):
        raise ValueError(
            f"impute: the guide's draws of '{prefix}' complete to shape {tuple(value.shape)}, "
            f"expected {(num_draws, n, d)}: the guide must respect the model's plates"
        )
    return value


def _iw_draws(
    fn: Distribution, site: DataSite, proposal: Proposal, num_particles: int, num_draws: int
) -> tuple[Tensor, Tensor]:
    """One chain of sampling-importance-resampling: draws ``(num_draws, n, d)``, ESS ``(n,)``."""
    x, mask = site.data, site.mask
    particles = importance_particles(fn, x, mask, proposal, num_particles)
    if particles.outside is not None and bool(particles.outside.any()):
        raise ValueError(
            f"impute: for {int(particles.outside.sum())} rows of '{site.name}' every one of the "
            f"{num_particles} proposal draws fell outside the model's support; raise "
            "num_particles or give a proposal that respects the domain"
        )
    weights = particles.weights.detach()  # (r, n)
    index = torch.multinomial(weights.T, num_draws, replacement=True).T  # (num_draws, n)
    rows = torch.arange(x.shape[0], device=x.device)
    return particles.z[index, rows], particles.effective_sample_size


def _shared_gaussian(fn: Distribution, site: str) -> tuple[Tensor, Tensor]:
    """The ``(d,)`` mean and ``(d, d)`` precision of a Gaussian model shared by all rows."""
    base = fn
    while not isinstance(base, GaussianEnergy) and hasattr(base, "base_dist"):
        base = base.base_dist
    if type(base) is not GaussianEnergy:
        raise TypeError(
            f"impute: method='exact' needs a GaussianEnergy data distribution at '{site}', got "
            f"{type(base).__name__}; use method='iw' or a guide"
        )
    d = base.event_shape[0]
    loc = base.loc.reshape(-1, d)
    precision = base.precision.reshape(-1, d, d)
    if not (
        torch.equal(loc, loc[:1].expand_as(loc))
        and torch.equal(precision, precision[:1].expand_as(precision))
    ):
        raise ValueError(
            f"impute: method='exact' needs one Gaussian shared by every row of '{site}'"
        )
    return loc[0], precision[0]


def _resolve_method(method: str | None, guide: Callable | None, loss: Any) -> str:
    has_guide = guide is not None and guide is not no_guide
    if method is None:
        if loss is not None and getattr(loss, "estimator", None) in ("variational", "hybrid"):
            method = "guide"
        else:
            method = "guide" if has_guide else "iw"
    if method not in METHODS:
        raise ValueError(f"impute: unknown method {method!r}; choose one of {METHODS}")
    if method == "guide" and not has_guide:
        raise ValueError("impute: method='guide' needs the trained guide (guide=...)")
    return method


def impute(
    model: Callable,
    guide: Callable | None = None,
    *,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    method: str | None = None,
    loss: Any = None,
    num_draws: int = 500,
    num_chains: int = 2,
    num_particles: int = 1000,
    proposal: str | Proposal | Distribution | None = None,
    missingness: Callable[[Tensor, Tensor], Tensor] | None = None,
    site: str | None = None,
    seed: int | None = None,
) -> Imputations:
    """Draw complete tables from a fitted model's conditional of the missing entries.

    The model is run with ``model(*args, **kwargs)`` (the arguments it was trained with, as a
    full batch), its :func:`~pyro_msm.observe` site is located, and ``num_chains`` independent
    chains of ``num_draws`` completed tables are drawn with ``method`` (see the module
    documentation). Observed entries are the data in every draw. Nothing is differentiated;
    Pyro's parameter store is only read.

    :param model: the Pyro model, with parameters already fitted.
    :param guide: the trained guide, for ``method="guide"``.
    :param args: positional arguments of the model (and guide); a pandas DataFrame passed on to
        :func:`~pyro_msm.observe` gives the result its column names and index
        (:attr:`Imputations.labels`).
    :param kwargs: keyword arguments of the model (and guide).
    :param method: ``"guide"``, ``"iw"`` or ``"exact"``. Default: ``"guide"`` when a guide is
        given or ``loss`` is variational or hybrid, otherwise ``"iw"``.
    :param loss: the :class:`~pyro_msm.infer.MissingScoreMatching` used for training: its
        ``proposal`` and ``missingness`` become the defaults of those arguments.
    :param num_draws: completed tables per chain.
    :param num_chains: independent chains (each with its own proposal draws for ``"iw"``).
    :param num_particles: proposal draws per row and chain for ``"iw"``; they are weighted all
        at once, so memory grows as ``num_particles * n * d``. The effective sample size in
        :attr:`Imputations.ess` says whether they were enough.
    :param proposal: the IW proposal (as in :class:`~pyro_msm.infer.MissingScoreMatching`);
        default that of ``loss``, else ``"moment_matched"`` fitted to the whole table.
    :param missingness: a known mechanism ``(z, mask) -> log P(mask | z)``: IW then draws from
        the conditional tilted by it (default that of ``loss``). Not with ``"exact"``.
    :param site: the data site (default: the model's only one).
    :param seed: seed of a private random stream (the global one is left as it was).
    :returns: :class:`Imputations`.
    :raises ValueError: for an unknown method, a missing guide, a subsampled plate, bad sizes,
        a site that does not exist, or IW rows with no proposal draw inside the support.
    :raises TypeError: for ``"exact"`` with a model that is not a
        :class:`~pyro_msm.distributions.GaussianEnergy`.
    """
    if int(num_draws) < 1 or int(num_chains) < 1 or int(num_particles) < 1:
        raise ValueError("impute: num_draws, num_chains and num_particles must be at least 1")
    num_draws, num_chains, num_particles = int(num_draws), int(num_chains), int(num_particles)
    kwargs = {} if kwargs is None else dict(kwargs)
    args = tuple(args)
    method = _resolve_method(method, guide, loss)
    if missingness is None and loss is not None:
        missingness = getattr(loss, "missingness", None)
    if missingness is not None and method != "iw":
        raise ValueError(
            "impute: a known missingness mechanism tilts the conditional, which only "
            "method='iw' can draw from"
        )
    if proposal is None:
        proposal = getattr(loss, "proposal", None) if loss is not None else None
    proposal = make_proposal("moment_matched" if proposal is None else proposal)

    rng = contextlib.nullcontext() if seed is None else torch.random.fork_rng()
    with rng, torch.no_grad():
        if seed is not None:
            torch.manual_seed(int(seed))
        trace = _model_trace(model, args, kwargs)
        _check_full_batch(trace)
        data_site = _pick_site(find_data_sites(trace), site)
        x, mask = data_site.data, data_site.mask
        chains: list[Tensor] = []
        ess: list[Tensor] = []
        if method == "guide":
            dim = -_plate_nesting(trace) - 1
            for _ in range(num_chains):
                chains.append(_guide_draws(model, guide, args, kwargs, data_site, num_draws, dim))
        elif method == "iw":
            fn = data_site.fn
            if missingness is not None:
                fn = MechanismTilted(fn, missingness, mask)
            for _ in range(num_chains):
                draws, chain_ess = _iw_draws(fn, data_site, proposal, num_particles, num_draws)
                chains.append(draws)
                ess.append(chain_ess)
        else:
            loc, precision = _shared_gaussian(data_site.fn, data_site.name)
            mean, chol = conditional_gaussian(x, mask, loc.to(x), precision.to(x))
            for _ in range(num_chains):
                chains.append(sample_conditional_gaussian(mean, chol, mask, num_draws)[0])
        draws = torch.stack(chains)
        # observed entries are the data exactly (guards against any round-off in a sampler)
        draws = torch.where(mask, x, draws)
    return Imputations(
        site=data_site.name,
        draws=draws,
        data=x,
        mask=mask,
        method=method,
        ess=torch.stack(ess) if ess else None,
        num_particles=num_particles if method == "iw" else None,
        labels=_site_labels(trace, data_site.name),
    )


# -- reading ArviZ objects back ------------------------------------------------------------------


def _group(obj: Any, name: str):
    """A group of an InferenceData or DataTree as an :class:`xarray.Dataset`, or None."""
    import xarray as xr

    try:
        node = obj[name]
    except (KeyError, TypeError):
        return None
    return node.to_dataset() if isinstance(node, xr.DataTree) else node


def draws_from_inference_data(obj: Any, var_name: str | None = None) -> tuple[Tensor, Tensor]:
    """Read the imputed tables and the mask back from an object of
    :func:`~pyro_msm.to_inference_data`.

    :param obj: the ArviZ object (:class:`arviz.InferenceData` or :class:`xarray.DataTree`).
    :param var_name: the imputed variable (default: the posterior variable with a ``feature``
        dim, when there is exactly one).
    :returns: draws ``(chains, draws, n, d)`` and the boolean mask ``(n, d)``.
    :raises ValueError: when the object lacks the groups or variables written by
        :func:`~pyro_msm.to_inference_data`.
    """
    posterior, constant = _group(obj, "posterior"), _group(obj, "constant_data")
    if posterior is None or constant is None:
        raise ValueError(
            "expected an ArviZ object from pyro_msm.to_inference_data, with 'posterior' and "
            "'constant_data' groups"
        )
    if var_name is None:
        tables = [v for v in posterior.data_vars if "feature" in posterior[v].dims]
        if len(tables) != 1:
            raise ValueError(f"choose the imputed variable with var_name= among {tables}")
        var_name = str(tables[0])
    if var_name not in posterior.data_vars or f"{var_name}_mask" not in constant.data_vars:
        raise ValueError(
            f"the object has no posterior variable '{var_name}' with a constant_data mask "
            f"'{var_name}_mask'"
        )
    table = posterior[var_name].transpose("chain", "draw", "row", "feature").values
    mask = constant[f"{var_name}_mask"].transpose("row", "feature").values
    return torch.as_tensor(table), torch.as_tensor(mask.astype(bool))


# -- intervals and coverage ------------------------------------------------------------------------


def _as_tensor(value: Any, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, np.ndarray) or hasattr(value, "to_numpy"):
        array = value.to_numpy() if hasattr(value, "to_numpy") else value
        return torch.as_tensor(np.asarray(array))
    raise TypeError(f"{name} must be a tensor or an array, got {type(value).__name__}")


def _pooled(draws: Tensor) -> Tensor:
    """Draws ``(..., n, d)`` with every leading axis pooled: ``(S, n, d)``."""
    if draws.dim() < 3:
        raise ValueError(
            f"draws must have shape (chains, draws, n, d) or (draws, n, d), got "
            f"{tuple(draws.shape)}"
        )
    return draws.reshape((-1,) + draws.shape[-2:])


def _quantile(sorted_draws: Tensor, q: float) -> Tensor:
    """Linear-interpolation quantile (numpy's default) along axis 0 of sorted draws."""
    position = q * (sorted_draws.shape[0] - 1)
    low = int(math.floor(position))
    high = min(low + 1, sorted_draws.shape[0] - 1)
    frac = position - low
    return sorted_draws[low] + frac * (sorted_draws[high] - sorted_draws[low])


def imputation_intervals(draws: Imputations | Tensor, prob: float = 0.9) -> tuple[Tensor, Tensor]:
    """Equal-tailed intervals of each entry: the ``(1 - prob)/2`` and ``(1 + prob)/2``
    quantiles of its draws, pooled over chains.

    :param draws: :class:`Imputations`, or draws ``(chains, draws, n, d)`` or ``(draws, n, d)``.
    :param prob: nominal probability, in ``(0, 1)``.
    :returns: ``(lower, upper)``, each ``(n, d)`` (zero width at observed entries).
    :raises ValueError: for ``prob`` outside ``(0, 1)`` or draws of the wrong shape.
    """
    if not 0.0 < float(prob) < 1.0:
        raise ValueError(f"prob must be in (0, 1), got {prob}")
    values = draws.draws if isinstance(draws, Imputations) else _as_tensor(draws, "draws")
    ordered = torch.sort(_pooled(values), dim=0).values
    tail = (1.0 - float(prob)) / 2.0
    return _quantile(ordered, tail), _quantile(ordered, 1.0 - tail)


def imputation_coverage(
    source: Any,
    truth: Tensor | np.ndarray,
    *,
    mask: Tensor | np.ndarray | None = None,
    prob: float = 0.9,
    var_name: str | None = None,
) -> Coverage:
    """Coverage of held-out true values by the imputation intervals (a calibration check).

    Hide entries of a complete table, fit on the rest, impute, and pass the complete table as
    ``truth``: if the imputations are the true conditional, each missing entry falls inside its
    equal-tailed ``prob`` interval (:func:`imputation_intervals`) with probability ``prob``, so
    :attr:`Coverage.rate` is near ``prob`` within a few :attr:`Coverage.standard_error`.
    Intervals that are too narrow (overconfident imputations) cover less.

    :param source: :class:`Imputations`; an ArviZ object from
        :func:`~pyro_msm.to_inference_data`; or draws ``(chains, draws, n, d)`` /
        ``(draws, n, d)`` with ``mask`` given.
    :param truth: the complete table ``(n, d)`` (values at observed entries are not used).
    :param mask: boolean ``(n, d)``, True where observed; read from ``source`` unless it is a
        bare array.
    :param prob: nominal probability of the intervals.
    :param var_name: the imputed variable of an ArviZ object (default: its only one).
    :returns: :class:`Coverage`.
    :raises ValueError: for mismatched shapes, a missing ``mask``, or no missing entry.
    """
    if isinstance(source, Imputations):
        draws, found_mask = source.draws, source.mask
    elif isinstance(source, (Tensor, np.ndarray)):
        draws, found_mask = _as_tensor(source, "draws"), None
    else:
        draws, found_mask = draws_from_inference_data(source, var_name)
    if mask is None:
        if found_mask is None:
            raise ValueError(
                "imputation_coverage: give mask= (True where observed) with bare draws"
            )
        mask = found_mask
    mask = _as_tensor(mask, "mask").to(device=draws.device, dtype=torch.bool)
    truth = _as_tensor(truth, "truth").to(device=draws.device, dtype=draws.dtype)
    if truth.shape != draws.shape[-2:] or mask.shape != truth.shape:
        raise ValueError(
            f"imputation_coverage: truth {tuple(truth.shape)}, mask {tuple(mask.shape)} and "
            f"draws {tuple(draws.shape)} do not match (expected (n, d) and (..., n, d))"
        )
    held_out = ~mask
    count = int(held_out.sum())
    if count == 0:
        raise ValueError("imputation_coverage: no entry is missing, so nothing was held out")
    lower, upper = imputation_intervals(draws, prob)
    inside = ((truth >= lower) & (truth <= upper) & held_out).to(draws.dtype)
    per_count = held_out.sum(0)
    per_rate = inside.sum(0) / per_count.clamp(min=1).to(draws.dtype)
    per_rate = torch.where(per_count > 0, per_rate, torch.full_like(per_rate, math.nan))
    width = ((upper - lower) * held_out).sum() / count
    return Coverage(
        prob=float(prob),
        rate=float(inside.sum()) / count,
        count=count,
        per_feature=per_rate,
        per_feature_count=per_count,
        mean_width=float(width),
    )

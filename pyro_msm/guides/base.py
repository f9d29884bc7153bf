"""The shared machinery of guides for the missing coordinates of one masked data site."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions import TorchDistribution, constraints
from pyro.nn import PyroModule
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from ..infer.sites import FillUnobserved, provided_model_trace
from ..primitives import PERTURB_TYPE, MissingCoordinates

__all__ = ["MaskedSiteGuide", "MissingBlockDistribution"]

_SUFFIX = "_unobserved"


class MissingBlockDistribution(TorchDistribution):
    """Base of guide distributions presented coordinate by coordinate: batch shape
    ``batch + (d,)``, event shape ``()``, and a ``log_prob`` of per-coordinate terms, zero on
    observed coordinates, whose sum over a row is the log density of its missing block (so that
    ``.mask(missing).to_event(1)`` is exactly that density). Subclasses implement
    :meth:`_expand_to`, ``rsample`` and ``log_prob``."""

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = True

    def _expand_to(self, batch_shape: torch.Size) -> MissingBlockDistribution:
        raise NotImplementedError

    def expand(self, batch_shape, _instance=None) -> MissingBlockDistribution:
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        if batch_shape[-1:] != self.batch_shape[-1:]:
            raise ValueError(
                f"{type(self).__name__}: cannot expand batch shape {tuple(self.batch_shape)} to "
                f"{tuple(batch_shape)}: the last dimension holds the coordinates of a row"
            )
        return self._expand_to(batch_shape)

    def missing_log_prob(self, value: Tensor) -> Tensor:
        r"""The log density :math:`\log q_\phi(x_u \mid x_o)` of each row's missing block,
        shape ``value.shape[:-1]`` (broadcast with ``batch_shape[:-1]``)."""
        return self.log_prob(value).sum(-1)


class MaskedSiteGuide(PyroModule):
    """Base class of guides for ``{site}_unobserved`` of a :func:`~pyro_msm.observe` site.

    It finds, on each call, the current batch's data, mask and plates (with the subsample
    indices of subsampled plates) in the model's trace the loss provides
    (:func:`~pyro_msm.infer.sites.provided_model_trace`), else by running the model with every
    effect hidden, so a subclass
    only builds its distribution and samples it inside :meth:`_site_plates`.

    :param model: the model the guide is for; it is called with the guide's arguments.
    :param site: name of the :func:`~pyro_msm.observe` site (default: the model's only one).
    """

    def __init__(self, model: Callable, site: str | None = None) -> None:
        label = type(self).__name__
        if not callable(model):
            raise TypeError(f"{label}: model must be callable, got {type(model).__name__}")
        if site is not None and not isinstance(site, str):
            raise TypeError(f"{label}: site must be a string, got {type(site).__name__}")
        # parameter names: {label}.* ({label}.{site}.* when a site is named, so guides for
        # different sites of one model do not share parameters)
        super().__init__(name=label + ("" if site is None else f".{site}"))
        self._model = (model,)  # a tuple, so a PyroModule model is not registered as a submodule
        self.site = site

    @property
    def model(self) -> Callable:
        """The model the guide was built for."""
        return self._model[0]

    # -- locating the data site -------------------------------------------------------------------
    def _model_trace(self, *args: Any, **kwargs: Any) -> Trace:
        """The model's trace with no effect escaping: blocking stops every message before it
        reaches outer handlers (SVI's parameter capture, the loss's particle plate), so the
        sites keep the model's own batch shapes and plates, and no parameter is registered as
        the guide's. :class:`FillUnobserved` supplies zeros instead of model draws."""
        # everything is hidden but the denoising perturbation of the observed values, so the
        # guide conditions on the same (noisy) rows as the loss
        with poutine.block(expose_types=[PERTURB_TYPE]):
            return poutine.trace(FillUnobserved()(self.model)).get_trace(*args, **kwargs)

    def _find_site(self, trace: Trace) -> tuple[str, dict]:
        found = {
            name[: -len(_SUFFIX)]: node
            for name, node in trace.nodes.items()
            if node["type"] == "sample"
            and isinstance(node["fn"], MissingCoordinates)
            and name.endswith(_SUFFIX)
        }
        if not found:
            raise ValueError(
                f"{type(self).__name__}: the model has no masked data site; declare the data "
                "with pyro_msm.observe(name, distribution, obs=...)"
            )
        if self.site is None:
            if len(found) > 1:
                raise ValueError(
                    f"{type(self).__name__}: the model has several masked data sites "
                    f"{sorted(found)}; choose one with site=..."
                )
            return next(iter(found.items()))
        if self.site not in found:
            raise ValueError(
                f"{type(self).__name__}: site={self.site!r} is not a masked data site of the "
                f"model; its pyro_msm.observe sites are {sorted(found)}"
            )
        return self.site, found[self.site]

    def _plates(self, trace: Trace, node: dict) -> list:
        """``pyro.plate`` contexts equal to those of the model around ``node``, subsample
        indices included (outermost first)."""
        plates = []
        for frame in node["cond_indep_stack"]:
            if not frame.vectorized:
                raise NotImplementedError(
                    f"{type(self).__name__}: the data site is inside the sequential plate "
                    f"'{frame.name}'; use a vectorised pyro.plate"
                )
            sub = trace.nodes.get(frame.name)
            if sub is not None and isinstance(sub["fn"], _Subsample):
                plates.append(
                    pyro.plate(frame.name, sub["fn"].size, subsample=sub["value"], dim=frame.dim)
                )
            else:
                size = frame.full_size if frame.full_size is not None else frame.size
                plates.append(pyro.plate(frame.name, size if size >= 0 else None, dim=frame.dim))
        return plates

    def _site(self, *args: Any, **kwargs: Any) -> tuple[str, MissingCoordinates, list]:
        """The site's name (without suffix), its ``MissingCoordinates`` and its plates. The
        model's trace is the one the loss provides for this step
        (:func:`~pyro_msm.infer.sites.provided_model_trace`), else a hidden run of the model."""
        trace = provided_model_trace()
        if trace is None:
            trace = self._model_trace(*args, **kwargs)
        name, node = self._find_site(trace)
        return name, node["fn"], self._plates(trace, node)

    # -- what a subclass provides -----------------------------------------------------------------
    def _setup(self, data: Tensor, observed_mask: Tensor) -> None:
        """Create the parameters on the first call (on ``data``'s device and dtype) and check
        later calls against them."""
        raise NotImplementedError

    def distribution(self, data: Tensor, observed_mask: Tensor) -> TorchDistribution:
        """The guide's distribution for rows ``data`` (batch shape ``data.shape``, event shape
        ``()``: one element per coordinate); only its missing coordinates are used."""
        raise NotImplementedError

    # -- the guide --------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Sample ``{site}_unobserved`` for the batch the model sees with these arguments.

        The distribution is restricted to the missing coordinates (``.mask(missing)``) and
        sampled inside the model's plates, subsample indices included.

        :returns: ``{"{site}_unobserved": draw}``, the draw of the data's shape (with a leading
            particle dimension inside a particle plate).
        """
        name, fn, plates = self._site(*args, **kwargs)
        data, observed = fn.data, fn.observed_mask.expand(fn.data.shape)
        self._setup(data, observed)
        # parameters are read (and registered) before entering plates, so no plate subsamples them
        shape = fn.batch_shape + fn.event_shape
        q = self.distribution(data, observed).expand(shape)
        q = q.mask(~observed.expand(shape)).to_event(1)
        with contextlib.ExitStack() as stack:
            for plate in plates:
                stack.enter_context(plate)
            value = pyro.sample(name + _SUFFIX, q)
        return {name + _SUFFIX: value}

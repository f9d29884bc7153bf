"""The coordinate-level masked data site: :func:`observe`."""

from __future__ import annotations

import numbers
import weakref

import numpy as np
import pyro
import torch
from pyro.distributions import TorchDistribution
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.poutine.runtime import effectful
from torch import Tensor

from ._memo import all_observed, memo
from .tables import TableLabels, as_table, is_dataframe

__all__ = ["observe", "MissingCoordinates", "SITE_KEY", "PERTURB_TYPE"]

#: Key of ``site["infer"]`` under which :func:`observe` records the data and mask of a site.
SITE_KEY = "pyro_msm"


class MissingCoordinates(TorchDistribution):
    """The model's distribution at ``{name}_unobserved``: the data distribution, for the shape,
    the support and prior draws, with zero log density.

    The joint unnormalised density of the completed row is carried once, by ``{name}_observed``;
    this site only gives guides something to model. It also carries the site's data (missing
    entries zero-filled) and coordinate mask, so that a guide can condition on the observed
    coordinates (:class:`~pyro_msm.guides.AmortizedNormal` does).

    :param base: the data distribution (event shape ``(d,)``).
    :param data: the observed table with missing entries filled by zeros.
    :param observed_mask: boolean tensor, True where observed, shape of ``data``.
    """

    arg_constraints: dict = {}

    def __init__(self, base: TorchDistributionMixin, data: Tensor, observed_mask: Tensor) -> None:
        self.base = base
        self.data = data
        self.observed_mask = observed_mask
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):  # type: ignore[override]
        return self.base.support

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return False

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Draws of the whole row from the data distribution (its ``sample``)."""
        return self.base.sample(torch.Size(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        """Zero: the joint density is counted at ``{name}_observed``."""
        shape = value.shape[: value.dim() - self.event_dim]
        return torch.zeros(shape, dtype=value.dtype, device=value.device)

    def expand(self, batch_shape, _instance=None) -> MissingCoordinates:
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        return MissingCoordinates(self.base.expand(batch_shape), self.data, self.observed_mask)


def _as_mask(name: str, obs: Tensor, obs_mask) -> Tensor:
    """Validate ``obs_mask`` and return a coordinate-level boolean mask of ``obs.shape``."""
    if obs_mask is None:
        return ~torch.isnan(obs)
    if isinstance(obs_mask, np.ndarray):
        obs_mask = torch.from_numpy(obs_mask)
    if isinstance(obs_mask, (bool, numbers.Integral)) and not isinstance(obs_mask, Tensor):
        obs_mask = torch.tensor(bool(obs_mask))
    if not isinstance(obs_mask, Tensor):
        raise TypeError(
            f"site '{name}': obs_mask must be a boolean tensor, got {type(obs_mask).__name__}"
        )
    if obs_mask.dtype != torch.bool:
        if obs_mask.is_complex() or not bool(((obs_mask == 0) | (obs_mask == 1)).all()):
            raise TypeError(
                f"site '{name}': obs_mask must be boolean-like (True/False or 0/1), "
                f"got dtype {obs_mask.dtype} with other values"
            )
        obs_mask = obs_mask != 0
    if obs_mask.device != obs.device:
        raise ValueError(
            f"site '{name}': obs_mask is on {obs_mask.device} but obs is on {obs.device}"
        )
    if obs_mask.shape == obs.shape:
        return obs_mask
    batch_shape = obs.shape[:-1]
    try:
        torch.broadcast_shapes(obs_mask.shape, batch_shape)
        return (
            obs_mask.unsqueeze(-1).expand(obs.shape)
            if obs_mask.dim()
            else obs_mask.expand(obs.shape)
        )
    except RuntimeError:
        pass
    raise ValueError(
        f"site '{name}': obs_mask has shape {tuple(obs_mask.shape)}; expected the shape of obs "
        f"{tuple(obs.shape)} (coordinate-level) or one that broadcasts to its batch shape "
        f"{tuple(batch_shape)} (row-level)"
    )


#: The last validated (obs, obs_mask) of each site name: an SVI loop passes the same tensors at
#: every step, and checking them again costs a device read per step (a sync on a GPU).
_CHECKED: dict[str, tuple] = {}


def _version_key(value) -> tuple | None:
    """Identity and in-place version of a tensor (None for anything that can't be tracked: a
    tensor that requires grad, or an inference tensor, which has no version counter and may be
    modified in place inside :func:`torch.inference_mode` unseen)."""
    if value is None:
        return ()
    if isinstance(value, Tensor) and not value.requires_grad and not value.is_inference():
        return (weakref.ref(value), value._version)
    return None


def _same(key: tuple, other: tuple) -> bool:
    """Both keys name the same live tensor at the same version (or both are ``()``, no mask)."""
    if not key or not other:
        return key == other
    return key[0]() is other[0]() and key[1] == other[1]


def _checked_data(name: str, obs: Tensor, obs_mask) -> tuple[Tensor, Tensor]:
    """The coordinate mask of ``obs`` and its data with zeros at missing entries, after checking
    that no observed entry is NaN or infinite. The result is reused while the same ``obs`` and
    ``obs_mask`` tensors come back unmodified (tracked by identity and in-place version)."""
    obs_key, mask_key = _version_key(obs), _version_key(obs_mask)
    cached = _CHECKED.get(name)
    if (
        cached is not None
        and obs_key is not None
        and mask_key is not None
        and _same(cached[0], obs_key)
        and _same(cached[1], mask_key)
    ):
        return cached[2], cached[3]
    mask = _as_mask(name, obs, obs_mask)
    bad = mask & ~torch.isfinite(obs)
    any_bad, complete = torch.stack([bad.any(), mask.all()]).tolist()  # one read of the device
    memo(mask, "all_observed", lambda: bool(complete))  # for all_observed(mask), no second read
    if any_bad:
        raise ValueError(
            f"site '{name}': {int(bad.sum())} entries marked observed are NaN or infinite; mark "
            "them missing in obs_mask (or leave obs_mask=None to treat NaN as missing)"
        )
    data = torch.where(mask, obs, torch.zeros((), dtype=obs.dtype, device=obs.device))
    if obs_key is not None and mask_key is not None and not data.is_inference():
        # (data computed under inference mode is an inference tensor: kept, a later training
        # step on the same tensors would be refused by autograd)
        _CHECKED[name] = (obs_key, mask_key, mask, data)
    else:
        _CHECKED.pop(name, None)
    return mask, data


#: Effect type through which a loss may perturb the observed values of a site (denoising).
PERTURB_TYPE = "pyro_msm_observed_values"


def _identity(name: str, data: Tensor, mask: Tensor) -> Tensor:
    return data


_observed_values = effectful(_identity, type=PERTURB_TYPE)


def _parameter_dtype(fn: TorchDistribution) -> torch.dtype | None:
    """The floating dtype of ``fn``'s parameters where it can be read without computing anything:
    tensors of its ``arg_constraints`` already set on the instance, else the first parameter of
    an ``nn.Module`` attribute (a neural energy); None when neither exists."""
    attributes = vars(fn)
    for key in getattr(fn, "arg_constraints", {}):
        value = attributes.get(key)  # lazily computed parameters are not in vars() yet
        if isinstance(value, Tensor) and value.is_floating_point():
            return value.dtype
    for value in attributes.values():
        if isinstance(value, torch.nn.Module):
            first = next(value.parameters(), None)
            if first is not None and first.is_floating_point():
                return first.dtype
    return None


def observe(
    name: str,
    fn: TorchDistributionMixin,
    obs: Tensor,
    obs_mask: Tensor | None = None,
) -> Tensor:
    """A data site whose rows may miss any subset of coordinates.

    Pyro's ``pyro.sample(..., obs_mask=...)`` masks whole rows; this primitive masks single
    coordinates. It creates, like Pyro's masked sites,

    - ``{name}_unobserved``: a latent site of the row's shape whose *missing* coordinates are
      the unknowns (its distribution is :class:`MissingCoordinates`, with zero log density);
      a guide for it is the conditional :math:`q_\\phi(x_u \\mid x_o)`. Guide values at observed
      coordinates are ignored;
    - ``{name}_observed``: the data distribution observed at the completed row (observed
      entries from ``obs``, missing ones from ``{name}_unobserved``), which records the data and
      mask for :class:`~pyro_msm.infer.MissingScoreMatching`;
    - ``{name}``: a deterministic site with the completed row, which is returned.

    Missing entries of ``obs`` are replaced by zeros before any arithmetic, so NaN placeholders
    cannot poison gradients. Works inside (subsampled) ``pyro.plate``.

    :param name: site name.
    :param fn: data distribution with event shape ``(d,)``: an
        :class:`~pyro_msm.distributions.Energy` or any Pyro distribution whose ``log_prob`` is
        differentiable (its normaliser plays no role).
    :param obs: data, shape ``batch_shape + (d,)``, floating point; NaN marks missing entries when
        ``obs_mask`` is None. A numpy array is converted to torch's default dtype. A pandas
        DataFrame (numeric columns; NaN, None and ``pd.NA`` mark missing entries) is converted
        to the dtype of ``fn``'s parameters (else torch's default); its column names and index
        are recorded on the site, so :func:`~pyro_msm.impute` and
        :func:`~pyro_msm.to_inference_data` label their results with them.
    :param obs_mask: True where observed: of ``obs``'s shape (coordinate level) or broadcastable
        to its batch shape (row level, Pyro's meaning). Booleans or 0/1 values.
    :returns: the completed rows, shape of ``obs``.
    :raises TypeError: for a non-tensor or non-floating ``obs``, a DataFrame with a non-numeric
        column (named in the message), or a non-boolean mask.
    :raises ValueError: for mismatched shapes or devices, or NaN/inf in an observed entry.
    """
    if not isinstance(fn, TorchDistributionMixin):
        raise TypeError(f"site '{name}': fn must be a Pyro distribution, got {type(fn).__name__}")
    if fn.event_dim != 1:
        raise ValueError(
            f"site '{name}': the data distribution must have event shape (d,), "
            f"got event shape {tuple(fn.event_shape)}"
        )
    labels = TableLabels()
    if is_dataframe(obs):
        obs, labels = as_table(
            obs,
            name=f"site '{name}': obs",
            dtype=_parameter_dtype(fn) or torch.get_default_dtype(),
        )
    if isinstance(obs, np.ndarray):
        obs = torch.from_numpy(obs)
        if obs.is_floating_point():
            # numpy defaults to float64, torch (and so the model's parameters) to the default
            # dtype; mixing them made every estimator fail inside the model's matmuls
            obs = obs.to(torch.get_default_dtype())
    if not isinstance(obs, Tensor):
        raise TypeError(f"site '{name}': obs must be a tensor, got {type(obs).__name__}")
    if not obs.is_floating_point():
        raise TypeError(f"site '{name}': obs must be floating point, got dtype {obs.dtype}")
    if obs.dim() < 1 or obs.shape[-1:] != fn.event_shape:
        raise ValueError(
            f"site '{name}': obs has shape {tuple(obs.shape)}, but the distribution has event "
            f"shape {tuple(fn.event_shape)}"
        )
    if obs.numel() == 0:
        raise ValueError(f"site '{name}': obs has no rows (shape {tuple(obs.shape)})")
    dtype = _parameter_dtype(fn)
    if dtype is not None and dtype != obs.dtype:
        raise TypeError(
            f"site '{name}': obs is {obs.dtype} but the distribution's parameters are {dtype}; "
            f"convert the data (obs.to({dtype})) or the model's parameters to one dtype"
        )
    mask, data = _checked_data(name, obs, obs_mask)
    if fn.batch_shape != obs.shape[:-1]:
        rows = obs.shape[:-1]  # a distribution without batch shape (the usual case) takes it
        fn = fn.expand(rows if not fn.batch_shape else torch.broadcast_shapes(fn.batch_shape, rows))
    clean = data
    data = _observed_values(name, data, mask)
    unobserved = pyro.sample(
        f"{name}_unobserved",
        MissingCoordinates(fn, data, mask),
        infer={SITE_KEY: "unobserved"},
    )
    if all_observed(mask) and unobserved.shape == data.shape and not unobserved.requires_grad:
        value = data  # nothing to fill in (and no gradient to route to the filler)
    else:
        value = torch.where(mask, data, unobserved)
    pyro.sample(
        f"{name}_observed",
        fn,
        obs=value,
        infer={
            SITE_KEY: {
                "data": data,
                "clean": clean,
                "mask": mask,
                "name": name,
                "labels": labels,
            }
        },
    )
    return pyro.deterministic(name, value, event_dim=1)

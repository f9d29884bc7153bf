"""Values derived from a tensor, remembered on it (:func:`memo`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["memo", "all_observed", "storable"]


def storable(value: Any) -> bool:
    """Whether a value computed under :func:`torch.inference_mode` may be kept for later use
    outside it: numbers, strings, None, normal (non-inference) tensors, and tuples, lists and
    dicts of these. Inference tensors (which autograd refuses to save) and any other object
    (which may hold them) are not."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, Tensor):
        return not value.is_inference()
    if isinstance(value, (tuple, list)):
        return all(storable(item) for item in value)
    if isinstance(value, dict):
        return all(storable(item) for item in value.values())
    return False


def memo(tensor: Tensor, what: str, compute: Callable[[], Any]) -> Any:
    """``compute()``, remembered on ``tensor`` until it is modified in place: what the loss
    derives from a data set's mask or data (row groups, counts, checks) is computed once, not at
    every step, as long as the same tensor comes back (:func:`~pyro_msm.observe` returns the same
    mask and data for the same unmodified input). Tensors that require grad are not memoised.

    Under :func:`torch.inference_mode`: an inference tensor has no version counter (an in-place
    change inside inference mode could not be detected), so values derived from it are computed
    at every call, never stored; a normal tensor's stored values are used, and a value computed
    there is stored only if it holds no inference tensor (:func:`storable`: a later training
    step would fail on it).

    :param tensor: the tensor the value is derived from.
    :param what: the name of the derived value.
    :param compute: computes it.
    """
    if tensor.requires_grad or tensor.is_inference():
        return compute()
    stored = getattr(tensor, "_pyro_msm_memo", None)
    if stored is None or stored[0] != tensor._version:
        stored = (tensor._version, {})
        tensor._pyro_msm_memo = stored
    if what not in stored[1]:
        value = compute()
        if torch.is_inference_mode_enabled() and not storable(value):
            return value
        stored[1][what] = value
    return stored[1][what]


def all_observed(mask: Tensor) -> bool:
    """Whether every entry of the boolean ``mask`` is True (a complete table), computed once per
    mask (:func:`memo`; one read of the device per mask, not per step)."""
    return memo(mask, "all_observed", lambda: bool(mask.all()))

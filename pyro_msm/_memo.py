"""Values derived from a tensor, remembered on it (:func:`memo`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

__all__ = ["memo", "all_observed"]


def memo(tensor: Tensor, what: str, compute: Callable[[], Any]) -> Any:
    """``compute()``, remembered on ``tensor`` until it is modified in place: what the loss
    derives from a data set's mask or data (row groups, counts, checks) is computed once, not at
    every step, as long as the same tensor comes back (:func:`~pyro_msm.observe` returns the same
    mask and data for the same unmodified input). Tensors that require grad are not memoised.

    :param tensor: the tensor the value is derived from.
    :param what: the name of the derived value.
    :param compute: computes it.
    """
    if tensor.requires_grad:
        return compute()
    stored = getattr(tensor, "_pyro_msm_memo", None)
    if stored is None or stored[0] != tensor._version:
        stored = (tensor._version, {})
        tensor._pyro_msm_memo = stored
    if what not in stored[1]:
        stored[1][what] = compute()
    return stored[1][what]


def all_observed(mask: Tensor) -> bool:
    """Whether every entry of the boolean ``mask`` is True (a complete table), computed once per
    mask (:func:`memo`; one read of the device per mask, not per step)."""
    return memo(mask, "all_observed", lambda: bool(mask.all()))

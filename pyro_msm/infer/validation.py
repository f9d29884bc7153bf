"""Set-ups the losses refuse, with errors that name the argument or site and the remedy.

Each check here turns a silent wrong answer, or an error from deep inside Pyro or torch, into
a clear message (the catalogue is in the documentation's *Errors and warnings* page).
"""

from __future__ import annotations

import functools
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = ["positive_int", "require_guide_sites", "check_site_shape", "translate_errors"]

F = TypeVar("F", bound=Callable[..., Any])


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int of at least ``minimum``; an integral float (``10.0``) is accepted,
    a fractional one (``2.7``) is refused instead of being truncated.

    :raises TypeError: for a non-number or a fractional number.
    :raises ValueError: below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if not float(value).is_integer():
        raise TypeError(f"{name} must be an integer, got {value!r} (it would be truncated)")
    if int(value) < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return int(value)


def require_guide_sites(estimator: str, sites: Sequence[Any], guide_lp: Mapping[str, Any]) -> None:
    """Refuse a guided estimator whose guide does not sample ``{name}_unobserved`` for a site
    with missing entries: the missing coordinates would be drawn from the model's *joint*
    instead of its conditional, and the loss would be silently wrong.

    :param sites: the :class:`~pyro_msm.infer.sites.DataSite` s of the model trace.
    :param guide_lp: the guide's log densities by site name (from
        :func:`~pyro_msm.infer.sites.guide_log_prob`).
    :raises ValueError: naming the site and the remedy.
    """
    for site in sites:
        if site.name not in guide_lp and not bool(site.mask.all()):
            raise ValueError(
                f"estimator {estimator!r}: the guide samples no '{site.name}_unobserved' site, "
                f"so the missing entries of '{site.name}' would come from the model's joint "
                "instead of its conditional. Give a guide of the missing coordinates "
                "(pyro_msm.guides.GaussianConditionalGuide, AmortizedNormal, AmortizedFlow or "
                "pyro.infer.autoguide.AutoNormal), or use estimator='iw', which needs none"
            )


def check_site_shape(name: str, frames: Sequence[Any], data: Tensor) -> None:
    """Refuse data whose rows do not match the plates around the site (e.g. a 1-D ``obs``
    inside a plate, which Pyro would broadcast to a table of copies).

    :param frames: the site's ``cond_indep_stack`` (the loss's own particle plate is skipped).
    :param data: the site's observed table as given, shape ``batch + (d,)``.
    :raises ValueError: naming the site, the plate and the expected shape.
    """
    batch = tuple(data.shape[:-1])
    for frame in frames:
        if frame.dim is None or frame.name.startswith("_pyro_msm"):
            continue
        if len(batch) < -frame.dim or batch[frame.dim] != frame.size:
            got = batch[frame.dim] if len(batch) >= -frame.dim else "no dimension"
            raise ValueError(
                f"site '{name}': obs has shape {tuple(data.shape)} but sits in "
                f"pyro.plate('{frame.name}') of size {frame.size} at dim {frame.dim}, where obs "
                f"has {got}: give obs one row per plate entry, e.g. shape "
                f"({frame.size}, {data.shape[-1]}) (for a single row: obs[None] in a plate of "
                "size 1, or no plate)"
            )


_SUBSAMPLE = re.compile(r"subsample_size does not match len\(subsample\), (\d+) vs (\d+)")


def _translated(err: BaseException) -> BaseException | None:
    message = str(err)
    if isinstance(err, ZeroDivisionError) and "size cannot be zero" in message:
        return ValueError(
            "a pyro.plate has size 0: the data table has no rows. Pass a table with at least "
            "one row (check filtering or subsetting upstream)"
        )
    match = _SUBSAMPLE.search(message) if isinstance(err, ValueError) else None
    if match:
        asked, size = match.groups()
        return ValueError(
            f"a pyro.plate has subsample_size {asked} but only {size} rows: subsample_size "
            f"must be at most the plate's size; pass subsample_size <= {size} (or None)"
        )
    return None


def translate_errors(method: F) -> F:
    """Decorator for the losses' entry points: errors of Pyro or torch whose cause is a user's
    set-up (an empty plate, ``subsample_size`` above the table's size) are re-raised as a
    ``ValueError`` saying so; a failed Cholesky or eigendecomposition gets a note on its usual
    causes."""

    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except (ZeroDivisionError, ValueError) as err:
            new = _translated(err)
            if new is None:
                raise
            raise new from err
        except torch.linalg.LinAlgError as err:
            notes = " ".join(getattr(err, "__notes__", []))
            if hasattr(err, "add_note") and "pyro_msm:" not in notes:  # once when nested
                err.add_note(
                    "pyro_msm: a matrix factorisation failed. Usual causes: a precision that is "
                    "not positive definite (train precision_tril with "
                    "constraints.lower_cholesky), data on a huge scale (standardise the "
                    "columns), or a diverging fit (lower the learning rate)"
                )
            raise

    return wrapped  # type: ignore[return-value]

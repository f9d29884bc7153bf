"""Mask simulators for coordinate-level missingness (MCAR, MAR and self-masking MNAR).

A mask is a boolean tensor with the shape of the data, ``True`` marking an *observed* entry and
``False`` a *missing* one. All simulators are vectorised over rows, reproducible through ``seed``
(or an explicit ``generator``, which takes precedence) and place their masks on the device of the
data.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "MaskedTable","apply_mask", "mar_mask", "mcar_mask", "missing_rate", "mnar_mask"]

_BISECTION_STEPS = 64


# --------------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------------


def _check_rate(rate: object, name: str = "missing_rate") -> float:
    if isinstance(rate, Tensor):
        if rate.numel() != 1 or rate.is_complex() or rate.dtype == torch.bool:
            raise TypeError(
                f"{name} must be a real scalar, got a tensor of shape {tuple(rate.shape)}"
            )
        rate = rate.item()
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(rate).__name__}")
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {rate}")
    return rate


def _check_data(x: object) -> Tensor:
    """Validate a data table and return it in a floating dtype suitable for computation."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D with shape (n, d), got shape {tuple(x.shape)}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"x must have a real numeric dtype, got {x.dtype}")
    if x.is_floating_point():
        if torch.isnan(x).any():
            raise ValueError("x contains NaN; mask simulators need fully observed data")
        if torch.isinf(x).any():
            raise ValueError("x contains infinite values; mask simulators need finite data")
        # reduced-precision floats are upcast for the calibration only; masks are boolean anyway
        return x.detach().to(torch.promote_types(x.dtype, torch.float32))
    return x.detach().to(torch.get_default_dtype())


def _check_device(device: object) -> torch.device:
    """``device`` as a :class:`torch.device` that this torch build can use, or a clear error."""
    try:
        device = torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device: {device!r} is not a torch device ({err})") from None
    try:
        torch.empty(0, device=device)
    except (AssertionError, RuntimeError) as err:
        raise ValueError(
            f"device={str(device)!r} is not available in this torch build or machine ({err}); "
            "use device='cpu' (or omit device), or install a torch build with that backend"
        ) from None
    return device


def _make_generator(
    seed: int | None, generator: torch.Generator | None, device: torch.device
) -> torch.Generator | None:
    """Return ``generator`` if given, else a fresh generator seeded with ``seed`` (or ``None``)."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != device.type:
            raise ValueError(
                f"generator is on device {generator.device} but the mask is drawn on {device}"
            )
        return generator
    if seed is None:
        return None
    if isinstance(seed, bool):
        raise TypeError("seed must be an integer, got bool")
    try:
        seed = operator.index(seed)
    except TypeError:
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}") from None
    return torch.Generator(device=device).manual_seed(seed)


def _check_shape(shape: object) -> tuple[int, ...]:
    if isinstance(shape, bool):
        raise TypeError("shape must be an int or a sequence of ints, got bool")
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    if not isinstance(shape, (Sequence, torch.Size)) or isinstance(shape, str):
        raise TypeError(f"shape must be an int or a sequence of ints, got {type(shape).__name__}")
    out = []
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise TypeError(f"shape must contain only ints, got {s!r}")
        if s < 0:
            raise ValueError(f"shape must contain non-negative sizes, got {tuple(shape)}")
        out.append(int(s))
    return tuple(out)


def _check_mask(mask: object, name: str = "mask") -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a boolean tensor (True = observed), got {mask.dtype}")
    return mask


def _always_observed_columns(always_observed: object, d: int, device: torch.device) -> Tensor:
    """Return a boolean column mask of shape ``(d,)`` selecting the always-observed columns."""
    if always_observed is None:
        cols = torch.zeros(d, dtype=torch.bool, device=device)
        cols[: max(1, d // 4)] = True
        return cols
    if isinstance(always_observed, (str, bytes)):
        raise TypeError("always_observed must be a sequence of column indices or a boolean mask")
    try:
        sel = torch.as_tensor(always_observed)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            "always_observed must be a sequence of column indices or a boolean column mask"
        ) from err
    if sel.numel() == 0:
        raise ValueError("always_observed must select at least one column")
    if sel.dim() != 1:
        raise ValueError(f"always_observed must be 1-D, got shape {tuple(sel.shape)}")
    sel = sel.to(device)
    if sel.dtype == torch.bool:
        if sel.shape[0] != d:
            raise ValueError(
                f"boolean always_observed must have length d={d}, got length {sel.shape[0]}"
            )
        cols = sel.clone()
    elif not sel.is_floating_point() and not sel.is_complex():
        if bool(((sel < -d) | (sel >= d)).any()):
            raise ValueError(f"always_observed indices must be in [-{d}, {d}), got {sel.tolist()}")
        cols = torch.zeros(d, dtype=torch.bool, device=device)
        cols[sel.long() % d] = True
    else:
        raise TypeError(
            f"always_observed must contain integer indices or booleans, got dtype {sel.dtype}"
        )
    if not bool(cols.any()):
        raise ValueError("always_observed must select at least one column")
    return cols


# --------------------------------------------------------------------------------------------------
# numerical helpers
# --------------------------------------------------------------------------------------------------


def _standardize(x: Tensor) -> Tensor:
    """Centre and scale each column to unit (population) standard deviation; constant -> 0."""
    mean = x.mean(dim=0, keepdim=True)
    std = x.std(dim=0, correction=0, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (x - mean) / std


def _calibrated_probs(logits: Tensor, target: Tensor) -> Tensor:
    """Missingness probabilities ``sigmoid(logits + c)`` with per-column intercepts ``c``.

    The intercepts are found by vectorised bisection so that every column's mean probability
    equals ``target`` (shape ``(m,)``, values in ``[0, 1]``); columns with target 0 or 1 are set
    to exactly 0 or 1.
    """
    tiny = torch.finfo(logits.dtype).eps
    t = target.clamp(tiny, 1.0 - tiny)
    base = torch.logit(t)
    # mean_i sigmoid(a_i + c) increases in c and crosses t in [logit t - max a, logit t - min a]
    lo = base - logits.amax(dim=0)
    hi = base - logits.amin(dim=0)
    for _ in range(_BISECTION_STEPS):  # iterations of the bisection, never a loop over rows
        mid = 0.5 * (lo + hi)
        too_high = torch.sigmoid(logits + mid).mean(dim=0) > t
        hi = torch.where(too_high, mid, hi)
        lo = torch.where(too_high, lo, mid)
    probs = torch.sigmoid(logits + 0.5 * (lo + hi))
    probs = torch.where(target <= 0, torch.zeros_like(probs), probs)
    return torch.where(target >= 1, torch.ones_like(probs), probs)


def _draw_observed(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """Draw an observed-mask where each entry is missing with probability ``probs``."""
    u = torch.rand(probs.shape, generator=generator, dtype=probs.dtype, device=probs.device)
    return u >= probs


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def mcar_mask(
    shape: int | Sequence[int] | torch.Size,
    missing_rate: float,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Missing-completely-at-random mask: each entry is missing independently.

    :param shape: shape of the mask, usually ``(n, d)``.
    :param missing_rate: probability that an entry is missing, in ``[0, 1)``.
    :param seed: seed of a fresh :class:`torch.Generator` (ignored if ``generator`` is given).
    :param generator: random generator to use; overrides ``seed``.
    :param device: device of the mask (default: the generator's device, else CPU).
    :returns: boolean tensor of shape ``shape``, ``True`` where observed.
    :raises TypeError: if ``shape``, ``missing_rate``, ``seed`` or ``generator`` has a wrong type.
    :raises ValueError: if ``missing_rate`` is not in ``[0, 1)``, ``shape`` has a negative size,
        or ``device`` is not available (e.g. ``"cuda"`` without CUDA).
    """
    shape = _check_shape(shape)
    rate = _check_rate(missing_rate)
    if device is None:
        device = generator.device if isinstance(generator, torch.Generator) else torch.device("cpu")
    device = _check_device(device)
    gen = _make_generator(seed, generator, device)
    u = torch.rand(shape, generator=gen, device=device)
    return u >= rate


def mar_mask(
    x: Tensor,
    missing_rate: float,
    *,
    always_observed: Sequence[int] | Sequence[bool] | Tensor | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Missing-at-random mask driven by a set of always-observed columns.

    The always-observed columns (default: the first ``max(1, d // 4)``) are never missing. Every
    other column :math:`j` is missing in row :math:`i` with probability
    :math:`\sigma(w_j^\top \tilde x_{i,\mathrm{obs}} + c_j)`, where :math:`\tilde x_{\mathrm{obs}}`
    are the standardized always-observed columns, :math:`w_j \sim \mathcal N(0, I / k)` are random
    weights (``k`` always-observed columns) and the intercepts :math:`c_j` are calibrated by
    bisection so that each such column is missing at rate ``missing_rate * d / (d - k)``; the
    expected missing rate over all entries of the table is then ``missing_rate``.

    :param x: fully observed data, shape ``(n, d)``.
    :param missing_rate: expected fraction of missing entries over the whole table, in ``[0, 1)``.
    :param always_observed: column indices, or a boolean column mask of length ``d``.
    :param seed: seed of a fresh :class:`torch.Generator` (ignored if ``generator`` is given).
    :param generator: random generator to use (on ``x``'s device); overrides ``seed``.
    :returns: boolean tensor of shape ``(n, d)`` on ``x``'s device, ``True`` where observed.
    :raises TypeError: if ``x`` is not a real tensor or an argument has a wrong type.
    :raises ValueError: if ``x`` is not 2-D or contains NaN/inf, ``missing_rate`` is not in
        ``[0, 1)``, ``always_observed`` is invalid, or the rate needed on the remaining columns,
        ``missing_rate * d / (d - k)``, exceeds 1.
    """
    xf = _check_data(x)
    rate = _check_rate(missing_rate)
    n, d = xf.shape
    device = xf.device
    cols = _always_observed_columns(always_observed, d, device)
    k = int(cols.sum())
    m = d - k
    if rate > 0 and m == 0:
        raise ValueError(
            f"missing_rate={rate} is impossible: all d={d} columns are always observed"
        )
    col_rate = rate * d / m if m > 0 else 0.0
    if col_rate > 1.0 + 1e-12:
        raise ValueError(
            f"missing_rate={rate} needs a rate of missing_rate * d / (d - k) = {col_rate:.4g} > 1 "
            f"on the {m} non-always-observed columns (d={d}, k={k})"
        )
    col_rate = min(col_rate, 1.0)
    gen = _make_generator(seed, generator, device)
    weights = torch.randn((k, m), generator=gen, dtype=xf.dtype, device=device) / math.sqrt(k)
    mask = torch.ones((n, d), dtype=torch.bool, device=device)
    if n == 0 or m == 0:
        return mask
    logits = _standardize(xf[:, cols]) @ weights
    target = torch.full((m,), col_rate, dtype=xf.dtype, device=device)
    mask[:, ~cols] = _draw_observed(_calibrated_probs(logits, target), gen)
    return mask


def mnar_mask(
    x: Tensor,
    missing_rate: float,
    *,
    strength: float = 2.0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Self-masking missing-not-at-random mask.

    Entry :math:`(i, j)` is missing with probability :math:`\sigma(s\, z_{ij} + c_j)`, where
    :math:`z_{ij}` is :math:`x_{ij}` standardized within column :math:`j`, :math:`s` is
    ``strength`` (positive: larger values are more likely missing) and the intercepts
    :math:`c_j` are calibrated by bisection so that every column's expected missing rate equals
    ``missing_rate``.

    :param x: fully observed data, shape ``(n, d)``.
    :param missing_rate: expected missing rate of every column, in ``[0, 1)``.
    :param strength: slope of the self-masking logistic; 0 gives MCAR, negative values make
        smaller values more likely missing.
    :param seed: seed of a fresh :class:`torch.Generator` (ignored if ``generator`` is given).
    :param generator: random generator to use (on ``x``'s device); overrides ``seed``.
    :returns: boolean tensor of shape ``(n, d)`` on ``x``'s device, ``True`` where observed.
    :raises TypeError: if ``x`` is not a real tensor or an argument has a wrong type.
    :raises ValueError: if ``x`` is not 2-D or contains NaN/inf, ``missing_rate`` is not in
        ``[0, 1)`` or ``strength`` is not finite.
    """
    xf = _check_data(x)
    rate = _check_rate(missing_rate)
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise TypeError(f"strength must be a real number, got {type(strength).__name__}")
    strength = float(strength)
    if not math.isfinite(strength):
        raise ValueError(f"strength must be finite, got {strength}")
    n, d = xf.shape
    device = xf.device
    gen = _make_generator(seed, generator, device)
    if n == 0 or d == 0:
        return torch.ones((n, d), dtype=torch.bool, device=device)
    logits = strength * _standardize(xf)
    target = torch.full((d,), rate, dtype=xf.dtype, device=device)
    return _draw_observed(_calibrated_probs(logits, target), gen)


def apply_mask(x: Tensor, mask: Tensor) -> Tensor:
    """Return a copy of ``x`` with NaN in the missing entries.

    :param x: floating-point data.
    :param mask: boolean mask of the same shape as ``x``, ``True`` where observed.
    :returns: a new tensor equal to ``x`` where ``mask`` is ``True`` and NaN elsewhere.
    :raises TypeError: if ``x`` is not a floating tensor or ``mask`` is not a boolean tensor.
    :raises ValueError: if the shapes of ``x`` and ``mask`` differ.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must have a floating dtype to hold NaN, got {x.dtype}")
    mask = _check_mask(mask)
    if mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match x shape {tuple(x.shape)}")
    return x.masked_fill(~mask.to(x.device), float("nan"))


def missing_rate(mask: Tensor) -> float:
    """Fraction of missing (``False``) entries in a mask.

    :param mask: boolean mask, ``True`` where observed.
    :returns: number of missing entries divided by the number of entries.
    :raises TypeError: if ``mask`` is not a boolean tensor.
    :raises ValueError: if ``mask`` is empty.
    """
    mask = _check_mask(mask)
    if mask.numel() == 0:
        raise ValueError("mask is empty; its missing rate is undefined")
    return float((~mask).sum().item()) / mask.numel()


class MaskedTable:
    """Mixin for simulated problems holding a complete table ``x`` ``(n, d)`` and a boolean
    ``mask`` of its shape (True = observed): the sizes, the masked table and its realised
    missing rate."""

    x: Tensor
    mask: Tensor

    @property
    def n(self) -> int:
        """Number of rows."""
        return int(self.x.shape[0])

    @property
    def d(self) -> int:
        """Dimension."""
        return int(self.x.shape[1])

    @property
    def observed(self) -> Tensor:
        """The masked table, NaN where missing."""
        return apply_mask(self.x, self.mask)

    @property
    def realised_missing_rate(self) -> float:
        """Fraction of entries that are actually missing."""
        return float((~self.mask).float().mean())

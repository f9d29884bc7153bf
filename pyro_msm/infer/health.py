r"""Fit health: nothing silent.

A score-matching fit can fail without crashing: importance weights can collapse onto one draw,
a loss can turn non-finite or climb by orders of magnitude, data on a scale of :math:`10^{20}`
can overflow ``float32``. :class:`FitHealth` watches one fit and says so, once, with the
remedy. :class:`~pyro_msm.infer.MissingScoreMatching` runs one by default (option
``health=``); :class:`~pyro_msm.graphical.GraphicalScoreMatching`, the command line or a
hand-written loop can run the same checks through :meth:`FitHealth.check_step`.

The checks and their defaults:

- **Degenerate importance weights** (``"iw"``, ``"em"``, ``"hybrid"``): a
  :class:`FitHealthWarning` when, for ``patience`` consecutive steps, the mean effective sample
  size :math:`1/\sum_k w_k^2` of the rows with a missing coordinate is below
  ``ess_fraction * r`` (default 0.2, i.e. 2 of ``r = 10``), or at least ``collapsed_share``
  (default 50%) of those rows have an ESS below ``collapsed_ess`` (default 1.5; checked only
  when ``r`` exceeds ``2 * collapsed_ess``). Such a loss is dominated by single draws and can be
  orders of magnitude off the marginal loss (the paper's wide proposal at d=20, 60% MCAR: ESS
  1.00 of 10 and a loss of +1.4e6 where the exact one is -4.0e4).
- **Non-finite values**: a :class:`FitHealthError` at the first non-finite loss, naming the data
  sites whose rows are non-finite, the parameters that are non-finite, and (after a backward
  pass) the parameters whose gradient is not finite. It is raised before the optimiser moves,
  so the parameters of the last finite step are kept.
- **Divergence**: a :class:`FitHealthWarning` when the loss rises above the best value seen by
  more than ``divergence_factor`` (default 100) times the typical magnitude (median absolute
  value) of the first ``warmup`` (default 5) losses, or of those seen so far when fewer.
- **Data scale**: a :class:`FitHealthError` when an observed entry is so large that its fourth
  power overflows the data's dtype (float32: about :math:`1.8\times 10^{9}`), which turns every
  estimator's loss or proposal into NaN; a :class:`FitHealthWarning` above ``data_scale``
  (default :math:`10^6`). The remedy is to standardise the columns.

Every check can be switched off (``MissingScoreMatching(health=False)``) or tuned
(``health=FitHealth(ess_fraction=0.1)``); warnings are :class:`FitHealthWarning` (a
``UserWarning``) so they can be filtered by class.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import pyro
import torch
from torch import Tensor

from .sites import memo

__all__ = ["FitHealth", "FitHealthWarning", "FitHealthError", "make_health", "parameter_names"]


class FitHealthWarning(UserWarning):
    """A fit that runs but should not be trusted as it is (degenerate weights, divergence,
    badly scaled data)."""


class FitHealthError(RuntimeError):
    """A fit that cannot go on: a non-finite loss, parameter or gradient, or data that
    overflow their dtype."""


def _norms_finite(grads: list[Tensor]) -> bool:
    """Whether the 2-norm of every tensor in ``grads`` is finite (False whenever an entry is
    NaN or infinite), in one read of the device: the per-tensor norms of one fused kernel,
    stacked, when the tensors share a device, dtype and dense layout (measured: 14 us against
    24 us for :func:`torch.nn.utils.get_total_norm` over an MLP's 6 gradients, which also
    sums the squared norms); else the total norm's."""
    first = grads[0]
    if all(
        g.device == first.device and g.dtype == first.dtype and g.layout == torch.strided
        for g in grads
    ):
        return bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())
    return bool(torch.nn.utils.get_total_norm(grads).isfinite())


def parameter_names(params: Iterable[Tensor]) -> dict[int, str]:
    """Names of tensors in Pyro's param store (unconstrained values, as the optimiser sees
    them), keyed by ``id``; parameters outside the store get ``"parameter #i (shape)"``."""
    store = pyro.get_param_store()
    names = {id(p): name for name, p in store.named_parameters()}
    out = {}
    for i, p in enumerate(params):
        out[id(p)] = names.get(id(p), f"parameter #{i} {tuple(p.shape)}")
    return out


@dataclass
class FitHealth:
    """The health monitor of one fit (see the module documentation for the checks).

    :param ess_fraction: warn when the mean ESS stays below this fraction of the particles.
    :param collapsed_ess: a row's weights count as collapsed below this ESS.
    :param collapsed_share: warn when this share of rows (with a missing coordinate) collapsed.
    :param patience: consecutive steps an ESS condition must hold before the warning.
    :param divergence_factor: warn when the loss exceeds its best value by this many times the
        magnitude of the first ``warmup`` losses.
    :param warmup: losses that set the magnitude for the divergence check.
    :param data_scale: warn when an observed entry exceeds this in absolute value.
    :param check_gradients: after a backward pass, raise on a non-finite gradient.
    :param enabled: False turns every check off.
    """

    ess_fraction: float = 0.2
    collapsed_ess: float = 1.5
    collapsed_share: float = 0.5
    patience: int = 5
    divergence_factor: float = 100.0
    warmup: int = 5
    data_scale: float = 1e6
    check_gradients: bool = True
    enabled: bool = True
    _warned: set = field(default_factory=set, init=False, repr=False)
    _ess_streak: int = field(default=0, init=False, repr=False)
    _early: list = field(default_factory=list, init=False, repr=False)
    _best: float = field(default=math.inf, init=False, repr=False)
    _steps: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.ess_fraction <= 1.0:
            raise ValueError(f"FitHealth: ess_fraction must be in [0, 1], got {self.ess_fraction}")
        if not 0.0 < self.collapsed_share <= 1.0:
            raise ValueError(
                f"FitHealth: collapsed_share must be in (0, 1], got {self.collapsed_share}"
            )
        if int(self.patience) < 1 or int(self.warmup) < 1:
            raise ValueError("FitHealth: patience and warmup must be at least 1")
        if not self.divergence_factor > 0 or not self.data_scale > 0:
            raise ValueError("FitHealth: divergence_factor and data_scale must be positive")

    # -- helpers --------------------------------------------------------------------------------
    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(message, FitHealthWarning, stacklevel=4)

    def reset(self) -> None:
        """Forget the history (a new fit); warnings given so far may be given again."""
        self._warned.clear()
        self._ess_streak = 0
        self._early.clear()
        self._best = math.inf
        self._steps = 0

    # -- data -------------------------------------------------------------------------------------
    def check_data(self, site: str, data: Tensor, mask: Tensor) -> None:
        """Refuse observed entries whose fourth power overflows the dtype; warn above
        ``data_scale``.

        :param site: the data site's name (for the message).
        :param data: ``(n, d)`` with missing entries zero-filled; :param mask: True = observed.
        """
        if not self.enabled or not data.is_floating_point():
            return
        if not data.numel():
            return
        largest = memo(
            data,
            "largest_observed",
            lambda: float(torch.where(mask, data, torch.zeros_like(data)).abs().amax()),
        )
        limit = torch.finfo(data.dtype).max ** 0.25
        if largest > limit:
            raise FitHealthError(
                f"site '{site}': an observed entry is {largest:.3g} in {data.dtype}; squares and "
                f"higher powers of entries beyond {limit:.3g} overflow, so every estimator would "
                "return NaN. Standardise the columns ((x - mean) / std, e.g. with "
                "pyro_msm.tables or sklearn's StandardScaler) or use float64"
            )
        if largest > self.data_scale:
            self._warn(
                f"scale:{site}",
                f"site '{site}': observed entries reach {largest:.3g}; score-matching losses grow "
                "with the square of the data's scale and lose precision. Standardise the columns "
                "((x - mean) / std); tune or silence with health=FitHealth(data_scale=...)",
            )

    # -- importance weights ---------------------------------------------------------------------
    def check_ess(
        self,
        ess: Tensor,
        num_particles: int,
        site: str | None = None,
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """Record the per-row ESS of one step and warn (once) when the weights are degenerate.

        :param ess: ``(rows,)`` effective sample sizes of the rows with a missing coordinate.
        :param num_particles: ``r``, the particles per row.
        :param site: the data site's name (for the message).
        :param reduce: sums the ESS summary over processes (e.g.
            :func:`pyro_msm.distributed.all_reduce_sum`), so every rank judges all ranks' rows
            alike; a collective call, made even when this rank's ``ess`` is empty.
        """
        if not self.enabled or (reduce is None and ess.numel() == 0):
            return
        r = int(num_particles)
        ess = ess.detach()
        collapsed = (ess < self.collapsed_ess).to(ess.dtype)
        sums = torch.stack([ess.sum(), collapsed.sum(), ess.new_tensor(ess.numel())])
        if reduce is not None:
            sums = reduce(sums)
        total, low, count = sums.tolist()
        if count == 0:
            return
        mean, share = total / count, low / count
        low_mean = mean < self.ess_fraction * r
        check_share = r > 2 * self.collapsed_ess
        low_share = check_share and share >= self.collapsed_share
        self._ess_streak = self._ess_streak + 1 if (low_mean or low_share) else 0
        if self._ess_streak >= int(self.patience):
            where = f"site '{site}': " if site else ""
            self._warn(
                "ess",
                f"{where}importance weights are degenerate: mean effective sample size "
                f"{mean:.2f} of r={r} particles, and {100 * share:.0f}% of the rows with a "
                f"missing coordinate have an ESS below {self.collapsed_ess} (for "
                f"{self._ess_streak} steps). The loss is then dominated by single draws and can "
                "be far from the marginal loss. Remedies: the default proposal='moment_matched' "
                "(or a GaussianConditionalProposal fitted to the whole table), "
                "estimator='hybrid' with a trained guide, more particles (num_particles), or "
                "standardised data; thresholds: health=FitHealth(ess_fraction=..., "
                "collapsed_share=...)",
            )

    # -- loss, parameters, gradients ---------------------------------------------------------------
    def check_step(
        self,
        value: float,
        params: Iterable[Tensor] = (),
        *,
        site_losses: Mapping[str, Tensor] | None = None,
        gradients: bool = False,
        divergence: bool = True,
        names: Mapping[int, str] | None = None,
    ) -> None:
        """Check one step's loss (and parameters): raise at the first non-finite value, warn
        once when the loss diverges.

        :param value: the step's loss value.
        :param params: the parameters the step touched (for the non-finite diagnosis and, with
            ``gradients``, the gradient check).
        :param site_losses: per-site, per-row loss tensors of the step (detached), to name the
            site where the loss became non-finite.
        :param gradients: also check the ``.grad`` of ``params`` (after a backward pass).
        :param divergence: feed ``value`` to the divergence check (False for a second check of
            the same step).
        :param names: names of the parameters keyed by ``id`` (default: Pyro's param store).
        :raises FitHealthError: on a non-finite loss, parameter or gradient.
        """
        if not self.enabled:
            return
        params = list(params)
        if not math.isfinite(value):
            raise FitHealthError(self._diagnose(value, params, site_losses, names))
        if gradients and self.check_gradients and params:
            grads = [p.grad for p in params if p.grad is not None]
            # one fused norm per gradient, read together (a non-finite entry makes its norm
            # non-finite); only then each gradient is checked, which also tells an overflow of
            # a norm itself (every entry finite) from a non-finite gradient
            bad = []
            if grads and not _norms_finite(grads):
                names = parameter_names(params) if names is None else names
                bad = [
                    names.get(id(p), "?")
                    for p in params
                    if p.grad is not None and not bool(p.grad.isfinite().all())
                ]
            if bad:
                raise FitHealthError(
                    f"the loss is finite ({value:.6g}) but the gradient of {', '.join(bad)} is "
                    "not: a derivative overflowed. Lower the learning rate, standardise the "
                    "data, or constrain the parameter (e.g. precision_tril with "
                    "constraints.lower_cholesky)"
                )
        if divergence:
            self._check_divergence(value)

    def _check_divergence(self, value: float) -> None:
        self._steps += 1
        if self._early:  # the scale of the losses before this one (at most the first warmup)
            scale = max(statistics.median(self._early), torch.finfo(torch.float64).tiny)
            if value - self._best > self.divergence_factor * scale:
                self._warn(
                    "divergence",
                    f"the loss is diverging: {value:.6g} at step {self._steps}, against a best "
                    f"of {self._best:.6g} and a typical early magnitude of {scale:.3g} (a rise "
                    f"of more than {self.divergence_factor:g} times). Lower the learning rate, "
                    "standardise the data, or check the ESS (loss.diagnostics['ess']); tune "
                    "with health=FitHealth(divergence_factor=...)",
                )
        if len(self._early) < int(self.warmup):
            self._early.append(abs(value))
        self._best = min(self._best, value)

    def _diagnose(
        self,
        value: float,
        params: list[Tensor],
        site_losses: Mapping[str, Tensor] | None,
        names: Mapping[int, str] | None,
    ) -> str:
        parts = [f"the loss is {value} at step {self._steps + 1}"]
        names = parameter_names(params) if names is None else names
        bad_params = [
            names.get(id(p), "?") for p in params if not bool(p.detach().isfinite().all())
        ]
        if bad_params:
            parts.append(f"non-finite parameter(s): {', '.join(bad_params)}")
        for site, rows in (site_losses or {}).items():
            bad = ~rows.detach().isfinite()
            if bool(bad.any()):
                parts.append(f"site '{site}': {int(bad.sum())} of {bad.numel()} rows non-finite")
        parts.append(
            "remedies: re-initialise non-finite parameters, lower the learning rate, standardise "
            "the data, keep precisions positive definite (precision_tril with "
            "constraints.lower_cholesky)"
        )
        return "; ".join(parts)


def make_health(health: bool | FitHealth | None) -> FitHealth:
    """Resolve the ``health`` option of the losses: True (defaults), False/None (off) or a
    :class:`FitHealth`."""
    if isinstance(health, FitHealth):
        return health
    if health is None or isinstance(health, bool):
        return FitHealth(enabled=bool(health))
    raise TypeError(
        f"health must be True, False or a pyro_msm.infer.FitHealth, got {type(health).__name__}"
    )

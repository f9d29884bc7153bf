r"""The pieces every experiment shares: one fitting loop and multi-seed summaries.

:func:`run_svi` is the training loop of :func:`~pyro_msm.experiments.gaussian.fit_gaussian`,
:func:`~pyro_msm.experiments.truncated.truncated` and
:func:`~pyro_msm.experiments.interaction.interaction`: full-batch :class:`pyro.infer.SVI` with
Adam, *model updates* counted the same way for every estimator (for the guided estimators
``"variational"`` and ``"hybrid"`` each model update is followed by ``guide_steps`` guide
updates), Polyak-Ruppert averaging of the last iterates, and a fit that blows up (a non-finite
loss or parameter, or an exception such as a failed Cholesky factorisation) recorded as
*diverged* instead of ending the experiment.

:func:`summarise` turns the tidy rows of an experiment (one per method, setting and seed) into
mean, standard deviation, median and range over seeds, counting diverged runs separately so a
blow-up is reported rather than hidden; :func:`format_summary` prints them.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.optim
import torch
from pyro.infer import SVI
from torch import Tensor

from ..guides import AmortizedNormal, no_guide
from ..infer import MissingScoreMatching
from ..infer.objectives import Objective
from ..infer.score_matching import GUIDED

__all__ = [
    "Fit",
    "fit_model",
    "run_svi",
    "summarise",
    "format_summary",
    "mean_sd",
    "write_rows",
    "read_rows",
    "head_to_head",
]


@dataclass
class Fit:
    """The outcome of :func:`run_svi`.

    :ivar label: name of the method.
    :ivar estimator: the :class:`~pyro_msm.infer.MissingScoreMatching` estimator.
    :ivar estimate: name -> averaged parameter value (float64, detached), from ``snapshot``;
        NaN-filled when the fit diverged before any iterate was averaged.
    :ivar losses: loss per row after each model update.
    :ivar ess: mean effective sample size after each model update (IW, EM, hybrid).
    :ivar seconds: wall-clock time.
    :ivar svi_steps: SVI steps taken (model and guide steps).
    :ivar error: why the fit stopped early ("" when it ran to the end).
    """

    label: str
    estimator: str
    estimate: dict[str, Tensor]
    losses: list[float] = field(default_factory=list)
    ess: list[float] = field(default_factory=list)
    seconds: float = 0.0
    svi_steps: int = 0
    error: str = ""

    @property
    def diverged(self) -> bool:
        """True when the fit stopped on a non-finite value or an exception."""
        return bool(self.error)

    @property
    def mean_ess(self) -> float:
        """Mean of :attr:`ess` over the run (NaN when the estimator has no weights)."""
        return float(sum(self.ess) / len(self.ess)) if self.ess else math.nan


def _finite(values: dict[str, Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in values.values())


def run_svi(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    loss_fn: MissingScoreMatching,
    data: Tensor,
    mask: Tensor | None,
    snapshot: Callable[[], dict[str, Tensor]],
    *,
    steps: int = 400,
    lr: float = 0.02,
    average: float = 0.5,
    seed: int = 0,
    label: str | None = None,
    progress: bool = False,
) -> Fit:
    """Fit ``model`` by SVI on ``loss_fn`` for ``steps`` model updates.

    The global Pyro parameter store is *not* cleared (the caller builds the model, possibly
    from initial values, after clearing it); the RNG is seeded with ``seed``. For the guided
    estimators (``"variational"``, ``"hybrid"``) the loop takes ``steps * (guide_steps + 1)`` SVI
    steps and keeps the losses of model steps only.

    :param model: the Pyro model, called as ``model(data, mask)``.
    :param guide: its guide (:func:`~pyro_msm.guides.no_guide` for unguided estimators).
    :param loss_fn: the loss.
    :param data: ``(n, d)`` table; NaN may mark missing entries when ``mask`` is None.
    :param mask: boolean ``(n, d)``, True where observed, or None.
    :param snapshot: returns the current parameters of interest (float64, detached), e.g.
        ``{"precision": ...}``; called after each of the averaged model updates.
    :param steps: model updates.
    :param lr: Adam learning rate.
    :param average: fraction of the run, at its end, whose iterates are averaged into
        :attr:`Fit.estimate` (Polyak-Ruppert; with a constant learning rate the last iterate of
        a stochastic estimator jitters around its optimum). ``0`` keeps the last iterate.
    :param seed: RNG seed.
    :param label: name of the method (default: the estimator).
    :param progress: show a tqdm progress bar.
    :returns: a :class:`Fit`. A non-finite loss or snapshot, or an exception raised by a step
        (``ValueError``, ``RuntimeError``), stops the fit with :attr:`Fit.error` set; the
        estimate is then the average of the iterates seen so far, or NaN if there were none.
    :raises ValueError: for non-positive ``steps`` or ``average`` outside ``[0, 1]``.
    """
    from tqdm import tqdm

    if int(steps) < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not 0.0 <= average <= 1.0:
        raise ValueError(f"average must be in [0, 1], got {average}")
    estimator = loss_fn.estimator
    label = estimator if label is None else label
    n = data.shape[0]
    pyro.set_rng_seed(int(seed))
    guided = estimator in GUIDED
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), loss_fn)
    cycle = loss_fn.guide_steps + 1 if guided else 1
    first_averaged = int(steps) - max(1, math.ceil(average * int(steps)))
    sums: dict[str, Tensor] = {}
    count = 0
    fit = Fit(label=label, estimator=estimator, estimate={})
    bar = tqdm(total=int(steps), desc=f"{label:>15}", disable=not progress, leave=True)
    start = time.perf_counter()
    try:
        for _ in range(int(steps) * cycle):
            value = svi.step(data, mask)
            fit.svi_steps += 1
            if guided and loss_fn.diagnostics.get("step") != "model":
                continue
            if not math.isfinite(value):
                fit.error = f"non-finite loss at model update {len(fit.losses) + 1}"
                break
            fit.losses.append(value / n)
            if "ess" in loss_fn.diagnostics:
                fit.ess.append(loss_fn.diagnostics["ess"])
            if len(fit.losses) > first_averaged:
                current = snapshot()
                if not _finite(current):
                    fit.error = f"non-finite parameters at model update {len(fit.losses)}"
                    break
                for key, val in current.items():
                    sums[key] = sums[key] + val if key in sums else val.clone()
                count += 1
            bar.update(1)
            if bar.n % 10 == 0 or bar.n == steps:
                postfix = {"loss": f"{value / n:.4g}"}
                if fit.ess:
                    postfix["ess"] = f"{fit.ess[-1]:.2f}/{loss_fn.num_particles}"
                bar.set_postfix(postfix, refresh=False)
    except (ValueError, RuntimeError) as err:  # e.g. a Cholesky of a non-PD matrix after a blow-up
        fit.error = f"{type(err).__name__} at model update {len(fit.losses) + 1}: {err}"[:200]
    finally:
        bar.close()
    fit.seconds = time.perf_counter() - start
    if count:
        fit.estimate = {key: val / count for key, val in sums.items()}
    else:
        fit.estimate = {key: torch.full_like(val, math.nan) for key, val in snapshot().items()}
    return fit


def fit_model(
    model: Callable[..., Any],
    data: Tensor,
    mask: Tensor | None,
    estimator: str,
    snapshot: Callable[[], dict[str, Tensor]],
    *,
    num_particles: int = 10,
    proposal: str = "moment_matched",
    objective: str | Objective = "exact",
    guide_steps: int = 10,
    guide_particles: int = 1,
    make_guide: Callable[[Callable[..., Any]], Callable[..., Any]] = AmortizedNormal,
    **kwargs: Any,
) -> Fit:
    """Build the loss (and, for ``"variational"``/``"hybrid"``, the guide) of one estimator and
    fit ``model`` with :func:`run_svi`.

    :param model: the Pyro model ``model(data, mask)`` with one plate ``"rows"`` around its
        :func:`~pyro_msm.observe` site; its parameters must already be initialised as wanted.
    :param estimator: one of :data:`pyro_msm.infer.ESTIMATORS`.
    :param snapshot: current parameters of interest (see :func:`run_svi`).
    :param num_particles: particles per row (IW, EM, and model steps of the guided estimators).
    :param proposal: IW/EM proposal.
    :param objective: ``"exact"``, ``"sliced"``, ``"denoising"``, ``"truncated"`` or an
        :class:`~pyro_msm.infer.objectives.Objective`.
    :param guide_steps: guide steps per model step of the guided estimators.
    :param guide_particles: completions per row on guide steps.
    :param make_guide: ``model -> guide`` for the guided estimators (default: the paper's
        :class:`~pyro_msm.guides.AmortizedNormal`).
    :param kwargs: passed to :func:`run_svi` (``steps``, ``lr``, ``average``, ``seed``,
        ``label``, ``progress``).
    :returns: the :class:`Fit`.
    """
    guide = make_guide(model) if estimator in GUIDED else no_guide
    loss_fn = MissingScoreMatching(
        estimator,
        num_particles=num_particles,
        proposal=proposal,
        objective=objective,
        guide_steps=guide_steps,
        guide_particles=guide_particles,
        max_plate_nesting=1,  # the plate "rows"
    )
    return run_svi(model, guide, loss_fn, data, mask, snapshot, **kwargs)


# --------------------------------------------------------------------------------------------------
# summaries over seeds
# --------------------------------------------------------------------------------------------------


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value, NaN for none)."""
    values = list(values)
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(
    rows: Sequence[dict[str, Any]],
    by: Sequence[str],
    metrics: Sequence[str],
) -> list[dict[str, Any]]:
    """Aggregate tidy rows over seeds.

    Rows are grouped by the keys ``by`` (in order of first appearance). For each metric ``m``
    the summary has ``m_mean``, ``m_sd``, ``m_median``, ``m_min`` and ``m_max`` over the runs
    whose value is finite and that did not diverge (``row["diverged"]``), and ``runs`` and
    ``diverged`` counts, so a blow-up is counted, not averaged in.

    :param rows: dicts with the keys ``by``, the ``metrics`` and optionally ``"diverged"``.
    :param by: grouping keys, e.g. ``("n", "method")``.
    :param metrics: numeric keys to aggregate.
    :returns: one dict per group.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key, members in groups.items():
        summary: dict[str, Any] = dict(zip(by, key, strict=True))
        ok = [r for r in members if not r.get("diverged", False)]
        summary["runs"] = len(members)
        summary["diverged"] = len(members) - len(ok)
        for m in metrics:
            values = [float(r[m]) for r in ok if math.isfinite(float(r[m]))]
            mean, sd = mean_sd(values)
            summary[f"{m}_mean"] = mean
            summary[f"{m}_sd"] = sd
            summary[f"{m}_median"] = statistics.median(values) if values else math.nan
            summary[f"{m}_min"] = min(values) if values else math.nan
            summary[f"{m}_max"] = max(values) if values else math.nan
        out.append(summary)
    return out


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.4g}"


def format_summary(
    summary: Sequence[dict[str, Any]],
    by: Sequence[str],
    metrics: Sequence[str | tuple[str, str]],
    *,
    medians: Sequence[str] | None = None,
) -> str:
    """A text table of :func:`summarise`'s output: the ``by`` columns, then per metric
    ``mean ± sd`` (and the median for the keys in ``medians``), then diverged runs out of all
    runs. A metric with no finite value shows ``-``.

    :param summary: output of :func:`summarise`.
    :param by: the grouping keys to show.
    :param metrics: metric keys, or ``(key, header)`` pairs.
    :param medians: keys that get a median column (default: every metric).
    :returns: the table, without a trailing newline.
    """
    from .gaussian import format_table

    pairs = [(m, m) if isinstance(m, str) else m for m in metrics]
    with_median = {k for k, _ in pairs} if medians is None else set(medians)
    cols: list[str | tuple[str, str]] = list(by)
    table = []
    for s in summary:
        row = {k: s[k] for k in by}
        for key, _ in pairs:
            mean, sd = s[f"{key}_mean"], s[f"{key}_sd"]
            row[f"{key}:ms"] = "-" if not math.isfinite(mean) else f"{_fmt(mean)} ± {_fmt(sd)}"
            row[f"{key}:med"] = _fmt(s[f"{key}_median"])
        row["div"] = f"{s['diverged']}/{s['runs']}"
        table.append(row)
    for key, header in pairs:
        cols.append((f"{key}:ms", f"{header} mean ± sd"))
        if key in with_median:
            cols.append((f"{key}:med", "median"))
    cols.append(("div", "diverged"))
    return format_table(table, cols)


def head_to_head(
    rows: Sequence[dict[str, Any]],
    method: str,
    rivals: Sequence[str],
    metric: str = "fisher",
    setting: Sequence[str] = ("d", "n", "missing_rate"),
) -> list[dict[str, Any]]:
    """Per setting, on how many seeds ``method`` has a lower ``metric`` than *every* rival.

    Runs are paired by seed (each seed is one data set that every method saw). A diverged or
    non-finite rival counts as beaten; a diverged or non-finite ``method`` as losing.

    :param rows: tidy rows with ``"method"``, ``"seed"``, the ``setting`` keys and ``metric``.
    :param method: the method under test (e.g. ``"hybrid"``).
    :param rivals: the methods it must beat (e.g. ``("iw", "variational")``).
    :param metric: lower is better.
    :param setting: keys identifying a setting.
    :returns: one dict per setting: the setting keys, ``seeds``, ``wins`` (seeds where
        ``method`` beats every rival), and for each rival ``r``: ``ratio_r_median``, the median
        over seeds with both finite of ``metric(method) / metric(r)``, and ``beats_r``, the
        seeds where ``method`` beats ``r``.
    """

    def value(r: dict[str, Any]) -> float:
        v = float(r[metric])
        return math.inf if r.get("diverged", False) or not math.isfinite(v) else v

    index = {(tuple(r[k] for k in setting), r["seed"], r["method"]): r for r in rows}
    settings = list(dict.fromkeys(tuple(r[k] for k in setting) for r in rows))
    out = []
    for key in settings:
        seeds = sorted({sd for (k, sd, m) in index if k == key and m == method})
        seeds = [sd for sd in seeds if all((key, sd, r) in index for r in rivals)]
        if not seeds:
            continue
        summary: dict[str, Any] = dict(zip(setting, key, strict=True))
        summary["seeds"] = len(seeds)
        wins = 0
        for sd in seeds:
            mine = value(index[(key, sd, method)])
            wins += all(mine < value(index[(key, sd, r)]) for r in rivals)
        summary["wins"] = wins
        for rival in rivals:
            pairs = [
                (value(index[(key, sd, method)]), value(index[(key, sd, rival)])) for sd in seeds
            ]
            summary[f"beats_{rival}"] = sum(a < b for a, b in pairs)
            ratios = [a / b for a, b in pairs if math.isfinite(a) and math.isfinite(b) and b > 0]
            summary[f"ratio_{rival}_median"] = statistics.median(ratios) if ratios else math.nan
        out.append(summary)
    return out


def write_rows(rows: Sequence[dict[str, Any]], path: str) -> None:
    """Write tidy rows to a CSV file (columns: the union of the rows' keys, in order)."""
    import csv

    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path: str) -> list[dict[str, Any]]:
    """Read rows written by :func:`write_rows`, converting numbers and booleans back."""
    import csv

    def convert(value: str) -> Any:
        if value in ("True", "False"):
            return value == "True"
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
        return value

    with open(path, newline="") as fh:
        return [{k: convert(v) for k, v in r.items()} for r in csv.DictReader(fh)]

"""Tidy result rows: summaries over seeds, CSV files and the experiment registry of
``pyro-msm reproduce``."""

from __future__ import annotations

import csv
import math
import os
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Experiment",
    "mean_sd",
    "summarise",
    "format_summary",
    "head_to_head",
    "write_csv",
    "read_csv",
]

Row = dict[str, Any]


@dataclass(frozen=True)
class Experiment:
    """One reproducible experiment of ``pyro-msm reproduce``.

    :ivar name: the command-line name.
    :ivar description: one line for ``--list``.
    :ivar run: ``run(full=False, seed=0, progress=True) -> rows`` (tidy dicts, one per fit).
    :ivar plot: ``plot(rows, path)`` saving a PNG.
    :ivar summarise: ``summarise(rows) -> rows`` for the printed table.
    :ivar columns: columns of the printed table (keys or ``(key, header)`` pairs).
    """

    name: str
    description: str
    run: Callable[..., list[Row]]
    plot: Callable[[Sequence[Row], str], None]
    summarise: Callable[[Sequence[Row]], list[Row]]
    columns: tuple[Any, ...]


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the non-NaN values (NaN, NaN when none; sd 0 for
    one value)."""
    kept = [float(v) for v in values if not math.isnan(float(v))]
    if not kept:
        return math.nan, math.nan
    return statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else 0.0


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


def write_csv(rows: Sequence[Row], path: str) -> None:
    """Write rows (the union of their keys as columns) to ``path``, creating its directory.

    :raises ValueError: for no rows.
    """
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    fields = list(dict.fromkeys(k for row in rows for k in row))
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(paths: Sequence[str], key: Sequence[str] | None = None) -> list[Row]:
    """Rows written by :func:`write_csv`, numbers and booleans parsed back (other cells stay
    strings).

    :param key: columns identifying a fit; when given, a key present in several files keeps the
        row of the last file (runs that refit some methods replace the old rows).
    """
    rows: list[Row] = []
    for path in paths:
        with open(path, newline="") as fh:
            for raw in csv.DictReader(fh):
                row: Row = {}
                for name, value in raw.items():
                    if value in ("True", "False"):
                        row[name] = value == "True"
                        continue
                    try:
                        row[name] = float(value)
                    except (TypeError, ValueError):
                        row[name] = value
                rows.append(row)
    if key is None:
        return rows
    return list({tuple(r[k] for k in key): r for r in rows}.values())

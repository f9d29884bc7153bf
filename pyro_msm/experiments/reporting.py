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

__all__ = ["Experiment", "mean_sd", "summarise", "write_csv", "read_csv"]

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


def summarise(rows: Sequence[Row], by: Sequence[str], metrics: Sequence[str]) -> list[Row]:
    """One row per distinct value of the ``by`` columns, in order of first appearance, with
    ``count`` and, per metric, its mean (``metric``), standard deviation (``metric_sd``) and
    median (``metric_median``) over the group's non-NaN values.

    :raises KeyError: naming a ``by`` or metric column absent from a row.
    """
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    out = []
    for key, group in groups.items():
        summary: Row = dict(zip(by, key, strict=True))
        summary["count"] = len(group)
        for metric in metrics:
            values = [float(r[metric]) for r in group]
            summary[metric], summary[f"{metric}_sd"] = mean_sd(values)
            kept = [v for v in values if not math.isnan(v)]
            summary[f"{metric}_median"] = statistics.median(kept) if kept else math.nan
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
    """Rows written by :func:`write_csv`, numbers parsed back (other cells stay strings).

    :param key: columns identifying a fit; when given, a key present in several files keeps the
        row of the last file (runs that refit some methods replace the old rows).
    """
    rows: list[Row] = []
    for path in paths:
        with open(path, newline="") as fh:
            for raw in csv.DictReader(fh):
                row: Row = {}
                for name, value in raw.items():
                    try:
                        row[name] = float(value)
                    except (TypeError, ValueError):
                        row[name] = value
                rows.append(row)
    if key is None:
        return rows
    return list({tuple(r[k] for k in key): r for r in rows}.values())

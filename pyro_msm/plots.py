"""Plots of fits (matplotlib is optional: ``pip install pyro-msm[plot]``)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["plot_loss_curves", "plot_metric_curves"]


def _figure_class() -> Any:
    """Import matplotlib's :class:`~matplotlib.figure.Figure` (no pyplot, no global backend
    state), or explain how to install matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "plotting needs matplotlib, which is in the 'plot' extra: "
            "pip install 'pyro-msm[plot]' (or pip install matplotlib)"
        ) from err
    return Figure


def plot_loss_curves(
    curves: Mapping[str, Sequence[float]] | Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    ylabel: str = "loss per row",
    skip: int = 0,
) -> str:
    """Plot the loss history of several fits, one panel each, and save it as an image.

    Each panel has its own y scale: the estimators minimise different objectives (the biased
    ones other functions altogether), so the curves show convergence, not accuracy; compare
    score MSEs for that.

    :param curves: label -> list of losses, or label -> an object with a ``losses`` attribute
        (e.g. :class:`~pyro_msm.experiments.FitResult`).
    :param path: output file; the format follows the extension (``.png`` recommended).
    :param title: optional figure title.
    :param ylabel: label of the y axis.
    :param skip: leave out this many initial steps (the first losses can dwarf the rest).
    :returns: the path written, as a string.
    :raises ImportError: when matplotlib is not installed (it is the ``plot`` extra).
    :raises ValueError: when there is nothing to plot.
    """
    series = {label: [float(v) for v in getattr(c, "losses", c)] for label, c in curves.items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        raise ValueError("plot_loss_curves: no loss history to plot")
    ncols = min(3, len(series))
    nrows = math.ceil(len(series) / ncols)
    fig = _figure_class()(figsize=(3.6 * ncols, 2.6 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (label, values) in zip(list(axes.flat)[: len(series)], series.items(), strict=True):
        start = min(skip, max(len(values) - 1, 0))
        steps = range(start + 1, len(values) + 1)
        shown = [v if math.isfinite(v) else math.nan for v in values[start:]]
        ax.plot(steps, shown, linewidth=1.0)
        ax.set_title(label, fontsize="medium")
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("model update")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[len(series) :]:
        ax.set_visible(False)
    return _save(fig, path, title, dpi=120)


#: Reference rows drawn dashed by :func:`plot_metric_curves`.
REFERENCE_METHODS = ("complete_oracle", "exact_marginal")
#: One colour per method, the same in every plot.
METHOD_COLOURS = {
    "complete_oracle": "black",
    "exact_marginal": "0.45",
    "iw": "C0",
    "iw_wide": "C9",
    "em": "C1",
    "variational": "C2",
    "hybrid": "C3",
    "zeroed": "C4",
    "mean_impute": "C5",
    "complete_case": "C6",
}


def plot_metric_curves(
    rows: Sequence[Mapping[str, Any]],
    x: str,
    metrics: Mapping[str, str],
    path: str | os.PathLike[str],
    *,
    method_key: str = "method",
    title: str | None = None,
    logy: bool = True,
) -> str:
    """Plot metrics against a setting, one line per method (reference rows dashed), over seeds.

    For each method and value of ``x`` the line is the mean of the metric over the runs that
    did not diverge (``row["diverged"]`` false, finite value) and the band spans mean ± one
    standard deviation (clipped at the smallest value on a log axis). A point where some runs
    diverged is marked with a cross and the count is given in the legend.

    :param rows: tidy rows (e.g. from :func:`pyro_msm.experiments.truncated.truncated`).
    :param x: the key on the horizontal axis (``"n"``, ``"d"``).
    :param metrics: metric key -> axis label; one panel each.
    :param path: output image (``.png`` recommended).
    :param method_key: the key naming the method.
    :param title: figure title.
    :param logy: log-scale vertical axes.
    :returns: the path written, as a string.
    :raises ValueError: when there are no rows.
    """
    import statistics

    if not rows:
        raise ValueError("plot_metric_curves: no rows to plot")
    methods = list(dict.fromkeys(r[method_key] for r in rows))
    xs = sorted({r[x] for r in rows})
    fig = _figure_class()(figsize=(5.0 * len(metrics), 3.8), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, (metric, label) in zip(axes, metrics.items(), strict=True):
        for method in methods:
            mean, lo, hi, bad_x, px, diverged = [], [], [], [], [], 0
            for xv in xs:
                runs = [r for r in rows if r[method_key] == method and r[x] == xv]
                bad = [r for r in runs if r.get("diverged", False)]
                diverged += len(bad)
                vals = [float(r[metric]) for r in runs if r not in bad]
                vals = [v for v in vals if math.isfinite(v)]
                if bad:
                    bad_x.append(xv)
                if not vals:
                    continue
                m = statistics.fmean(vals)
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                px.append(xv)
                mean.append(m)
                lo.append(max(m - sd, min(vals)) if logy else m - sd)
                hi.append(m + sd)
            if not px:
                continue
            name = method if not diverged else f"{method} ({diverged} diverged)"
            style = "--" if method in REFERENCE_METHODS else "-"
            colour = METHOD_COLOURS.get(method)
            (line,) = ax.plot(
                px, mean, style, color=colour, marker="o", markersize=3, linewidth=1.2, label=name
            )
            ax.fill_between(px, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
            for xv in bad_x:
                if xv in px:
                    ax.plot([xv], [mean[px.index(xv)]], "x", color=line.get_color())
        ax.set_xlabel(x)
        ax.set_ylabel(label)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize="small", loc="best")
    return _save(fig, path, title, dpi=90)


def _save(fig: Any, path: str | os.PathLike[str], title: str | None, dpi: int) -> str:
    """Title the figure, save it as ``path`` (creating its directory) and return the path."""
    if title:
        fig.suptitle(title)
    out = os.fspath(path)
    directory = os.path.dirname(out)
    if directory:
        os.makedirs(directory, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out

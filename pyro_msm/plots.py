"""Plots of fits (matplotlib is optional: ``pip install pyro-msm[plot]``)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["plot_loss_curves", "plot_metric_curves", "plot_graph", "plot_path"]


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


def plot_graph(
    precision: Any,
    *,
    names: Sequence[str] | None = None,
    threshold: float = 1e-4,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
    ax: Any = None,
) -> Any:
    r"""Draw a sparse Gaussian graph on a circle: one node per variable, one edge per nonzero
    off-diagonal precision entry, coloured by the sign of the partial correlation
    (:math:`-P_{ij}/\sqrt{P_{ii}P_{jj}}`; blue positive, red negative) with width growing with
    its size. matplotlib only (a circle layout needs no graph library).

    :param precision: ``(d, d)`` precision (tensor or array).
    :param names: node labels (default ``x0 .. x{d-1}``).
    :param threshold: an edge is :math:`|P_{ij}| >` ``threshold``.
    :param path: if given, save the figure there.
    :param title: figure title.
    :param ax: draw into this matplotlib Axes instead of a new figure.
    :returns: the matplotlib Figure.
    :raises ImportError: when matplotlib is not installed (the ``plot`` extra).
    """
    import numpy as np

    p = np.asarray(precision.detach().cpu() if hasattr(precision, "detach") else precision,
                   dtype=float)  # fmt: skip
    if p.ndim != 2 or p.shape[0] != p.shape[1]:
        raise ValueError(f"plot_graph: precision must be square (d, d), got {p.shape}")
    d = p.shape[0]
    labels = [f"x{j}" for j in range(d)] if names is None else [str(v) for v in names]
    if len(labels) != d:
        raise ValueError(f"plot_graph: {len(labels)} names for {d} variables")
    scale = 1.0 / np.sqrt(np.abs(np.diag(p)).clip(min=1e-300))
    partial = -p * scale[:, None] * scale[None, :]
    if ax is None:
        fig = _figure_class()(figsize=(5.5, 5.5), layout="constrained")
        ax = fig.subplots()
    else:
        fig = ax.figure
    angle = 2 * math.pi * np.arange(d) / d
    xs, ys = np.cos(angle), np.sin(angle)
    rows, cols = np.nonzero(np.triu(np.abs(p) > threshold, k=1))
    strength = np.abs(partial[rows, cols])
    top = float(strength.max()) if len(strength) else 1.0
    for i, j, w in zip(rows, cols, strength, strict=True):
        colour = "tab:blue" if partial[i, j] > 0 else "tab:red"
        ax.plot([xs[i], xs[j]], [ys[i], ys[j]], color=colour, alpha=0.75,
                linewidth=0.5 + 3.0 * w / top, zorder=1)  # fmt: skip
    ax.scatter(xs, ys, s=60, color="white", edgecolors="black", zorder=2)
    if d <= 60:
        for j in range(d):
            ax.annotate(labels[j], (1.12 * xs[j], 1.12 * ys[j]), ha="center", va="center",
                        fontsize="small" if d <= 30 else "x-small")  # fmt: skip
    ax.set_aspect("equal")
    ax.set_xlim(-1.35, 1.35)
    ax.set_ylim(-1.35, 1.35)
    ax.axis("off")
    ax.set_title(title or f"{len(rows)} edges")
    if path is not None:
        _save(fig, path, None, dpi=120)
    return fig


def plot_path(
    penalties: Any,
    precisions: Any,
    *,
    selected: int | None = None,
    criterion: Any = None,
    threshold: float = 1e-4,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> Any:
    """Draw a penalty path: the off-diagonal precision entries (coefficient paths) and the edge
    count against the penalty (log scale), with the selected penalty marked, and the selection
    criterion when given.

    :param penalties: ``(k,)``. :param precisions: ``(k, d, d)``.
    :param selected: index of the selected penalty (a vertical line).
    :param criterion: ``(k,)`` selection scores (eBIC or held-out loss), a third panel.
    :param threshold: edge threshold for the count.
    :param path: if given, save the figure there.
    :param title: figure title.
    :returns: the matplotlib Figure.
    """
    import numpy as np

    def arr(v: Any) -> Any:
        return np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=float)

    gam, prec = arr(penalties), arr(precisions)
    if prec.ndim != 3 or prec.shape[0] != gam.shape[0]:
        raise ValueError("plot_path: precisions must be (k, d, d) with k = len(penalties)")
    d = prec.shape[-1]
    iu = np.triu_indices(d, k=1)
    coef = prec[:, iu[0], iu[1]]
    count = (np.abs(coef) > threshold).sum(1)
    panels = 3 if criterion is not None else 2
    fig = _figure_class()(figsize=(4.2 * panels, 3.4), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    axes[0].plot(gam, coef, linewidth=0.7)
    axes[0].set_ylabel("off-diagonal precision")
    axes[1].plot(gam, count, marker="o", markersize=3)
    axes[1].set_ylabel("edges")
    if criterion is not None:
        crit = arr(criterion)
        axes[2].plot(gam, np.where(np.isfinite(crit), crit, np.nan), marker="o", markersize=3)
        axes[2].set_ylabel("selection criterion")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("penalty")
        ax.grid(alpha=0.3)
        if selected is not None:
            ax.axvline(gam[int(selected)], color="black", linestyle="--", linewidth=1.0)
    if title:
        fig.suptitle(title)
    if path is not None:
        _save(fig, path, None, dpi=110)
    return fig


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

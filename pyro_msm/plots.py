"""Plots of fits (matplotlib is optional: ``pip install pyro-msm[plot]``)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["plot_loss_curves"]


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
    if title:
        fig.suptitle(title)
    out = os.fspath(path)
    directory = os.path.dirname(out)
    if directory:
        os.makedirs(directory, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out

"""The Gaussian accuracy experiment: every estimator against the exact marginal answer.

For each setting and seed one masked table is simulated
(:func:`~pyro_msm.datasets.simulate_gaussian`) and every method is fitted to that same table
(:func:`~.gaussian.compare_estimators`). Shared by ``benchmarks/accuracy_gaussian.py`` and
``pyro-msm reproduce gaussian``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from ..datasets.simulated import simulate_gaussian
from .gaussian import DEFAULT_ESTIMATORS, compare_estimators
from .reporting import Experiment, summarise

__all__ = [
    "Setting",
    "SETTINGS",
    "QUICK_SETTINGS",
    "RATIO_TARGETS",
    "run_setting",
    "summarise_accuracy",
    "check_targets",
    "gaussian_accuracy",
    "plot_gaussian_accuracy",
    "ACCURACY_COLUMNS",
    "GAUSSIAN_ACCURACY",
]


@dataclass(frozen=True)
class Setting:
    """One setting: dimension, missing rate, mechanism and rows."""

    name: str
    d: int
    missing_rate: float
    mechanism: str = "mcar"
    n: int = 1000


#: The settings of the issue's accuracy table.
SETTINGS: tuple[Setting, ...] = (
    Setting("d5_mcar20", 5, 0.2),
    Setting("d10_mcar10", 10, 0.1),
    Setting("d10_mcar40", 10, 0.4),
    Setting("d10_mar40", 10, 0.4, "mar"),
    Setting("d20_mcar40", 20, 0.4),
)
#: Smoke sizes.
QUICK_SETTINGS: tuple[Setting, ...] = (
    Setting("d5_mcar20", 5, 0.2, n=200),
    Setting("d20_mcar40", 20, 0.4, n=200),
)
#: (setting, method, largest allowed ratio of mean score MSE to the exact marginal one)
RATIO_TARGETS: tuple[tuple[str, str, float], ...] = (
    ("d5_mcar20", "iw", 1.25),
    ("d5_mcar20", "variational", 1.25),
    ("d5_mcar20", "variational_gc", 1.25),
    ("d20_mcar40", "variational", 1.5),
    ("d20_mcar40", "variational_gc", 1.5),
)
MARGINAL_METHODS = ("iw", "variational", "variational_gc")
BASELINES = ("complete_case", "mean_impute", "zeroed")
METRICS = (
    "score_mse",
    "ratio_to_exact",
    "fisher",
    "vs_exact_precision_error",
    "ess",
    "seconds",
)


def run_setting(
    setting: Setting,
    seed: int,
    *,
    methods: Collection[str] | None = None,
    steps: int = 400,
    lr: float = 0.02,
    num_particles: int = 10,
    guide_steps: int = 10,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Simulate one table and fit the references and ``methods`` (labels of
    :data:`~.gaussian.DEFAULT_ESTIMATORS`, default all) to it.

    :returns: the comparison's rows, each with ``setting`` and ``realised_missing_rate`` added.
    :raises ValueError: for an unknown method label.
    """
    known = {e.label for e in DEFAULT_ESTIMATORS}
    if methods is not None and set(methods) - known:
        raise ValueError(f"unknown methods {sorted(set(methods) - known)}; known: {sorted(known)}")
    problem = simulate_gaussian(
        setting.d, setting.n, setting.missing_rate, setting.mechanism, seed=seed
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*complete-case analysis drops.*")
        warnings.filterwarnings("ignore", message=".*have no observed coordinate.*")
        comparison = compare_estimators(
            problem,
            [e for e in DEFAULT_ESTIMATORS if methods is None or e.label in methods],
            steps=steps,
            lr=lr,
            num_particles=num_particles,
            guide_steps=guide_steps,
            seed=seed,
            progress=progress,
        )
    for row in comparison.rows:
        row["setting"] = setting.name
        row["realised_missing_rate"] = problem.realised_missing_rate
    return comparison.rows


def summarise_accuracy(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (setting, method): mean, sd, median and range over seeds of :data:`METRICS`
    (:func:`~.reporting.summarise`: fits flagged ``diverged`` are counted, not averaged), plus
    ``ratio_range`` as text."""
    out = summarise(rows, ("setting", "method"), METRICS)
    for s in out:
        low, high = s["ratio_to_exact_min"], s["ratio_to_exact_max"]
        s["ratio_range"] = "-" if math.isnan(low) else f"{low:.3g}-{high:.3g}"
    return out


def check_targets(summary: Sequence[dict[str, Any]]) -> list[tuple[bool, str]]:
    """PASS/FAIL of every target present in a :func:`summarise_accuracy` summary: the ratio
    targets of :data:`RATIO_TARGETS`, and marginal methods ahead of every baseline (a baseline
    that could not be fitted, NaN, counts as beaten)."""
    by_key = {(s["setting"], s["method"]): s for s in summary}
    results = []
    for setting, method, limit in RATIO_TARGETS:
        s = by_key.get((setting, method))
        if s is not None:
            ratio = s["ratio_to_exact_mean"]
            text = f"{setting}: {method} mean ratio to exact {ratio:.3f} <= {limit}"
            if s["diverged"]:
                text += f" ({s['diverged']} of {s['runs']} fits diverged)"
            results.append((ratio <= limit and not s["diverged"], text))
    for setting in dict.fromkeys(s["setting"] for s in summary):
        baselines = [by_key[(setting, b)] for b in BASELINES if (setting, b) in by_key]
        for method in MARGINAL_METHODS:
            s = by_key.get((setting, method))
            if s is None:
                continue
            mse = s["score_mse_mean"]
            ok = not s["diverged"] and all(
                mse < b["score_mse_mean"] or math.isnan(b["score_mse_mean"]) for b in baselines
            )
            listed = ", ".join(
                f"{b['method']} "
                + ("n/a" if math.isnan(b["score_mse_mean"]) else f"{b['score_mse_mean']:.4g}")
                for b in baselines
            )
            text = f"{setting}: {method} score MSE {mse:.4g} below {listed}"
            if s["diverged"]:
                text += f" ({s['diverged']} of {s['runs']} fits diverged)"
            results.append((ok, text))
    return results


#: Columns of the printed summary.
ACCURACY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("method", "method"),
    ("score_mse_mean", "score MSE"),
    ("score_mse_sd", "MSE sd"),
    ("ratio_to_exact_mean", "x exact"),
    ("ratio_to_exact_sd", "ratio sd"),
    ("ratio_to_exact_median", "median"),
    ("ratio_range", "range"),
    ("fisher_mean", "Fisher div."),
    ("vs_exact_precision_error_mean", "P err vs exact"),
    ("ess_mean", "IW ESS"),
    ("seconds_mean", "s/fit"),
    ("diverged", "diverged"),
)


def gaussian_accuracy(
    full: bool = False, seed: int = 0, progress: bool = True
) -> list[dict[str, Any]]:
    """The accuracy table: every setting of :data:`SETTINGS` with 3 seeds and 400 model updates
    per fit (``full=True``, about half an hour on 2 cores), or by default d=5 at 20% MCAR and
    d=10 at 40% MCAR, one seed, 150 updates (a few minutes).

    :param seed: the first data set's seed.
    :returns: one row per (setting, seed, method).
    """
    from tqdm import tqdm

    settings = SETTINGS if full else (SETTINGS[0], SETTINGS[2])
    seeds = range(seed, seed + (3 if full else 1))
    steps = 400 if full else 150
    tasks = [(s, k) for s in settings for k in seeds]
    rows: list[dict[str, Any]] = []
    for setting, k in tqdm(tasks, desc="gaussian", disable=not progress):
        rows += run_setting(setting, k, steps=steps)
    return rows


def plot_gaussian_accuracy(rows: Sequence[dict[str, Any]], path: str) -> None:
    """Bars of each method's score MSE as a multiple of the exact marginal answer, per
    setting (mean over seeds, error bars one sd), saved as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    summary = summarise_accuracy(rows)
    settings = list(dict.fromkeys(s["setting"] for s in summary))
    methods = [m for m in dict.fromkeys(s["method"] for s in summary) if m != "exact_marginal"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(settings), 4))
    width = 0.8 / max(len(methods), 1)
    by_key = {(s["setting"], s["method"]): s for s in summary}
    for j, method in enumerate(methods):
        xs, ys, errs = [], [], []
        for i, setting in enumerate(settings):
            s = by_key.get((setting, method))
            if s is None or math.isnan(s["ratio_to_exact_mean"]):
                continue
            xs.append(i + (j - (len(methods) - 1) / 2) * width)
            ys.append(s["ratio_to_exact_mean"])
            errs.append(s["ratio_to_exact_sd"])
        ax.bar(xs, ys, width, yerr=errs, label=method, capsize=2)
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xticks(range(len(settings)), settings)
    ax.set_yscale("log")
    ax.set_ylabel("score MSE / exact marginal")
    ax.set_title("Gaussian accuracy (lower is better; dashed: exact marginal)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


GAUSSIAN_ACCURACY = Experiment(
    name="gaussian",
    description="Gaussian accuracy table: every estimator vs the exact marginal answer",
    run=gaussian_accuracy,
    plot=plot_gaussian_accuracy,
    summarise=summarise_accuracy,
    columns=(("setting", "setting"),) + ACCURACY_COLUMNS,
)

r"""Graph-recovery experiments: simulated graphs over missing rates and dimensions, and the
paper's real-data protocol on the bundled data sets.

Every experiment is a function ``name(full=False, seed=0, progress=True) -> list[dict]``
returning tidy rows (one per method, setting and repetition;
:func:`~pyro_msm.experiments.reporting.write_csv` writes them),
with a ``plot_name(rows, path)`` that saves a PNG. Defaults take a few minutes on a laptop
core; ``full=True`` uses the paper's protocol sizes (hours).

Methods (:data:`GRAPH_METHODS`), all scored by the ROC AUC of their penalty path
(:func:`~pyro_msm.graphical.path_auc`):

- score matching along the penalty path of :func:`~pyro_msm.graphical.score_matching_path`
  with the estimators ``"variational"`` (Marg-Var, guide :class:`~pyro_msm.guides.AmortizedNormal`
  unless ``guide=`` is given), ``"iw"`` (Marg-IW), ``"zeroed"`` and ``"mean_impute"``;
- ``"mean_glasso"`` and ``"iterative_glasso"``: imputation then the graphical lasso;
- ``"em_glasso"``: EM graphical lasso.

On simulated data each row also has F1 and MCC at the penalty eBIC selects
(:func:`~pyro_msm.graphical.select_ebic`) and the parameter errors of that estimate
(relative Frobenius, Fisher divergence, Stein loss; the graphical-lasso baselines estimate the
same precision, so the errors are comparable).

Real-data protocol (:func:`real_data_protocol`, METHOD.md): columns standardised; reference
graphs from complete-data score matching (the exact fast path,
:func:`~pyro_msm.graphical.quadratic_path`) at edge densities 0.05 to 0.25; MCAR masks at
several rates, repeated; each method's AUC against each reference graph.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..graphical import (
    PenaltyPath,
    edge_metrics,
    em_glasso_path,
    impute_glasso_path,
    max_penalty,
    parameter_errors,
    path_auc,
    penalty_grid,
    quadratic_path,
    sample_covariance,
    score_matching_path,
    select_ebic,
    simulate_graph,
)
from ..graphical.metrics import upper_pairs
from ..missingness import mcar_mask
from .reporting import Experiment, summarise, write_csv

__all__ = [
    "GRAPH_METHODS",
    "SCORE_MATCHING_METHODS",
    "GraphConfig",
    "run_graph_methods",
    "graph_missing_rates",
    "star_missing_rates",
    "dense_missing_rates",
    "hub_missing_rates",
    "star_dimensions",
    "reference_graphs",
    "real_data_protocol",
    "sachs",
    "tissue_gene_expression",
    "plot_star_missing_rates",
    "plot_dense_missing_rates",
    "plot_hub_missing_rates",
    "plot_star_dimensions",
    "plot_sachs",
    "plot_tissue_gene_expression",
    "write_csv",
]

#: Score-matching methods (estimators of MissingScoreMatching along the penalty path).
SCORE_MATCHING_METHODS = ("variational", "iw", "zeroed", "mean_impute")
#: Every method of the graph experiments.
GRAPH_METHODS = SCORE_MATCHING_METHODS + ("mean_glasso", "iterative_glasso", "em_glasso")
#: Edge densities of the real-data reference graphs.
REFERENCE_DENSITIES = (0.05, 0.10, 0.15, 0.20, 0.25)


@dataclass(frozen=True)
class GraphConfig:
    """Sizes of the penalty paths.

    The default is a shorter path than the paper's (30 penalties instead of 100) with 30
    steps per penalty instead of 10, about the same number of steps in all. Fewer steps
    leave the path behind its penalty: on a star graph (d=10, n=500, 20% MCAR) the exact
    marginal objective's path reached AUC 0.94 with 30 x 10 steps, 0.99 with 30 x 50 (and
    lr 0.05 with 30 x 10 gave 0.98); the complete-data fast path gives 1.0.

    :ivar num_penalties: penalties on each score-matching path.
    :ivar steps_per_penalty: model steps per penalty.
    :ivar warmup_steps: model steps at the largest penalty.
    :ivar guide_steps: guide steps per model step (variational).
    :ivar num_particles: particles per row (IW and variational model steps).
    :ivar lr: Adam learning rate.
    :ivar batch_size: rows per step.
    :ivar baseline_penalties: penalties on each graphical-lasso path.
    :ivar penalty_ratio: smallest over largest penalty.
    """

    num_penalties: int = 30
    steps_per_penalty: int = 30
    warmup_steps: int = 200
    guide_steps: int = 2
    num_particles: int = 10
    lr: float = 0.01
    batch_size: int = 100
    baseline_penalties: int = 30
    penalty_ratio: float = 0.01

    @classmethod
    def paper(cls) -> GraphConfig:
        """The paper's protocol: 100 penalties x 10 steps after 200 warm-up steps, Adam 0.01,
        minibatches of 100, 10 guide steps per model step."""
        return cls(num_penalties=100, steps_per_penalty=10, guide_steps=10, baseline_penalties=50)


def run_graph_methods(
    x: Tensor,
    mask: Tensor,
    methods: Sequence[str] = GRAPH_METHODS,
    *,
    config: GraphConfig | None = None,
    guide: Callable | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, PenaltyPath]:
    """Fit each method's penalty path to one masked table.

    :param x: ``(n, d)`` table (values at missing entries are ignored).
    :param mask: boolean ``(n, d)``, True where observed.
    :param methods: names from :data:`GRAPH_METHODS`.
    :param config: path sizes (default :class:`GraphConfig`).
    :param guide: guide factory for ``"variational"`` (default ``AmortizedNormal``).
    :param seed: seed of every fit.
    :param progress: progress bars.
    :returns: ``{method: PenaltyPath}``.
    """
    unknown = [m for m in methods if m not in GRAPH_METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {GRAPH_METHODS}")
    config = GraphConfig() if config is None else config
    paths: dict[str, PenaltyPath] = {}
    for method in methods:
        with warnings.catch_warnings():
            # rows with nothing observed are skipped by the loss (expected at high rates)
            warnings.filterwarnings("ignore", message=".*no observed coordinate.*")
            if method in SCORE_MATCHING_METHODS:
                paths[method] = score_matching_path(
                    x,
                    mask,
                    estimator=method,
                    guide=guide,
                    num_penalties=config.num_penalties,
                    penalty_ratio=config.penalty_ratio,
                    steps_per_penalty=config.steps_per_penalty,
                    warmup_steps=config.warmup_steps,
                    guide_steps=config.guide_steps,
                    num_particles=config.num_particles,
                    lr=config.lr,
                    batch_size=config.batch_size,
                    seed=seed,
                    progress=progress,
                )
            elif method == "em_glasso":
                paths[method] = em_glasso_path(
                    x, mask, num_penalties=config.baseline_penalties,
                    penalty_ratio=config.penalty_ratio, progress=progress,
                )  # fmt: skip
            else:
                imputer = "mean" if method == "mean_glasso" else "iterative"
                paths[method] = impute_glasso_path(
                    x, mask, imputer=imputer, num_penalties=config.baseline_penalties,
                    penalty_ratio=config.penalty_ratio, seed=seed,
                )  # fmt: skip
    return paths


def _score(
    truth: Tensor, precision: Tensor, x: Tensor, mask: Tensor, path: PenaltyPath
) -> dict[str, Any]:
    """AUC of the path; F1/MCC and parameter errors at the eBIC choice."""
    row: dict[str, Any] = {"auc": path_auc(truth, path.precisions), "seconds": path.seconds}
    locs = path.locs
    if locs is None:  # pragma: no cover - every method here estimates a mean
        locs = torch.zeros(len(path), x.shape[1], dtype=torch.float64)
    try:
        index, _ = select_ebic(x, mask, locs, path.precisions)
    except ValueError:
        row.update(f1=math.nan, mcc=math.nan, frobenius=math.nan, fisher=math.nan)
        row.update(stein=math.nan, penalty=math.nan, num_edges=-1)
        return row
    chosen = path.precisions[index]
    metrics = edge_metrics(truth, chosen)
    row.update(f1=metrics["f1"], mcc=metrics["mcc"], num_edges=metrics["num_edges"])
    row.update(parameter_errors(chosen, precision))
    row["penalty"] = float(path.penalties[index])
    return row


def graph_missing_rates(
    graph: str,
    *,
    d: int = 10,
    n: int = 500,
    missing_rates: Iterable[float] = (0.2, 0.5, 0.8),
    repetitions: int = 1,
    methods: Sequence[str] = GRAPH_METHODS,
    config: GraphConfig | None = None,
    guide: Callable | None = None,
    condition_number: float = 10.0,
    seed: int = 0,
    progress: bool = True,
    experiment: str | None = None,
    **graph_kwargs: Any,
) -> list[dict[str, Any]]:
    """AUC (and F1, MCC, errors at the eBIC choice) of every method on one graph family over
    MCAR rates. Repetition ``r`` uses seed ``seed + r`` for the graph, data and mask.

    :returns: rows with ``experiment, graph, setting, d, n, missing_rate, seed, method, auc,
        f1, mcc, frobenius, fisher, stein, penalty, num_edges, true_edges, seconds``.
    """
    from tqdm.auto import tqdm

    rows = []
    rates = [float(r) for r in missing_rates]
    jobs = [(rate, rep) for rep in range(int(repetitions)) for rate in rates]
    for rate, rep in tqdm(jobs, desc=f"{graph} d={d}", disable=not progress):
        problem = simulate_graph(
            graph, d=d, n=n, missing_rate=rate, seed=seed + rep,
            condition_number=condition_number, **graph_kwargs,
        )  # fmt: skip
        paths = run_graph_methods(
            problem.x, problem.mask, methods, config=config, guide=guide, seed=seed + rep
        )
        for method, path in paths.items():
            row = {
                "experiment": experiment or f"{graph}_missing_rates",
                "graph": graph,
                "setting": f"{graph} d={d} n={n} mcar={rate:g}",
                "d": d,
                "n": n,
                "missing_rate": rate,
                "seed": seed + rep,
                "method": method,
                "true_edges": problem.num_edges,
            }
            row.update(_score(problem.adjacency, problem.precision, problem.x, problem.mask, path))
            rows.append(row)
    return rows


def _rates(full: bool) -> tuple[float, ...]:
    return tuple(round(0.2 + 0.1 * k, 1) for k in range(8)) if full else (0.2, 0.5, 0.8)


def star_missing_rates(full: bool = False, seed: int = 0, progress: bool = True, **kwargs):
    """Star graph (hub plus ``d // 2`` extra edges) over MCAR rates 0.2..0.9.

    Default: d=10, n=500, rates 0.2/0.5/0.8, one repetition, 30 penalties x 30 steps, 2 guide
    steps (about 6 minutes on one busy core). ``full``: d=20, n=1000, rates 0.2..0.9, 5 repetitions,
    the paper's path (100 penalties, 10 guide steps; hours).
    """
    d, n, reps, config = (20, 1000, 5, GraphConfig.paper()) if full else (10, 500, 1, None)
    kwargs.setdefault("extra_edges", d // 2)
    return graph_missing_rates(
        "star", d=d, n=n, missing_rates=_rates(full), repetitions=reps, config=config,
        seed=seed, progress=progress, experiment="star_missing_rates", **kwargs,
    )  # fmt: skip


def dense_missing_rates(full: bool = False, seed: int = 0, progress: bool = True, **kwargs):
    """Dense graph (Erdos-Renyi, edge probability 0.5) over MCAR rates; sizes as
    :func:`star_missing_rates`."""
    d, n, reps, config = (20, 1000, 5, GraphConfig.paper()) if full else (10, 500, 1, None)
    return graph_missing_rates(
        "dense", d=d, n=n, missing_rates=_rates(full), repetitions=reps, config=config,
        seed=seed, progress=progress, experiment="dense_missing_rates", **kwargs,
    )  # fmt: skip


def hub_missing_rates(full: bool = False, seed: int = 0, progress: bool = True, **kwargs):
    """Multi-hub graph (``d // 5`` hubs) over MCAR rates; sizes as :func:`star_missing_rates`."""
    d, n, reps, config = (20, 1000, 5, GraphConfig.paper()) if full else (10, 500, 1, None)
    kwargs.setdefault("num_hubs", max(1, d // 5))
    return graph_missing_rates(
        "hub", d=d, n=n, missing_rates=_rates(full), repetitions=reps, config=config,
        seed=seed, progress=progress, experiment="hub_missing_rates", **kwargs,
    )  # fmt: skip


def star_dimensions(full: bool = False, seed: int = 0, progress: bool = True, **kwargs):
    """Star graph (hub plus ``d // 2`` extra edges) at MCAR 0.5 over dimensions.

    Default: d = 10, 20, 30, n=500, one repetition. ``full``: d = 10..50 by 10, n=1000, 5
    repetitions, the paper's path.
    """
    dims = (10, 20, 30, 40, 50) if full else (10, 20, 30)
    n, reps, config = (1000, 5, GraphConfig.paper()) if full else (500, 1, None)
    rows: list[dict[str, Any]] = []
    for d in dims:
        rows += graph_missing_rates(
            "star", d=d, n=n, missing_rates=(0.5,), repetitions=reps, config=config,
            seed=seed, progress=progress, experiment="star_dimensions", extra_edges=d // 2,
            **kwargs,
        )  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------------


def standardise(x: Tensor) -> Tensor:
    """Columns centred and scaled to unit variance (float64)."""
    x = x.to(torch.float64)
    return (x - x.mean(0)) / x.std(0)


def reference_graphs(
    x: Tensor, densities: Sequence[float] = REFERENCE_DENSITIES, *, num_penalties: int = 200
) -> list[dict[str, Any]]:
    """Reference graphs of a complete table: the exact score-matching fast path
    (:func:`~pyro_msm.graphical.quadratic_path` on a fine log grid from the empty-graph penalty
    down to 1/1000 of it), at the penalty whose edge density is closest to each target.

    :returns: one dict per density with ``reference`` (``"density 0.05"``, ...), ``density``
        (target), ``realised_density``,
        ``penalty``, ``num_edges`` and ``adjacency`` (boolean ``(d, d)``).
    """
    s = sample_covariance(x.to(torch.float64))
    grid = penalty_grid(max_penalty(s), num_penalties, 1e-3)
    path, _ = quadratic_path(s, grid)
    d = x.shape[1]
    pairs = d * (d - 1) / 2
    counts = upper_pairs(path.abs() > 1e-4).sum(-1).to(torch.float64)
    out = []
    for density in densities:
        k = int(torch.argmin((counts / pairs - density).abs()))
        adjacency = path[k].abs() > 1e-4
        adjacency.fill_diagonal_(False)
        out.append(
            {
                "reference": f"density {density:g}",
                "density": float(density),
                "realised_density": float(counts[k] / pairs),
                "penalty": float(grid[k]),
                "num_edges": int(counts[k]),
                "adjacency": adjacency,
            }
        )
    return out


def real_data_protocol(
    x: Tensor,
    *,
    dataset: str,
    missing_rates: Iterable[float] = (0.2, 0.5),
    repetitions: int = 2,
    densities: Sequence[float] = REFERENCE_DENSITIES,
    methods: Sequence[str] = GRAPH_METHODS,
    config: GraphConfig | None = None,
    guide: Callable | None = None,
    extra_references: dict[str, Tensor] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """The paper's real-data protocol on a complete table (module doc).

    Repetition ``r`` at rate ``p`` uses the MCAR mask of seed ``seed + r`` (the same masks for
    every method) and fits every method once; its path is scored against every reference
    graph.

    :param x: ``(n, d)`` complete table (standardised here).
    :param dataset: name written in the rows.
    :param extra_references: further reference graphs ``{name: adjacency}`` (e.g. a known
        network), scored with the same paths; their rows have ``reference = name`` and
        ``density`` NaN.
    :returns: rows with ``experiment, dataset, setting, n, d, missing_rate, seed, method,
        reference`` (``"density 0.05"``, ... or an extra reference's name), ``density``
        (target, NaN for extra references), ``realised_density, reference_edges, auc,
        seconds``.
    """
    from tqdm.auto import tqdm

    z = standardise(x)
    n, d = z.shape
    references = reference_graphs(z, densities)
    for name, adjacency in (extra_references or {}).items():
        pairs = upper_pairs(adjacency)
        references.append(
            {
                "reference": name,
                "density": math.nan,
                "realised_density": float(pairs.double().mean()),
                "num_edges": int(pairs.sum()),
                "adjacency": adjacency,
            }
        )
    rows = []
    jobs = [(float(rate), rep) for rate in missing_rates for rep in range(int(repetitions))]
    for rate, rep in tqdm(jobs, desc=dataset, disable=not progress):
        mask = mcar_mask(z.shape, rate, seed=seed + rep)
        paths = run_graph_methods(z, mask, methods, config=config, guide=guide, seed=seed + rep)
        for method, path in paths.items():
            for ref in references:
                rows.append(
                    {
                        "experiment": dataset,
                        "dataset": dataset,
                        "setting": f"{dataset} n={n} d={d} mcar={rate:g}",
                        "n": n,
                        "d": d,
                        "missing_rate": rate,
                        "seed": seed + rep,
                        "method": method,
                        "reference": ref["reference"],
                        "density": ref["density"],
                        "realised_density": ref["realised_density"],
                        "reference_edges": ref["num_edges"],
                        "auc": path_auc(ref["adjacency"], path.precisions),
                        "seconds": path.seconds,
                    }
                )
    return rows


def sachs(full: bool = False, seed: int = 0, progress: bool = True, **kwargs):
    """The real-data protocol on the Sachs flow-cytometry data (log intensities, 7466 x 11).

    Default: MCAR 0.2 and 0.5, one repetition (about 3.5 minutes on one busy core).
    ``full``: MCAR 0.2/0.4/0.6/0.8, 25 repetitions (the paper's count), the paper's path.
    Besides the protocol's reference graphs, the rows with ``reference = "consensus"`` score
    each method against the 18-edge consensus network of Sachs et al. (2005).
    """
    from ..datasets import load_sachs

    data = load_sachs(log=True)
    rates, reps, config = ((0.2, 0.4, 0.6, 0.8), 25, GraphConfig.paper()) if full else (
        (0.2, 0.5), 1, None,
    )  # fmt: skip
    kwargs.setdefault("config", config)
    return real_data_protocol(
        data.x, dataset="sachs", missing_rates=rates, repetitions=reps, seed=seed,
        progress=progress, extra_references={"consensus": data.adjacency}, **kwargs,
    )  # fmt: skip


def tissue_gene_expression(full: bool = False, seed: int = 0, progress: bool = True, **kwargs):
    """The real-data protocol on the dslabs tissue gene-expression table, restricted to the
    genes of largest variance (so that ``n = 189 > d`` and the complete-data score-matching
    loss has a minimiser at every penalty).

    Default: 20 genes, MCAR 0.2 and 0.5, one repetition (a few minutes; 30 genes with two
    repetitions took 14 minutes on a busy core). ``full``: 100 genes (the paper's yeast data
    had 106), MCAR 0.2/0.4/0.6/0.8, 25 repetitions, the paper's path.
    """
    from ..datasets import load_tissue_gene_expression

    data = load_tissue_gene_expression()
    k, rates, reps, config = (
        (100, (0.2, 0.4, 0.6, 0.8), 25, GraphConfig.paper()) if full
        else (20, (0.2, 0.5), 1, None)
    )  # fmt: skip
    x, _ = data.top_variance(k)
    kwargs.setdefault("config", config)
    return real_data_protocol(
        x, dataset="tissue_gene_expression", missing_rates=rates, repetitions=reps,
        seed=seed, progress=progress, **kwargs,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------------


def _summary(rows, x_key: str, filter_fn=None) -> dict[str, tuple[list, list, list]]:
    """Per method: x values, mean AUC and standard deviation over the other columns."""
    groups: dict[str, dict[float, list[float]]] = {}
    for r in rows:
        if filter_fn is not None and not filter_fn(r):
            continue
        if isinstance(r["auc"], float) and math.isnan(r["auc"]):
            continue
        groups.setdefault(r["method"], {}).setdefault(float(r[x_key]), []).append(r["auc"])
    out = {}
    for method, by_x in groups.items():
        xs = sorted(by_x)
        means = [sum(by_x[v]) / len(by_x[v]) for v in xs]
        sds = [
            math.sqrt(sum((a - m) ** 2 for a in by_x[v]) / max(len(by_x[v]) - 1, 1))
            for v, m in zip(xs, means, strict=True)
        ]
        out[method] = (xs, means, sds)
    return out


def _plot_lines(panels, path: str, x_label: str, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover
        raise ImportError("plots need matplotlib: pip install 'pyro-msm[plot]'") from err
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (panel_title, summary) in zip(axes[0], panels, strict=True):
        for method in [m for m in GRAPH_METHODS if m in summary]:
            xs, means, sds = summary[method]
            ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, label=method)
        ax.set_xlabel(x_label)
        ax.set_ylabel("ROC AUC along the penalty path")
        ax.set_title(panel_title)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_rates(rows, path: str, title: str) -> None:
    _plot_lines([("", _summary(rows, "missing_rate"))], path, "MCAR missing rate", title)


def plot_star_missing_rates(rows: Sequence[dict[str, Any]], path: str) -> None:
    """AUC against the missing rate per method (mean and sd over repetitions), PNG."""
    _plot_rates(rows, path, "Star graph")


def plot_dense_missing_rates(rows: Sequence[dict[str, Any]], path: str) -> None:
    """AUC against the missing rate per method, PNG."""
    _plot_rates(rows, path, "Dense graph (edge probability 0.5)")


def plot_hub_missing_rates(rows: Sequence[dict[str, Any]], path: str) -> None:
    """AUC against the missing rate per method, PNG."""
    _plot_rates(rows, path, "Multi-hub graph")


def plot_star_dimensions(rows: Sequence[dict[str, Any]], path: str) -> None:
    """AUC against the dimension per method (star graph, MCAR 0.5), PNG."""
    _plot_lines([("", _summary(rows, "d"))], path, "dimension d", "Star graph, MCAR 0.5")


def _plot_real(rows, path: str, title: str) -> None:
    panels = [
        ("reference densities 0.05-0.25", _summary(rows, "missing_rate",
                                                   lambda r: r["reference"] != "consensus")),
    ]  # fmt: skip
    if any(r["reference"] == "consensus" for r in rows):
        panels.append(
            ("consensus network", _summary(rows, "missing_rate",
                                           lambda r: r["reference"] == "consensus"))
        )  # fmt: skip
    _plot_lines(panels, path, "MCAR missing rate", title)


def plot_sachs(rows: Sequence[dict[str, Any]], path: str) -> None:
    """AUC against the missing rate (reference graphs; consensus network), PNG."""
    _plot_real(rows, path, "Sachs flow cytometry (d=11)")


def plot_tissue_gene_expression(rows: Sequence[dict[str, Any]], path: str) -> None:
    """AUC against the missing rate (reference graphs), PNG."""
    _plot_real(rows, path, "Tissue gene expression")


def _summary_of(*by: str):
    metrics = ("auc", "seconds")

    def summarise_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return summarise(rows, by, metrics)

    return summarise_rows


_SIMULATED_COLUMNS = (
    ("method", "method"),
    ("missing_rate", "MCAR"),
    ("runs", "runs"),
    ("auc_mean", "AUC"),
    ("auc_sd", "sd"),
    ("seconds", "s/fit"),
)

#: The graph experiments of ``pyro-msm reproduce``.
GRAPH_EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(
        "star",
        "star graph (hub + extra edges): edge-recovery AUC over MCAR rates",
        star_missing_rates,
        plot_star_missing_rates,
        _summary_of("missing_rate", "method"),
        _SIMULATED_COLUMNS,
    ),
    Experiment(
        "dense",
        "dense graph (edge probability 0.5): edge-recovery AUC over MCAR rates",
        dense_missing_rates,
        plot_dense_missing_rates,
        _summary_of("missing_rate", "method"),
        _SIMULATED_COLUMNS,
    ),
    Experiment(
        "hub",
        "multi-hub graph: edge-recovery AUC over MCAR rates",
        hub_missing_rates,
        plot_hub_missing_rates,
        _summary_of("missing_rate", "method"),
        _SIMULATED_COLUMNS,
    ),
    Experiment(
        "star_dimensions",
        "star graph at MCAR 0.5 over dimensions",
        star_dimensions,
        plot_star_dimensions,
        _summary_of("d", "method"),
        (("method", "method"), ("d", "d"), ("runs", "runs"), ("auc_mean", "AUC"), ("auc_sd", "sd")),
    ),
    Experiment(
        "sachs",
        "Sachs protein signalling (7466 x 11): AUC against reference graphs, MCAR masks",
        sachs,
        plot_sachs,
        _summary_of("reference", "missing_rate", "method"),
        (
            ("reference", "reference"),
            ("missing_rate", "MCAR"),
            ("method", "method"),
            ("runs", "runs"),
            ("auc_mean", "AUC"),
            ("auc_sd", "sd"),
        ),
    ),
    Experiment(
        "tissue",
        "tissue gene expression (189 x 500, a gene subset): AUC against reference graphs",
        tissue_gene_expression,
        plot_tissue_gene_expression,
        _summary_of("reference", "missing_rate", "method"),
        (
            ("reference", "reference"),
            ("missing_rate", "MCAR"),
            ("method", "method"),
            ("runs", "runs"),
            ("auc_mean", "AUC"),
            ("auc_sd", "sd"),
        ),
    ),
)

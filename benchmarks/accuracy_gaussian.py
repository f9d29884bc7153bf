"""Accuracy of every estimator on Gaussian data with a known precision.

For each setting and seed, one masked data set is simulated
(:func:`pyro_msm.experiments.simulate_gaussian`) and every method is fitted to that same table
(:func:`pyro_msm.experiments.compare_estimators`): IW with the moment-matched proposal, IW with the
paper's wide proposal N(0, 4^2 I), variational (AmortizedNormal guide), zeroed, mean imputation
and complete case, beside the exact marginal answer (the ``closed_form`` estimator) and the
complete-data oracle. Per setting it prints the score MSE (mean and standard deviation over
seeds), the ratio to the exact marginal answer (mean and spread), the Fisher divergence and IW's
effective sample size, then PASS/FAIL lines for the targets::

    IW and variational within 1.25x of the exact marginal score MSE at d=5, 20% MCAR
    variational within 1.5x at d=20, 40% MCAR
    IW and variational ahead of complete case, mean imputation and zeroed (every setting)

Usage::

    python benchmarks/accuracy_gaussian.py --seeds 3 --out benchmarks/accuracy_gaussian.csv
    python benchmarks/accuracy_gaussian.py --quick          # smoke run, a minute or so
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any


@dataclass(frozen=True)
class Setting:
    """One benchmark setting."""

    name: str
    d: int
    missing_rate: float
    mechanism: str = "mcar"
    n: int = 1000


SETTINGS: tuple[Setting, ...] = (
    Setting("d5_mcar20", 5, 0.2),
    Setting("d10_mcar10", 10, 0.1),
    Setting("d10_mcar40", 10, 0.4),
    Setting("d10_mar40", 10, 0.4, "mar"),
    Setting("d20_mcar40", 20, 0.4),
)
QUICK_SETTINGS: tuple[Setting, ...] = (
    Setting("d5_mcar20", 5, 0.2, n=200),
    Setting("d20_mcar40", 20, 0.4, n=200),
)
#: (setting, method, maximal ratio of mean score MSE to the exact marginal one)
RATIO_TARGETS = (
    ("d5_mcar20", "iw", 1.25),
    ("d5_mcar20", "variational", 1.25),
    ("d5_mcar20", "variational_gc", 1.25),
    ("d20_mcar40", "variational", 1.5),
    ("d20_mcar40", "variational_gc", 1.5),
)
MARGINAL_METHODS = ("iw", "variational", "variational_gc")
BASELINES = ("complete_case", "mean_impute", "zeroed")


def _run_one(task: tuple[Setting, int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Simulate one data set and fit every method (runs in a worker process)."""
    setting, seed, options = task
    import torch

    from pyro_msm.experiments import DEFAULT_ESTIMATORS, compare_estimators, simulate_gaussian

    torch.set_num_threads(options["threads"])
    problem = simulate_gaussian(
        setting.d, setting.n, setting.missing_rate, setting.mechanism, seed=seed
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*complete-case analysis drops.*")
        warnings.filterwarnings("ignore", message=".*have no observed coordinate.*")
        methods = options.get("methods")
        comparison = compare_estimators(
            problem,
            [e for e in DEFAULT_ESTIMATORS if methods is None or e.label in methods],
            steps=options["steps"],
            lr=options["lr"],
            num_particles=options["num_particles"],
            guide_steps=options["guide_steps"],
            seed=seed,
        )
    for row in comparison.rows:
        row["setting"] = setting.name
        row["realised_missing_rate"] = problem.realised_missing_rate
    return comparison.rows


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), sd


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (setting, method): means and standard deviations over seeds."""
    out = []
    keys = []
    for r in rows:
        key = (r["setting"], r["method"])
        if key not in keys:
            keys.append(key)
    for setting, method in keys:
        group = [r for r in rows if r["setting"] == setting and r["method"] == method]
        mse, mse_sd = _mean_sd([r["score_mse"] for r in group])
        ratio, ratio_sd = _mean_sd([r["ratio_to_exact"] for r in group])
        ratios = [r["ratio_to_exact"] for r in group if not math.isnan(r["ratio_to_exact"])]
        fisher, _ = _mean_sd([r["fisher"] for r in group])
        ess, _ = _mean_sd([r["ess"] for r in group])
        seconds, _ = _mean_sd([r["seconds"] for r in group])
        vs_exact, _ = _mean_sd([r["vs_exact_precision_error"] for r in group])
        out.append(
            {
                "setting": setting,
                "method": method,
                "seeds": len(group),
                "score_mse": mse,
                "score_mse_sd": mse_sd,
                "ratio": ratio,
                "ratio_sd": ratio_sd,
                "ratio_median": statistics.median(ratios) if ratios else math.nan,
                "ratio_range": f"{min(ratios):.3g}-{max(ratios):.3g}" if ratios else "-",
                "fisher": fisher,
                "vs_exact": vs_exact,
                "ess": ess,
                "seconds": seconds,
            }
        )
    return out


def check_targets(summary: Sequence[dict[str, Any]]) -> list[tuple[bool, str]]:
    """PASS/FAIL of every target present in the summary."""
    by_key = {(s["setting"], s["method"]): s for s in summary}
    settings = list(dict.fromkeys(s["setting"] for s in summary))
    results = []
    for setting, method, limit in RATIO_TARGETS:
        s = by_key.get((setting, method))
        if s is None:
            continue
        ok = s["ratio"] <= limit
        results.append((ok, f"{setting}: {method} mean ratio to exact {s['ratio']:.3f} <= {limit}"))
    for setting in settings:
        for method in MARGINAL_METHODS:
            s = by_key.get((setting, method))
            if s is None:
                continue
            baselines = [by_key[(setting, b)] for b in BASELINES if (setting, b) in by_key]
            # a baseline that could not be fitted at all (complete case without d + 1
            # complete rows: NaN) counts as beaten
            ok = all(
                s["score_mse"] < b["score_mse"] or math.isnan(b["score_mse"]) for b in baselines
            )
            listed = ", ".join(
                f"{b['method']} "
                + ("n/a" if math.isnan(b["score_mse"]) else f"{b['score_mse']:.4g}")
                for b in baselines
            )
            results.append(
                (ok, f"{setting}: {method} score MSE {s['score_mse']:.4g} below {listed}")
            )
    return results


COLUMNS = [
    ("method", "method"),
    ("score_mse", "score MSE"),
    ("score_mse_sd", "MSE sd"),
    ("ratio", "x exact"),
    ("ratio_sd", "ratio sd"),
    ("ratio_median", "median"),
    ("ratio_range", "range"),
    ("fisher", "Fisher div."),
    ("vs_exact", "P err vs exact"),
    ("ess", "IW ESS"),
    ("seconds", "s/fit"),
]


def _read_csv(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Rows saved by ``--out`` (numbers parsed back; empty cells stay strings). A (setting, seed,
    method) present in several files keeps its row from the last file: runs with ``--methods``
    refit the reference rows, which are the same fits."""
    rows = []
    for path in paths:
        with open(path, newline="") as fh:
            for raw in csv.DictReader(fh):
                row: dict[str, Any] = {}
                for key, value in raw.items():
                    try:
                        row[key] = float(value)
                    except ValueError:
                        row[key] = value
                rows.append(row)
    unique = {(r["setting"], r["seed"], r["method"]): r for r in rows}
    return list(unique.values())


def report(rows: Sequence[dict[str, Any]], settings: Sequence[Setting]) -> None:
    """Print one table per setting, then the PASS/FAIL lines."""
    from pyro_msm.experiments import format_table

    names = {s.name for s in settings}
    rows = [r for r in rows if r["setting"] in names]
    summary = summarise(rows)
    for setting in settings:
        group = [s for s in summary if s["setting"] == setting.name]
        if not group:
            continue
        seeds = sorted({int(r["seed"]) for r in rows if r["setting"] == setting.name})
        print()
        print(
            f"## {setting.name}: d={setting.d}, n={setting.n}, {setting.mechanism.upper()} "
            f"{setting.missing_rate:.0%} missing, seeds {seeds}"
        )
        print(format_table(group, COLUMNS))
    print()
    for ok, text in check_targets(summary):
        print(f"{'PASS' if ok else 'FAIL'}  {text}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="data sets per setting")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first data set")
    parser.add_argument("--steps", type=int, default=None, help="model updates per fit (400)")
    parser.add_argument("--lr", type=float, default=0.02, help="Adam learning rate")
    parser.add_argument("--num-particles", type=int, default=10, help="particles per row")
    parser.add_argument("--guide-steps", type=int, default=10, help="guide steps per model step")
    parser.add_argument(
        "--settings", nargs="*", default=None, help="names of the settings to run (default all)"
    )
    parser.add_argument(
        "--methods",
        nargs="*",
        default=None,
        help="labels of the methods to fit (default all; the references are always fitted)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (1 thread each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny sizes, 1 seed")
    parser.add_argument("--out", default=None, help="CSV file for the per-seed rows")
    parser.add_argument(
        "--from-csv",
        nargs="+",
        default=None,
        metavar="CSV",
        help="do not fit: summarise rows saved by --out (several files are merged)",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.jobs < 1 or args.threads < 1:
        parser.error("--seeds, --jobs and --threads must be positive")

    settings = QUICK_SETTINGS if args.quick else SETTINGS
    if args.settings:
        unknown = set(args.settings) - {s.name for s in settings}
        if unknown:
            parser.error(f"unknown settings {sorted(unknown)}; known: {[s.name for s in settings]}")
        settings = tuple(s for s in settings if s.name in args.settings)
    if args.from_csv:
        rows = _read_csv(args.from_csv)
        print(f"# summary of {', '.join(args.from_csv)} ({len(rows)} rows)")
        report(rows, settings)
        return 0
    seeds = (
        [args.first_seed]
        if args.quick
        else list(range(args.first_seed, args.first_seed + args.seeds))
    )
    steps = args.steps if args.steps is not None else (20 if args.quick else 400)
    options = {
        "steps": steps,
        "lr": args.lr,
        "num_particles": args.num_particles,
        "guide_steps": args.guide_steps,
        "threads": args.threads,
        "methods": None if args.methods is None else set(args.methods),
    }
    command = " ".join(["python", *sys.argv]) if argv is None else " ".join(argv)
    print(f"# {command}")
    print(
        f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} CPUs, python {platform.python_version()}; steps={steps}, "
        f"lr={args.lr}, r={args.num_particles}, guide_steps={args.guide_steps}, seeds={seeds}",
        flush=True,
    )
    tasks = [(s, seed, options) for s in settings for seed in seeds]
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []

    def done(task: tuple[Setting, int, dict[str, Any]]) -> None:
        elapsed = time.perf_counter() - start
        print(f"  done {task[0].name} seed {task[1]} ({elapsed:.0f} s)", flush=True)

    if args.jobs == 1:
        for task in tasks:
            rows += _run_one(task)
            done(task)
    else:
        with ProcessPoolExecutor(args.jobs) as pool:
            for task, result in zip(tasks, pool.map(_run_one, tasks), strict=True):
                rows += result
                done(task)
    elapsed = time.perf_counter() - start

    if args.out:
        directory = os.path.dirname(args.out)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(args.out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    report(rows, settings)
    print(f"\ntotal {elapsed / 60:.1f} min" + (f"; rows written to {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
